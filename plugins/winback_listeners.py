"""Airflow plugin: records every winback task run in `winback.task_runs`."""

from __future__ import annotations

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from winback.orchestration import task_runs


class TaskRunRecorder:
    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        task_runs.task_started(task_instance)

    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance):
        task_runs.task_finished(task_instance, "success")

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error):
        task_runs.task_finished(task_instance, "failed")


class WinbackPlugin(AirflowPlugin):
    name = "winback"
    listeners = [TaskRunRecorder()]
