"""
### winback_daily

Once per shop day D, after D has ended in the shop's time zone plus the delivery delay
(`WINBACK_SHOP_TIMEZONE`, `WINBACK_DELIVERY_DELAY`; logical date = D): wait, deferred, for
the day's delivery to be marked complete by its `_manifest.json` (failing with an alert at
the `WINBACK_DELIVERY_WAIT` deadline) → load the shop's files → dbt (staging, RFM,
lifecycle) → input quality gate → score churn and value with lifetimes → score gate → dbt
customer features → campaign audiences → audience gate → provider sync → provider
feedback → measurement of the campaign windows that closed today → summary. A failed gate
stops the run before anything is sent.

Each task calls one function of `winback.pipeline`; this file only wires them. The sync
is a dry run unless the `send_mode` param (default: the `WINBACK_SEND_MODE` environment
variable) says `live`, and even then a backfill or a run of a past day only records what it
would send, unless the `allow_past_sends` param is set (`winback.delivery.send_policy`).

Days run in order, one at a time: `wait_for_earlier_days` claims the warehouse for the
run once the day before has finished and no other run (a backfill day, the scheduled
run) holds it, and `release_warehouse` gives it back; a failed day keeps it, so no later
day advances journeys past it (`winback.orchestration.run_order`). Backfill with
`--max-active-runs 1`. In a backfill, a day whose files were already loaded or are gone
is rebuilt from the warehouse (`winback.ingest.day_source`).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, chain, dag, task

from winback import pipeline, quality
from winback.delivery import send_policy
from winback.orchestration import airflow_runs, schedule
from winback.orchestration import cosmos_config as orch
from winback.orchestration.delivery_sensor import DeliverySensor

FEATURE_MODELS = ["customer_features+"]


@dag(
    dag_id="winback_daily",
    schedule=schedule.daily_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["winback", "daily"],
    default_args=orch.DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "send_mode": Param(
            send_policy.default_send_mode(),
            enum=list(send_policy.SEND_MODES),
            description="live sends; dry_run only records what would be sent "
            "(default: WINBACK_SEND_MODE, else dry_run)",
        ),
        "allow_past_sends": Param(
            False,
            type="boolean",
            description="let a backfill or a run of a past day send live (normally never)",
        ),
        "max_audience_growth": Param(
            quality.DEFAULT_MAX_AUDIENCE_GROWTH,
            type="number",
            minimum=1,
            description="fail the audience gate when an audience grows past this multiple "
            "of its previous run (and past audience_growth_floor)",
        ),
        "audience_growth_floor": Param(
            quality.DEFAULT_AUDIENCE_GROWTH_FLOOR,
            type="integer",
            minimum=0,
            description="an audience of at most this many customers never fails the growth "
            "check (1 to 5 customers is growth, not a broken rule)",
        ),
    },
)
def winback_daily():
    wait_for_delivery = DeliverySensor(
        task_id="wait_for_delivery",
        doc_md="Wait in the triggerer for landing/<ds>/_manifest.json; fail with an alert at "
        "the deadline. A backfill or a rerun of a loaded day does not wait.",
    )

    @task.sensor(
        mode="reschedule",
        poke_interval=orch.RUN_ORDER_POKE_SECONDS,
        timeout=orch.RUN_ORDER_TIMEOUT_SECONDS,
    )
    def wait_for_earlier_days(ds: str | None = None, dag_run=None, ti=None) -> bool:
        """Days in order, one at a time: claim the warehouse once the day before has finished
        and no other run holds it; refuse when either failed."""
        return pipeline.wait_for_earlier_days(
            ds,
            dag_run.run_id,
            run_type=dag_run.run_type,
            previous_run=airflow_runs.previous_run(ti),
            run_state=airflow_runs.run_state_lookup(ti, dag_run.dag_id),
        )

    @task(outlets=[orch.warehouse_asset("raw", "orders"), orch.warehouse_asset("raw", "customers")])
    def load_raw_files(ds: str | None = None, dag_run=None) -> dict:
        """Load the logical date's landing files (broken rows go to raw.quarantine); a
        backfill day without new files is rebuilt from the warehouse."""
        return pipeline.load_raw_files(ds, run_type=dag_run.run_type, run_id=dag_run.run_id)

    transform = orch.dbt_task_group("dbt_customers", exclude=FEATURE_MODELS)

    @task(retries=0)
    def check_raw_inputs(ds: str | None = None) -> dict:
        """Gate: rows present, the day's amounts >= 0, no future dates."""
        return pipeline.check_raw_inputs(ds)

    @task(outlets=[orch.warehouse_asset("winback", "customer_scores")])
    def score_customers(ds: str | None = None) -> dict:
        """BG/NBD P(alive) and expected purchases, Gamma-Gamma value, CLV."""
        return pipeline.score_customers(ds)

    @task(retries=0)
    def check_scores(ds: str | None = None) -> dict:
        """Gate: p_alive within [0, 1], nothing missing, every customer scored."""
        return pipeline.check_scores(ds)

    features = orch.dbt_task_group("dbt_features", select=FEATURE_MODELS)

    @task(outlets=[orch.warehouse_asset("winback", "outbox")])
    def build_audiences(ds: str | None = None, params: dict | None = None, dag_run=None) -> dict:
        """Audience rules, eligibility (consent, contact, suppression, caps), holdout, journeys."""
        return pipeline.build_audiences(
            ds,
            mode=params["send_mode"],
            allow_past_sends=params["allow_past_sends"],
            run_type=dag_run.run_type,
            run_id=dag_run.run_id,
        )

    @task(retries=0)
    def check_audiences(ds: str | None = None, params: dict | None = None) -> dict:
        """Gate: one row per customer, consent for every message, no sudden growth."""
        return pipeline.check_audiences(
            ds,
            max_growth=params["max_audience_growth"],
            growth_floor=params["audience_growth_floor"],
        )

    @task(pool=orch.WAREHOUSE_WRITES_POOL)
    def sync_outbox(ds: str | None = None, params: dict | None = None, dag_run=None) -> dict:
        """Send (or record what would be sent) exactly once per step; a past day never sends."""
        return pipeline.sync_outbox(
            ds,
            mode=params["send_mode"],
            allow_past_sends=params["allow_past_sends"],
            run_type=dag_run.run_type,
        )

    @task
    def collect_feedback(ds: str | None = None) -> dict:
        """Provider events: the funnel after sent, and unsubscribes for the suppression list."""
        return pipeline.collect_feedback(ds)

    @task
    def measure_closed_windows(ds: str | None = None) -> dict:
        """Measure the campaign windows whose attribution period ended today."""
        return pipeline.measure_closed_windows(ds)

    @task(retries=0)
    def summarize(ds: str | None = None) -> dict:
        """Print the run's summary: rows loaded, segments, audiences, messages."""
        return pipeline.summarize(ds)

    @task
    def release_warehouse(ds: str | None = None, dag_run=None) -> dict:
        """The day is done: the next day may claim the warehouse (a failed day keeps it)."""
        return pipeline.release_warehouse(ds, dag_run.run_id)

    chain(
        wait_for_delivery,
        wait_for_earlier_days(),
        load_raw_files(),
        transform,
        check_raw_inputs(),
        score_customers(),
        check_scores(),
        features,
        build_audiences(),
        check_audiences(),
        sync_outbox(),
        collect_feedback(),
        measure_closed_windows(),
        summarize(),
        release_warehouse(),
    )


winback_daily()
