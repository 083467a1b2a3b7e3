"""Orchestration: shared Airflow and cosmos configuration, alerts, task history."""
