"""The daily pipeline's Python stages, one function per DAG task.

Each takes the run's logical date as `YYYY-MM-DD` and returns a small JSON-able dict
(what Airflow keeps as the task's XCom). They hold no Airflow imports, so the CLI and the
tests run them directly.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import date
from pathlib import Path

from winback import config
from winback.warehouse import db

log = logging.getLogger(__name__)


def _day(ds: str) -> date:
    return date.fromisoformat(ds)


def load_raw_files(ds: str, landing_dir: str | None = None) -> dict:
    """Load the day's landing files into `raw` (COPY, quarantine, reconciled counts).

    The first task of a run, so it also creates the tables winback owns
    (`winback.warehouse.tables`): the dbt models after it join winback.customer_scores.
    """
    from winback.ingest import loader
    from winback.warehouse import tables

    with db.connect() as conn:
        tables.ensure_schema(conn)
    with db.connect() as conn:
        try:
            report = loader.load_day(conn, Path(landing_dir or config.LANDING_DIR), _day(ds))
        except loader.ContractError as refusal:
            # A refused file is the shop's to fix: one clear line in the task log and a
            # failed task, but no traceback (Airflow logs a SystemExit without one).
            log.error("load refused: %s", refusal)
            raise SystemExit(1) from None
    return report.as_dict()


def check_raw_inputs(ds: str) -> dict:
    """Quality gate on the day's raw data; raises (failing the task) when it does not hold."""
    from winback import quality

    return quality.check_raw_inputs(_day(ds))


def check_scores(ds: str) -> dict:
    from winback import quality

    return quality.check_scores(_day(ds))


def check_audiences(ds: str, max_growth: float | None = None) -> dict:
    from winback import quality

    return quality.check_audiences(_day(ds), max_growth or quality.DEFAULT_MAX_AUDIENCE_GROWTH)


def score_customers(ds: str) -> dict:
    """Fit BG/NBD and Gamma-Gamma and write `winback.customer_scores`."""
    from winback.scoring import scores as scoring

    with db.connect() as conn:
        result = scoring.score_customers(conn, _day(ds), scoring.ScoringSettings())
        conn.commit()
    return scoring.result_summary(result)


def send_decision(ds: str, mode: str = "dry_run", allow_past_sends: bool = False, run_type=None):
    """The run's real send mode (`winback.delivery.send_policy`), the same for every task of a run.

    `run_type` is the Airflow run's type (scheduled, manual, backfill...): with the
    logical date it decides whether a `live` request is honoured.
    """
    from winback.delivery import send_policy

    return send_policy.decide(
        mode, _day(ds), getattr(run_type, "value", run_type), allow_past_sends=allow_past_sends
    )


def build_audiences(
    ds: str,
    campaigns_dir: str | None = None,
    mode: str = "dry_run",
    allow_past_sends: bool = False,
    run_type=None,
) -> dict:
    """Every valid campaign's audience, eligibility filters, journeys and outbox rows.

    An invalid campaign file, or a campaign reading a column the warehouse's features
    table lacks, is refused: nothing is enrolled or sent for it (its journeys already
    under way wait), the reason is logged as an error and returned under `refused`, and
    the other campaigns run as usual. `mode` is the requested send mode;
    the run's real one (`send_decision`) decides whether coupon and link codes are live
    (which needs `WINBACK_COUPON_SECRET`).
    """
    from winback.campaigns import audiences
    from winback.campaigns import campaign_files as campaigns

    folder = Path(campaigns_dir) if campaigns_dir else config.CAMPAIGNS_DIR
    valid, refused = campaigns.load_valid_campaigns(folder)
    for name, reason in refused.items():
        log.error("campaign file %s refused, nothing is sent for it:\n%s", name, reason)
    with db.connect() as conn:
        valid, unreadable = audiences.refuse_unreadable(conn, valid)
        for reason in unreadable.values():
            log.error("%s", reason)
        refused.update(unreadable)
        decision = send_decision(ds, mode, allow_past_sends, run_type)
        results = audiences.build_audiences(
            conn, valid, _day(ds), send_mode=decision.mode, refused=refused
        )
    return {"campaigns": [asdict(r) for r in results], "refused": refused}


def sync_outbox(
    ds: str, mode: str = "dry_run", allow_past_sends: bool = False, run_type=None
) -> dict:
    """Send the day's outbox, or record what would be sent; a past day never sends."""
    from winback.delivery import sync

    day = _day(ds)
    decision = send_decision(ds, mode, allow_past_sends, run_type)
    log.info("send mode %s (requested %s): %s", decision.mode, decision.requested, decision.reason)
    with db.connect() as conn:
        result = sync.run(conn, day, decision.mode)
    return {**asdict(result), "send_decision": asdict(decision)}


def collect_feedback(ds: str) -> dict:
    """Read the providers' events (delivered, opened, clicked, bounced, unsubscribed, STOP).

    They feed the measurement funnel and the suppression list that the next sync honours.
    Without a configured events feed (connection `winback_events`) there is nothing to read.
    """
    from winback.delivery import feedback

    with db.connect() as conn:
        return feedback.collect(conn, _day(ds))


def measure_closed_windows(ds: str) -> dict:
    """Measure every campaign window whose attribution period ended on this day."""
    from winback.campaigns import campaign_files as campaigns
    from winback.measurement import windows as measurement

    # An invalid campaign file stops its own sends, not the measurement of the others.
    valid, _refused = campaigns.load_valid_campaigns()
    windows = measurement.campaign_windows_closing_on(valid, _day(ds))
    measured = []
    with db.connect() as conn:
        for window in windows:
            results = measurement.measure_window(
                conn,
                window.campaign_id,
                window.window_start,
                window.window_end,
                window.attribution_days,
            )
            measured.append(measurement.summary_dict(results))
        conn.commit()
    return {"measured": measured}


def report_window(
    campaign_id: str, window_start: str, window_end: str, attribution_days: int
) -> dict:
    """Measure one window and write its HTML report and PNG chart."""
    from winback.measurement import report
    from winback.measurement import windows as measurement

    start, end = _day(window_start), _day(window_end)
    with db.connect() as conn:
        measurement.measure_window(conn, campaign_id, start, end, attribution_days)
        conn.commit()
        data = report.load(conn, campaign_id, start, end)
    html_path, png_path = report.write(data)
    text = report.render_text(data)
    for line in text.splitlines():
        log.info("%s", line)
    return {"html": str(html_path), "png": str(png_path), "text": text}


def summarize(ds: str) -> dict:
    """Log the run's human-readable summary."""
    from winback import summary

    with db.connect() as conn:
        collected = summary.collect(conn, _day(ds))
    text = summary.render(collected)
    for line in text.splitlines():
        log.info("%s", line)
    return {"summary": text}
