"""A campaign window's report: an HTML page with charts, a PNG of the main chart, and text.

The charts: cumulative reactivation over the window for treatment versus holdout, the
uplift with its 95% interval (overall and per breakdown), and the funnel
sent → delivered → opened → clicked → purchased. Numbers come from
`winback.campaign_results` (run `measurement.measure_window` first); the curves and the
funnel from the same cohort definition.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from winback import config
from winback.measurement import windows as measurement
from winback.warehouse import db, tables

FUNNEL_STEPS = ("sent", "delivered", "opened", "clicked", "purchased")


@dataclass
class ReportData:
    campaign_id: str
    window_start: date
    window_end: date
    attribution_days: int
    results: list[dict]
    curve_days: list[date]
    treatment_curve: list[float]
    holdout_curve: list[float]
    funnel: dict[str, int]


def load(conn: psycopg.Connection, campaign_id: str, start: date, end: date) -> ReportData:
    tables.ensure_schema(conn)  # the funnel reads the send ledger and provider feedback
    with conn.cursor(row_factory=dict_row) as cur:
        results = cur.execute(
            "select * from winback.campaign_results where campaign_id = %s and window_start = %s"
            " and window_end = %s order by breakdown = 'overall' desc, breakdown, breakdown_value",
            (campaign_id, start, end),
        ).fetchall()
        if not results:
            raise LookupError(
                f"no results for {campaign_id} {start}..{end}: measure the window first "
                "(winback_campaign_report DAG or `winback measure`)"
            )
        attribution_days = results[0]["attribution_days"]
        measured_on = end + timedelta(days=attribution_days)
        params = {
            "campaign": campaign_id,
            "start": start,
            "end": end,
            "measured_on": measured_on,
            "inactive": list(measurement.INACTIVE_STAGES),
        }
        with conn.transaction():
            cur.execute("drop table if exists cohort")
            cur.execute(measurement.cohort_sql(conn), params)
            first_orders = cur.execute(
                """
                select c.assigned_group, min(o.ordered_at)::date as came_back_on
                from cohort c
                join raw.orders o on o.customer_id = c.customer_id and o.status = 'completed'
                 and o.ordered_at >= c.entered_on and o.ordered_at < %(measured_on)s::date + 1
                 and o._load_date <= %(measured_on)s
                group by c.customer_id, c.assigned_group
                """,
                params,
            ).fetchall()
            sizes = dict(
                (r["assigned_group"], r["n"])
                for r in cur.execute(
                    "select assigned_group, count(*) as n from cohort group by 1"
                ).fetchall()
            )
            funnel = _funnel(cur, campaign_id, start, measured_on)
            cur.execute("drop table cohort")
    days = [start + timedelta(days=i) for i in range((measured_on - start).days + 1)]
    curves = {}
    for group in ("treatment", "holdout"):
        returns = sorted(r["came_back_on"] for r in first_orders if r["assigned_group"] == group)
        size = sizes.get(group, 0)
        curve, index = [], 0
        for day in days:
            while index < len(returns) and returns[index] <= day:
                index += 1
            curve.append(index / size if size else 0.0)
        curves[group] = curve
    return ReportData(
        campaign_id,
        start,
        end,
        attribution_days,
        results,
        days,
        curves["treatment"],
        curves["holdout"],
        funnel,
    )


def _funnel(cur, campaign_id: str, start: date, measured_on: date) -> dict[str, int]:
    sent = cur.execute(
        "select count(distinct o.customer_id) as n from winback.outbox o"
        " join cohort c using (customer_id)"
        " join winback.send_ledger l on l.idempotency_key = o.idempotency_key"
        " where o.campaign_id = %s and l.status in ('acknowledged', 'sent', 'would_send')",
        (campaign_id,),
    ).fetchone()["n"]
    # Engagement comes from the providers' feedback (winback.message_events, per message of
    # the window, whenever it arrived) and from the shop's own tracking
    # (raw.engagement_events, within the window); a customer counts once.
    provider_events = (
        " union select m.event_type, m.customer_id from winback.message_events m"
        " join winback.outbox o on o.idempotency_key = m.idempotency_key"
        " where o.campaign_id = %(campaign)s and o.run_date >= %(start)s"
        " and o.run_date <= %(measured_on)s"
        if db.relation_exists(cur.connection, "winback.message_events")
        else ""
    )
    events = dict(
        (r["event_type"], r["n"])
        for r in cur.execute(
            "select events.event_type, count(distinct events.customer_id) as n from ("
            " select case e.event_type when 'open' then 'opened' when 'click' then 'clicked'"
            " else e.event_type end as event_type, e.customer_id"
            " from raw.engagement_events e"
            " where e.campaign_id = %(campaign)s and e.occurred_at >= %(start)s"
            " and e.occurred_at < %(measured_on)s::date + 1"
            f"{provider_events}"
            ") events join cohort c on c.customer_id = events.customer_id"
            " and c.assigned_group = 'treatment' group by 1",
            {"campaign": campaign_id, "start": start, "measured_on": measured_on},
        ).fetchall()
    )
    purchased = cur.execute(
        "select count(*) as n from cohort where assigned_group = 'treatment' and is_reactivated"
    ).fetchone()["n"]
    return {
        "sent": sent,
        "delivered": events.get("delivered", 0),
        "opened": events.get("opened", 0),
        "clicked": events.get("clicked", 0),
        "purchased": purchased,
    }


def _figure(data: ReportData):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve_axis, uplift_axis, funnel_axis) = plt.subplots(
        1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [2.2, 1.4, 1.4]}
    )
    curve_axis.step(
        data.curve_days,
        [100 * v for v in data.treatment_curve],
        where="post",
        label="treatment",
        color="#1f77b4",
        linewidth=2,
    )
    curve_axis.step(
        data.curve_days,
        [100 * v for v in data.holdout_curve],
        where="post",
        label="holdout",
        color="#ff7f0e",
        linewidth=2,
    )
    curve_axis.axvline(data.window_end, color="grey", linestyle="--", linewidth=1)
    curve_axis.text(data.window_end, 0, " window end", color="grey", va="bottom")
    curve_axis.set_title("Inactive customers reactivated (cumulative %)")
    curve_axis.set_ylabel("% of group")
    curve_axis.legend(loc="upper left")
    curve_axis.grid(alpha=0.3)
    for label in curve_axis.get_xticklabels():
        label.set_rotation(30)

    rows = [r for r in data.results if r["absolute_uplift"] is not None]
    labels = [f"{r['breakdown']}: {r['breakdown_value']}" for r in rows]
    values = [100 * r["absolute_uplift"] for r in rows]
    lows = [100 * (r["absolute_uplift"] - r["absolute_uplift_low"]) for r in rows]
    highs = [100 * (r["absolute_uplift_high"] - r["absolute_uplift"]) for r in rows]
    positions = list(range(len(rows)))[::-1]
    uplift_axis.errorbar(values, positions, xerr=[lows, highs], fmt="o", color="#2ca02c", capsize=4)
    uplift_axis.axvline(0, color="black", linewidth=1)
    uplift_axis.set_yticks(positions, labels)
    uplift_axis.set_title("Uplift, percentage points (95% CI)")
    uplift_axis.grid(alpha=0.3, axis="x")

    counts = [data.funnel[s] for s in FUNNEL_STEPS]
    funnel_axis.barh(list(FUNNEL_STEPS)[::-1], counts[::-1], color="#9467bd")
    for y, count in enumerate(counts[::-1]):
        funnel_axis.text(count, y, f" {count:,}", va="center")
    funnel_axis.set_title("Treatment funnel (customers)")
    figure.suptitle(
        f"{data.campaign_id}: {data.window_start} to {data.window_end} "
        f"(+{data.attribution_days} days attribution)"
    )
    figure.tight_layout()
    return figure


CAMPAIGN_ID = re.compile(r"^[a-z0-9_]{1,64}$")  # as campaign files allow (campaign_files)


def check_campaign(conn, campaign_id: str) -> None:
    """ValueError unless `campaign_id` is a campaign: a campaign file's id, or one the
    warehouse has audiences for (a campaign since retired). Measuring or reporting a
    typo would store and print results for a campaign that does not exist."""
    from winback.campaigns import campaign_files

    if not CAMPAIGN_ID.match(campaign_id):
        raise ValueError("a campaign id is lower-case letters, digits and _ only")
    known = {c.id for c in campaign_files.load_valid_campaigns()[0]}
    if campaign_id in known:
        return
    present = conn.execute("select to_regclass('winback.campaign_audiences')").fetchone()[0]
    row = (
        present
        and conn.execute(
            "select 1 from winback.campaign_audiences where campaign_id = %s limit 1",
            (campaign_id,),
        ).fetchone()
    )
    if not row:
        raise ValueError(
            f"no campaign {campaign_id!r}: known are {', '.join(sorted(known)) or 'none'}"
        )


def write(data: ReportData, folder: Path | None = None) -> tuple[Path, Path]:
    """Write `<campaign>_<start>_<end>.html` and `.png` inside `folder`; return their paths."""
    if not CAMPAIGN_ID.match(data.campaign_id):
        raise ValueError("a campaign id is lower-case letters, digits and _ only")
    folder = Path(folder or config.REPORTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{data.campaign_id}_{data.window_start}_{data.window_end}"
    figure = _figure(data)
    png_path = folder / f"{stem}.png"
    figure.savefig(png_path, dpi=110)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    image = base64.b64encode(buffer.getvalue()).decode()
    html_path = folder / f"{stem}.html"
    html_path.write_text(_html(data, image))
    return html_path, png_path


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _html(data: ReportData, image_base64: str) -> str:
    headers = [
        "breakdown",
        "treatment",
        "holdout",
        "treatment rate",
        "holdout rate",
        "uplift (pp)",
        "95% CI",
        "incremental revenue",
        "incentive cost",
        "net value",
    ]
    body = []
    for r in data.results:
        ci = (
            f"{100 * r['absolute_uplift_low']:.2f} to {100 * r['absolute_uplift_high']:.2f}"
            if r["absolute_uplift_low"] is not None
            else "–"
        )
        cells = [
            f"{r['breakdown']}: {r['breakdown_value']}",
            f"{r['treatment_reactivated']:,} / {r['treatment_customers']:,}",
            f"{r['holdout_reactivated']:,} / {r['holdout_customers']:,}",
            _percent(r["treatment_rate"]),
            _percent(r["holdout_rate"]),
            "–" if r["absolute_uplift"] is None else f"{100 * r['absolute_uplift']:.2f}",
            ci,
            f"{float(r['incremental_revenue'] or 0):,.2f}",
            f"{float(r['incentive_cost'] or 0):,.2f}",
            f"{float(r['net_value'] or 0):,.2f}",
        ]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    title = html.escape(f"{data.campaign_id}: {data.window_start} to {data.window_end}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>winback · {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-top: 1rem; }}
td, th {{ border: 1px solid #ccc; padding: .35rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>Customers inactive at the window start who entered the campaign; reactivated = a
completed order by {data.window_end + timedelta(days=data.attribution_days)}
({data.attribution_days} days of attribution). The holdout received nothing.</p>
<img alt="reactivation curves, uplift and funnel" src="data:image/png;base64,{image_base64}">
<table><tr>{"".join(f"<th>{h}</th>" for h in headers)}</tr>
{"".join(body)}
</table>
<p>Funnel: {" → ".join(f"{k} {v:,}" for k, v in data.funnel.items())}</p>
</body></html>
"""


def render_text(data: ReportData) -> str:
    lines = [
        f"{data.campaign_id}  {data.window_start} .. {data.window_end}"
        f"  (+{data.attribution_days} days attribution)",
        "",
        f"{'breakdown':<26}{'treatment':>16}{'holdout':>14}{'uplift pp':>11}{'95% CI':>20}"
        f"{'net value':>13}",
    ]
    for r in data.results:
        ci = (
            f"{100 * r['absolute_uplift_low']:+.2f}..{100 * r['absolute_uplift_high']:+.2f}"
            if r["absolute_uplift_low"] is not None
            else "–"
        )
        uplift_pp = "–" if r["absolute_uplift"] is None else f"{100 * r['absolute_uplift']:+.2f}"
        lines.append(
            f"{(r['breakdown'] + ': ' + r['breakdown_value'])[:25]:<26}"
            f"{r['treatment_reactivated']:>6,}/{r['treatment_customers']:<9,}"
            f"{r['holdout_reactivated']:>5,}/{r['holdout_customers']:<8,}"
            f"{uplift_pp:>11}{ci:>20}{float(r['net_value'] or 0):>13,.2f}"
        )
    lines += ["", "funnel: " + " → ".join(f"{k} {v:,}" for k, v in data.funnel.items())]
    return "\n".join(lines)
