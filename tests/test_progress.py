"""Progress a person can watch: the loader per file, the sync per channel, the demo per task.

Unit tests drive `winback.orchestration.progress` with a fake clock and lines in the shape
`airflow dags test` writes; the integration test runs a live sync against the sandbox on
the real warehouse and reads what it logged.
"""

from __future__ import annotations

import json
import logging
from datetime import date

import pytest

from winback.campaigns import audiences
from winback.delivery import sync
from winback.delivery.providers import parse_connection
from winback.delivery.providers.popup import PopupWebhook
from winback.delivery.providers.ratelimit import RateLimits
from winback.delivery.providers.smtp import SmtpEmail
from winback.delivery.providers.twilio import TwilioSms
from winback.orchestration import progress
from winback.simulation import sandbox


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def progress_lines(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == progress.log.name]


def test_durations_read_like_a_person_says_them():
    assert progress.duration(0.42) == "0.4 s"
    assert progress.duration(12.4) == "12 s"
    assert progress.duration(159) == "2 min 39 s"
    assert progress.duration(4980) == "1 h 23 min"


def test_send_progress_reports_count_rate_and_time_left_then_a_final_line(caplog):
    caplog.set_level(logging.INFO, logger=progress.log.name)
    clock = FakeClock()
    watch = progress.SendProgress("smtp", "email", 100, 20.0, every=5.0, clock=clock)
    for i in range(100):
        clock.now += 0.1  # 10 rows a second
        watch.record("retry" if i % 25 == 0 else "acknowledged")
    watch.finish()
    lines = [text for _, text in progress_lines(caplog)]
    # A line each 5 s of the 10 s run (the last row closes the run: no in-between line).
    assert len(lines) == 2
    first, final = lines
    assert first.startswith("sync email via smtp: 50 of 100 (50%) in 5.0 s, 10.0/s")
    assert "about 5.0 s left" in first and "acknowledged 48, retry 2" in first
    assert final.startswith("sync email via smtp: done, 100 of 100 in 10 s, 10.0/s")
    assert "below the configured 20/s" in final
    assert final.endswith("acknowledged 96, retry 4")


def test_send_capacity_states_time_per_provider_and_warns_past_the_send_window(caplog):
    caplog.set_level(logging.INFO, logger=progress.log.name)
    plans = [
        progress.SendPlan("smtp", "email", 100_000, 20.0, 4),
        progress.SendPlan("twilio", "sms", 3_600, 1.0, 1),
        progress.SendPlan("popup_webhook", "popup", 0, 50.0, 4),
    ]
    too_slow = progress.log_send_capacity(plans, send_window_hours=3)
    lines = progress_lines(caplog)
    assert ("INFO", "send capacity smtp (email): 100,000 messages due at 20/s, 4 at once: "
            "at least 1 h 23 min") in lines  # fmt: skip
    assert ("INFO", "send capacity twilio (sms): 3,600 messages due at 1/s, 1 at once: "
            "at least 1 h 0 min") in lines  # fmt: skip
    warnings = [text for level, text in lines if level == "WARNING"]
    assert too_slow == [] and warnings == [], "both fit in three hours"
    caplog.clear()
    too_slow = progress.log_send_capacity(plans, send_window_hours=1)
    assert [p.provider for p in too_slow] == ["smtp"]
    (warning,) = [text for level, text in progress_lines(caplog) if level == "WARNING"]
    assert "longer than the 1 h send window" in warning and "requests_per_second" in warning
    assert not any("popup" in text for _, text in progress_lines(caplog)), "nothing due"


def test_an_audience_provider_states_its_changes_and_limits(caplog):
    caplog.set_level(logging.INFO, logger=progress.log.name)
    progress.log_audience_changes("mailchimp", 2045, RateLimits(10.0, 10))
    assert progress_lines(caplog) == [
        ("INFO", "audience mailchimp: 2,045 member changes due, at most 10 requests/s, 10 at once")
    ]


def test_send_plans_take_the_limits_each_provider_was_configured_with():
    providers = {
        "email": SmtpEmail("127.0.0.1", 25, "a@shop.test", limits=RateLimits(200.0, 8)),
        "sms": TwilioSms("http://127.0.0.1:9", "AC1", "t", "+15005550006"),
    }
    rows = {"email": [{}] * 3, "sms": [{}] * 2, "popup": [{}] * 7}
    plans = progress.send_plans(providers, rows)
    twilio_default = providers["sms"].limits  # 100/s, connections from rate x latency
    assert twilio_default.requests_per_second == 100.0
    assert plans == [
        progress.SendPlan("smtp", "email", 3, 200.0, 8),
        progress.SendPlan("twilio", "sms", 2, 100.0, twilio_default.max_concurrency),
    ]


def test_the_sandbox_connections_declare_what_it_takes_and_the_adapters_use_it():
    handle = sandbox.SandboxHandle("http://127.0.0.1:9", 2525, lambda: None)
    env = handle.connections_env()
    smtp = SmtpEmail.from_connection(
        parse_connection("winback_smtp", env["AIRFLOW_CONN_WINBACK_SMTP"])
    )
    assert smtp.limits.requests_per_second == sandbox.LOCAL_LIMITS["smtp"]["requests_per_second"]
    assert smtp.limits.max_concurrency == sandbox.LOCAL_LIMITS["smtp"]["max_concurrency"]
    for conn_id in ("TWILIO", "POPUP", "MAILCHIMP"):
        extra = json.loads(env[f"AIRFLOW_CONN_WINBACK_{conn_id}"])["extra"]
        assert extra["requests_per_second"] > 0 and extra["max_concurrency"] > 0
    # A sandbox that enforces a rate is declared at that rate, as a contract would be.
    throttled = sandbox.SandboxHandle(
        "http://127.0.0.1:9", 2525, lambda: None, sandbox.SandboxSettings(rate_limit=20)
    )
    extra = json.loads(throttled.connections_env()["AIRFLOW_CONN_WINBACK_TWILIO"])["extra"]
    assert extra["requests_per_second"] == 20


DAG_TEST_LINES = [
    "2026-12-06T05:36:09.932644Z [info     ] [DAG TEST] starting task_id=load_raw_files"
    " map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501",
    "2026-12-06T05:36:09.937235Z [info     ] [DAG TEST] running task <TaskInstance:"
    " winback_daily.load_raw_files manual__2026-12-06T05:36:07.796400+00:00"
    " [TaskInstanceState.SCHEDULED] ti_id=01a2> [airflow.sdk.definitions.dag] loc=dag.py:1504",
    "2026-12-06T05:36:12.100000Z [info     ] load 1/2 2026-10-08/customers.csv: 20 rows read,"
    " 20 loaded, 0 quarantined in 0.3 s [winback.progress] loc=progress.py:60",
    "2026-12-06T05:36:12.200000Z [info     ] 2026-10-08/customers.csv: read 20, loaded 20,"
    " quarantined 0  [winback.ingest.loader] loc=loader.py:1055",
    "2026-12-06T05:36:33.536930Z [info     ] Task instance state updated"
    " [airflow.api_fastapi.execution_api.routes.task_instances] loc=task_instances.py:485"
    " new_state=success rows_affected=1 ti_id=01a2",
    "2026-12-06T05:36:33.600000Z [info     ] [DAG TEST] end task task_id=load_raw_files"
    " map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563",
    "2026-12-06T05:36:33.700000Z [info     ] [DAG TEST] starting task_id=dbt_customers.stg_x.run"
    " map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501",
    "2026-12-06T05:36:40.000000Z [warning  ] send capacity smtp (email): 9 messages"
    " [winback.progress] loc=progress.py:80",
    "2026-12-06T05:36:38.100000Z [info     ] 05:36:38  5 of 116 OK created sql view model"
    " staging.stg_x ......... [\x1b[32mCREATE VIEW\x1b[0m in 1.86s]"
    " [cosmos.operators._watcher.base] loc=base.py:227",
    "2026-12-06T05:36:38.200000Z [info     ] 05:36:38  6 of 116 START sql view model"
    " staging.stg_y ......... [RUN] [cosmos.operators._watcher.base] loc=base.py:227",
    "2026-12-06T05:36:38.300000Z [info     ] 05:36:38  7 of 116 PASS not_null_stg_x_id"
    " ......... [\x1b[32mPASS\x1b[0m in 0.33s] [cosmos.operators._watcher.base] loc=base.py:227",
    "2026-12-06T05:36:38.400000Z [info     ] 05:36:38  8 of 116 FAIL 2 unique_stg_x_id"
    " ......... [\x1b[31mFAIL 2\x1b[0m in 0.30s] [cosmos.operators._watcher.base] loc=base.py:227",
    "2026-12-06T05:36:41.700000Z [info     ] Task instance state updated"
    " [airflow.api_fastapi.execution_api.routes.task_instances] new_state=failed ti_id=01a3",
    "2026-12-06T05:36:41.800000Z [info     ] [DAG TEST] end task task_id=dbt_customers.stg_x.run"
    " map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563",
]


def test_a_dag_test_run_is_shown_task_by_task_with_the_tasks_own_progress():
    printed, asked = [], []

    def count_tasks(dag_id, run_id):
        asked.append((dag_id, run_id))
        return 62

    watch = progress.DagTestProgress(printed.append, count_tasks, indent="")
    for line in DAG_TEST_LINES:
        watch.feed(line + "\n")
    assert asked == [("winback_daily", "manual__2026-12-06T05:36:07.796400+00:00")]
    assert printed == [
        "    load 1/2 2026-10-08/customers.csv: 20 rows read, 20 loaded, 0 quarantined in 0.3 s",
        f"[ 1/62] {'load_raw_files':<52} {'24 s':>9}",
        "    warning: send capacity smtp (email): 9 messages",
        "    dbt 5/116 OK created sql view model staging.stg_x [CREATE VIEW in 1.86s]",
        "    dbt 8/116 FAIL 2 unique_stg_x_id [FAIL 2 in 0.30s]",
        f"[ 2/62] {'dbt_customers.stg_x.run':<52} {'8.1 s':>9}  FAILED",
    ]
    assert [t.task_id for t in watch.slowest(1)] == ["load_raw_files"]


def test_without_a_task_count_the_tasks_are_still_numbered():
    printed = []
    watch = progress.DagTestProgress(printed.append, lambda *_: None, indent="")
    for line in DAG_TEST_LINES[:6]:
        watch.feed(line)
    assert printed[-1].startswith("[1] load_raw_files")


def test_stage_clock_adds_up_each_stage():
    clock = FakeClock()
    stages = progress.StageClock(clock)
    with stages.stage("set-up"):
        clock.now += 30
    with stages.stage("DAG run"):
        clock.now += 100
    with stages.stage("set-up"):
        clock.now += 5
    assert stages.seconds == {"set-up": 35, "DAG run": 100}
    assert stages.table().splitlines()[-1].split() == ["total", "2", "min", "15", "s"]


# --------------------------------------------------------------------------- live sync

RUN = date(2026, 11, 20)


@pytest.fixture
def outbox(conn):
    """Five customers with an SMS and a popup each in the outbox, on an empty warehouse."""
    conn.execute("drop schema if exists winback cascade")
    conn.execute("drop schema if exists marts cascade")
    conn.execute(
        "create schema marts; create table marts.customer_features (customer_id text primary"
        " key, email text, phone text, is_email_subscribed boolean default true,"
        " is_sms_subscribed boolean default true, is_email_suppressed boolean default false,"
        " is_sms_suppressed boolean default false)"
    )
    sync.ensure_schema(conn)
    for i in range(5):
        phone = f"+1650555{i:04d}"
        conn.execute(
            "insert into marts.customer_features (customer_id, email, phone) values (%s, %s, %s)",
            (f"c{i}", f"user{i}@shop.test", phone),
        )
        for channel, to in (("sms", phone), ("popup", None)):
            key = audiences.idempotency_key("we_miss_you", "s1", f"c{i}", channel)
            payload = {"to": to, "subject": "We miss you", "body": f"Come back, c{i}!"}
            conn.execute(
                "insert into winback.outbox (idempotency_key, run_date, campaign_id, step_id,"
                " customer_id, channel, payload) values (%s, %s, 'we_miss_you', 's1', %s, %s,"
                " %s)",
                (key, RUN, f"c{i}", channel, json.dumps(payload)),
            )
    conn.commit()
    return conn


def test_a_live_sync_logs_its_capacity_first_then_progress_without_customer_data(outbox, caplog):
    caplog.set_level(logging.INFO, logger=progress.log.name)
    box = sandbox.start_sandbox(seed=3)
    try:
        settings = sandbox.SandboxSettings()
        limits = RateLimits(250.0, 4, 5.0)
        providers = {
            "sms": TwilioSms(
                box.url, settings.account_sid, settings.auth_token, "+15005550006", None, limits
            ),
            "popup": PopupWebhook(box.url, None, limits),
        }
        result = sync.run(outbox, RUN, "live", providers, {}, collect_feedback=False)
    finally:
        box.stop()
    assert result.by_provider == {
        "popup_webhook": {"acknowledged": 5},
        "twilio": {"acknowledged": 5},
    }
    lines = [text for _, text in progress_lines(caplog)]
    assert lines[:2] == [
        "send capacity popup_webhook (popup): 5 messages due at 250/s, 4 at once: at least 0.0 s",
        "send capacity twilio (sms): 5 messages due at 250/s, 4 at once: at least 0.0 s",
    ]
    finals = [text for text in lines if ": done, " in text]
    # The channels send at once (asyncio): either may finish first.
    assert sorted(f.split(":")[0] for f in finals) == [
        "sync popup via popup_webhook",
        "sync sms via twilio",
    ]
    assert all("5 of 5" in f and f.endswith("acknowledged 5") for f in finals)
    logged = "\n".join(lines)
    assert "+1650555" not in logged and "@shop.test" not in logged and "Come back" not in logged
