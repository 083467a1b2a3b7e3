"""What makes a win-back message personal: templates, coupons, links, send hour, products.

* `render` / `validate_template`: Jinja in a sandbox, where an unknown name is an error
  that says which name and which ones exist, never an empty string in a customer's inbox.
* `issue_coupon`: a single-use code per (campaign, step, customer), an HMAC keyed by
  `WINBACK_COUPON_SECRET`, with its expiry; the same inputs always give the same code, so
  a rerun re-sends the same coupon instead of minting a second one.
* `landing_url`, `tracked_link`, `upsert_tracked_links`: the landing page with UTM
  parameters, and a short per-customer, per-step code stored in `winback.tracked_links`,
  so a click on the short link is attributable to the campaign, step and customer.
* `send_hour_query`: the hour each customer usually opens email (the most frequent hour
  of their recent opens), with a default for customers without that history.
* `recommendations_query`: the most popular products of the customer's favourite category
  that they have not bought yet, ranked by `ranked_products_query` (once per run).

The SQL helpers return `(query, params)` for the caller to embed or execute, with every
value a parameter; relations are passed as `psycopg.sql` objects, never as text.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import psycopg
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from psycopg import sql

from winback.warehouse import relations, tables

COUPON_SECRET_ENV = "WINBACK_COUPON_SECRET"
# Only for dry runs and the demo: codes made with it are guessable by anyone who reads
# this file, which is why live sends refuse to use it.
DEMO_COUPON_SECRET = "winback-demo-secret-not-for-production"
LIVE_MODE = "live"

TRACKED_LINKS = sql.Identifier(tables.SCHEMA, "tracked_links")
ENGAGEMENT_EVENTS = relations.identifier(relations.ENGAGEMENT_EVENTS)
CUSTOMER_FEATURES = relations.identifier(relations.CUSTOMER_FEATURES)
ORDERS = relations.identifier(relations.ORDERS)
ORDER_LINES = relations.identifier(relations.ORDER_LINES)
PRODUCTS = relations.identifier(relations.PRODUCTS)

DEFAULT_SEND_HOUR = 10

# Crockford's base32 alphabet has no I, L, O or U: codes read aloud or typed from a
# phone are not mistaken for each other.
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = str.maketrans(_BASE32, _CROCKFORD[10:] + _CROCKFORD[:10])


# --- templates ----------------------------------------------------------------------------


class TemplateError(ValueError):
    """A template that does not parse, uses an unknown name, or breaks the sandbox."""


def _blank_for_none(value: object) -> object:
    """A missing value prints as nothing, never as the word None."""
    return "" if value is None else value


# Bounds on what one render may do, so a template that validates renders in milliseconds
# for every customer: Jinja's own sandbox allows range(100000), nested loops over it, and
# 'x' * 4000000000, any of which stops the run (or validation itself).
MAX_RANGE = 1000  # items of one range()
MAX_ITERATIONS = 10_000  # range items stepped through in one render, all loops together
MAX_REPEAT = 20_000  # characters or items a * may make
MAX_EXPONENT = 64
_iterations_left: contextvars.ContextVar[int] = contextvars.ContextVar(
    "template_iterations_left", default=MAX_ITERATIONS
)


def _counted(items: range):
    for item in items:
        left = _iterations_left.get()
        if left <= 0:
            raise SecurityError(f"the template loops more than {MAX_ITERATIONS} times")
        _iterations_left.set(left - 1)
        yield item


def _bounded_range(*args: int):
    items = range(*args)
    if len(items) > MAX_RANGE:
        raise SecurityError(f"range() of more than {MAX_RANGE} items")
    return _counted(items)


def _bounded_width(function):
    """A filter whose integer arguments (widths, counts) stay within MAX_REPEAT."""

    def bounded(value, *args, **kwargs):
        for argument in (*args, *kwargs.values()):
            if isinstance(argument, int) and abs(argument) > MAX_REPEAT:
                raise SecurityError(f"a width or count above {MAX_REPEAT}")
        return function(value, *args, **kwargs)

    return bounded


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with bounded range, loops, repetition and powers; no
    assignments or macros (campaign copy needs neither, and both can grow without end)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options):
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.globals.pop("namespace", None)
        self.filters.pop("format", None)  # "%099999999d" has no bound
        for name in ("center", "indent", "wordwrap", "truncate", "batch", "slice"):
            self.filters[name] = _bounded_width(self.filters[name])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    if len(sequence) * max(times, 0) > MAX_REPEAT:
                        raise SecurityError(f"a repetition longer than {MAX_REPEAT}")
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"a power above {MAX_EXPONENT}")
        return super().call_binop(context, operator, left, right)


_ENVIRONMENTS = {
    autoescape: _BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        finalize=_blank_for_none,
    )
    for autoescape in (False, True)
}

# Values a customer with orders may lack: a real shop leaves names, categories and
# products out, and a customer may have nothing to recommend. `campaigns validate` renders
# every template with each of them missing; a send with a missing value falls back to the
# step's own text (`missing_value_problem`).
OPTIONAL_VALUES = {
    "first_name": None,
    "favourite_category": None,
    "last_purchased_category": None,
    "last_purchased_products": None,
    "recommendations": [],
}

# What a missing value leaves behind in copy: an empty phrase before punctuation ("you
# chose: ." / "thinking of ?"), a dangling list separator, empty brackets or quotes.
_EMPTY_PHRASE = re.compile(
    r"(:|\b(of|for|chose|like))[ \t]*[.,!?;]"
    r"|,[ \t]*[.,!?;:]|\([ \t]*\)|\"[ \t]*\"|\bNone\b|\{\{|\}\}|\buncategori[sz]ed\b",
    re.IGNORECASE,
)


def missing_value_problem(text: str | None) -> str | None:
    """The fragment that shows a value was missing from rendered copy, or None."""
    if not text:
        return None
    found = _EMPTY_PHRASE.search(text)
    return f"renders {found.group(0)!r} when a value is missing" if found else None


def _parse(environment: ImmutableSandboxedEnvironment, template: str) -> nodes.Template:
    try:
        tree = environment.parse(template)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(
            f"template syntax error on line {error.lineno}: {error.message}"
        ) from None
    # A campaign template is self-contained: there is no loader to include files from.
    for node_type, word in _REFERENCES:
        node = tree.find(node_type)
        if node is not None:
            raise TemplateError(f"template line {node.lineno}: '{word}' is not allowed")
    return tree


_REFERENCES = (
    (nodes.Assign, "set"),
    (nodes.AssignBlock, "set"),
    (nodes.Macro, "macro"),
    (nodes.CallBlock, "call"),
    (nodes.Include, "include"),
    (nodes.Extends, "extends"),
    (nodes.Import, "import"),
    (nodes.FromImport, "from ... import"),
)


def validate_template(template: str, allowed_names: Iterable[str]) -> frozenset[str]:
    """The names `template` uses; TemplateError if it does not parse or uses other names.

    For campaign validation: a typo in a placeholder fails the pull request, not a send.
    """
    allowed = frozenset(allowed_names)
    environment = _ENVIRONMENTS[False]
    tree = _parse(environment, template)
    try:
        environment.compile(tree)  # unknown filters and tests show up here
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"template line {error.lineno}: {error.message}") from None
    used = frozenset(meta.find_undeclared_variables(tree))
    unknown = sorted(used - allowed)
    if unknown:
        raise TemplateError(
            f"template uses unknown name{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; available: {', '.join(sorted(allowed))}"
        )
    return used


def render(template: str, context: Mapping[str, object], *, autoescape: bool = False) -> str:
    """Render `template` in a sandbox; every name it uses must be in `context`.

    `autoescape=True` for HTML email bodies; subjects and SMS are plain text. A template
    is compiled once and kept: a run renders the same few templates for every customer.
    """
    compiled = compile_template(template, autoescape=autoescape)
    budget = _iterations_left.set(MAX_ITERATIONS)
    try:
        return str(compiled.render(context))
    except jinja2.UndefinedError as error:
        raise TemplateError(
            f"template: {error.message}; available: {', '.join(sorted(context))}"
        ) from None
    except jinja2.exceptions.SecurityError as error:
        raise TemplateError(f"template not allowed in the sandbox: {error}") from None
    except jinja2.TemplateError as error:
        raise TemplateError(f"template cannot be rendered: {error}") from None
    except (ArithmeticError, RecursionError, MemoryError) as error:
        raise TemplateError(f"template cannot be rendered: {type(error).__name__}") from None
    finally:
        _iterations_left.reset(budget)


@functools.lru_cache(maxsize=512)
def compile_template(template: str, *, autoescape: bool = False) -> jinja2.Template:
    """The sandboxed, compiled template (cached); TemplateError if it cannot be."""
    environment = _ENVIRONMENTS[autoescape]
    tree = _parse(environment, template)
    try:
        return environment.from_string(tree)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"template line {error.lineno}: {error.message}") from None


# --- coupons ------------------------------------------------------------------------------


# A live secret must be at least this long (HMAC-SHA256's block of entropy) and none of
# the values people leave in place (deploy/.env.example ships `change-me`).
MIN_SECRET_BYTES = 32
PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "change_me", "secret", "password", "test", "example", "xxx"}
)


def secret_problem(secret: str) -> str | None:
    """Why `secret` cannot sign live codes, or None. The secret itself is never quoted."""
    if secret.strip().lower() in PLACEHOLDER_SECRETS or "change-me" in secret.lower():
        return "is a placeholder value"
    if secret == DEMO_COUPON_SECRET:
        return "is the public demo secret"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"is shorter than {MIN_SECRET_BYTES} bytes"
    return None


def coupon_secret(mode: str) -> bytes:
    """The HMAC key for coupon and link codes: `WINBACK_COUPON_SECRET`.

    Live sends need a strong one (`secret_problem`: 32 bytes or more, not a placeholder,
    not the demo secret); a dry run or the demo falls back to DEMO_COUPON_SECRET.
    """
    secret = os.environ.get(COUPON_SECRET_ENV, "")
    if mode == LIVE_MODE:
        if not secret:
            raise RuntimeError(
                f"{COUPON_SECRET_ENV} is not set: live sends need a secret for coupon and link "
                f"codes (set it in the environment or the deployment's .env)"
            )
        problem = secret_problem(secret)
        if problem:
            raise RuntimeError(
                f"{COUPON_SECRET_ENV} {problem}: live sends need {MIN_SECRET_BYTES} random"
                ' bytes or more, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
    return secret.encode() if secret else DEMO_COUPON_SECRET.encode()


def key_fingerprint(secret: bytes) -> str:
    """Which key made a row's codes, without revealing it: an HMAC of a fixed label under
    the key, 16 hex digits. Stored with each outbox row (`coupon_key_fingerprint`)."""
    return hmac.new(secret, b"winback key fingerprint v1", hashlib.sha256).hexdigest()[:16]


DEMO_KEY_FINGERPRINT = key_fingerprint(DEMO_COUPON_SECRET.encode())


def _keyed_code(secret: bytes, purpose: str, *parts: str, length: int) -> str:
    message = "\x1f".join((purpose, *parts)).encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.b32encode(digest).decode().translate(_TO_CROCKFORD)[:length]


@dataclass(frozen=True)
class Coupon:
    code: str
    expires_on: date  # last day the code is valid


def coupon_code(campaign_id: str, step_id: str, customer_id: str, secret: bytes) -> str:
    """A code unique to (campaign, step, customer): WB-XXXX-XXXX-XXXX (60 random bits)."""
    body = _keyed_code(secret, "coupon", campaign_id, step_id, customer_id, length=12)
    return f"WB-{body[:4]}-{body[4:8]}-{body[8:]}"


def issue_coupon(
    campaign_id: str,
    step_id: str,
    customer_id: str,
    *,
    send_date: date,
    valid_days: int,
    secret: bytes,
) -> Coupon:
    """The customer's coupon for this step, valid `valid_days` days from `send_date` on."""
    if valid_days < 1:
        raise ValueError(f"a coupon must be valid for at least one day, not {valid_days}")
    code = coupon_code(campaign_id, step_id, customer_id, secret)
    return Coupon(code, send_date + timedelta(days=valid_days - 1))


def is_coupon_for(
    code: str, campaign_id: str, step_id: str, customer_id: str, secret: bytes
) -> bool:
    """Whether `code` is the one issued to this customer for this step (constant time)."""
    expected = coupon_code(campaign_id, step_id, customer_id, secret)
    return hmac.compare_digest(code.strip().upper(), expected)


# --- links --------------------------------------------------------------------------------


def landing_url(
    base_url: str,
    *,
    campaign_id: str,
    step_id: str,
    channel: str,
    variant: str | None = None,
    source: str = "winback",
) -> str:
    """`base_url` with utm_source, utm_medium (the channel), utm_campaign and utm_content
    (the step, or step/variant); its own query and fragment are kept, old utm_ replaced."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"landing URL must be absolute http(s): {base_url!r}")
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(key, value) for key, value in query if not key.startswith("utm_")]
    query += [
        ("utm_source", source),
        ("utm_medium", channel),
        ("utm_campaign", campaign_id),
        ("utm_content", f"{step_id}/{variant}" if variant else step_id),
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True)
class TrackedLink:
    code: str
    campaign_id: str
    step_id: str
    customer_id: str
    channel: str
    target_url: str

    def short_url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.code}"


def tracked_link(
    campaign_id: str,
    step_id: str,
    customer_id: str,
    channel: str,
    target_url: str,
    secret: bytes,
) -> TrackedLink:
    """The short link of one customer for one step: a 10-character code (50 bits).

    Keyed like the coupons, so the code of another customer cannot be derived from one's
    own; deterministic, so a rerun gives the same link.
    """
    code = _keyed_code(secret, "link", campaign_id, step_id, customer_id, channel, length=10)
    return TrackedLink(code.lower(), campaign_id, step_id, customer_id, channel, target_url)


def upsert_tracked_links(conn: psycopg.Connection, links: Iterable[TrackedLink]) -> int:
    """Store `links` (one COPY); an existing link keeps its code and gets the new target.

    Returns how many rows were written. Two different links with the same code (a 50-bit
    collision) raise instead of sending one customer's click to another.
    """
    columns = ("code", "campaign_id", "step_id", "customer_id", "channel", "target_url")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "create temporary table if not exists tracked_links_batch "
                "(like {table} including defaults) on commit drop"
            ).format(table=TRACKED_LINKS)
        )
        cur.execute("truncate tracked_links_batch")
        with cur.copy(
            sql.SQL("copy tracked_links_batch ({}) from stdin").format(
                sql.SQL(", ").join(map(sql.Identifier, columns))
            )
        ) as copy:
            for link in links:
                copy.write_row([getattr(link, column) for column in columns])
        collision = cur.execute(
            sql.SQL(
                "select b.code from tracked_links_batch b "
                "join {table} t on t.code = b.code "
                "where (t.campaign_id, t.step_id, t.customer_id, t.channel) "
                "   <> (b.campaign_id, b.step_id, b.customer_id, b.channel) "
                "union all "
                "select code from tracked_links_batch group by code "
                "having count(distinct (campaign_id, step_id, customer_id, channel)) > 1 "
                "limit 1"
            ).format(table=TRACKED_LINKS)
        ).fetchone()
        if collision:
            raise ValueError(f"tracked-link code {collision[0]} would point at two links")
        cur.execute(
            sql.SQL(
                "insert into {table} ({columns}) "
                "select distinct on (code) {columns} from tracked_links_batch order by code "
                "on conflict (code) do update set target_url = excluded.target_url "
                "where {table}.target_url is distinct from excluded.target_url"
            ).format(table=TRACKED_LINKS, columns=sql.SQL(", ").join(map(sql.Identifier, columns)))
        )
        return cur.rowcount


def resolve_link(conn: psycopg.Connection, code: str) -> TrackedLink | None:
    """The link behind a short code, for the redirect that records the click."""
    row = conn.execute(
        sql.SQL(
            "select code, campaign_id, step_id, customer_id, channel, target_url "
            "from {table} where code = %s"
        ).format(table=TRACKED_LINKS),
        (code.strip().lower(),),
    ).fetchone()
    return TrackedLink(*row) if row else None


# --- send hour ----------------------------------------------------------------------------


def send_hour_query(
    run_date: date,
    customers: sql.Composable = CUSTOMER_FEATURES,
    *,
    default_hour: int = DEFAULT_SEND_HOUR,
    time_zone: str = "UTC",
    lookback_days: int = 180,
    min_opens: int = 2,
    events: sql.Composable = ENGAGEMENT_EVENTS,
    zone_column: str | None = None,
) -> tuple[sql.Composable, dict[str, object]]:
    """(customer_id, send_hour) for every customer_id of `customers`.

    send_hour is the hour of day in `time_zone` at which the customer opened the most
    emails in the `lookback_days` up to `run_date` (ties: the hour of their latest open),
    when they opened at least `min_opens` emails; otherwise `default_hour`. With
    `zone_column`, each customer's own zone is that column of `customers` (one row per
    customer), so customers in every zone are read in one pass over the events.
    """
    if not 0 <= default_hour <= 23:
        raise ValueError(f"default_hour must be 0-23, not {default_hour}")
    if lookback_days < 1 or min_opens < 1:
        raise ValueError("lookback_days and min_opens must be at least 1")
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {time_zone!r}") from None
    query = sql.SQL("""
        with targets as (
            select distinct customer_id, {zone} as send_hour_zone from {customers}
        ),

        opens as (
            select
                e.customer_id,
                cast(extract(hour from e.occurred_at at time zone t.send_hour_zone) as integer)
                    as open_hour,
                e.occurred_at
            from {events} e
            join targets t on t.customer_id = e.customer_id
            where e.channel = 'email'
                and e.event_type = 'open'
                -- whole days in the customer's zone, the last one run_date
                and e.occurred_at >= cast(
                    cast(%(send_hour_run_date)s as date)
                    - cast(%(send_hour_lookback)s as integer) + 1 as timestamp
                ) at time zone t.send_hour_zone
                and e.occurred_at < cast(
                    cast(%(send_hour_run_date)s as date) + 1 as timestamp
                ) at time zone t.send_hour_zone
        ),

        hour_counts as (
            select
                customer_id,
                open_hour,
                count(*) as opens_at_hour,
                max(occurred_at) as last_open_at,
                sum(count(*)) over (partition by customer_id) as opens
            from opens
            group by customer_id, open_hour
        ),

        usual_hours as (
            select distinct on (customer_id)
                customer_id,
                open_hour
            from hour_counts
            where opens >= %(send_hour_min_opens)s
            order by customer_id, opens_at_hour desc, last_open_at desc, open_hour
        )

        select
            c.customer_id,
            coalesce(u.open_hour, %(send_hour_default)s) as send_hour
        from targets c
        left join usual_hours u on u.customer_id = c.customer_id
    """).format(
        events=events,
        customers=customers,
        zone=(
            sql.Identifier(zone_column)
            if zone_column
            else sql.SQL("cast(%(send_hour_tz)s as text)")
        ),
    )
    params = {
        "send_hour_run_date": run_date,
        "send_hour_tz": time_zone,
        "send_hour_lookback": lookback_days,
        "send_hour_min_opens": min_opens,
        "send_hour_default": default_hour,
    }
    return query, params


def send_hours(conn: psycopg.Connection, run_date: date, **options) -> dict[str, int]:
    """`send_hour_query` executed: customer_id -> send hour."""
    query, params = send_hour_query(run_date, **options)
    return dict(conn.execute(query, params).fetchall())


# --- recommendations ----------------------------------------------------------------------


def ranked_products_query(
    run_date: date, *, lookback_days: int = 365
) -> tuple[sql.Composable, dict[str, object]]:
    """(product_id, product_name, category, list_price, category_rank): every product
    ranked within its category, the most popular first (distinct buyers in the
    `lookback_days` up to `run_date`, then units, then product_id, so the order is stable).

    The same for every customer of a run: a run computes it once (MessageBuilder keeps it
    in a temporary table) instead of once per campaign, as it reads a year of order lines.
    """
    if lookback_days < 1:
        raise ValueError("lookback_days must be at least 1")
    query = sql.SQL("""
        with popularity as (
            select
                l.product_id,
                count(distinct o.customer_id) as buyers,
                sum(l.quantity) as units
            from {order_lines} l
            inner join {orders} o on o.order_id = l.order_id
            where o.is_completed
                and o.order_date <= %(reco_run_date)s
                and o.order_date > cast(%(reco_run_date)s as date)
                    - cast(%(reco_lookback)s as integer)
            group by l.product_id
        )

        select
            p.product_id,
            p.product_name,
            p.category,
            p.list_price,
            row_number() over (
                partition by p.category
                order by coalesce(pop.buyers, 0) desc, coalesce(pop.units, 0) desc,
                    p.product_id
            ) as category_rank
        from {products} p
        left join popularity pop on pop.product_id = p.product_id
        -- Fees, shipping, gift cards and adjustments are never recommended.
        where p.is_merchandise
    """).format(order_lines=ORDER_LINES, orders=ORDERS, products=PRODUCTS)
    return query, {"reco_run_date": run_date, "reco_lookback": lookback_days}


def recommendations_query(
    run_date: date,
    customers: sql.Composable = CUSTOMER_FEATURES,
    *,
    top_n: int = 3,
    lookback_days: int = 365,
    ranked_products: sql.Composable | None = None,
) -> tuple[sql.Composable, dict[str, object]]:
    """(customer_id, recommendation_rank, product_id, product_name, list_price).

    For each customer of `customers` (a relation with customer_id and favourite_category):
    up to `top_n` products of that category they have never bought in a completed order,
    in the order of `ranked_products_query` (pass `ranked_products`, a relation holding
    its result, to reuse it; by default it is computed inside this query).
    """
    if top_n < 1 or lookback_days < 1:
        raise ValueError("top_n and lookback_days must be at least 1")
    ranked_params: dict[str, object] = {"reco_run_date": run_date}
    if ranked_products is None:
        ranked_sql, ranked_params = ranked_products_query(run_date, lookback_days=lookback_days)
        ranked_products = sql.SQL("({}) as ranked").format(ranked_sql)
    query = sql.SQL("""
        with ranked_products as (
            select * from {ranked_products}
        ),

        targets as (
            select distinct customer_id, favourite_category
            from {customers}
            where favourite_category is not null
        ),

        -- only what matters: the products of their favourite category they bought, read
        -- through the targets' own orders (an index probe each), never every order line
        bought as (
            select distinct t.customer_id, l.product_id
            from targets t
            inner join {orders} o on o.customer_id = t.customer_id
            inner join {order_lines} l on l.order_id = o.order_id
            inner join ranked_products rp
                on rp.product_id = l.product_id and rp.category = t.favourite_category
            where o.is_completed and o.order_date <= %(reco_run_date)s
        ),

        candidates as (
            select
                t.customer_id,
                rp.product_id,
                rp.product_name,
                rp.list_price,
                row_number() over (partition by t.customer_id order by rp.category_rank)
                    as recommendation_rank
            from targets t
            inner join ranked_products rp on rp.category = t.favourite_category
            left join bought b on b.customer_id = t.customer_id and b.product_id = rp.product_id
            where b.customer_id is null
        )

        select customer_id, recommendation_rank, product_id, product_name, list_price
        from candidates
        where recommendation_rank <= %(reco_top_n)s
        order by customer_id, recommendation_rank
    """).format(
        order_lines=ORDER_LINES,
        orders=ORDERS,
        customers=customers,
        ranked_products=ranked_products,
    )
    return query, {**ranked_params, "reco_run_date": run_date, "reco_top_n": top_n}


@dataclass(frozen=True)
class Recommendation:
    product_id: str
    product_name: str
    list_price: object


def recommendations(
    conn: psycopg.Connection, run_date: date, **options
) -> dict[str, list[Recommendation]]:
    """`recommendations_query` executed: customer_id -> products, best first."""
    query, params = recommendations_query(run_date, **options)
    result: dict[str, list[Recommendation]] = {}
    for customer_id, _rank, product_id, name, price in conn.execute(query, params):
        result.setdefault(customer_id, []).append(Recommendation(product_id, name, price))
    return result
