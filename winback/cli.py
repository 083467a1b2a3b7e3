"""`winback`: the command-line face of the pipeline.

Every stage the DAG runs can be run by hand for a date, which is how data engineers debug
a day and how the demo and tests drive the pipeline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import date
from pathlib import Path

from winback import config

DEMO_DATE = date(2026, 11, 20)
DEMO_CUSTOMERS = 20_000
DEMO_SEED = 42

log = logging.getLogger("winback")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


# --------------------------------------------------------------------------- commands


def cmd_db_url(args: argparse.Namespace) -> int:
    from winback.warehouse import db

    print(db.database_url())
    return 0


def cmd_db_up(args: argparse.Namespace) -> int:
    from winback.local import dbt_runner
    from winback.warehouse import db

    url = db.database_url()
    db.ensure_airflow_database()
    profile = dbt_runner.write_local_profile(url)
    print(f"warehouse ready: {db.redacted(url)}")
    print(f"plain dbt in {profile.parent} uses it ({profile.name} written)")
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    if config.configured_database_url():
        print(f"{config.DATABASE_URL_ENV} is set: the server is yours, winback leaves it alone")
        return 0
    from winback.local import embedded_pg

    print("stopped" if embedded_pg.stop() else "not running")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from winback.simulation import simulator

    settings = simulator.SimulationConfig(
        customers=args.customers,
        seed=args.seed,
        as_of=args.date,
        dirty_rate=args.dirty_rate,
    )
    frames = simulator.simulate_shop(settings)
    folder = Path(args.landing) / args.date.isoformat()
    simulator.write_landing_files(frames, folder, fmt=args.format)
    counts = {name: len(frame) for name, frame in frames.items()}
    print(json.dumps({"folder": str(folder), "rows": counts}, indent=2))
    return 0


def cmd_import_cdnow(args: argparse.Namespace) -> int:
    from winback.simulation import cdnow, simulator

    frames = cdnow.cdnow_frames(sample=args.sample)
    folder = Path(args.landing) / args.date.isoformat()
    simulator.write_landing_files(frames, folder, fmt="csv")
    print(json.dumps({"folder": str(folder), "rows": {k: len(v) for k, v in frames.items()}}))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from winback.ingest import landing, loader, manifest
    from winback.warehouse import db

    root = landing.landing_root(args.landing)
    with db.connect() as conn:
        try:
            report = loader.load_day(
                conn, root, args.date, require_manifest=not args.without_manifest
            )
        except (loader.ContractError, manifest.DeliveryRefused) as refusal:
            # The shop's file to fix, not a bug: one line, no traceback, nothing loaded.
            print(f"winback load: refused: {refusal}", file=sys.stderr)
            return 2
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def cmd_ensure_schema(args: argparse.Namespace) -> int:
    from winback.warehouse import db, tables

    with db.connect() as conn:
        tables.ensure_schema(conn)
    print(f"schema {tables.SCHEMA}: {len(tables.TABLES)} tables in place")
    return 0


def cmd_deliver(args: argparse.Namespace) -> int:
    """Write `_manifest.json` for a day's files: the marker that says the delivery is complete."""
    from winback.ingest import landing, loader, manifest

    folder = landing.delivery_folder(landing.landing_root(args.landing), args.date)
    try:
        if landing.list_files(folder) is None:
            raise manifest.DeliveryRefused(f"no folder {landing.display(folder)}: nothing to mark")
        loader.discover_files(folder)  # only contract files may be delivered
        written = manifest.write_manifest(folder, args.date)
    except (manifest.DeliveryRefused, loader.ContractError) as refusal:
        print(f"not delivered: {refusal}", file=sys.stderr)
        return 1
    for entry in written.files:
        print(f"  {entry.name}: {entry.rows:,} rows, {entry.bytes:,} bytes, sha256 {entry.sha256}")
    print(f"delivery {args.date} complete: {landing.display(folder / manifest.MANIFEST_NAME)}")
    return 0


def cmd_dbt(args: argparse.Namespace) -> int:
    from winback.local import dbt_runner

    return dbt_runner.run_dbt(args.dbt_args)


def cmd_dbt_manifest(args: argparse.Namespace) -> int:
    from winback.local import dbt_runner

    dbt_runner.write_manifest()
    return 0


def cmd_airflow(args: argparse.Namespace) -> int:
    from winback.local import airflow_env

    return airflow_env.run_airflow(args.airflow_args, check=False).returncode


def cmd_airflow_setup(args: argparse.Namespace) -> int:
    from winback.local import airflow_env, dbt_runner

    dbt_runner.write_manifest()
    airflow_env.migrate_metadata_db()
    print(f"Airflow metadata database ready; AIRFLOW_HOME={airflow_env.airflow_home()}")
    return 0


def cmd_airflow_ui(args: argparse.Namespace) -> int:
    from winback.local import airflow_ui

    return airflow_ui.serve(port=args.port, triggerer=not args.no_triggerer)


def cmd_pipeline_stage(args: argparse.Namespace) -> int:
    from winback import pipeline

    options = {
        name: getattr(args, name) for name in ("mode", "allow_past_sends") if hasattr(args, name)
    }
    result = getattr(pipeline, args.stage_function)(args.date.isoformat(), **options)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_check_secrets(args: argparse.Namespace) -> int:
    from winback.orchestration import deploy_secrets

    found = deploy_secrets.problems()
    for line in found:
        print(f"winback check-secrets: {line}", file=sys.stderr)
    if found:
        print(
            'generate each with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
            " (the Fernet key with Fernet.generate_key(), see deploy/.env.example)",
            file=sys.stderr,
        )
        return 1
    print("winback check-secrets: every secret is set, long enough and not a placeholder")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from winback import summary
    from winback.warehouse import db

    with db.connect() as conn:
        print(summary.render(summary.collect(conn, args.date)))
    return 0


def _measure_checked(conn, args: argparse.Namespace):
    """Measure the window of `args`, or None after printing why its arguments are refused;
    says so when the stored result it replaces had another attribution period."""
    from winback.measurement import windows as measurement

    window = (args.campaign, args.date_from, args.date_to)
    try:
        measurement.check_arguments(conn, *window, args.attribution_days)
    except ValueError as refused:
        print(f"winback {args.command}: {refused}", file=sys.stderr)
        return None
    before = measurement.stored_attribution_days(conn, "winback.campaign_results", *window)
    results = measurement.measure_window(conn, *window, args.attribution_days)
    if before is not None and before != args.attribution_days:
        print(
            f"replaced the stored result of {args.campaign} {args.date_from}..{args.date_to},"
            f" measured with {before} days of attribution, by one with {args.attribution_days}",
            file=sys.stderr,
        )
    conn.commit()
    return results


def _known_campaign(conn, campaign_id: str, command: str) -> bool:
    from winback.measurement import report

    try:
        report.check_campaign(conn, campaign_id)
    except ValueError as error:
        print(f"winback {command}: {error}", file=sys.stderr)
        return False
    return True


def cmd_measure(args: argparse.Namespace) -> int:
    from winback.measurement import windows as measurement
    from winback.warehouse import db

    with db.connect() as conn:
        if not _known_campaign(conn, args.campaign, "measure"):
            return 2
        results = _measure_checked(conn, args)
    if results is None:
        return 2
    print(json.dumps(measurement.summary_dict(results), indent=2, default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from winback.measurement import global_control, report
    from winback.measurement import windows as measurement
    from winback.warehouse import db

    with db.connect() as conn:
        if not _known_campaign(conn, args.campaign, "report"):
            return 2
        if args.measure:  # as the winback_campaign_report DAG does: the campaign, the program
            if _measure_checked(conn, args) is None:
                return 2
            global_control.measure_program_window(
                conn, args.date_from, args.date_to, args.attribution_days
            )
            conn.commit()
        try:
            measurement.check_arguments(
                conn, args.campaign, args.date_from, args.date_to, args.attribution_days
            )
            data = report.load(conn, args.campaign, args.date_from, args.date_to)
        except (ValueError, LookupError) as refused:
            print(f"winback report: {refused}", file=sys.stderr)
            return 2
    print(report.render_text(data))
    if args.html:
        html_path, png_path = report.write(data, Path(args.html))
        print(f"\nreport: {html_path}\nchart:  {png_path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from winback.campaigns import campaign_files as campaigns
    from winback.campaigns import personalization
    from winback.local import airflow_env, airflow_session, dbt_runner
    from winback.measurement import windows as measurement
    from winback.orchestration import progress, run_order
    from winback.simulation import return_path, sandbox, simulator
    from winback.warehouse import db

    clock = progress.StageClock()
    load_at_start = os.getloadavg()
    landing = Path(args.landing)
    with clock.stage("set-up"):
        print(f"[1/5] warehouse: {db.redacted(db.database_url())}", flush=True)
        settings = simulator.SimulationConfig(
            customers=args.customers, seed=DEMO_SEED, as_of=args.date, dirty_rate=0.002
        )
        windows = measurement.campaign_windows_closing_on(campaigns.load_campaigns(), args.date)
        # One cut: the earliest window closing today (the demo's campaigns share their start).
        window = min(windows, key=lambda w: w.window_start, default=None)
        # dbt's manifest and Airflow's metadata database do not depend on the shop: both
        # are prepared in child processes while this one simulates it.
        background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="demo-set-up")
        preparing = [
            background.submit(dbt_runner.write_manifest),
            background.submit(airflow_env.migrate_metadata_db),
        ]
        background.shutdown(wait=False)
        with db.connect() as conn:
            # The demo replays its days from the start: a claim its own interrupted run
            # left (`winback.orchestration.run_order`) must not hold them back.
            if freed := run_order.release_manual_claim(conn):
                print(f"      freed the warehouse from an interrupted run of {freed.run_date}")
        os.environ.setdefault(personalization.COUPON_SECRET_ENV, _demo_coupon_secret())
        os.environ.setdefault("WINBACK_SERVE_LOG", str(config.STATE_DIR / "demo-serve.log"))
    # The providers are the local sandbox (real HTTP and SMTP, a few injected faults), and
    # its connections declare what it takes (sandbox.LOCAL_LIMITS), as a user declares what
    # their provider allows. The demo's two simulated days are replayed as if each were
    # today: live sends with allow_past_sends, which a real backfill never sets. Feedback
    # comes back as signed webhooks to `winback serve`, late, sometimes twice or out of
    # order, a few first with a broken signature, as real providers send it.
    try:
        with return_path.sandbox_with_return_path(
            fault_rate=0.05,
            seed=DEMO_SEED,
            in_process=True,
            webhook_delay=0.5,
            webhook_duplicate_rate=0.05,
            webhook_shuffle=True,
            webhook_bad_signature_rate=0.02,
        ) as providers:
            limits = ", ".join(
                f"{name} {v['requests_per_second']:g}/s x{v['max_concurrency']:g}"
                for name in sandbox.LOCAL_LIMITS
                for v in [providers.declared_limits(name)]
            )
            print(f"      providers: the sandbox at {providers.url} (5% injected faults)")
            print(f"      its connections declare: {limits}")
            print(f"      return path: winback serve at {os.environ['WINBACK_PUBLIC_URL']}")
            # Both days' `airflow dags test` run in one process, which starts loading
            # Airflow now, beside the shop's simulation (it has the providers' connections).
            with airflow_session.AirflowSession() as airflow:
                return _demo_days(
                    args, landing, settings, windows, window, providers, clock, preparing, airflow
                )
    finally:
        _report_demo_timings(clock, load_at_start, args.customers)


def _report_demo_timings(clock, load_at_start, customers: int) -> None:
    """Print the wall-clock per stage and keep it in `.winback/demo-timings.json`."""
    from datetime import UTC, datetime

    print("\nwall-clock per stage:")
    for line in clock.table().splitlines():
        print(f"  {line}")
    load_at_end = os.getloadavg()
    print(
        f"  load average at start {load_at_start[0]:.2f}, at end {load_at_end[0]:.2f}"
        f" (1 min) on {os.cpu_count()} CPUs"
    )
    record = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "customers": customers,
        "cpus": os.cpu_count(),
        "load_average_start": load_at_start,
        "load_average_end": load_at_end,
        "stages": clock.seconds,
        "total_seconds": clock.total,
    }
    path = config.STATE_DIR / "demo-timings.json"
    path.write_text(json.dumps(record, indent=2))


def _demo_days(
    args, landing, settings, windows, window, providers, clock, preparing, airflow
) -> int:
    from winback import summary
    from winback.measurement import report
    from winback.simulation import demo, simulator
    from winback.warehouse import db

    def set_up_done() -> None:
        for future in preparing:
            future.result()  # raises what dbt parse or the Airflow migration raised

    truths: dict[str, dict[str, float]] = {}
    if window is None:
        with clock.stage("set-up"):
            print(f"[2/5] no campaign window closes on {args.date}: one day, nothing to measure")
            folder = landing / args.date.isoformat()
            if not _delivered(folder):
                simulator.write_landing_files(simulator.simulate_shop(settings), folder)
            set_up_done()
        print(f"[3/5] shop data after it, up to {args.date}: {folder}")
        with clock.stage(f"DAG run {args.date}"):
            if not _run_daily_dag(airflow, args.date, "demo-airflow.log"):
                return 1
    else:
        log_names = {window.window_start: "demo-airflow-window-start.log"}

        def run_daily(day: date) -> bool:
            with clock.stage("set-up"):
                set_up_done()  # the shop was simulated meanwhile; dbt and Airflow are ready now
            with clock.stage(f"DAG run {day}"):
                if not _run_daily_dag(airflow, day, log_names.get(day, "demo-airflow.log")):
                    return False
                # The next day's journeys branch on what came back: wait for it to land.
                _report_webhooks(providers)
            return True

        played = demo.play_campaign_window(
            settings, window, landing, run_daily, db.connect, print, windows, clock.stage
        )
        if played is None:
            return 1
        truths = played
    with clock.stage("summary"):
        print("[4/5] summary")
        stats = providers.stats()
        print(
            f"      the sandbox served {stats['requests']:,} requests and accepted"
            f" {stats['messages']:,} messages and {stats['member_writes']:,} audience member"
            " writes"
        )
        with db.connect() as conn:
            print(summary.render(summary.collect(conn, args.date), truths))
    with clock.stage("reports"), db.connect() as conn:
        print("[5/5] campaign reports")
        for window in windows:
            data = report.load(conn, window.campaign_id, window.window_start, window.window_end)
            html_path, png_path = report.write(data)
            print(f"  {window.campaign_id}: {html_path} (chart {png_path})")
        if not windows:
            print("  (no window measured)")
    return 0


DEMO_RUN_CONF = {"send_mode": "live", "allow_past_sends": True}


def _report_webhooks(providers) -> None:
    """Wait for the sandbox's webhooks of the last run to land; say what came back."""
    from winback.warehouse import db

    stats = providers.wait_for_webhooks()
    with db.connect() as conn:
        rows = conn.execute(
            "select event_type, count(*) from winback.message_events "
            "where provider in ('twilio', 'sendgrid', 'mailchimp', 'winback') "
            "group by 1 order by 2 desc"
        ).fetchall()
    counts = ", ".join(f"{n:,} {kind}" for kind, n in rows) or "none yet"
    print(
        f"      feedback as signed webhooks: {stats['sent']:,} accepted by winback serve,"
        f" {stats['refused']:,} forged copies refused; stored so far: {counts}"
    )


def _delivered(folder: Path) -> bool:
    """A delivery the demo wrote before, complete with its manifest (written last)."""
    from winback.ingest import manifest

    return (folder / manifest.MANIFEST_NAME).exists()


def _demo_coupon_secret() -> str:
    """A coupon-signing secret for this checkout's demo, generated once and kept private.

    Live sends need one; a deployment sets WINBACK_COUPON_SECRET itself. The same secret on
    every demo run keeps coupon and link codes stable across reruns.
    """
    import secrets

    path = config.STATE_DIR / "demo_coupon_secret"
    if not path.exists():
        config.private_folder(path.parent)
        with config.open_private(path, "x") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def _run_daily_dag(airflow, day: date, log_name: str) -> bool:
    """`airflow dags test winback_daily` for one demo day, sending live to the sandbox, in
    the demo's Airflow session (`winback.local.airflow_session`).

    Each task is printed as it finishes (n of N, name, seconds), with the progress the
    tasks report themselves; everything goes to the log file. False, with the log's tail,
    on failure.
    """
    import time

    from winback.orchestration import progress

    log_path = config.STATE_DIR / log_name
    print(f"      airflow dags test winback_daily {day} (full log: {log_path})", flush=True)
    watch = progress.DagTestProgress(lambda text: print(text, flush=True), _count_task_instances)
    started = time.monotonic()
    with open(log_path, "w") as handle:

        def on_line(line: str) -> None:
            handle.write(line)
            watch.feed(line)

        returncode = airflow.run(
            ["dags", "test", "winback_daily", day.isoformat(), "-c", json.dumps(DEMO_RUN_CONF)],
            on_line,
        )
    failed = _failed_tasks(log_path)
    if returncode != 0 or failed:
        tail = log_path.read_text(errors="replace").splitlines()[-60:]
        print("\n".join(tail), file=sys.stderr)
        print(f"winback_daily {day} failed {failed}; full log in {log_path}", file=sys.stderr)
        return False
    slowest = ", ".join(f"{t.task_id} {progress.duration(t.seconds)}" for t in watch.slowest())
    print(
        f"      winback_daily {day}: {len(watch.done)} tasks in"
        f" {progress.duration(time.monotonic() - started)}; slowest: {slowest}",
        flush=True,
    )
    return True


def _count_task_instances(dag_id: str, run_id: str) -> int | None:
    """How many tasks a run has, from Airflow's metadata database (None if not there)."""
    import re

    import psycopg

    from winback.warehouse import db

    url = re.sub(r"^postgresql\+\w+://", "postgresql://", db.airflow_database_url())
    if not url.startswith("postgresql://"):
        return None
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute(
            "select count(*) from task_instance where dag_id = %s and run_id = %s",
            (dag_id, run_id),
        ).fetchone()
    return row[0] or None


def cmd_sync(args: argparse.Namespace) -> int:
    from winback import pipeline

    result = pipeline.sync_outbox(
        args.date.isoformat(), mode=args.mode, allow_past_sends=args.allow_past_sends
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from winback.simulation import sandbox

    handle = sandbox.start_sandbox(
        fault_rate=args.fault_rate, seed=args.seed, rate_limit=args.rate_limit, port=args.port
    )
    print(f"provider sandbox on {handle.url} (SMTP on port {handle.smtp_port})")
    print("point winback at it with:")
    for name, value in handle.connections_env().items():
        print(f"export {name}='{value}'", flush=True)
    sandbox.serve_forever(handle)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from winback.delivery.returnpath import app

    app.serve(host=args.host, port=args.port)
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from winback.delivery import feedback
    from winback.warehouse import db

    with db.connect() as conn:
        result = feedback.collect(conn, args.date, url=args.url)
        conn.commit()
    print(json.dumps(result, indent=2, default=str))
    return 0


def _failed_tasks(log_path: Path) -> list[str]:
    """`airflow dags test` can exit 0 with failed tasks; read the final states to be sure."""
    failed = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "Marking task as FAILED" in line or "state=failed" in line.replace(" ", ""):
            failed.append(line.strip()[:200])
    return failed


# --------------------------------------------------------------------------- parser


def cmd_campaigns_validate(args: argparse.Namespace) -> int:
    from winback.campaigns import campaign_files as campaigns

    folder = Path(args.folder)
    problems, warnings = campaigns.validate_folder(folder)
    for warning in warnings:
        print(f"warning: {warning}")
    for problem in problems:
        print(f"error: {problem}")
    count = len(list(folder.glob("*.y*ml")))
    if problems:
        print(f"{len(problems)} problem(s) in {folder}")
        return 1
    print(f"{count} campaign file(s) valid in {folder}")
    return 0


def cmd_campaigns_counts(args: argparse.Namespace) -> int:
    from winback.campaigns import audiences
    from winback.warehouse import db

    with db.connect() as conn:
        rows = audiences.campaign_counts(conn, args.date)
    print(
        f"{'campaign':<24} {'audience':>8} {'treat':>6} {'hold':>6} {'entered':>7} "
        f"{'in journey':>10} {'outbox today':>12} {'outbox total':>12}"
    )
    for r in rows:
        print(
            f"{r['campaign_id']:<24} {r['audience']:>8} {r['treatment']:>6} {r['holdout']:>6} "
            f"{r['entered']:>7} {r['in_journey']:>10} {r['outbox_today']:>12} "
            f"{r['outbox_total']:>12}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="winback", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("db-url", help="print the warehouse URL").set_defaults(func=cmd_db_url)
    sub.add_parser("db-up", help="start the embedded PostgreSQL if needed").set_defaults(
        func=cmd_db_up
    )
    sub.add_parser("db-stop", help="stop the embedded PostgreSQL").set_defaults(func=cmd_db_stop)

    landing_default = str(config.LANDING_DIR)

    simulate = sub.add_parser("simulate", help="write a simulated shop's files for a date")
    simulate.add_argument("--customers", type=int, default=DEMO_CUSTOMERS)
    simulate.add_argument("--seed", type=int, default=DEMO_SEED)
    simulate.add_argument("--date", type=_date, default=DEMO_DATE)
    simulate.add_argument("--dirty-rate", type=float, default=0.0)
    simulate.add_argument("--format", choices=["csv", "parquet"], default="csv")
    simulate.add_argument("--landing", default=landing_default)
    simulate.set_defaults(func=cmd_simulate)

    cdnow = sub.add_parser("import-cdnow", help="write the CDNOW transaction log as shop files")
    cdnow.add_argument("--date", type=_date, default=date(1998, 6, 30))
    cdnow.add_argument("--sample", action="store_true", help="the 2,357-customer sample")
    cdnow.add_argument("--landing", default=landing_default)
    cdnow.set_defaults(func=cmd_import_cdnow)

    load = sub.add_parser("load", help="load a date's delivery into the raw schema")
    load.add_argument("--date", type=_date, required=True)
    load.add_argument("--landing", default=config.LANDING_LOCATION, help="folder or s3:// URL")
    load.add_argument(
        "--without-manifest",
        action="store_true",
        help="load a hand-made folder that has no _manifest.json (a manifest present is checked)",
    )
    load.set_defaults(func=cmd_load)

    sub.add_parser(
        "ensure-schema", help="create the tables winback owns (schema winback) if missing"
    ).set_defaults(func=cmd_ensure_schema)

    deliver = sub.add_parser(
        "deliver", help="mark a day's files as a complete delivery: write its _manifest.json"
    )
    deliver.add_argument("--date", type=_date, required=True)
    deliver.add_argument("--landing", default=config.LANDING_LOCATION, help="folder or s3:// URL")
    deliver.set_defaults(func=cmd_deliver)

    dbt = sub.add_parser("dbt", help="run dbt on the warehouse (arguments passed through)")
    dbt.add_argument("dbt_args", nargs=argparse.REMAINDER)
    dbt.set_defaults(func=cmd_dbt)
    sub.add_parser("dbt-manifest", help="write dbt's manifest for cosmos").set_defaults(
        func=cmd_dbt_manifest
    )

    airflow = sub.add_parser("airflow", help="run the airflow CLI in winback's environment")
    airflow.add_argument("airflow_args", nargs=argparse.REMAINDER)
    airflow.set_defaults(func=cmd_airflow)
    sub.add_parser(
        "airflow-setup", help="write the dbt manifest and migrate Airflow's metadata database"
    ).set_defaults(func=cmd_airflow_setup)

    ui = sub.add_parser(
        "airflow-ui", help="run a local Airflow (api-server, scheduler, dag-processor) with its UI"
    )
    ui.add_argument(
        "--port", type=int, default=None, help="default: $WINBACK_AIRFLOW_PORT, else 8080"
    )
    ui.add_argument(
        "--no-triggerer", action="store_true", help="no triggerer (deferred tasks then wait)"
    )
    ui.set_defaults(func=cmd_airflow_ui)

    for name, function, text in [
        ("score", "score_customers", "fit the churn/value models and score every customer"),
        ("audiences", "build_audiences", "build campaign audiences and the outbox"),
    ]:
        stage = sub.add_parser(name, help=text)
        stage.add_argument("--date", type=_date, required=True)
        if name == "audiences":
            # Live codes need a strong WINBACK_COUPON_SECRET; a dry run's are demo codes,
            # which a live sync refuses to send.
            stage.add_argument("--mode", choices=["dry_run", "live"], default="dry_run")
            stage.add_argument(
                "--allow-past-sends", action="store_true", help="let a past date build live codes"
            )
        stage.set_defaults(func=cmd_pipeline_stage, stage_function=function)

    sub.add_parser(
        "check-secrets", help="refuse placeholder or short deployment secrets (Compose's init)"
    ).set_defaults(func=cmd_check_secrets)

    sync = sub.add_parser("sync", help="sync the outbox to the providers (dry run by default)")
    sync.add_argument("--date", type=_date, required=True)
    sync.add_argument("--mode", choices=["dry_run", "live"], default="dry_run")
    sync.add_argument(
        "--allow-past-sends", action="store_true", help="let a past date send live (careful)"
    )
    sync.set_defaults(func=cmd_sync)

    sandbox = sub.add_parser("sandbox", help="run the local provider sandbox until Ctrl-C")
    sandbox.add_argument("--fault-rate", type=float, default=0.0)
    sandbox.add_argument("--seed", type=int, default=0)
    sandbox.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    sandbox.add_argument("--port", type=int, default=0)
    sandbox.set_defaults(func=cmd_sandbox)

    serve = sub.add_parser(
        "serve", help="serve tracked links, unsubscribe pages and provider webhooks"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)
    serve.set_defaults(func=cmd_serve)

    feedback = sub.add_parser("feedback", help="collect provider events and suppressions")
    feedback.add_argument("--date", type=_date, required=True)
    feedback.add_argument("--url", help="events endpoint (default: connection winback_events)")
    feedback.set_defaults(func=cmd_feedback)

    campaigns_command = sub.add_parser("campaigns", help="check and inspect campaign files")
    campaigns_sub = campaigns_command.add_subparsers(dest="campaigns_command", required=True)
    validate = campaigns_sub.add_parser(
        "validate", help="check every campaign file; exit 1 listing every problem"
    )
    validate.add_argument("--folder", default=str(config.CAMPAIGNS_DIR))
    validate.set_defaults(func=cmd_campaigns_validate)
    counts = campaigns_sub.add_parser(
        "counts", help="each campaign's audience and outbox counts for a run date"
    )
    counts.add_argument("--date", type=_date, required=True)
    counts.set_defaults(func=cmd_campaigns_counts)

    for name, function, text in [
        ("measure", cmd_measure, "measure a campaign window against its holdout"),
        ("report", cmd_report, "print a campaign window's results (and write the HTML report)"),
    ]:
        command = sub.add_parser(name, help=text)
        command.add_argument("campaign")
        command.add_argument("--from", dest="date_from", type=_date, required=True)
        command.add_argument("--to", dest="date_to", type=_date, required=True)
        command.add_argument("--attribution-days", type=int, default=14)
        if name == "report":
            command.add_argument("--measure", action="store_true", help="measure first")
            command.add_argument("--html", metavar="FOLDER", help="also write HTML and PNG")
        command.set_defaults(func=function)

    summary = sub.add_parser("summary", help="print a run's summary")
    summary.add_argument("--date", type=_date, default=DEMO_DATE)
    summary.set_defaults(func=cmd_summary)

    demo = sub.add_parser("demo", help="simulate a shop and run winback_daily on it")
    demo.add_argument("--customers", type=int, default=DEMO_CUSTOMERS)
    demo.add_argument("--date", type=_date, default=DEMO_DATE)
    demo.add_argument("--landing", default=landing_default)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: the sandbox's and providers' URLs, not news.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    from winback.local.embedded_pg import EmbeddedPostgresError

    try:
        return int(args.func(args) or 0)
    except EmbeddedPostgresError as error:  # says what to do; a traceback would bury it
        print(f"winback: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
