"""The quick inner loop: tests that use the warehouse are marked `integration` by
tests/conftest.py, so `pytest -m "not integration"` runs without PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import create_database

from winback import config


def _collected(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=config.PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {line for line in result.stdout.splitlines() if "::" in line}


def test_tests_using_the_warehouse_are_marked_integration():
    # One collection: `-m integration` selects exactly what `-m "not integration"` leaves.
    integration = _collected(
        "-m", "integration", "tests/test_tables.py", "tests/test_assignment.py"
    )
    # through `conn`, which asks for `session_database`
    assert (
        "tests/test_tables.py::test_ensure_schema_creates_every_table_and_upgrades_an_older_one"
        in integration
    )
    assert "tests/test_assignment.py::test_the_sql_twin_sorts_as_python_does" in integration
    import test_tables

    assert hasattr(test_tables, "test_every_winback_table_is_a_described_dbt_source")
    assert "tests/test_tables.py::test_every_winback_table_is_a_described_dbt_source" not in (
        integration
    )


def test_a_test_not_marked_integration_cannot_create_a_database():
    """A fixture that calls create_database without asking for `session_database` would
    start PostgreSQL in the quick loop: it gets a clear error instead."""
    with pytest.raises(RuntimeError, match="creates a database without asking for it"):
        create_database("never_created")
