"""The demo's Airflow session: several CLI commands in one process, each with its own exit
code and output, and a failed command does not end the session."""

from __future__ import annotations

import pytest

from winback.local import airflow_session


@pytest.mark.slow  # starts Airflow in a child process (its environment names the warehouse)
def test_commands_run_in_turn_in_one_process_and_a_failure_ends_only_its_command(
    session_database,
):
    with airflow_session.AirflowSession({"AIRFLOW__CORE__PARALLELISM": "7"}) as session:
        pid = session._process.pid
        outputs: list[list[str]] = []

        def run(*args: str) -> int:
            outputs.append([])
            return session.run(list(args), outputs[-1].append)

        assert run("config", "get-value", "core", "parallelism") == 0
        assert run("dags", "test") == 2  # argparse: the DAG id is missing
        assert run("config", "get-value", "core", "parallelism") == 0
        assert session._process.pid == pid and session._process.poll() is None
    # The first command's output also holds what the child printed while warming up.
    assert outputs[0][-1].strip() == "7"
    assert any("dag_id" in line for line in outputs[1])
    assert [line.strip() for line in outputs[2]] == ["7"]
    assert not any(airflow_session.DONE_MARKER in line for out in outputs for line in out)
    assert session._process.poll() == 0, "the session ends when its input closes"
