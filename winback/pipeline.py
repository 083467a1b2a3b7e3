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


def wait_for_earlier_days(
    ds: str, run_id: str, run_type=None, previous_run: dict | None = None, run_state=None
) -> bool:
    """Claim the warehouse for this run (`winback.orchestration.run_order`).

    True once this run holds it; False while the day before (scheduled, backfill) or the
    run holding the warehouse is unfinished; raises when one of them failed.
    `previous_run` is Airflow's previous run by logical date (`run_id`, `logical_date`,
    `state`), `run_state(run_id)` asks Airflow for any run's state.
    """
    from winback.orchestration import run_order

    previous = None
    if previous_run is not None:
        previous = run_order.PreviousRun(
            run_id=previous_run["run_id"],
            run_date=_day(str(previous_run["logical_date"])[:10]),
            state=str(getattr(previous_run["state"], "value", previous_run["state"])),
        )
    with db.connect() as conn:
        return run_order.claim(conn, _day(ds), run_id, run_type, previous, run_state)


def release_warehouse(ds: str, run_id: str) -> dict:
    """The run finished: give the warehouse to the next day."""
    from winback.orchestration import run_order

    with db.connect() as conn:
        released = run_order.release(conn, run_id)
    return {"run_date": ds, "run_id": run_id, "released": released}


def load_raw_files(
    ds: str, landing_dir: str | None = None, run_type=None, run_id: str | None = None
) -> dict:
    """Load the day's delivery into `raw` (COPY, quarantine, reconciled counts).

    The delivery must match its `_manifest.json` (unless `WINBACK_REQUIRE_MANIFEST` is
    false); the landing may be a folder or an object store (`winback.ingest.landing`).
    In a backfill, or a rerun of a day already loaded, a day without new files is rebuilt
    from the warehouse instead, and says so (`winback.ingest.day_source`); a scheduled
    run without its delivery fails. A refused delivery changes nothing, so the run gives
    the warehouse back (`run_id`) before failing, with one line and no traceback: its day
    stays failed, later days wait. The first task to write, so it also creates the tables
    winback owns (`winback.warehouse.tables`): the dbt models after it join them.
    """
    from winback.ingest import day_source, landing, loader, manifest
    from winback.orchestration import run_order
    from winback.warehouse import tables

    root = landing.landing_root(landing_dir)
    with db.connect() as conn:
        tables.ensure_schema(conn)
    with db.connect() as conn:
        if run_id is not None:
            # A retry after a refused delivery gave the warehouse back: take it again.
            run_order.hold_again(conn, _day(ds), run_id, run_type)
        try:
            return day_source.load_or_rebuild(
                conn,
                root,
                _day(ds),
                getattr(run_type, "value", run_type),
                require_manifest=config.require_manifest(),
            )
        except (loader.ContractError, manifest.DeliveryRefused) as refusal:
            if run_id is not None:
                conn.rollback()
                run_order.release(conn, run_id)
            # The shop's delivery to fix: one clear line in the task log and a failed task,
            # but no traceback (Airflow logs a SystemExit without one).
            log.error("load refused: %s", refusal)
            raise SystemExit(1) from None


def delivery_status(ds: str, landing_dir: str | None = None) -> dict:
    """What the day's landing folder holds now, and whether its manifest marks it complete.

    The first task of the daily run (`wait_for_delivery`) asks this before it defers.
    `already_loaded` says the day was loaded before (a rerun), from `raw.load_batches`.
    """
    from winback.ingest import landing

    status = landing.delivery_status(landing.landing_root(landing_dir), _day(ds)).as_dict()
    with db.connect() as conn:
        loaded = (
            conn.execute("select to_regclass('raw.load_batches') is not null").fetchone()[0]
            and conn.execute(
                "select exists (select from raw.load_batches where load_date = %s)", (_day(ds),)
            ).fetchone()[0]
        )
    return {**status, "already_loaded": bool(loaded)}


def check_raw_inputs(ds: str) -> dict:
    """Quality gate on the day's raw data; raises (failing the task) when it does not hold."""
    from winback import quality
    from winback.ingest import day_source

    with db.connect() as conn:
        delivered = bool(day_source.loaded_batches(conn, _day(ds)))
    return quality.check_raw_inputs(_day(ds), delivered=delivered)


def check_scores(ds: str) -> dict:
    from winback import quality

    return quality.check_scores(_day(ds))


def check_audiences(
    ds: str, max_growth: float | None = None, growth_floor: int | None = None
) -> dict:
    from winback import quality

    return quality.check_audiences(
        _day(ds),
        max_growth or quality.DEFAULT_MAX_AUDIENCE_GROWTH,
        quality.DEFAULT_AUDIENCE_GROWTH_FLOOR if growth_floor is None else growth_floor,
    )


def score_customers(ds: str) -> dict:
    """Fit BG/NBD and Gamma-Gamma and write `winback.customer_scores`.

    Settings come from `include/scoring.yaml` (or `$WINBACK_SCORING_CONFIG`).
    """
    from winback.scoring import scores as scoring

    with db.connect() as conn:
        result = scoring.score_customers(conn, _day(ds), scoring.load_settings())
        conn.commit()
    summary = scoring.result_summary(result)
    alert = scoring.fit_alert(result)
    if alert:
        from winback.orchestration import alerts

        summary["alert"] = alerts.warn(f"model fit for {ds}", alert)
    return summary


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
    run_id: str | None = None,
) -> dict:
    """Every valid campaign's audience, eligibility filters, journeys and outbox rows.

    Journeys advance only while this run holds the warehouse (`run_id`; without one, while
    no run holds it): two overlapping runs never both advance them.

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
    from winback.orchestration import run_order

    with db.connect() as conn, conn.transaction():
        # The claim row stays locked until the audiences are committed.
        run_order.require_claim(conn, run_id)
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
    from winback.measurement import global_control
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
        # The program against the global control, once per distinct window closing today.
        for start, end, attribution_days in sorted(
            {(w.window_start, w.window_end, w.attribution_days) for w in windows}
        ):
            results = global_control.measure_program_window(conn, start, end, attribution_days)
            measured.append(measurement.summary_dict(results))
        conn.commit()
    return {"measured": measured}


def report_window(
    campaign_id: str, window_start: str, window_end: str, attribution_days: int
) -> dict:
    """Measure one window (and the program against the global control over it) and write
    its HTML report and PNG chart."""
    from winback.measurement import global_control, report
    from winback.measurement import windows as measurement

    start, end = _day(window_start), _day(window_end)
    with db.connect() as conn:
        measurement.measure_window(conn, campaign_id, start, end, attribution_days)
        global_control.measure_program_window(conn, start, end, attribution_days)
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
