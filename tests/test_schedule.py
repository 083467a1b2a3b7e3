"""winback_daily's timetable: one run per shop day, logical date = that day, in any time zone."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pendulum
import pytest
from airflow.timetables.base import DataInterval, TimeRestriction

from winback import config
from winback.orchestration.schedule import ShopDayTimetable, schedule_table

README = config.PROJECT_ROOT / "README.md"
DELAY = timedelta(hours=1, minutes=30)


@pytest.mark.parametrize(
    ("zone", "day", "starts_utc"),
    [
        ("UTC", date(2026, 11, 20), "2026-11-21T01:30:00+00:00"),
        ("Europe/Berlin", date(2026, 1, 15), "2026-01-16T00:30:00+00:00"),
        # Summer time: the run for July 1st starts on July 1st in UTC. ds must still say
        # July 1st, which no clock-based timetable gives east of Greenwich.
        ("Europe/Berlin", date(2026, 7, 1), "2026-07-01T23:30:00+00:00"),
        ("America/New_York", date(2026, 7, 1), "2026-07-02T05:30:00+00:00"),
        ("Pacific/Auckland", date(2026, 7, 1), "2026-07-01T13:30:00+00:00"),
    ],
)
def test_the_run_for_a_day_starts_after_it_ended_where_the_shop_is(zone, day, starts_utc):
    timetable = ShopDayTimetable(zone, DELAY)
    info = timetable.info(day)
    assert info.run_after.isoformat() == starts_utc
    assert info.logical_date.strftime("%Y-%m-%d") == day.isoformat()  # what `ds` renders
    assert info.logical_date == pendulum.datetime(day.year, day.month, day.day, tz="UTC")
    # Just before that start, the day is not yet due; at it, it is.
    assert timetable.latest_day(info.run_after - timedelta(seconds=1)) == day - timedelta(days=1)
    assert timetable.latest_day(info.run_after) == day


def test_the_scheduler_creates_the_last_due_day_then_one_day_after_another():
    timetable = ShopDayTimetable("Europe/Berlin", DELAY)
    now = pendulum.now("UTC")
    restriction = TimeRestriction(pendulum.datetime(2026, 1, 1, tz="UTC"), None, catchup=False)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert first.logical_date.date() == timetable.latest_day(now)
    assert first.run_after <= now
    following = timetable.next_dagrun_info(
        last_automated_data_interval=first.data_interval, restriction=restriction
    )
    assert following.logical_date.date() == first.logical_date.date() + timedelta(days=1)
    assert following.run_after > now


def test_a_backfill_gets_every_day_of_its_window_as_its_logical_date():
    timetable = ShopDayTimetable("Europe/Berlin", DELAY)
    restriction = TimeRestriction(
        pendulum.datetime(2026, 10, 9, tz="UTC"), pendulum.datetime(2026, 10, 11, tz="UTC"), True
    )
    days, info = [], None
    while info := timetable.next_dagrun_info(
        last_automated_data_interval=info and info.data_interval, restriction=restriction
    ):
        days.append(info.logical_date.date().isoformat())
    assert days == ["2026-10-09", "2026-10-10", "2026-10-11"]


def test_a_manual_run_of_a_date_is_that_day():
    timetable = ShopDayTimetable("Europe/Berlin", DELAY)
    interval = timetable.infer_manual_data_interval(
        run_after=pendulum.datetime(2026, 11, 20, tz="UTC")
    )
    assert interval == DataInterval(
        pendulum.datetime(2026, 11, 20, tz="UTC"), pendulum.datetime(2026, 11, 21, tz="UTC")
    )
    later = timetable.infer_manual_data_interval(
        run_after=pendulum.datetime(2026, 11, 21, 9, 15, tz="UTC")
    )
    assert later.start.date() == date(2026, 11, 20)  # the last day that ended and is due


def test_the_timetable_survives_serialisation_and_refuses_a_day_long_delay():
    timetable = ShopDayTimetable("America/New_York", timedelta(hours=2, minutes=15))
    again = ShopDayTimetable.deserialize(timetable.serialize())
    assert again.serialize() == timetable.serialize()
    assert again.summary == "daily 02:15 America/New_York"
    with pytest.raises(ValueError, match="under a day"):
        ShopDayTimetable("UTC", timedelta(days=1)).validate()


def test_the_readme_table_is_what_the_timetable_does():
    text = README.read_text()
    rows = schedule_table(
        [date(2026, 1, 15), date(2026, 7, 1), date(2026, 11, 20)],
        ShopDayTimetable("Europe/Berlin", DELAY),
    )
    for row in rows:
        shop_time = row["run starts at (shop time)"]
        utc = row["run starts at (UTC)"].removesuffix(" UTC")
        day = row["logical date (ds)"]
        cells = [re.escape(shop_time), re.escape(utc), day, f"`landing/{day}/`", day]
        pattern = r"\| " + r" \| ".join(cells) + r" \|"
        assert re.search(pattern, text), f"README's schedule table lacks: {shop_time} {utc} {day}"


def test_durations_are_read_strictly():
    assert config.parse_duration("1h30m") == DELAY
    assert config.parse_duration("45s") == timedelta(seconds=45)
    with pytest.raises(ValueError, match="not a duration"):
        config.parse_duration("90 minutes")


def test_the_late_delivery_alert_names_the_delivery_the_wait_and_what_was_found():
    from winback.orchestration.delivery_sensor import describe_wait, missing_message

    assert describe_wait(21_600) == "6 h 00 min" and describe_wait(75) == "1 min 15 s"
    message = missing_message(
        {
            "delivery": {"day": "2026-11-20"},
            "waited_seconds": 21_600.4,
            "deadline": "2026-11-21T07:30:00+00:00",
            "found": "landing/2026-11-20 holds orders.csv; no _manifest.json",
        }
    )
    assert message.startswith("delivery 2026-11-20 not complete at its deadline: waited 6 h")
    assert "found: landing/2026-11-20 holds orders.csv; no _manifest.json" in message
    assert "\n" not in message
