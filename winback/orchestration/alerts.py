"""Failure alerts: one clear message when a winback task fails.

The message says which DAG, task and logical date failed, what the error was (its type
and first line: gate messages are written to be read here), whether anything can have
been sent, and where the log is. It goes to the task log and, when
`WINBACK_ALERT_WEBHOOK_URL` is set (Slack, Teams or any JSON webhook), to that URL.
Error texts from winback never hold contact data, so the message is safe to post.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

WEBHOOK_ENV = "WINBACK_ALERT_WEBHOOK_URL"
SENDING_TASKS = ("sync_outbox",)
# How cosmos starts the error of a dbt invocation whose nodes failed (cosmos.dbt.runner).
DBT_FAILURE_HEADER = "dbt invocation completed with errors:"
STAGES_BEFORE_SENDING = (
    "wait_for_delivery",
    "load_raw_files",
    "dbt_customers",
    "check_raw_inputs",
    "score_customers",
    "check_scores",
    "dbt_features",
    "build_audiences",
    "check_audiences",
)


def failure_message(
    dag_id: str,
    task_id: str,
    logical_date: str,
    error: BaseException | None,
    log_url: str | None = None,
) -> str:
    lines = str(error).strip().splitlines() if error else []
    first_line = lines[0].strip() if lines else ""
    detail = f"{type(error).__name__}: {first_line}" if error else "unknown error"
    if first_line.startswith(DBT_FAILURE_HEADER):
        # A dbt build lists its failed nodes as `name: dbt's message`, the first on the
        # header's line, one a line: the names say where to look, the messages (a
        # database error can quote a row) stay in the log.
        entries = [first_line.removeprefix(DBT_FAILURE_HEADER), *lines[1:]]
        names = [entry.split(":", 1)[0].strip() for entry in entries if entry.strip()]
        detail = f"{type(error).__name__}: {DBT_FAILURE_HEADER} {', '.join(names)}"
    if task_id.startswith(STAGES_BEFORE_SENDING):
        consequence = "Stopped before the provider sync: nothing was sent for this run."
    elif task_id.startswith(SENDING_TASKS):
        consequence = (
            "Failed during the provider sync: the send ledger holds what was acknowledged; "
            "a rerun reconciles unclear rows and never sends a step twice."
        )
    else:
        consequence = "Failed after the provider sync."
    lines = [
        f"winback: {dag_id}.{task_id} failed for {logical_date}",
        f"Error: {detail}",
        consequence,
    ]
    if log_url:
        lines.append(f"Log: {log_url}")
    return "\n".join(lines)


def on_task_failure(context) -> None:
    """Airflow `on_failure_callback`."""
    task_instance = context.get("task_instance") or context.get("ti")
    dag_id = getattr(task_instance, "dag_id", "?")
    task_id = getattr(task_instance, "task_id", "?")
    logical_date = str(context.get("ds") or context.get("logical_date") or "?")
    log_url = getattr(task_instance, "log_url", None)
    message = failure_message(dag_id, task_id, logical_date, context.get("exception"), log_url)
    log.error("%s", message)
    post(message)


def post(message: str) -> None:
    """Post `message` to the webhook, when one is configured; never raises."""
    url = os.environ.get(WEBHOOK_ENV)
    if url:
        import httpx

        try:
            httpx.post(url, json={"text": message}, timeout=10).raise_for_status()
        except httpx.HTTPError as error:  # an alert must never mask the original failure
            log.warning("could not post the alert: %s", type(error).__name__)


def warn(subject: str, detail: str) -> str:
    """An alert for a run that goes on but needs a person's eye (a degenerate model fit):
    logged as a warning and posted like a failure alert. Returns the message."""
    message = f"winback warning: {subject}\n{detail}"
    log.warning("%s", message)
    post(message)
    return message
