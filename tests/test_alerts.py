"""Failure alerts: clear, actionable, and posted to a webhook over real HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

from winback.orchestration import alerts
from winback.quality import QualityGateError


def test_a_gate_failure_says_nothing_was_sent():
    error = QualityGateError("quality gate 'raw_inputs' failed 1 of 7 checks\n  - order totals")
    message = alerts.failure_message("winback_daily", "check_raw_inputs", "2026-11-20", error)
    assert message.splitlines() == [
        "winback: winback_daily.check_raw_inputs failed for 2026-11-20",
        "Error: QualityGateError: quality gate 'raw_inputs' failed 1 of 7 checks",
        "Stopped before the provider sync: nothing was sent for this run.",
    ]


def test_a_failed_dbt_build_names_its_failed_nodes_but_not_their_messages():
    """The group's `dbt build` runs every test: its alert says which ones failed."""
    error = RuntimeError(
        "dbt invocation completed with errors: \n"
        "not_null_stg_shop__orders_customer_id: Got 2 results, configured to fail if != 0\n"
        "customer_rfm: Database Error in model customer_rfm: Key (email)=(a@b.test) exists"
    )
    task = "dbt_customers.dbt_producer_watcher"
    message = alerts.failure_message("winback_daily", task, "2026-11-20", error)
    assert message.splitlines()[1:] == [
        "Error: RuntimeError: dbt invocation completed with errors:"
        " not_null_stg_shop__orders_customer_id, customer_rfm",
        "Stopped before the provider sync: nothing was sent for this run.",
    ]
    assert "a@b.test" not in message
    # One failed node comes on the header's own line.
    error = RuntimeError(
        "dbt invocation completed with errors: customer_rfm: Database Error: (a@b.test)"
    )
    message = alerts.failure_message("winback_daily", task, "2026-11-20", error)
    assert message.splitlines()[1] == (
        "Error: RuntimeError: dbt invocation completed with errors: customer_rfm"
    )


def test_a_sync_failure_points_at_the_ledger():
    message = alerts.failure_message("winback_daily", "sync_outbox", "2026-11-20", TimeoutError())
    assert "send ledger" in message and "never sends a step twice" in message


def test_the_callback_posts_to_the_webhook(monkeypatch):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    monkeypatch.setenv(alerts.WEBHOOK_ENV, f"http://127.0.0.1:{server.server_port}/hook")
    task_instance = SimpleNamespace(dag_id="winback_daily", task_id="score_customers", log_url=None)
    alerts.on_task_failure(
        {"task_instance": task_instance, "ds": "2026-11-20", "exception": ValueError("no fit")}
    )
    thread.join(timeout=5)
    server.server_close()
    assert received and received[0]["text"].startswith(
        "winback: winback_daily.score_customers failed for 2026-11-20"
    )


def test_a_degenerate_fit_warning_is_posted_to_the_webhook(monkeypatch):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    monkeypatch.setenv(alerts.WEBHOOK_ENV, f"http://127.0.0.1:{server.server_port}/hook")
    message = alerts.warn("model fit for 2026-11-20", "BG/NBD fit 7 is degenerate (a = 2e-16)")
    thread.join(timeout=5)
    server.server_close()
    assert received and received[0]["text"] == message
    assert message.startswith("winback warning: model fit for 2026-11-20\nBG/NBD fit 7")
