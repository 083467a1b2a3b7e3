"""Every dbt relation winback's Python reads: marts only.

dbt treats staging and intermediate models as its own internals; the marts are its
interface. Where a stage needs rows the marts did not carry (a journey's orders and
engagement events, scoring's purchase days, the products to recommend), a mart passes them
through (`dbt_project/models/marts/`), and these names are the only place Python spells a
dbt relation. The consumers are declared to dbt as exposures
(`dbt_project/models/marts/_marts__exposures.yml`); `tests/test_tables.py` checks each
name here is a documented mart.
"""

from __future__ import annotations

from psycopg import sql

MARTS = "marts"

CUSTOMER_FEATURES = "marts.customer_features"  # what every audience rule selects from
CUSTOMER_ORDER_SUMMARY = "marts.customer_order_summary"  # scoring's input
CUSTOMER_ORDER_DAYS = "marts.customer_order_days"  # scoring's back-test
CUSTOMER_RFM = "marts.customer_rfm"
CUSTOMER_LIFECYCLE = "marts.customer_lifecycle"
# Stage and segment as validity ranges (measurement's stages): read through
# `lifecycle_stage_as_of`, not with range arithmetic of one's own.
CUSTOMER_LIFECYCLE_HISTORY = "marts.customer_lifecycle_history"
ORDERS = "marts.orders"
ORDER_LINES = "marts.order_lines"
PRODUCTS = "marts.products"
ENGAGEMENT_EVENTS = "marts.engagement_events"

ALL = (
    CUSTOMER_FEATURES,
    CUSTOMER_ORDER_SUMMARY,
    CUSTOMER_ORDER_DAYS,
    CUSTOMER_RFM,
    CUSTOMER_LIFECYCLE,
    CUSTOMER_LIFECYCLE_HISTORY,
    ORDERS,
    ORDER_LINES,
    PRODUCTS,
    ENGAGEMENT_EVENTS,
)


def identifier(relation: str) -> sql.Identifier:
    """`relation` ("schema.name") as a quoted `psycopg.sql` identifier."""
    schema, name = relation.split(".")
    return sql.Identifier(schema, name)


def lifecycle_stage_as_of(day: str) -> str:
    """A query of each customer's `lifecycle_stage` and `rfm_segment` as of `day` (a SQL
    date expression or a placeholder such as `%(measured_on)s`): the history's range
    holding that day. That is the stage of the latest recorded day on or before it, as the
    daily snapshot gave it (the dbt macro `lifecycle_as_of` is the same for models)."""
    return (
        f"select customer_id, lifecycle_stage, rfm_segment from {CUSTOMER_LIFECYCLE_HISTORY}"
        f" where valid_from <= {day} and (valid_to is null or valid_to > {day})"
    )
