"""A local Airflow with its web UI, on the embedded PostgreSQL: `make airflow` and the UI test.

Airflow 3 splits what the 2.x webserver did across processes; winback starts each one as
its own child process rather than `airflow standalone`, so it chooses the port, binds to
localhost only, keeps one log file per process and can tell which one died:

- `api-server`: the REST API, the execution API the tasks talk to, and the React UI;
- `scheduler` (with the LocalExecutor that runs the tasks);
- `dag-processor`: parses `dags/` into the metadata database;
- `triggerer`: runs deferred tasks' triggers; winback_daily's first task
  (`wait_for_delivery`) waits there for the day's delivery without holding a worker.
  Started by default (`triggerer=False` leaves it out).

`make airflow` leaves winback_daily and winback_campaign_report unpaused (ready to run): new
DAGs are created unpaused, and `serve` unpauses them through the REST API in case an older
metadata database holds them paused.

Login goes through Airflow 3's SimpleAuthManager with one user, `admin`. The password is
`WINBACK_AIRFLOW_ADMIN_PASSWORD` when set, otherwise one generated on first start into
`AIRFLOW_HOME/simple_auth_manager_passwords.json.generated` (AIRFLOW_HOME is under the
git-ignored `.winback/`). The port is `WINBACK_AIRFLOW_PORT`, else 8080, else (8080 busy)
a free one. The metadata database must exist first: `winback airflow-setup`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from winback.local import airflow_env
from winback.local.ports import free_port, port_is_free

ADMIN_USER = "admin"
PASSWORD_ENV = "WINBACK_AIRFLOW_ADMIN_PASSWORD"
PORT_ENV = "WINBACK_AIRFLOW_PORT"
DEFAULT_PORT = 8080
HOST = "127.0.0.1"
COMPONENTS = ("api-server", "scheduler", "dag-processor")
GENERATED_PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
ENV_PASSWORDS_FILE = "simple_auth_manager_passwords.from-env.json"
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
READY_TIMEOUT_SECONDS = 240.0
# The DAGs `make airflow` leaves ready to run (unpaused), so a backfill or a trigger runs.
WINBACK_DAGS = ("winback_daily", "winback_campaign_report")
UNPAUSE_TIMEOUT_SECONDS = 180.0


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AdminLogin:
    """The UI's login, and whether this start generated the password."""

    username: str
    password: str = field(repr=False)
    passwords_file: Path
    generated: bool


def admin_login(home: Path | None = None) -> AdminLogin:
    """The `admin` password: from the environment, else read or generated in AIRFLOW_HOME.

    SimpleAuthManager only reads passwords from a JSON file, so an environment password
    is written to its own file (mode 600) beside the generated one, which stays as it was.
    """
    home = home or airflow_env.airflow_home()
    home.mkdir(parents=True, exist_ok=True)
    from_env = os.environ.get(PASSWORD_ENV, "")
    if from_env:
        path = home / ENV_PASSWORDS_FILE
        _write_private_json(path, {ADMIN_USER: from_env})
        return AdminLogin(ADMIN_USER, from_env, path, generated=False)
    path = home / GENERATED_PASSWORDS_FILE
    passwords = _read_json(path)
    if passwords.get(ADMIN_USER):
        return AdminLogin(ADMIN_USER, passwords[ADMIN_USER], path, generated=False)
    passwords[ADMIN_USER] = secrets.token_urlsafe(16)
    _write_private_json(path, passwords)
    return AdminLogin(ADMIN_USER, passwords[ADMIN_USER], path, generated=True)


def _read_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private_json(path: Path, data: Mapping[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(dict(data)) + "\n")
    os.chmod(path, 0o600)


def choose_port(port: int | None = None) -> int:
    """`port`, else `WINBACK_AIRFLOW_PORT`, else 8080; 0 means any free port.

    A port asked for (argument or environment) must be free; the default 8080 gives way
    to a free port when another program holds it.
    """
    if port is None and os.environ.get(PORT_ENV, "").strip():
        port = int(os.environ[PORT_ENV])
    if port == 0:
        return free_port()
    if port is not None:
        if not port_is_free(port):
            raise RuntimeError(f"port {port} is in use; pick another with {PORT_ENV}")
        return port
    return DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port()


def ui_environment(
    port: int, login: AdminLogin, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """winback's Airflow environment plus what the UI processes must agree on."""
    env = airflow_env.airflow_environment()
    env.update(
        {
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{login.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(login.passwords_file),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(port),
            # Task processes report to this api-server, not to whatever holds 8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
        }
    )
    # The scheduler serves task logs on its own port (8793 by default, on every
    # interface); a free one lets a test run beside `make airflow`.
    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
    env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
    # LocalExecutor forks one worker per parallelism slot up front: 32 by default, far
    # more than a laptop-sized pipeline with a one-slot warehouse pool needs.
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- processes


@dataclass
class LocalAirflow:
    """Running Airflow processes; `stop()` ends them (and their children)."""

    url: str
    login: AdminLogin
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _logs: list = field(default_factory=list, repr=False)

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    def dead(self) -> dict[str, int]:
        """Components that exited, with their exit codes."""
        return {
            name: code
            for name, process in self.processes.items()
            if (code := process.poll()) is not None
        }

    def log_tail(self, component: str, lines: int = 40) -> str:
        try:
            text = self.log_path(component).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def health(self) -> dict:
        response = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        response.raise_for_status()
        return response.json()

    def api_token(self) -> str:
        """A JWT for the REST API, from the same login the UI uses."""
        response = httpx.post(
            f"{self.url}/auth/token",
            json={"username": self.login.username, "password": self.login.password},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["access_token"]

    def wait_until_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> dict:
        """Block until the API answers and the scheduler and dag-processor report healthy."""
        deadline = time.monotonic() + timeout
        status: dict | str = "no answer yet"
        while time.monotonic() < deadline:
            if dead := self.dead():
                name = next(iter(dead))
                raise RuntimeError(
                    f"airflow {name} exited with code {dead[name]}; "
                    f"log {self.log_path(name)}:\n{self.log_tail(name)}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                status = self.health()
                if _healthy(status, self.processes, self.started_at):
                    return status
            time.sleep(1)
        raise TimeoutError(
            f"Airflow at {self.url} not ready after {timeout:.0f}s (last health: {status}); "
            f"logs in {self.log_dir}"
        )

    def unpause(
        self, dag_ids: Iterable[str] = WINBACK_DAGS, timeout: float = UNPAUSE_TIMEOUT_SECONDS
    ) -> dict[str, bool]:
        """Unpause each DAG through the REST API once the dag-processor has parsed it.

        New DAGs are created unpaused (`AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION`), but a
        metadata database from an older start may hold them paused. Returns dag id ->
        paused, as the API reports it after the change.
        """
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.api_token()}"}
        paused: dict[str, bool] = {}
        for dag_id in dag_ids:
            while True:
                response = httpx.patch(
                    f"{self.url}/api/v2/dags/{dag_id}",
                    json={"is_paused": False},
                    params={"update_mask": "is_paused"},
                    headers=headers,
                    timeout=30,
                )
                if response.status_code != 404:
                    response.raise_for_status()
                    paused[dag_id] = response.json()["is_paused"]
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{dag_id} not parsed after {timeout:.0f}s; see "
                        f"{self.log_path('dag-processor')}"
                    )
                time.sleep(2)
        return paused

    def wait(self) -> int:
        """Block until a component exits (or Ctrl-C); returns its exit code."""
        while not (dead := self.dead()):
            time.sleep(1)
        return next(iter(dead.values()))

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each component's process group, then SIGKILL what is left."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Children (uvicorn workers, executor workers) may outlive their parent.
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def __enter__(self) -> LocalAirflow:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _healthy(status: dict, processes: Iterable[str], started_at: datetime) -> bool:
    """Every component healthy, on a heartbeat newer than this start (not a stale job's)."""
    if (status.get("metadatabase") or {}).get("status") != "healthy":
        return False
    since = started_at - timedelta(seconds=5)
    for name in processes:
        if name == "api-server":
            continue
        part = name.replace("-", "_")
        report = status.get(part) or {}
        heartbeat = report.get(f"latest_{part}_heartbeat")
        if report.get("status") != "healthy" or not heartbeat:
            return False
        if datetime.fromisoformat(heartbeat) < since:
            return False
    return True


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    # Each component was started in its own session: its process group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def start_local_airflow(
    port: int | None = None,
    *,
    triggerer: bool = True,
    log_dir: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    wait: bool = True,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
) -> LocalAirflow:
    """Start the api-server, scheduler, dag-processor and (unless told not to) a triggerer.

    `port`: see `choose_port` (0 = any free port). `extra_env` adds Airflow settings, e.g.
    `AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=False` in tests. Returns once healthy (`wait`).
    """
    port = choose_port(port)
    if not (airflow_env.airflow_home() / "airflow.cfg").exists():
        # A fresh AIRFLOW_HOME: let one process write airflow.cfg (and its JWT secret)
        # before three processes race to write three different ones.
        airflow_env.migrate_metadata_db()
    login = admin_login()
    env = ui_environment(port, login, extra_env)
    log_dir = Path(log_dir or airflow_env.airflow_home() / "logs" / "local")
    log_dir.mkdir(parents=True, exist_ok=True)
    components = [*COMPONENTS, *(["triggerer"] if triggerer else [])]
    handle = LocalAirflow(url=f"http://{HOST}:{port}", login=login, log_dir=log_dir)
    arguments = {"api-server": ["--host", HOST, "--port", str(port), "--workers", "1"]}
    try:
        for name in components:
            log = open(handle.log_path(name), "w")  # closed by stop()
            handle._logs.append(log)
            handle.processes[name] = subprocess.Popen(
                [str(airflow_env.airflow_executable()), name, *arguments.get(name, [])],
                env=env,
                cwd=airflow_env.airflow_home(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            handle.wait_until_ready(ready_timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


# --------------------------------------------------------------------------- command


def serve(port: int | None = None, triggerer: bool = True) -> int:
    """`winback airflow-ui` / `make airflow`: start, print the login, run until Ctrl-C."""
    # make and terminals stop us with SIGTERM/SIGHUP too: turn them into a clean stop.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_keyboard_interrupt)
    started = time.monotonic()
    names = ", ".join([*COMPONENTS, *(["triggerer"] if triggerer else [])])
    print(f"starting Airflow: {names} ...", flush=True)
    try:
        airflow = start_local_airflow(port, triggerer=triggerer)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, TimeoutError) as error:
        print(f"Airflow did not start: {error}", file=sys.stderr)
        return 1
    try:
        login = airflow.login
        print(f"\nAirflow is up after {time.monotonic() - started:.0f}s: {airflow.url}")
        if login.generated:
            print(f"  login: {login.username} / {login.password}")
            print(f"  (generated once into {login.passwords_file};")
            print(f"   set {PASSWORD_ENV} to choose your own)")
        elif os.environ.get(PASSWORD_ENV):
            print(f"  login: {login.username} / the password in ${PASSWORD_ENV}")
        else:
            print(f"  login: {login.username} / the password in {login.passwords_file}")
        print(f"  process logs: {airflow.log_dir}")
        try:
            airflow.unpause(WINBACK_DAGS)
            print(f"  unpaused, ready to run: {', '.join(WINBACK_DAGS)}")
        except (TimeoutError, httpx.HTTPError) as error:
            print(
                f"  could not unpause {', '.join(WINBACK_DAGS)} ({error}); run "
                "`.venv/bin/winback airflow dags unpause winback_daily` before a backfill",
                file=sys.stderr,
            )
        print("  Ctrl-C stops every process.", flush=True)
        code = airflow.wait()
        name = next(iter(airflow.dead()), "?")
        print(f"airflow {name} exited ({code}):\n{airflow.log_tail(name)}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        print("\nstopping Airflow ...", flush=True)
        return 0
    finally:
        airflow.stop()


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m winback.local.airflow_ui", description=__doc__)
    parser.add_argument("--port", type=int, default=None, help=f"default: ${PORT_ENV} or 8080")
    parser.add_argument(
        "--no-triggerer", action="store_true", help="no triggerer (deferred tasks then wait)"
    )
    args = parser.parse_args(argv)
    return serve(args.port, not args.no_triggerer)


if __name__ == "__main__":
    sys.exit(main())
