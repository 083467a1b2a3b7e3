"""When winback_daily runs: once per shop day, after that day has ended where the shop is.

`ShopDayTimetable` gives each run a logical date that *is* the data day D: Airflow keeps it
as D 00:00 UTC, so `ds`, the landing folder `landing/D/`, dbt's `as_of_date` and the
windows measured that day all read D, whatever the shop's time zone. The run for D starts
at midnight after D in the shop's time zone plus the delivery delay (default 01:30 shop
time), when the shop's export for D can exist; the first task then waits for its manifest.

Why not a built-in timetable: a `CronTriggerTimetable` run's logical date is its start
(D + 1), and with `interval=` its data interval starts at the shop's midnight, which in
UTC is the day before D for any shop east of Greenwich (and only in winter, or only in
summer, for a fixed offset), so `ds` would name the wrong folder. This one is registered
with Airflow by the plugin in `plugins/winback_timetables.py`.

A backfill or `dags test` of D gets the same logical date; a manual run without a date
gets the last day whose run time has passed.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pendulum
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable
from pendulum import DateTime

from winback import config


class ShopDayTimetable(Timetable):
    """A run per shop day D, logical date D, started `delay` after D ended in `timezone`."""

    periodic = True
    can_be_scheduled = True
    run_ordering = ("data_interval_end", "logical_date")

    def __init__(self, timezone: str = "UTC", delay: timedelta = timedelta(hours=1, minutes=30)):
        self._timezone_name = str(timezone)
        self._timezone = pendulum.timezone(self._timezone_name)
        self._delay = delay
        self.description = (
            f"every day at {_clock(delay)} {self._timezone_name}, "
            "for the shop day that just ended there"
        )

    # ------------------------------------------------------------------ serialisation

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ShopDayTimetable:
        return cls(data["timezone"], timedelta(seconds=data["delay_seconds"]))

    def serialize(self) -> dict[str, Any]:
        return {"timezone": self._timezone_name, "delay_seconds": self._delay.total_seconds()}

    @property
    def summary(self) -> str:
        return f"daily {_clock(self._delay)} {self._timezone_name}"

    def validate(self) -> None:
        if not timedelta(0) <= self._delay < timedelta(days=1):
            raise ValueError(f"the delivery delay must be under a day, not {self._delay}")

    # ------------------------------------------------------------------ the calendar

    def run_after(self, day: date) -> DateTime:
        """When the run for shop day `day` starts: next midnight in the shop's zone + delay."""
        following = day + timedelta(days=1)
        midnight = pendulum.datetime(
            following.year, following.month, following.day, tz=self._timezone
        )
        return (midnight + self._delay).in_timezone("UTC")

    def latest_day(self, at: DateTime) -> date:
        """The last shop day whose run may have started by `at`."""
        local = pendulum.instance(at).in_timezone(self._timezone) - self._delay
        return local.date() - timedelta(days=1)

    def data_interval(self, day: date) -> DataInterval:
        """The run's interval: D 00:00 UTC to D + 1, so the logical date (its start) is D."""
        start = pendulum.datetime(day.year, day.month, day.day, tz="UTC")
        return DataInterval(start, start.add(days=1))

    def info(self, day: date) -> DagRunInfo:
        return DagRunInfo(run_after=self.run_after(day), data_interval=self.data_interval(day))

    # ------------------------------------------------------------------ Airflow's questions

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        at = pendulum.instance(run_after).in_timezone("UTC")
        if (at.hour, at.minute, at.second, at.microsecond) == (0, 0, 0, 0):
            return self.data_interval(at.date())  # `-l D` / `dags test ... D`: day D
        return self.data_interval(self.latest_day(at))

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        if last_automated_data_interval is not None:
            day = last_automated_data_interval.start.date() + timedelta(days=1)
        elif restriction.earliest is not None:
            earliest = pendulum.instance(restriction.earliest).in_timezone("UTC")
            day = earliest.date()
            if earliest != pendulum.datetime(day.year, day.month, day.day, tz="UTC"):
                day += timedelta(days=1)
        else:
            day = self.latest_day(pendulum.now("UTC"))
        if not restriction.catchup:
            day = max(day, self.latest_day(pendulum.now("UTC")))
        if restriction.latest is not None and self.data_interval(day).start > restriction.latest:
            return None
        return self.info(day)


def _clock(delay: timedelta) -> str:
    minutes = int(delay.total_seconds() // 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def daily_schedule() -> ShopDayTimetable:
    """winback_daily's timetable, from `WINBACK_SHOP_TIMEZONE` and `WINBACK_DELIVERY_DELAY`."""
    return ShopDayTimetable(config.shop_timezone(), config.delivery_delay())


def schedule_table(days: list[date], timetable: ShopDayTimetable | None = None) -> list[dict]:
    """Rows of "run starts at / loads folder / measures windows closing on", for the docs."""
    timetable = timetable or daily_schedule()
    rows = []
    for day in days:
        starts = timetable.run_after(day)
        rows.append(
            {
                "run starts at (shop time)": starts.in_timezone(timetable._timezone).strftime(
                    "%Y-%m-%d %H:%M %Z"
                ),
                "run starts at (UTC)": starts.strftime("%Y-%m-%d %H:%M UTC"),
                "logical date (ds)": day.isoformat(),
                "loads folder": f"landing/{day.isoformat()}/",
                "measures windows closing on": day.isoformat(),
            }
        )
    return rows
