"""The input contract: which raw files winback accepts and what each column must hold.

One `RawTable` per file a shop drops for a logical date. The loader checks every row
against these specs, the simulator and the CDNOW importer write files in exactly this
shape, and dbt's staging sources (`dbt_project/models/staging/_shop__sources.yml`)
describe the same tables.

Column kinds:
    id         non-empty text identifier (trimmed)
    text       free text, may be empty (stored as NULL)
    timestamp  ISO 8601 date or date-time; naive values are UTC; never after the load day
    date       ISO 8601 date
    amount     decimal >= 0
    integer    whole number (may be negative where `signed`)
    email      empty, or a syntactically deliverable address (lower-cased on load)
    phone      empty, or a number valid for the customer's country (stored as E.164)
    country    ISO 3166-1 alpha-2 code
    currency   ISO 4217 code
    enum       one of `choices`
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

RAW_SCHEMA = "raw"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    required: bool = True
    choices: tuple[str, ...] = ()
    signed: bool = False
    references: tuple[str, str] | None = None  # (raw table, column) that must hold this value

    @property
    def sql_type(self) -> str:
        return {
            "id": "text",
            "text": "text",
            "timestamp": "timestamptz",
            "date": "date",
            "amount": "numeric(14, 2)",
            "integer": "bigint",
            "email": "text",
            "phone": "text",
            "country": "char(2)",
            "currency": "char(3)",
            "enum": "text",
        }[self.kind]


@dataclass(frozen=True)
class RawTable:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    description: str = ""
    # Tables are loaded in dependency order so that references can be checked.
    load_order: int = 0
    file_stem: str = field(default="")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required_column_names(self) -> list[str]:
        """Columns a file must have; optional ones may be left out of the header."""
        return [c.name for c in self.columns if c.required]

    @property
    def stem(self) -> str:
        return self.file_stem or self.name

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


ORDER_STATUSES = ("completed", "cancelled", "refunded", "pending")
CONSENT_CHANNELS = ("email_newsletter", "sms")
CONSENT_STATUSES = ("granted", "withdrawn")
ENGAGEMENT_CHANNELS = ("email", "sms")
ENGAGEMENT_EVENT_TYPES = (
    "sent",
    "delivered",
    "open",
    "click",
    "bounce",
    "unsubscribe",
    "complaint",
    "sms_stop",
)
CART_STATUSES = ("created", "abandoned", "converted")
LOYALTY_ENTRY_TYPES = ("earned", "spent", "expiring")

CUSTOMER_REF = ("customers", "customer_id")

# --- What real exports leave empty (issue 25) -------------------------------------------
# Optional means: the column may be missing from the header or empty in a row; empty is
# NULL and every model downstream copes. docs/loading.md lists every column and why it is
# required or not.
#   products.category, order_lines.category: many shops have no categories; favourite
#       category and sector are then unknown (the shop's sector is used).
#   customers.country: a customer without a country is still a customer (phones must then
#       be given in international form).
#   orders.customer_id: empty for a guest checkout. Guest orders are loaded, count in
#       revenue, and are left out of every customer model (RFM, lifecycle, scores).
#   products.product_type: what a product is; anything but `merchandise` (a fee, shipping,
#       a gift card, an adjustment) never appears in "last chosen" or recommendations.
#       Left empty, the dbt var `non_merchandise_name_pattern` decides by product name.
PRODUCT_TYPES = ("merchandise", "fee", "shipping", "gift_card", "adjustment")

TABLES: tuple[RawTable, ...] = (
    RawTable(
        name="products",
        description="Product catalogue.",
        load_order=0,
        primary_key=("product_id",),
        columns=(
            Column("product_id", "id"),
            Column("product_name", "text"),
            Column("category", "text", required=False),
            Column("list_price", "amount"),
            Column("product_type", "enum", required=False, choices=PRODUCT_TYPES),
        ),
    ),
    RawTable(
        name="customers",
        description="One row per customer account or guest buyer; a later file may update it.",
        load_order=1,
        primary_key=("customer_id",),
        columns=(
            Column("customer_id", "id"),
            Column("email", "email", required=False),
            Column("phone", "phone", required=False),
            Column("first_name", "text", required=False),
            Column("country", "country", required=False),
            Column("created_at", "timestamp"),
        ),
    ),
    RawTable(
        name="orders",
        description="Order headers.",
        load_order=2,
        primary_key=("order_id",),
        columns=(
            Column("order_id", "id"),
            # Empty for a guest checkout (see above).
            Column("customer_id", "id", required=False, references=CUSTOMER_REF),
            Column("ordered_at", "timestamp"),
            Column("status", "enum", choices=ORDER_STATUSES),
            Column("total", "amount"),
            Column("currency", "currency"),
            # Incentives, for the measurement's cost side; shops without coupons omit them.
            Column("coupon_code", "text", required=False),
            Column("discount_total", "amount", required=False),
        ),
    ),
    RawTable(
        name="order_lines",
        description="Order lines: what was bought in each order.",
        load_order=3,
        primary_key=("order_id", "line_number"),
        columns=(
            Column("order_id", "id", references=("orders", "order_id")),
            Column("line_number", "integer"),
            Column("product_id", "id", references=("products", "product_id")),
            Column("category", "text", required=False),
            Column("quantity", "integer"),
            Column("unit_price", "amount"),
        ),
    ),
    RawTable(
        name="consents",
        description="Consent changes per customer and channel (append-only log).",
        load_order=4,
        primary_key=("consent_id",),
        columns=(
            Column("consent_id", "id"),
            Column("customer_id", "id", references=CUSTOMER_REF),
            Column("channel", "enum", choices=CONSENT_CHANNELS),
            Column("status", "enum", choices=CONSENT_STATUSES),
            Column("recorded_at", "timestamp"),
            Column("source", "text", required=False),
        ),
    ),
    RawTable(
        name="engagement_events",
        description="Email and SMS engagement events reported by the providers.",
        load_order=5,
        primary_key=("event_id",),
        columns=(
            Column("event_id", "id"),
            Column("customer_id", "id", references=CUSTOMER_REF),
            Column("channel", "enum", choices=ENGAGEMENT_CHANNELS),
            Column("event_type", "enum", choices=ENGAGEMENT_EVENT_TYPES),
            Column("occurred_at", "timestamp"),
            Column("campaign_id", "text", required=False),
            Column("message_id", "text", required=False),
        ),
    ),
    RawTable(
        name="carts",
        description="Shopping carts and what became of them.",
        load_order=6,
        primary_key=("cart_id",),
        columns=(
            Column("cart_id", "id"),
            Column("customer_id", "id", references=CUSTOMER_REF),
            Column("created_at", "timestamp"),
            Column("status", "enum", choices=CART_STATUSES),
            Column("status_changed_at", "timestamp"),
            Column("cart_value", "amount"),
        ),
    ),
    RawTable(
        name="loyalty_points",
        description="Loyalty-points ledger: points earned, spent and expiring.",
        load_order=7,
        primary_key=("entry_id",),
        columns=(
            Column("entry_id", "id"),
            Column("customer_id", "id", references=CUSTOMER_REF),
            Column("occurred_at", "timestamp"),
            Column("entry_type", "enum", choices=LOYALTY_ENTRY_TYPES),
            Column("points", "integer", signed=True),
            Column("expires_at", "date", required=False),
        ),
    ),
)

TABLES_BY_NAME: dict[str, RawTable] = {t.name: t for t in TABLES}


def table(name: str) -> RawTable:
    try:
        return TABLES_BY_NAME[name]
    except KeyError:
        known = sorted(TABLES_BY_NAME)
        raise KeyError(f"unknown raw table {name!r}; expected one of {known}") from None


# --------------------------------------------------------------------------- code lists
# Countries and currencies are checked against the ISO lists that pycountry maintains
# (from Debian's iso-codes), not against lists typed here.


@functools.cache
def country_codes() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes, plus the exceptions in `COUNTRY_CODE_EXCEPTIONS`."""
    import pycountry

    return frozenset(c.alpha_2 for c in pycountry.countries) | COUNTRY_CODE_EXCEPTIONS


@functools.cache
def currency_codes() -> frozenset[str]:
    """ISO 4217 codes an order can be paid in (not the testing or no-currency codes)."""
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies) - CURRENCY_CODES_REFUSED


# `XK` is not in ISO 3166-1 but is the user-assigned code the European Commission, SWIFT
# and phonenumbers use for Kosovo; refusing it would refuse real customers.
COUNTRY_CODE_EXCEPTIONS = frozenset({"XK"})
# `UK` is exceptionally reserved in ISO 3166-1, at the United Kingdom's request, for the
# United Kingdom, whose code is `GB`: a file saying `UK` means `GB`, and is loaded as `GB`.
COUNTRY_CODE_ALIASES = {"UK": "GB"}
# XTS is reserved for testing and XXX means "no currency": neither can price an order.
CURRENCY_CODES_REFUSED = frozenset({"XTS", "XXX"})


# --------------------------------------------------------------------------- length bounds
# Every text value is bounded, in characters after trimming, so that it fits its column
# and its index: a btree entry holds at most 2,704 bytes, and 255 characters of 4-byte
# UTF-8 are 1,020. A longer value is quarantined (`value_too_long`).

MAX_LENGTH_BY_KIND = {
    "id": 255,
    "text": 1000,
    "email": 254,  # RFC 5321's limit on a forward path
    "phone": 64,  # as written, before it is normalised to E.164
}
MAX_LENGTH_BY_COLUMN = {"first_name": 200, "product_name": 200, "category": 200}


MAX_LENGTH = 1000  # any other kind: far longer than any valid code, number or date


def max_length(column: Column) -> int:
    """The longest value `column` accepts, in characters after trimming."""
    return MAX_LENGTH_BY_COLUMN.get(column.name, MAX_LENGTH_BY_KIND.get(column.kind, MAX_LENGTH))
