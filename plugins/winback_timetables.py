"""Airflow plugin: registers winback's timetable, so the scheduler can read winback_daily's.

Airflow only deserialises a custom timetable that a plugin declares
(`winback.orchestration.schedule.ShopDayTimetable`: a run per shop day, logical date = the
data day, started after that day ended in the shop's time zone plus the delivery delay).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from winback.orchestration.schedule import ShopDayTimetable


class WinbackTimetablesPlugin(AirflowPlugin):
    name = "winback_timetables"
    timetables = [ShopDayTimetable]
