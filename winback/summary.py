"""The short, human-readable summary of one daily run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import psycopg
from psycopg.rows import dict_row

from winback.warehouse import db, relations


@dataclass
class RunSummary:
    run_date: date
    loaded: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # read, loaded, quar.
    quarantine_rules: list[tuple[str, str, int]] = field(default_factory=list)
    segments: list[tuple[str, int]] = field(default_factory=list)
    stages: list[tuple[str, int]] = field(default_factory=list)
    scored_customers: int = 0
    mean_p_alive: float | None = None
    # One dict per campaign (audiences.campaign_counts): audience, treatment, holdout,
    # entered, in_journey, outbox_today, email_today, sms_today, popup_today, outbox_total.
    campaigns: list[dict] = field(default_factory=list)
    # (campaign, channel, mode, status, messages) of the run's send ledger rows.
    ledger: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    # Windows whose attribution period ended on the run date, overall figures.
    measured_windows: list[dict] = field(default_factory=list)
    # --- what a real shop's day needs said (issue 25)
    # Orders loaded for the day: (customer orders, guest orders, completed revenue, of it
    # from guest orders).
    orders_loaded: tuple[int, int, float, float] | None = None
    # The day's fits: model -> {params, is_degenerate, degenerate_reason, fallback,
    # churn_band_source, message}; and customers per churn band.
    fits: dict[str, dict] = field(default_factory=dict)
    churn_bands: list[tuple[str, int]] = field(default_factory=list)
    # (threshold, customers past it) for the lifecycle's at_risk, inactive, lost.
    lifecycle_thresholds: list[tuple[str, int]] = field(default_factory=list)
    # (campaign, why it enrolled nobody today) for every campaign not active today.
    inactive_campaigns: list[tuple[str, str]] = field(default_factory=list)
    # The program against the global control group, for the same windows.
    global_control_windows: list[dict] = field(default_factory=list)


def collect(conn: psycopg.Connection, run_date: date) -> RunSummary:
    summary = RunSummary(run_date)
    if db.relation_exists(conn, "raw.load_batches"):
        for table, read, loaded, quarantined in conn.execute(
            "select table_name, rows_read, rows_loaded, rows_quarantined from raw.load_batches "
            "where load_date = %s order by table_name",
            (run_date,),
        ):
            summary.loaded[table] = (read, loaded, quarantined)
        summary.quarantine_rules = conn.execute(
            "select table_name, rule, count(*) from raw.quarantine where load_date = %s "
            "group by 1, 2 order by 3 desc, 1, 2",
            (run_date,),
        ).fetchall()
    if db.relation_exists(conn, relations.CUSTOMER_RFM):
        summary.segments = conn.execute(
            f"select rfm_segment, count(*) from {relations.CUSTOMER_RFM} group by 1 order by 2 desc"
        ).fetchall()
    if db.relation_exists(conn, "raw.orders"):
        summary.orders_loaded = tuple(
            conn.execute(
                "select count(*) filter (where customer_id is not null),"
                " count(*) filter (where customer_id is null),"
                " coalesce(sum(total) filter (where status = 'completed'), 0)::float8,"
                " coalesce(sum(total) filter (where status = 'completed'"
                "     and customer_id is null), 0)::float8"
                " from raw.orders where _load_date = %s",
                (run_date,),
            ).fetchone()
        )
    if db.relation_exists(conn, relations.CUSTOMER_LIFECYCLE):
        summary.stages = conn.execute(
            f"select lifecycle_stage, count(*) from {relations.CUSTOMER_LIFECYCLE} "
            "group by 1 order by 2 desc"
        ).fetchall()
        summary.lifecycle_thresholds = _lifecycle_thresholds(dict(summary.stages))
    if db.relation_exists(conn, "winback.customer_scores"):
        summary.scored_customers, summary.mean_p_alive = conn.execute(
            "select count(*), avg(p_alive) from winback.customer_scores"
        ).fetchone()
        summary.churn_bands = conn.execute(
            "select churn_risk_band, count(*) from winback.customer_scores group by 1"
            " order by array_position(array['low', 'medium', 'high', 'very_high'],"
            " churn_risk_band)"
        ).fetchall()
    if db.relation_exists(conn, "winback.model_fits"):
        with conn.cursor(row_factory=dict_row) as cur:
            for fit in cur.execute(
                "select distinct on (model) model, params, is_degenerate, degenerate_reason,"
                " fallback, churn_band_source, message, converged from winback.model_fits"
                " where as_of_date = %s order by model, model_fit_id desc",
                (run_date,),
            ).fetchall():
                summary.fits[fit.pop("model")] = fit
    if db.relation_exists(conn, "winback.campaign_audiences") and db.relation_exists(
        conn, "winback.journey_state"
    ):
        from winback.campaigns import audiences
        from winback.campaigns import campaign_files as campaigns

        counted = {c["campaign_id"]: c for c in audiences.campaign_counts(conn, run_date)}
        valid, refused = campaigns.load_valid_campaigns()
        for campaign in valid:
            if run_date < campaign.starts_on:
                summary.inactive_campaigns.append((campaign.id, f"starts on {campaign.starts_on}"))
            elif run_date > campaign.ends_on:
                summary.inactive_campaigns.append((campaign.id, f"ended on {campaign.ends_on}"))
        for name, reason in sorted(refused.items()):
            first = reason.strip().splitlines()[0] if reason.strip() else "invalid"
            summary.inactive_campaigns.append((name, f"refused: {first}"))
        # Every shipped campaign is listed, with zeros when nobody qualified today.
        for campaign_id in sorted({c.id for c in valid} | set(counted)):
            summary.campaigns.append(counted.get(campaign_id, {"campaign_id": campaign_id}))
    if db.relation_exists(conn, "winback.send_ledger"):
        summary.ledger = conn.execute(
            "select o.campaign_id, o.channel, l.mode, l.status, count(*)"
            " from winback.send_ledger l join winback.outbox o using (idempotency_key)"
            " where l.run_date = %s group by 1, 2, 3, 4 order by 1, 2, 3, 4",
            (run_date,),
        ).fetchall()
    for table, target in (
        ("winback.campaign_results", summary.measured_windows),
        ("winback.global_control_results", summary.global_control_windows),
    ):
        if db.relation_exists(conn, table):
            with conn.cursor(row_factory=dict_row) as cur:
                target += cur.execute(
                    f"select * from {table} where breakdown = 'overall'"
                    "   and window_end + attribution_days = %s"
                    " order by campaign_id, window_start",
                    (run_date,),
                ).fetchall()
    return summary


def _lifecycle_thresholds(stages: dict[str, int]) -> list[tuple[str, int]]:
    """Customers past each lifecycle threshold (the stages nest: lost is past inactive,
    inactive past at_risk), labelled with the dbt vars that set them."""
    import yaml

    from winback import config

    project = yaml.safe_load((config.DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    variables = project.get("vars", {})
    lost = stages.get("lost", 0)
    inactive = lost + stages.get("inactive", 0)
    at_risk = inactive + stages.get("at_risk", 0)
    return [
        (f"at_risk ({variables.get('at_risk_ratio')} x own threshold)", at_risk),
        ("inactive (own threshold: max(sector floor, "
         f"{variables.get('inactivity_gap_multiplier')} x usual gap))", inactive),
        (f"lost ({variables.get('lost_ratio')} x own threshold)", lost),
    ]  # fmt: skip


def _rate(reactivated: int, customers: int) -> str:
    return f"{reactivated:,}/{customers:,} ({reactivated / customers:.1%})" if customers else "0/0"


GLOBAL_CONTROL = "global control"


def send_mode(ledger: list[tuple[str, str, str, str, int]]) -> str:
    """The run's mode in words, from its ledger rows: a dry run's intents were not sent."""
    modes = {mode for _c, _ch, mode, _s, n in ledger if n}
    if modes == {"live"}:
        return "live (sent: what the providers acknowledged)"
    if modes == {"dry_run"}:
        return "dry run: nothing was sent; would_send rows are intents"
    if modes:
        return "live and dry run"
    return "nothing to send today"


def _points(value) -> str:
    """A difference of two rates, in percentage points."""
    return f"{100 * float(value):+.1f} pp"


def _money(value) -> str:
    return f"{float(value):+,.2f}"


def _measured_lines(w: dict, treated: str, held: str, truth: dict | None) -> list[str]:
    """One measured window: rates, rate uplift and revenue uplift with intervals, and the
    simulator's true values beside them when the run is a simulation."""
    name = w["campaign_id"] if treated == "treatment" else "all campaigns"
    lines = [
        f"  {name} {w['window_start']}..{w['window_end']}: "
        f"{treated} {_rate(w['treatment_reactivated'], w['treatment_customers'])}, "
        f"{held} {_rate(w['holdout_reactivated'], w['holdout_customers'])}"
    ]
    if w["absolute_uplift"] is not None:
        true_rate = f"  (true {_points(truth['rate'])})" if truth else ""
        lines.append(
            f"      reactivation uplift {_points(w['absolute_uplift'])} "
            f"[{_points(w['absolute_uplift_low'])}, {_points(w['absolute_uplift_high'])}]"
            f"{true_rate}"
        )
        true_revenue = f"  (true {_money(truth['revenue'])})" if truth else ""
        lines.append(
            f"      revenue per {treated} customer {_money(w['revenue_per_customer_uplift'])} "
            f"[{_money(w['revenue_per_customer_uplift_low'])}, "
            f"{_money(w['revenue_per_customer_uplift_high'])}]{true_revenue}; "
            f"net of incentives {_money(w['net_value_per_customer'])}"
        )
    else:
        empty = held if w["treatment_customers"] else treated
        lines.append(f"      uplift not measurable: the {empty} group is empty")
    if w.get("holdout_customers_needed"):
        lines.append(
            f"      too small to show the planned uplift: about"
            f" {w['holdout_customers_needed']:,} more {held} customers needed"
        )
    elif w.get("audience_customers_needed"):
        lines.append(
            f"      too small to show the planned uplift with any {held} share: about"
            f" {w['audience_customers_needed']:,} more customers needed in all"
        )
    return lines


def render(summary: RunSummary, truths: dict[str, dict] | None = None) -> str:
    """The summary as text; `truths` (a simulation's) maps a campaign id, or
    GLOBAL_CONTROL, to its true {"rate": uplift, "revenue": per customer}."""
    truths = truths or {}
    lines = [f"winback daily run for {summary.run_date}", ""]
    read = sum(v[0] for v in summary.loaded.values())
    loaded = sum(v[1] for v in summary.loaded.values())
    quarantined = sum(v[2] for v in summary.loaded.values())
    lines.append(f"Input: {read:,} rows read, {loaded:,} loaded, {quarantined:,} quarantined")
    for table, (r, ld, q) in summary.loaded.items():
        lines.append(f"  {table:<20} {r:>10,} read {ld:>10,} loaded {q:>6,} quarantined")
    for table, rule, n in summary.quarantine_rules:
        lines.append(f"  quarantined {table}.{rule}: {n:,}")
    if summary.orders_loaded and sum(summary.orders_loaded[:2]):
        customer_orders, guest_orders, revenue, guest_revenue = summary.orders_loaded
        lines.append(
            f"  orders: {customer_orders:,} of customers, {guest_orders:,} guest checkouts"
            f" (in revenue, not in customer models); completed revenue {revenue:,.2f},"
            f" {guest_revenue:,.2f} of it from guests"
        )
    if summary.segments:
        lines += ["", "RFM segments:"]
        lines += [f"  {name:<22} {n:>8,}" for name, n in summary.segments]
    if summary.stages:
        lines += ["", "Lifecycle stages:"]
        lines += [f"  {name:<22} {n:>8,}" for name, n in summary.stages]
        lines += ["  customers past each threshold (dbt vars, docs/scoring.md):"]
        lines += [f"    {label}: {n:,}" for label, n in summary.lifecycle_thresholds]
    if summary.scored_customers:
        lines += [
            "",
            f"Scored customers: {summary.scored_customers:,} "
            f"(mean P(alive) {float(summary.mean_p_alive or 0):.3f})",
        ]
        if summary.churn_bands:
            lines.append(
                "  churn bands: " + ", ".join(f"{band} {n:,}" for band, n in summary.churn_bands)
            )
    for model, fit in summary.fits.items():
        params = ", ".join(f"{k} {v:.4g}" for k, v in (fit["params"] or {}).items()) or "none"
        line = f"  {model} fit: {params}"
        if fit["is_degenerate"]:
            line += (
                f"; DEGENERATE ({fit['degenerate_reason']}): churn bands from"
                f" {fit['churn_band_source']}"
            )
        if fit["fallback"]:
            line += f"; not used ({fit['message']}), scores use {fit['fallback']}"
        lines.append(line)
    lines += ["", "Campaigns (today's audience; outbox today by channel, and in total):"]
    if summary.campaigns:
        lines.append(
            f"  {'campaign':<24}{'audience':>9}{'treated':>9}{'holdout':>9}{'entered':>9}"
            f"{'in journey':>11}{'email':>7}{'sms':>6}{'popup':>7}{'total':>8}"
        )
    for c in summary.campaigns:
        lines.append(
            f"  {c['campaign_id']:<24}{c.get('audience', 0):>9,}{c.get('treatment', 0):>9,}"
            f"{c.get('holdout', 0):>9,}{c.get('entered', 0):>9,}{c.get('in_journey', 0):>11,}"
            f"{c.get('email_today', 0):>7,}{c.get('sms_today', 0):>6,}"
            f"{c.get('popup_today', 0):>7,}{c.get('outbox_total', 0):>8,}"
        )
    if not summary.campaigns:
        lines.append("  (none)")
    lines += ["", f"Send mode: {send_mode(summary.ledger)}"]
    active = len(summary.campaigns) - len(
        [c for c, why in summary.inactive_campaigns if not why.startswith("refused")]
    )
    lines.append(
        f"  {active} of {len(summary.campaigns)} valid campaigns active today"
        + ("; not active:" if summary.inactive_campaigns else "")
    )
    lines += [f"    {campaign}: {why}" for campaign, why in summary.inactive_campaigns]
    lines += ["Send ledger (live: acknowledged by the provider; dry run: would_send):"]
    lines += [
        f"  {c:<24} {ch:<7} {mode:<8} {status:<13} {n:>8,}"
        for c, ch, mode, status, n in summary.ledger
    ] or ["  (nothing to send)"]
    if summary.measured_windows:
        lines += [
            "",
            "Campaign windows measured today (everyone the campaign targeted, treatment against"
            " holdout; reactivated = bought again by the window end + attribution):",
        ]
        for w in summary.measured_windows:
            lines += _measured_lines(w, "treatment", "holdout", truths.get(w["campaign_id"]))
    if summary.global_control_windows:
        lines += [
            "",
            "Program against the global control group (everyone who entered any campaign;"
            " the control receives no winback message at all):",
        ]
        for w in summary.global_control_windows:
            lines += _measured_lines(w, "program", "control", truths.get(GLOBAL_CONTROL))
    return "\n".join(lines)
