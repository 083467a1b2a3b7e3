"""Local set-up: the embedded PostgreSQL, a local Airflow, dbt outside Airflow, free ports."""
