"""A campaign window's report: an HTML page with charts, a PNG of the main chart, and text.

The charts: cumulative reactivation over the window for treatment versus holdout, the
reactivation uplift and the revenue uplift per targeted customer, each with its 95%
interval (overall and per breakdown: channel, stage at entry, step, variant), the funnel
sent → delivered → opened → clicked → purchased, and the global-control panel: every
campaign together against the global control group over the same window. Numbers come
from `winback.campaign_results` and `winback.global_control_results` (run
`measurement.measure_window` and `global_control.measure_program_window` first); the
curves and the funnel from the same cohort definition.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from winback import config
from winback.measurement import global_control
from winback.measurement import windows as measurement
from winback.warehouse import db, tables


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
    # The program against the global control over the same window ([] if not measured).
    program: list[dict] = field(default_factory=list)
    # How the window's messages went out: live, a dry run (nothing sent), or nothing.
    mode: str = "nothing sent"


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
        params = measurement.cohort_params(campaign_id, start, end, measured_on)
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
            mode, funnel = _funnel(cur, campaign_id, start, measured_on)
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
        global_control.load(conn, start, end),
        mode,
    )


def _funnel(cur, campaign_id: str, start: date, measured_on: date) -> tuple[str, dict[str, int]]:
    """(the run's mode, the treatment funnel).

    Only what the providers acknowledged is "sent"; a dry run's intents are "would send",
    never "sent". Delivered, opened and clicked count only the providers' own events
    (`winback.message_events`), per message of the window whenever they arrived; a
    customer counts once.
    """
    sends = {
        r["mode"]: r["n"]
        for r in cur.execute(
            "select l.mode, count(distinct o.customer_id) as n from winback.outbox o"
            " join cohort c using (customer_id)"
            " join winback.send_ledger l on l.idempotency_key = o.idempotency_key"
            " where o.campaign_id = %s and ((l.mode = 'live' and l.status = 'acknowledged')"
            " or (l.mode = 'dry_run' and l.status = 'would_send')) group by 1",
            (campaign_id,),
        ).fetchall()
    }
    if sends.get("live") and sends.get("dry_run"):
        mode = "live (an earlier dry run also recorded intents)"
    elif sends.get("live"):
        mode = "live"
    elif sends.get("dry_run"):
        mode = "dry run: nothing was sent"
    else:
        mode = "nothing sent"
    events = {}
    if db.relation_exists(cur.connection, "winback.message_events"):
        events = {
            r["event_type"]: r["n"]
            for r in cur.execute(
                "select m.event_type, count(distinct m.customer_id) as n"
                " from winback.message_events m"
                " join winback.outbox o on o.idempotency_key = m.idempotency_key"
                " join cohort c on c.customer_id = m.customer_id"
                " and c.assigned_group = 'treatment'"
                " where o.campaign_id = %(campaign)s and o.run_date >= %(start)s"
                " and o.run_date <= %(measured_on)s group by 1",
                {"campaign": campaign_id, "start": start, "measured_on": measured_on},
            ).fetchall()
        }
    purchased = cur.execute(
        "select count(*) as n from cohort where assigned_group = 'treatment' and is_reactivated"
    ).fetchone()["n"]
    first = (
        {"sent": sends.get("live", 0)}
        if sends.get("live") or not sends.get("dry_run")
        else {"would send": sends["dry_run"]}
    )
    return mode, {
        **first,
        "delivered": events.get("delivered", 0),
        "opened": events.get("opened", 0),
        "clicked": events.get("clicked", 0),
        "purchased": purchased,
    }


def _interval_panel(axis, rows: list[dict], column: str, scale: float, title: str) -> None:
    """Point estimates with their 95% intervals, one row per breakdown value."""
    given = bool(rows)
    rows = [r for r in rows if r[column] is not None and r[f"{column}_low"] is not None]
    labels = [f"{r['breakdown']}: {r['breakdown_value']}" for r in rows]
    values = [scale * float(r[column]) for r in rows]
    lows = [scale * (float(r[column]) - float(r[f"{column}_low"])) for r in rows]
    highs = [scale * (float(r[f"{column}_high"]) - float(r[column])) for r in rows]
    positions = list(range(len(rows)))[::-1]
    axis.errorbar(values, positions, xerr=[lows, highs], fmt="o", color="#2ca02c", capsize=4)
    axis.axvline(0, color="black", linewidth=1)
    axis.set_yticks(positions, labels)
    axis.set_title(title)
    axis.grid(alpha=0.3, axis="x")
    if not rows:
        reason = "not measurable: an empty group" if given else "not measured"
        axis.text(0.5, 0.5, reason, transform=axis.transAxes, ha="center")


def _figure(data: ReportData):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        2, 3, figsize=(17, 9.6), gridspec_kw={"width_ratios": [2.2, 1.4, 1.4]}
    )
    (curve_axis, uplift_axis, funnel_axis), (revenue_axis, program_axis, program_revenue) = axes
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
    curve_axis.set_title("Targeted customers reactivated (cumulative %)")
    curve_axis.set_ylabel("% of group")
    curve_axis.legend(loc="upper left")
    curve_axis.grid(alpha=0.3)
    for label in curve_axis.get_xticklabels():
        label.set_rotation(30)

    _interval_panel(
        uplift_axis, data.results, "absolute_uplift", 100, "Reactivation uplift, pp (95% CI)"
    )
    _interval_panel(
        revenue_axis,
        data.results,
        "revenue_per_customer_uplift",
        1,
        "Revenue uplift per targeted customer, EUR (95% CI)",
    )
    program_rows = [r for r in data.program if r["breakdown"] in ("overall", "stage_at_entry")]
    _interval_panel(
        program_axis,
        program_rows,
        "absolute_uplift",
        100,
        "All campaigns vs global control:\nreactivation uplift, pp (95% CI)",
    )
    _interval_panel(
        program_revenue,
        program_rows,
        "revenue_per_customer_uplift",
        1,
        "All campaigns vs global control:\nrevenue per customer, EUR (95% CI)",
    )

    steps, counts = list(data.funnel), list(data.funnel.values())
    funnel_axis.barh(steps[::-1], counts[::-1], color="#9467bd")
    for y, count in enumerate(counts[::-1]):
        funnel_axis.text(count, y, f" {count:,}", va="center")
    funnel_axis.set_title(f"Treatment funnel (customers), {data.mode}")
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
    config.private_folder(folder)
    stem = f"{data.campaign_id}_{data.window_start}_{data.window_end}"
    figure = _figure(data)
    # Rendered once: the same bytes are the chart file and the image inside the page.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    png_path = folder / f"{stem}.png"
    with config.open_private(png_path, "wb") as handle:
        handle.write(buffer.getvalue())
    image = base64.b64encode(buffer.getvalue()).decode()
    html_path = folder / f"{stem}.html"
    with config.open_private(html_path) as handle:
        handle.write(_html(data, image))
    return html_path, png_path


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _interval_text(row: dict, column: str, scale: float = 1, digits: int = 2) -> str:
    low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
    if low is None or high is None:
        return "–"
    return f"{scale * float(low):+.{digits}f} to {scale * float(high):+.{digits}f}"


def _value_text(value, scale: float = 1, digits: int = 2) -> str:
    return "–" if value is None else f"{scale * float(value):+,.{digits}f}"


def _advice(row: dict, held: str = "holdout") -> str:
    """How many more customers a too-small group needs, or nothing."""
    if row.get("holdout_customers_needed"):
        return f"about {row['holdout_customers_needed']:,} more {held} customers needed"
    if row.get("audience_customers_needed"):
        return f"about {row['audience_customers_needed']:,} more customers needed in all"
    return ""


def _table_rows(results: list[dict], held: str) -> str:
    body = []
    for r in results:
        cells = [
            f"{r['breakdown']}: {r['breakdown_value']}",
            f"{r['treatment_reactivated']:,} / {r['treatment_customers']:,}",
            f"{r['holdout_reactivated']:,} / {r['holdout_customers']:,}",
            _percent(r["treatment_rate"]),
            _percent(r["holdout_rate"]),
            _value_text(r["absolute_uplift"], 100),
            _interval_text(r, "absolute_uplift", 100),
            _value_text(r["revenue_per_customer_uplift"]),
            _interval_text(r, "revenue_per_customer_uplift"),
            f"{float(r['incremental_revenue'] or 0):,.2f}",
            f"{float(r['incentive_cost'] or 0):,.2f}",
            f"{float(r['net_value'] or 0):,.2f}",
            _interval_text(r, "net_value"),
            _advice(r, held),
        ]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "".join(body)


def _headers(treated: str, held: str) -> str:
    headers = [
        "breakdown",
        treated,
        held,
        f"{treated} rate",
        f"{held} rate",
        "uplift (pp)",
        "95% CI",
        "revenue uplift per customer",
        "95% CI",
        "incremental revenue",
        "incentive cost",
        "net value",
        "95% CI",
        "sample size",
    ]
    return "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"


def _html(data: ReportData, image_base64: str) -> str:
    title = html.escape(f"{data.campaign_id}: {data.window_start} to {data.window_end}")
    measured_on = data.window_end + timedelta(days=data.attribution_days)
    if data.program:
        program = f"""<h2>All campaigns against the global control group</h2>
<p>Everyone who entered any campaign in the window, counted once: the program (every customer
outside the global control, campaign holdouts included) against the global control, which
receives no winback message at all.</p>
<table>{_headers("program", "control")}
{_table_rows(data.program, "control")}
</table>"""
    else:
        program = "<p>The program was not measured against the global control for this window.</p>"
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
<p>Everyone the campaign targeted: the customers who entered its audience in the window,
whatever their lifecycle stage (see the stage-at-entry rows); reactivated = a completed
order from entry to {measured_on} ({data.attribution_days} days of attribution). The
holdout received nothing. Rate intervals: Newcombe's hybrid score; revenue and net value
intervals: Welch's (see docs/measurement.md).</p>
<img alt="reactivation curves, uplift, revenue, funnel and global control"
 src="data:image/png;base64,{image_base64}">
<table>{_headers("treatment", "holdout")}
{_table_rows(data.results, "holdout")}
</table>
<p>Mode: {html.escape(data.mode)}. Funnel: {
        html.escape(" → ".join(f"{k} {v:,}" for k, v in data.funnel.items()))
    } (delivered, opened and clicked: the providers' own events).</p>
{program}
</body></html>
"""


def _text_rows(results: list[dict], held: str) -> list[str]:
    lines = []
    for r in results:
        ci = (
            f"{100 * r['absolute_uplift_low']:+.2f}..{100 * r['absolute_uplift_high']:+.2f}"
            if r["absolute_uplift_low"] is not None
            else "–"
        )
        uplift_pp = "–" if r["absolute_uplift"] is None else f"{100 * r['absolute_uplift']:+.2f}"
        revenue = (
            f"{float(r['revenue_per_customer_uplift']):+.2f}"
            f" [{float(r['revenue_per_customer_uplift_low']):+.2f},"
            f" {float(r['revenue_per_customer_uplift_high']):+.2f}]"
            if r.get("revenue_per_customer_uplift") is not None
            else "–"
        )
        lines.append(
            f"{(r['breakdown'] + ': ' + r['breakdown_value'])[:25]:<26}"
            f"{r['treatment_reactivated']:>6,}/{r['treatment_customers']:<9,}"
            f"{r['holdout_reactivated']:>5,}/{r['holdout_customers']:<8,}"
            f"{uplift_pp:>11}{ci:>20}{revenue:>28}{float(r['net_value'] or 0):>13,.2f}"
        )
        advice = _advice(r, held)
        if advice:
            lines.append(f"{'':<26}too small to show the planned uplift: {advice}")
    return lines


def _text_header(treated: str, held: str) -> str:
    return (
        f"{'breakdown':<26}{treated:>16}{held:>14}{'uplift pp':>11}{'95% CI':>20}"
        f"{'revenue/customer [95% CI]':>28}{'net value':>13}"
    )


def render_text(data: ReportData) -> str:
    lines = [
        f"{data.campaign_id}  {data.window_start} .. {data.window_end}"
        f"  (+{data.attribution_days} days attribution)",
        "",
        _text_header("treatment", "holdout"),
        *_text_rows(data.results, "holdout"),
        "",
        f"mode: {data.mode}",
        "funnel: " + " → ".join(f"{k} {v:,}" for k, v in data.funnel.items()),
    ]
    if data.program:
        lines += [
            "",
            "all campaigns against the global control group (no winback message at all):",
            _text_header("program", "control"),
            *_text_rows(data.program, "control"),
        ]
    return "\n".join(lines)
