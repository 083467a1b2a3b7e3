"""Message building: what one treatment customer gets for one journey step.

`MessageBuilder` renders the step's subject and body (`winback.campaigns.personalization`:
templates, coupons, tracked links, recommendations) and decides when to send: at the
customer's usual open hour in their own time zone, moved out of an SMS's quiet hours in
every zone the customer may be in. What to send and to whom is decided by the journey
(`winback.campaigns.journeys`); this module only builds the outbox row's content.
"""

from __future__ import annotations

import os
import unicodedata
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import phonenumbers
import psycopg
from phonenumbers import timezone as phone_timezones
from psycopg import sql

from winback.campaigns.campaign_files import Campaign, QuietHours, Step
from winback.warehouse import relations, tables

FEATURES = relations.CUSTOMER_FEATURES
DEFAULT_SEND_HOUR = 10
SHORT_LINK_BASE_ENV = "WINBACK_SHORT_LINK_BASE"
DEFAULT_SHORT_LINK_BASE = "https://wb.example/s"
PUBLIC_URL_ENV = "WINBACK_PUBLIC_URL"


def one_line(text: str) -> str:
    """`text` on one line: every line break, vertical space and control character (CR, LF,
    VT, FF, NEL, U+2028, U+2029, ...) becomes a space, and runs of spaces one. A rendered
    subject becomes a mail header, where a line break would end the header."""
    spaced = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    return " ".join(spaced.split())


def short_link_base() -> str:
    """Where tracked links point: `WINBACK_SHORT_LINK_BASE`, else the redirect route of
    `winback serve` at `WINBACK_PUBLIC_URL` (`…/r`), else a placeholder domain."""
    explicit = os.environ.get(SHORT_LINK_BASE_ENV)
    if explicit:
        return explicit.rstrip("/")
    public = os.environ.get(PUBLIC_URL_ENV)
    return f"{public.rstrip('/')}/r" if public else DEFAULT_SHORT_LINK_BASE


# --- time zones and quiet hours -----------------------------------------------------------


@lru_cache(maxsize=4096)
def _zones_for_country(country_code: str) -> tuple[str, ...]:
    example = phonenumbers.example_number(country_code.upper())
    return tuple(phone_timezones.time_zones_for_number(example)) if example else ()


def customer_time_zones(phone: str | None, country_code: str | None) -> tuple[ZoneInfo, ...]:
    """The customer's possible time zones: from the phone number, else the country, else UTC.

    A number can map to several zones (a US mobile); quiet hours must then hold in all.
    """
    names: tuple[str, ...] = ()
    if phone:
        try:
            names = tuple(phone_timezones.time_zones_for_number(phonenumbers.parse(phone)))
        except phonenumbers.NumberParseException:
            names = ()
    if (not names or names == (phone_timezones.UNKNOWN_TIMEZONE,)) and country_code:
        names = _zones_for_country(country_code)
    zones = tuple(ZoneInfo(n) for n in names if n and n != phone_timezones.UNKNOWN_TIMEZONE)
    return zones or (ZoneInfo("UTC"),)


def scheduled_send_at(
    run_date: date,
    zones: tuple[ZoneInfo, ...],
    send_hour: int,
    channel: str,
    quiet_hours: QuietHours,
) -> tuple[datetime, bool]:
    """When to send: the run date at the customer's send hour in their (first) time zone,
    moved forward to the end of the quiet hours when an SMS would fall inside them in any
    of the customer's zones. Returns (moment in UTC, whether it was moved)."""
    wanted = datetime.combine(run_date, time(send_hour), tzinfo=zones[0])
    if channel != "sms":
        return wanted.astimezone(ZoneInfo("UTC")), False
    moment = wanted
    for _ in range(48 * 4):
        if not any(quiet_hours.contains(moment.astimezone(z).time()) for z in zones):
            return moment.astimezone(ZoneInfo("UTC")), moment != wanted
        moment += timedelta(minutes=15)
    raise ValueError(f"no time outside quiet hours {quiet_hours} in zones {zones}")


# --- the builder --------------------------------------------------------------------------


class MessageBuilder:
    """Renders one run's messages: personal values, templates, send time, tracked links.

    Per-customer inputs that need SQL (the usual open hour in the customer's time zone,
    recommendations) are read in bulk by `prepare` for a campaign's active journeys; coupon
    and link codes come from `winback.campaigns.personalization` (HMAC, deterministic, so a rerun
    renders the same codes); tracked links are written in one batch by `flush`.
    """

    def __init__(self, conn: psycopg.Connection, run_date: date, mode: str = "dry_run"):
        from winback.campaigns import personalization

        self.p = personalization
        self.conn = conn
        self.run_date = run_date
        self.secret = personalization.coupon_secret(mode)
        self.key_fingerprint = personalization.key_fingerprint(self.secret)
        self.short_link_base = short_link_base()
        self.zones: dict[str, tuple[ZoneInfo, ...]] = {}
        self.send_hours: dict[str, int] = {}
        self.recommended: dict[str, list[str]] = {}
        self._links: list = []
        self._ranked_products_ready = False
        tables.ensure_schema(conn)  # the tracked links' table

    def prepare(self, cur, campaign: Campaign) -> None:
        """Read zones, send hours and recommendations of the customers due a step today."""
        rows = cur.execute(
            f"""
            select f.customer_id, f.phone, f.country_code, f.favourite_category
            from winback.journey_state j
            join {FEATURES} f on f.customer_id = j.customer_id
            where j.campaign_id = %(campaign)s and j.status = 'active'
              and j.assigned_group = 'treatment'
              and j.next_step < %(steps)s
              -- their next step is due today (further steps due the same day are theirs)
              and j.clock_date + j.deferred_days + (%(waits)s::int[])[j.next_step + 1]
                  <= %(run_date)s
            """,
            {
                "campaign": campaign.id,
                "steps": len(campaign.steps),
                "waits": [s.wait_days for s in campaign.steps],
                "run_date": self.run_date,
            },
        ).fetchall()
        new = [r for r in rows if r["customer_id"] not in self.zones]
        if not new:
            return
        for row in new:
            self.zones[row["customer_id"]] = customer_time_zones(row["phone"], row["country_code"])
        cur.execute(
            "create temporary table if not exists message_customers "
            "(customer_id text, favourite_category text, zone text) on commit drop"
        )
        cur.execute("truncate message_customers")
        with cur.copy("copy message_customers from stdin") as copy:
            for row in new:
                zone = self.zones[row["customer_id"]][0].key
                copy.write_row((row["customer_id"], row["favourite_category"], zone))
        # The usual open hour, counted in each customer's own time zone: every zone in one
        # pass over the events.
        query, params = self.p.send_hour_query(
            self.run_date,
            sql.SQL("message_customers"),
            default_hour=DEFAULT_SEND_HOUR,
            zone_column="zone",
        )
        self.send_hours.update(dict(self.conn.execute(query, params).fetchall()))
        query, params = self.p.recommendations_query(
            self.run_date,
            sql.SQL("message_customers"),
            ranked_products=self._ranked_products(cur),
        )
        for customer_id in (r["customer_id"] for r in new):
            self.recommended[customer_id] = []
        for customer_id, _rank, _product_id, name, _price in self.conn.execute(query, params):
            self.recommended[customer_id].append(name)

    def _ranked_products(self, cur) -> sql.Composable:
        """The run's product ranking, computed on first use: it reads a year of order
        lines and is the same for every campaign of the run (one transaction, one builder)."""
        table = sql.Identifier("pg_temp", "run_ranked_products")
        if not self._ranked_products_ready:
            query, params = self.p.ranked_products_query(self.run_date)
            cur.execute(sql.SQL("drop table if exists {}").format(table))
            cur.execute(
                sql.SQL("create temporary table {} on commit drop as {}").format(table, query),
                params,
            )
            cur.execute(sql.SQL("analyze {}").format(table))
            self._ranked_products_ready = True
        return table

    def _render_or_fall_back(
        self, template, fallback, context, *, autoescape: bool = False
    ) -> str | None:
        """The variant's text; the step's own when a missing value would show in it (a
        variant naming a category the shop does not have), never a placeholder."""
        if not template:
            return None
        text = self.p.render(template, context, autoescape=autoescape)
        if fallback and fallback != template and self.p.missing_value_problem(text):
            return self.p.render(fallback, context, autoescape=autoescape)
        return text

    def build_many(
        self,
        campaign: Campaign,
        step: Step,
        recipients: list[tuple[str | None, dict]],
        run_date: date,
    ) -> list[dict]:
        """The outbox rows' payloads and columns for the treatment customers due `step`
        today, each given as (variant, feature columns), in the same order.

        What is the same for the whole step is worked out once (each variant's subject,
        body, landing URL; the coupon's expiry and description; the templates, compiled
        once by `personalization`); the coupon and link codes are minted for everyone in
        one pass, then each message is rendered.
        """
        if not recipients:
            return []
        landings = {
            variant: self.p.landing_url(
                campaign.landing_url,
                campaign_id=campaign.id,
                step_id=step.id,
                channel=step.channel,
                variant=variant,
            )
            for variant in {variant for variant, _ in recipients}
        }
        texts = {}
        for variant in landings:
            chosen = next((v for v in step.variants if v.id == variant), None)
            texts[variant] = (
                (chosen.subject if chosen and chosen.subject else None) or step.subject,
                (chosen.body if chosen and chosen.body else None) or step.body,
            )
        coupon = step.incentive.coupon if step.incentive else None
        bonus_points = step.incentive.bonus_points if step.incentive else None
        expires_on = self.run_date + timedelta(days=coupon.valid_days - 1) if coupon else None
        if coupon and coupon.valid_days < 1:
            raise ValueError(
                f"a coupon must be valid for at least one day, not {coupon.valid_days}"
            )
        coupon_description = coupon.describe() if coupon else None
        incentive_terms = coupon.model_dump() if coupon else None
        customer_ids = [features["customer_id"] for _, features in recipients]
        links = [
            self.p.tracked_link(
                campaign.id, step.id, customer_id, step.channel, landings[variant], self.secret
            )
            for customer_id, (variant, _) in zip(customer_ids, recipients, strict=True)
        ]
        self._links.extend(links)
        codes = (
            [
                self.p.coupon_code(campaign.id, step.id, customer_id, self.secret)
                for customer_id in customer_ids
            ]
            if coupon
            else [None] * len(recipients)
        )
        built = []
        for (variant, features), link, code in zip(recipients, links, codes, strict=True):
            customer_id = features["customer_id"]
            context = {
                **features,
                "campaign_id": campaign.id,
                "step_id": step.id,
                "variant": variant,
                "landing_url": landings[variant],
                "tracked_link": link.short_url(self.short_link_base),
                "recommendations": self.recommended.get(customer_id, []),
                "coupon_code": code,
                "coupon_expires_on": expires_on if coupon else None,
                "coupon_discount": coupon_description,
                "bonus_points": bonus_points or None,
            }
            subject, body = texts[variant]
            to = {
                "email": features.get("email"),
                "sms": features.get("phone"),
                "popup": customer_id,  # the site knows its visitors by customer id
            }[step.channel]
            payload = {
                "to": to,
                "subject": (
                    one_line(self._render_or_fall_back(subject, step.subject, context))
                    if subject
                    else None
                ),
                # A popup body is HTML on the shop's page: escaped, like an HTML e-mail.
                "body": self._render_or_fall_back(
                    body, step.body, context, autoescape=step.channel == "popup"
                ),
            }
            if step.incentive:
                payload["incentive"] = {
                    "coupon_code": context["coupon_code"],
                    "coupon_expires_on": context["coupon_expires_on"],
                    "coupon": incentive_terms,
                    "bonus_points": context["bonus_points"],
                }
            zones = self.zones.get(customer_id) or customer_time_zones(
                features.get("phone"), features.get("country_code")
            )
            send_at, moved = scheduled_send_at(
                run_date,
                zones,
                self.send_hours.get(customer_id, DEFAULT_SEND_HOUR),
                step.channel,
                campaign.quiet_hours,
            )
            built.append(
                {
                    "payload": payload,
                    "send_at": send_at,
                    "moved_for_quiet_hours": moved,
                    "coupon_code": context["coupon_code"],
                    "coupon_expires_on": context["coupon_expires_on"],
                    "tracked_link": context["tracked_link"],
                    "key_fingerprint": self.key_fingerprint,
                }
            )
        return built

    def flush(self) -> None:
        """Store the run's tracked links, so each click resolves to its customer and step."""
        if self._links:
            self.p.upsert_tracked_links(self.conn, self._links)
            self._links = []
