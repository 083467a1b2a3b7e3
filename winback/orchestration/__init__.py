"""Orchestration: how the daily run is scheduled, ordered, watched and deployed.

- `cosmos_config`: shared Airflow and cosmos configuration, imported by every DAG file;
- `schedule`, `delivery_sensor`: a run per shop day, started after the day's delivery,
  waiting for its manifest in the triggerer;
- `run_order`, `airflow_runs`: days in order, one run holding the warehouse at a time;
- `alerts`, `task_runs`, `progress`: failure alerts, the task history, progress lines;
- `deploy_secrets`: the deployment's secrets checked before anything starts.
"""
