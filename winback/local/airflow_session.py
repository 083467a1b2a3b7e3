"""Several Airflow CLI commands in one long-lived process, for the demo's DAG runs.

Each `airflow dags test` started cold pays for Airflow's start-up before its first task:
the imports, the in-process execution API that `dags test` runs its tasks through, and
inside the tasks the first import of great-expectations and dbt. On the demo's second day
that was about 14 s (`wait_for_delivery` 7.7 s, now 0.2 s; `check_raw_inputs` 4.3 s, now
0.4 s; 3 s before dbt started). `AirflowSession` starts one child process with the
environment the CLI gets (`airflow_env.airflow_environment`), and hands it one command
line at a time: the second day finds all of that loaded.

The child runs each command exactly as the `airflow` entry point does (the CLI's parser,
then the command's handler), so the output, the logs and what a command writes to the
metadata database are the CLI's. After a command it prints `DONE_MARKER <exit code>`
on a line of its own; a command that raises or calls `SystemExit` ends with a non-zero
code there, never the session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from collections.abc import Callable

from winback import config
from winback.local import airflow_env

DONE_MARKER = "\x1ewinback-airflow-session-done"


class AirflowSessionError(RuntimeError):
    pass


class AirflowSession:
    """One child process running Airflow CLI commands in turn (see the module docstring)."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        config.private_folder(airflow_env.airflow_home())
        env = {**airflow_env.airflow_environment(), **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )

    def run(self, args: list[str], on_line: Callable[[str], None]) -> int:
        """Run `airflow ARGS` in the session, handing each output line to `on_line`;
        returns the command's exit code. If the session died, its own exit code (or 1)."""
        process = self._process
        if process.poll() is not None:
            raise AirflowSessionError(f"the Airflow session ended (exit code {process.returncode})")
        try:
            process.stdin.write(json.dumps(args) + "\n")
            process.stdin.flush()
        except BrokenPipeError as error:
            raise AirflowSessionError("the Airflow session ended before the command") from error
        for line in process.stdout:
            if line.startswith(DONE_MARKER):
                return int(line[len(DONE_MARKER) :].strip() or 1)
            on_line(line)
        # The child ended in the middle of the command.
        return process.wait() or 1

    def close(self, timeout: float = 30) -> None:
        process = self._process
        if process.stdin and not process.stdin.closed:
            process.stdin.close()  # end of commands: the child exits
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()

    def __enter__(self) -> AirflowSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run_command(parser, argv: list[str]) -> int:
    try:
        args = parser.parse_args(argv)
        args.func(args)
    except SystemExit as exit:
        code = exit.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def _warm_up() -> None:
    """Build now, while the parent is still preparing the day, what the first `dags test`
    builds before its first task: the command's imports and the in-process execution API
    (a FastAPI app whose versioned routes take seconds to generate; cached per process).
    Nothing here touches the metadata database."""
    from airflow.cli.commands import dag_command  # noqa: F401
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    in_process_api_server().app  # noqa: B018 (a cached property: building it is the point)


def main() -> int:
    """The child: read commands (JSON lists of CLI arguments) from stdin until it closes."""
    from airflow.cli import cli_parser
    from airflow.configuration import write_default_airflow_configuration_if_needed

    write_default_airflow_configuration_if_needed()  # as the `airflow` entry point does
    parser = cli_parser.get_parser()
    _warm_up()
    for line in sys.stdin:
        if not line.strip():
            continue
        code = _run_command(parser, json.loads(line))
        sys.stderr.flush()
        print(f"{DONE_MARKER} {code}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
