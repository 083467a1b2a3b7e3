"""The daily run's first task: wait for the day's complete delivery without holding a worker.

`DeliverySensor` (task `wait_for_delivery`) asks `pipeline.delivery_status` once. A
delivery marked complete (its `_manifest.json` written, every file it names there at full
size) lets the run go on at once. Otherwise the sensor defers to `DeliveryTrigger`, which
runs in Airflow's triggerer and looks again every `WINBACK_DELIVERY_POKE_INTERVAL` until
the marker lands or `WINBACK_DELIVERY_WAIT` has passed since the sensor started. At the
deadline the task fails without a retry (waiting again would not make the shop deliver;
an error while looking, say a flaky object store, is retried as usual) with
`DeliveryMissing`, whose one line names the delivery, the time waited and what was found;
the failure callback sends it as the alert. Nothing was loaded; clearing the run once the
delivery is complete loads it, and `max_active_runs=1` keeps the next day's run waiting
behind this one while it waits.

A backfill never waits (its days' files are often archived; the load decides what a day
without files means), and neither does a rerun of a day already loaded.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from winback import config, pipeline

log = logging.getLogger(__name__)

# The trigger's own deadline ends the wait; Airflow's is a backstop in case it never fires.
TRIGGER_TIMEOUT_MARGIN = timedelta(minutes=5)


class DeliveryMissing(AirflowFailException):
    """The day's delivery was not complete at the deadline: fail now, do not retry."""


def describe_wait(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def missing_message(event: dict) -> str:
    """The alert's line: which delivery, how long we waited, what was there."""
    status = event["delivery"]
    return (
        f"delivery {status['day']} not complete at its deadline: waited "
        f"{describe_wait(event['waited_seconds'])} (until {event['deadline']}); "
        f"found: {event['found']}. Nothing was loaded; once the delivery is complete "
        f"(its _manifest.json written last), clear this run to load it."
    )


class DeliveryTrigger(BaseTrigger):
    """Polls the landing for the day's marker until it is complete or the deadline passes."""

    def __init__(
        self,
        day: str,
        deadline: str,
        started_at: str,
        poke_seconds: float,
        landing: str | None = None,
        conn_id: str | None = None,
    ):
        super().__init__()
        self.day = day
        self.deadline = deadline
        self.started_at = started_at
        self.poke_seconds = poke_seconds
        self.landing = landing
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "day": self.day,
                "deadline": self.deadline,
                "started_at": self.started_at,
                "poke_seconds": self.poke_seconds,
                "landing": self.landing,
                "conn_id": self.conn_id,
            },
        )

    def _status(self):
        from winback.ingest import landing

        root = landing.landing_root(self.landing, self.conn_id)
        return landing.delivery_status(root, datetime.fromisoformat(self.day).date())

    async def run(self):
        deadline = datetime.fromisoformat(self.deadline)
        started = datetime.fromisoformat(self.started_at)
        while True:
            # Listing an object store is blocking I/O: keep it off the triggerer's loop.
            status = await asyncio.to_thread(self._status)
            now = datetime.now(UTC)
            event = {
                "delivery": status.as_dict(),
                "found": status.found(),
                "waited_seconds": (now - started).total_seconds(),
                "deadline": self.deadline,
            }
            if status.complete:
                yield TriggerEvent({**event, "status": "complete"})
                return
            if now >= deadline:
                yield TriggerEvent({**event, "status": "deadline"})
                return
            remaining = (deadline - now).total_seconds()
            await asyncio.sleep(max(0.1, min(self.poke_seconds, remaining)))


class DeliverySensor(BaseSensorOperator):
    """Wait, deferred, for the logical date's complete delivery; fail with an alert at last."""

    def __init__(
        self,
        *,
        wait: timedelta | None = None,
        poke_interval: timedelta | None = None,
        **kwargs,
    ):
        self.wait = wait if wait is not None else config.delivery_wait()
        poke = poke_interval if poke_interval is not None else config.delivery_poke_interval()
        super().__init__(
            poke_interval=poke.total_seconds(), timeout=self.wait.total_seconds(), **kwargs
        )

    def poke(self, context) -> bool:
        return bool(pipeline.delivery_status(context["ds"])["complete"])

    def execute(self, context) -> dict:
        ds = context["ds"]
        status = pipeline.delivery_status(ds)
        run_type = getattr(context["dag_run"].run_type, "value", context["dag_run"].run_type)
        if status["complete"]:
            log.info("delivery %s is complete: %s", ds, ", ".join(status["files"]))
            return {"status": "complete", "waited_seconds": 0, "delivery": status}
        if run_type == "backfill" or status["already_loaded"]:
            reason = "a backfill" if run_type == "backfill" else "a rerun of a day loaded before"
            log.info("delivery %s not complete; %s does not wait for it", ds, reason)
            return {"status": f"not waited: {reason}", "waited_seconds": 0, "delivery": status}
        started = datetime.now(UTC)
        deadline = started + self.wait
        log.info(
            "delivery %s not complete yet (%s); waiting in the triggerer until %s",
            ds,
            status.get("folder"),
            deadline.isoformat(timespec="seconds"),
        )
        self.defer(
            trigger=DeliveryTrigger(
                day=ds,
                deadline=deadline.isoformat(),
                started_at=started.isoformat(),
                poke_seconds=self.poke_interval,
                landing=config.LANDING_LOCATION,
                conn_id=config.landing_conn_id(),
            ),
            method_name="execute_complete",
            timeout=self.wait + TRIGGER_TIMEOUT_MARGIN,
        )

    def execute_complete(self, context, event: dict) -> dict:
        if event["status"] == "complete":
            log.info(
                "delivery %s complete after waiting %s",
                context["ds"],
                describe_wait(event["waited_seconds"]),
            )
            return event
        raise DeliveryMissing(missing_message(event))
