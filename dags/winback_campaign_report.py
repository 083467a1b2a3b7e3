"""
### winback_campaign_report

Measure one campaign window against its holdout and write its report (HTML page and PNG
chart under the reports folder). Trigger it by hand with the window's params, or use it to
re-measure a window after a backfill:

    airflow dags trigger winback_campaign_report \\
        --conf '{"campaign_id": "we_miss_you", "window_start": "2026-09-01",
                 "window_end": "2026-09-30", "attribution_days": 14}'

Measurement reads the lifecycle history as of the window start and only orders loaded by
the measurement date, so it gives the same numbers whenever it runs. It never sends.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from winback import pipeline
from winback.orchestration import cosmos_config as orch


@dag(
    dag_id="winback_campaign_report",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["winback", "measurement"],
    default_args=orch.DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "campaign_id": Param("we_miss_you", type="string", pattern="^[a-z0-9_]+$"),
        "window_start": Param("2026-10-01", type="string", format="date"),
        "window_end": Param("2026-10-31", type="string", format="date"),
        "attribution_days": Param(14, type="integer", minimum=0, maximum=365),
    },
)
def winback_campaign_report():
    @task
    def measure_and_report(params: dict | None = None) -> dict:
        """Write winback.campaign_results for the window, then the HTML report and PNG."""
        return pipeline.report_window(
            params["campaign_id"],
            params["window_start"],
            params["window_end"],
            int(params["attribution_days"]),
        )

    measure_and_report()


winback_campaign_report()
