"""docker-compose.yaml, checked without a Docker engine.

No engine (and no compose plugin) runs here, so the file is checked the way Compose would
read it: YAML with anchors and merge keys, `${VAR}` interpolation from the example env
file, then a JSON schema of the Compose specification's keys this file may use (a strict
subset: an unknown or misspelt key fails), and the deployment's own invariants.
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from winback import config

ROOT = config.PROJECT_ROOT
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")

REQUIRED_SERVICES = {
    "postgres-airflow",
    "postgres-warehouse",
    "redis",
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}

_string_or_list = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_list_or_dict = {
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
        {"type": "array", "items": {"type": "string"}},
    ]
}
SERVICE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string"},
        "build": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}},
            "required": ["context"],
        },
        "command": _string_or_list,
        "entrypoint": _string_or_list,
        "environment": _list_or_dict,
        "env_file": _string_or_list,
        # HOST:CONTAINER, or IP:HOST:CONTAINER to publish on one interface only.
        "ports": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^(\d{1,3}(\.\d{1,3}){3}:)?\d+:\d+$"},
        },
        "expose": {"type": "array", "items": {"type": ["string", "integer"]}},
        "volumes": {"type": "array", "items": {"type": "string", "pattern": r"^[^:]+:/[^:]+$"}},
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "healthcheck": {
            "type": "object",
            "additionalProperties": False,
            "required": ["test"],
            "properties": {
                "test": _string_or_list,
                "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
                "timeout": {"type": "string", "pattern": r"^\d+[smh]$"},
                "retries": {"type": "integer", "minimum": 1},
                "start_period": {"type": "string", "pattern": r"^\d+[smh]$"},
            },
        },
        "depends_on": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["condition"],
                "properties": {
                    "condition": {
                        "enum": [
                            "service_started",
                            "service_healthy",
                            "service_completed_successfully",
                        ]
                    }
                },
            },
        },
    },
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
}
COMPOSE_SCHEMA = {
    "type": "object",
    "required": ["services"],
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
    "properties": {
        "services": {
            "type": "object",
            "propertyNames": {"pattern": "^[a-zA-Z0-9._-]+$"},
            "additionalProperties": SERVICE_SCHEMA,
        },
        "volumes": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
    },
}


def example_env() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name, operator, argument = match.groups()
        value = env.get(name, "")
        if operator == "?" and not value:
            raise KeyError(f"${{{name}}} is required: {argument}")
        if operator == "-" and not value:
            return argument
        return value

    text = text.replace("$$", "\0")  # an escaped dollar stays literal
    return VARIABLE.sub(replace, text).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), example_env()))


def test_the_file_follows_the_compose_schema(compose):
    jsonschema.Draft7Validator(COMPOSE_SCHEMA).validate(compose)


def test_every_service_a_deployment_needs_is_there(compose):
    assert REQUIRED_SERVICES <= set(compose["services"])


def test_celery_executor_with_redis_and_a_worker(compose):
    for name, service in compose["services"].items():
        if name.startswith("airflow-"):
            environment = service["environment"]
            assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
            assert environment["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0", name
    assert "celery worker" in compose["services"]["airflow-worker"]["command"]


def test_the_dags_are_created_ready_to_run(compose):
    """A paused DAG leaves a backfill's runs queued forever: the deployment unpauses."""
    for name, service in compose["services"].items():
        if name.startswith("airflow-"):
            paused = service["environment"]["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"]
            assert str(paused).lower() == "false", name


def test_dependencies_exist_and_servers_have_healthchecks(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    for name in ("postgres-airflow", "postgres-warehouse", "redis", "airflow-api-server",
                 "airflow-scheduler"):  # fmt: skip
        assert "healthcheck" in services[name], name
    assert services["airflow-api-server"]["ports"] == ["127.0.0.1:8080:8080"], "TLS proxy only"


def test_the_return_path_is_a_service_of_the_same_image(compose):
    serve = compose["services"]["winback-serve"]
    assert serve["image"] == compose["services"]["airflow-scheduler"]["image"]
    assert serve["entrypoint"][:2] == ["winback", "serve"]
    assert serve["ports"] == ["127.0.0.1:8090:8090"], "reached through the TLS proxy only"
    assert "WINBACK_PUBLIC_URL" in serve["environment"]


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_no_secret_is_written_in_the_file():
    text = COMPOSE.read_text()
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if re.search(r"PASSWORD|SECRET|FERNET|TOKEN", key) and value.strip():
            assert "${" in value, f"literal secret in docker-compose.yaml: {key}"
    assert not re.search(r"://[^:/\s]+:(?!\$\{)[^@\s]+@", text), "a URL with a literal password"


def test_every_variable_used_is_in_the_example_env():
    # $${VAR} is escaped: the container's shell expands it, not Compose.
    used = {m.group(1) for m in VARIABLE.finditer(COMPOSE.read_text().replace("$$", ""))}
    assert used <= set(example_env()), sorted(used - set(example_env()))
    for key, value in example_env().items():
        if re.search(r"PASSWORD|SECRET|FERNET", key):
            assert value == "change-me", f"{key} in .env.example must be a placeholder"


def test_the_image_uses_the_locked_airflow_version():
    locked = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"FROM apache/airflow:{locked.group(1)}-python3.11" in dockerfile


def test_a_missing_secret_is_refused_as_compose_would():
    env = example_env()
    env.pop("AIRFLOW_DB_PASSWORD")
    with pytest.raises(KeyError, match="AIRFLOW_DB_PASSWORD"):
        interpolate(COMPOSE.read_text(), env)


def test_deploy_env_is_ignored_by_git():
    assert "deploy/.env" in Path(ROOT / ".gitignore").read_text().split()


def test_placeholder_or_short_secrets_stop_the_deployment_at_init(compose):
    """airflow-init checks the secrets before anything else, and every service of the image
    waits for it: the example file's `change-me` values never reach a running service."""
    from winback.orchestration import deploy_secrets

    init = compose["services"]["airflow-init"]["command"][-1]
    assert init.strip().startswith("winback check-secrets &&")
    image = compose["services"]["airflow-init"]["image"]
    for name, service in compose["services"].items():
        if service.get("image") == image and name != "airflow-init":
            rule = service["depends_on"]["airflow-init"]["condition"]
            assert rule == "service_completed_successfully", name
    found = deploy_secrets.problems(example_env())
    assert set(deploy_secrets.REQUIRED) <= {line.split()[0] for line in found}
    assert all("change-me" not in line for line in found), "values are never printed"
    strong = {name: "s3cr3t-" + "x" * 40 for name in deploy_secrets.REQUIRED}
    assert deploy_secrets.problems(strong) == []
    assert deploy_secrets.problems({**strong, "AIRFLOW_JWT_SECRET": "short"}) == [
        "AIRFLOW_JWT_SECRET is shorter than 32 bytes"
    ]
    assert deploy_secrets.problems({**strong, "WINBACK_MAILCHIMP_WEBHOOK_SECRET": "change-me"})


def test_the_api_server_listens_on_localhost_unless_told_otherwise():
    env = example_env()
    assert env["AIRFLOW_API_BIND"] == "127.0.0.1"
    env.pop("AIRFLOW_API_BIND")
    defaulted = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    assert defaulted["services"]["airflow-api-server"]["ports"] == ["127.0.0.1:8080:8080"]
