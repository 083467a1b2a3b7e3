"""Style gates: ruff (Python, including Airflow 3 rules) and sqlfluff (dbt SQL)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from winback import config
from winback.warehouse import db

BIN = Path(sys.executable).parent


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, check=False, **kwargs
    )


def test_ruff_check():
    result = run([str(BIN / "ruff"), "check", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = run([str(BIN / "ruff"), "format", "--check", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_sqlfluff_lints_the_dbt_models(session_database):
    """dbt compiles the models for sqlfluff, and `is_incremental()` asks the warehouse."""
    import os

    env = {**os.environ, **db.dbt_env()}
    result = run([str(BIN / "sqlfluff"), "lint", "dbt_project/models"], env=env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
