# winback: `make demo` runs the pipeline on a simulated shop, `make test` runs the tests.
# Both create the virtual environment from requirements.lock when missing and start the
# embedded PostgreSQL when WINBACK_DATABASE_URL is not set.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
export AIRFLOW__COSMOS__ENABLE_TELEMETRY ?= False
export DBT_SEND_ANONYMOUS_USAGE_STATS ?= False
# Some machines set this globally; bytecode caching saves seconds on every Airflow import.
unexport PYTHONDONTWRITEBYTECODE

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@echo "winback — win back inactive customers (Airflow + dbt + PostgreSQL)"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create the virtual environment from the lock file

.PHONY: demo
demo: venv ## Run winback_daily with `airflow dags test` on a simulated 20k-customer shop (DEMO_ARGS="--customers N")
	$(BIN)/winback demo $(DEMO_ARGS)

.PHONY: test
test: venv browser ## Run every test: lint, unit, integration (real PostgreSQL), DAG, end to end
	$(BIN)/winback airflow-setup
	$(BIN)/python -m pytest

.PHONY: test-quick
test-quick: venv ## The inner loop: every test that needs no PostgreSQL (under a minute)
	$(BIN)/python -m pytest -m "not integration" -q

.PHONY: test-backfill
test-backfill: venv ## The scheduler-driven backfill test alone (make test runs it too)
	$(BIN)/winback airflow-setup
	$(BIN)/python -m pytest -m backfill_scheduler tests/test_backfill_scheduler.py

.PHONY: lint
lint: venv ## ruff and sqlfluff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest tests/test_lint.py -q

.PHONY: psql
psql: venv ## Open psql on the warehouse
	psql "$$($(BIN)/winback db-url)"

.PHONY: airflow
airflow: venv ## Run a local Airflow (api-server, scheduler, dag-processor, triggerer) on the embedded PostgreSQL
	$(BIN)/winback airflow-setup
	$(BIN)/winback airflow-ui

.PHONY: browser
browser: ## Install Debian's chromium for the Airflow UI test (root only; otherwise say why not)
	@chromium="$${WINBACK_CHROMIUM:-/usr/bin/chromium}"; \
	if [ -x "$$chromium" ]; then \
		echo "browser: $$chromium is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "browser: installing Debian's chromium (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "browser: no $$chromium and not root with apt-get, so not installed;" \
			"tests/test_airflow_ui.py will skip (install chromium or set WINBACK_CHROMIUM)"; \
	fi

.PHONY: db-up
db-up: venv ## Start the embedded PostgreSQL (a no-op when WINBACK_DATABASE_URL is set)
	$(BIN)/winback db-up

.PHONY: db-stop
db-stop: venv ## Stop the embedded PostgreSQL
	$(BIN)/winback db-stop

.PHONY: dbt-docs
dbt-docs: venv ## Generate and serve dbt's docs (lineage to every campaign) on 127.0.0.1:8081
	$(BIN)/winback db-up
	$(BIN)/winback dbt-manifest
	cd dbt_project && ../$(BIN)/dbt docs generate && ../$(BIN)/dbt docs serve --host 127.0.0.1 --port $${WINBACK_DBT_DOCS_PORT:-8081} --no-browser

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cat requirements.lock bench/requirements-pymc.txt pyproject.toml | sha256sum | cut -c1-16)

# A venv of its own, so pymc-marketing (bench only) never enters the project's .venv.
$(BENCH_STAMP): requirements.lock bench/requirements-pymc.txt pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	@$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BENCH_VENV)/bin/uv pip install --quiet --compile-bytecode --python $(BENCH_VENV)/bin/python \
		-r requirements.lock -r bench/requirements-pymc.txt
	$(BENCH_VENV)/bin/uv pip install --quiet --python $(BENCH_VENV)/bin/python --no-deps -e .
	@rm -f $(BENCH_VENV)/.installed-*
	@touch $@

.PHONY: bench-scoring
bench-scoring: $(BENCH_STAMP) ## Scoring bench: winback, naive lifetimes, pymc-marketing (BENCH_ARGS="--customers N")
	$(BENCH_VENV)/bin/python bench/bench_scoring.py $(BENCH_ARGS)

.PHONY: lock
lock: venv ## Re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

.PHONY: clean
clean: ## Remove build output (keeps the venv and the embedded database)
	rm -rf dbt_project/target dbt_project/logs .pytest_cache .ruff_cache
