"""A seeded shop simulator: customers who buy, drift away and sometimes come back.

Customers buy at heterogeneous rates and drop out over time as in the BG/NBD model: each
has a purchase rate λ drawn from a gamma distribution around their sector's typical gap
between orders, and after every purchase leaves for good with probability p drawn from a
beta distribution. Contact and consent data have the gaps real shops have (no phone,
email only, unsubscribed, guest buyers without consent), and engagement events, carts and
a loyalty ledger come with them.

`simulate_campaign_responses` adds the effect of a campaign: a targeted customer in the
treatment group comes back with a known, configurable uplift over an identical customer
in the holdout, so that a measured inactive-to-active delta can be checked against the
truth.

Everything is vectorised with numpy (a loop over the purchase index, never over
customers) and deterministic for a seed: the same seed writes byte-identical files.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from winback.config import private_folder
from winback.ingest.contract import TABLES

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SectorProfile:
    typical_gap_days: tuple[float, float]  # range of a customer's mean days between orders
    inactivity_floor_days: int  # below this many days without an order nobody is inactive
    mean_order_value: float
    categories: tuple[str, ...]


SECTOR_PROFILES: dict[str, SectorProfile] = {
    "grocery": SectorProfile((15, 30), 45, 55.0, ("fresh food", "pantry", "drinks", "household")),
    "fashion": SectorProfile((180, 365), 365, 85.0, ("womenswear", "menswear", "shoes", "bags")),
    "furniture": SectorProfile((365, 730), 540, 420.0, ("living room", "bedroom", "lighting")),
    "beauty": SectorProfile((45, 90), 120, 40.0, ("skincare", "makeup", "fragrance")),
    "books": SectorProfile((60, 120), 180, 28.0, ("fiction", "non-fiction", "children")),
    "pets": SectorProfile((30, 45), 75, 48.0, ("pet food", "pet care", "toys")),
    "electronics": SectorProfile((240, 540), 400, 260.0, ("phones", "computers", "audio")),
}

DEFAULT_SECTOR_MIX = {
    "grocery": 0.25,
    "fashion": 0.25,
    "beauty": 0.15,
    "books": 0.1,
    "pets": 0.1,
    "electronics": 0.1,
    "furniture": 0.05,
}

COUNTRIES = ("IT", "DE", "FR", "ES", "NL", "GB", "US")
COUNTRY_WEIGHTS = (0.3, 0.2, 0.15, 0.12, 0.08, 0.08, 0.07)
# Valid mobile number patterns per country: prefix + number of random digits.
MOBILE_PATTERNS = {
    "IT": ("+39347", 7),
    "DE": ("+49151", 8),
    "FR": ("+3361", 7),
    "ES": ("+346", 8),
    "NL": ("+3161", 7),
    "GB": ("+447400", 6),
    "US": ("+1201555", 4),
}
FIRST_NAMES = (
    "Giulia", "Marco", "Anna", "Luca", "Sofia", "Hannah", "Lukas", "Emma", "Jules", "Léa",
    "Lucía", "Hugo", "Sanne", "Daan", "Olivia", "Jack", "Ava", "Noah", "Chiara", "Matteo",
)  # fmt: skip
LAST_NAMES = (
    "rossi", "bianchi", "muller", "schmidt", "martin", "bernard", "garcia", "lopez", "jansen",
    "devries", "smith", "jones", "brown", "ferrari", "weber", "dubois", "perez", "bakker",
)  # fmt: skip

DIRTY_KINDS = (
    "unparseable_date",
    "negative_amount",
    "non_numeric_amount",
    "duplicate_id",
    "unknown_customer",
    "future_timestamp",
    "malformed_email",
    "invalid_phone",
)


# The true uplift of each example campaign (include/campaigns), in the chance that a
# treated customer comes back: different per campaign so a mix-up would show.
EXAMPLE_UPLIFTS = {
    "abandoned_cart": 0.08,
    "loyalty_points": 0.05,
    "personal_timing": 0.06,
    "popup_non_subscribers": 0.03,
    "sms_reactivation": 0.07,
    "we_miss_you": 0.04,
}


@dataclass(frozen=True)
class SimulationConfig:
    customers: int = 20_000
    seed: int = 42
    as_of: date = date(2026, 11, 20)
    history_days: int = 730
    sector_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SECTOR_MIX))
    # Heterogeneity: λ ~ Gamma(shape, mean 1/gap); p ~ Beta(dropout_a, dropout_b).
    rate_shape: float = 2.0
    dropout_a: float = 1.0
    dropout_b: float = 6.0
    dirty_rate: float = 0.0
    baseline_reactivation: float = 0.04
    campaign_uplift: float = 0.08  # the true uplift of a campaign not in campaign_uplifts
    # Each example campaign's true uplift in the simulated reactivation chance (the
    # global control's follows from them: see `true_uplifts`).
    campaign_uplifts: dict[str, float] = field(default_factory=lambda: dict(EXAMPLE_UPLIFTS))
    newsletters: int = 6
    sms_campaigns: int = 3


def _text(values: pa.Array) -> pd.Series:
    """Arrow strings as a pandas text column, without a Python object per value."""
    return values.to_pandas()


@functools.cache
def _times_of_day() -> pa.Array:
    """ "HH:MM:SSZ" for every second of a day, looked up instead of formatted per row."""
    second = np.arange(SECONDS_PER_DAY)
    parts = [
        np.char.zfill(part.astype(str), 2)
        for part in (second // 3600, second // 60 % 60, second % 60)
    ]
    return pa.array(
        np.char.add(
            np.char.add(np.char.add(parts[0], ":"), np.char.add(parts[1], ":")),
            np.char.add(parts[2], "Z"),
        )
    )


def _timestamps(seconds: np.ndarray) -> pd.Series:
    """ISO-8601 UTC text ("2026-11-20T09:00:00Z"), truncated to the second.

    Formatting per row costs ~5 s per million; a history spans a few thousand distinct
    days, so each row takes its date and time of day from two small lookup tables.
    """
    whole = np.asarray(seconds).astype("int64")
    if len(whole) == 0:
        return pd.Series([], dtype=object)
    day = whole // SECONDS_PER_DAY
    first_day = day.min()
    dates = pa.array(
        np.datetime_as_string(np.arange(first_day, day.max() + 1).astype("datetime64[D]"))
    )
    text = pc.binary_join_element_wise(
        dates.take(pa.array(day - first_day)),
        _times_of_day().take(pa.array(whole - day * SECONDS_PER_DAY)),
        "T",
    )
    return _text(text)


def _money(values: np.ndarray) -> pd.Series:
    """Amounts with two decimals, as "%.2f" writes them, without formatting floats per row."""
    cents = np.rint(np.asarray(values, dtype=float) * 100).astype("int64")
    units = pc.cast(pa.array(np.abs(cents) // 100), pa.string())
    hundredths = pc.utf8_lpad(pc.cast(pa.array(np.abs(cents) % 100), pa.string()), 2, "0")
    text = pc.binary_join_element_wise(units, hundredths, ".")
    text = pc.if_else(pa.array(cents < 0), pc.binary_join_element_wise("-", text, ""), text)
    return _text(text)


def _ids(prefix: str, count: int, width: int, start: int = 1) -> pd.Series:
    return _numbered(prefix, np.arange(start, start + count), width)


def _numbered(prefix: str, numbers: np.ndarray, width: int) -> pd.Series:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return _text(pc.binary_join_element_wise(prefix, digits, ""))


def product_catalogue() -> pd.DataFrame:
    """Eight products per category; ids are stable: P<sector><category><product>."""
    rows = []
    for s, (sector, profile) in enumerate(SECTOR_PROFILES.items()):
        for c, category in enumerate(profile.categories):
            for k in range(8):
                price = profile.mean_order_value * (0.3 + 0.15 * k)
                rows.append(
                    {
                        "product_id": f"P{s:02d}{c:02d}{k:02d}",
                        "product_name": f"{category.title()} item {k + 1}",
                        "category": category,
                        "list_price": f"{price:.2f}",
                        "product_type": "merchandise",
                        "sector": sector,
                    }
                )
    return pd.DataFrame(rows)


def _purchase_times(
    config: SimulationConfig, rng: np.random.Generator, first: np.ndarray, gap_days: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(customer index, purchase time in seconds) of every purchase, BG/NBD-style."""
    end = datetime.combine(config.as_of, time(23, 59, 59), UTC).timestamp()
    n = len(first)
    rate = rng.gamma(config.rate_shape, 1.0 / (gap_days * config.rate_shape))  # per day
    dropout = rng.beta(config.dropout_a, config.dropout_b, size=n)
    customers = [np.arange(n)]
    times = [first]
    current = first.copy()
    active = np.ones(n, dtype=bool)
    while active.any():
        # After each purchase the customer leaves for good with probability p.
        active &= rng.random(n) >= dropout
        gaps = rng.exponential(1.0 / rate) * SECONDS_PER_DAY
        current = current + gaps
        active &= current <= end
        index = np.flatnonzero(active)
        customers.append(index)
        times.append(current[index])
    return np.concatenate(customers), np.concatenate(times)


@dataclass
class _IdStarts:
    """The next id number of each generated table, so that chunks never share an id."""

    customers: int = 1
    orders: int = 1
    consents: int = 1
    events: int = 1
    carts: int = 1
    loyalty_entries: int = 1


def simulate_shop(config: SimulationConfig) -> dict[str, pd.DataFrame]:
    """One DataFrame per raw table, in the contract's columns, all values as text."""
    return _simulate_customers(
        config, np.random.default_rng(config.seed), config.customers, _IdStarts()
    )


def write_shop(
    config: SimulationConfig, folder: Path, chunk_customers: int = 50_000
) -> dict[str, int]:
    """Simulate the shop `chunk_customers` at a time, appending each chunk to the CSVs.

    Memory stays that of one chunk whatever `config.customers` is (a million customers
    with ten million orders is several GB as DataFrames of text). Each chunk draws from
    its own generator seeded by (seed, chunk), so the files are deterministic for a seed;
    with a single chunk they hold exactly what `simulate_shop` returns. Returns the rows
    written per table.
    """
    folder = private_folder(Path(folder))
    starts = _IdStarts()
    writers: dict[str, pa_csv.CSVWriter] = {}
    rows: dict[str, int] = {}
    try:
        for chunk, first in enumerate(range(0, config.customers, chunk_customers)):
            size = min(chunk_customers, config.customers - first)
            rng = np.random.default_rng(config.seed if chunk == 0 else [config.seed, chunk])
            frames = _simulate_customers(config, rng, size, starts)
            if chunk > 0:
                del frames["products"]  # the catalogue is the same for every chunk
            for raw_table in TABLES:
                frame = frames.get(raw_table.name)
                if frame is None:
                    continue
                table = pa.Table.from_pandas(frame[raw_table.column_names], preserve_index=False)
                table = table.cast(pa.schema([(name, pa.string()) for name in table.column_names]))
                if raw_table.name not in writers:
                    writers[raw_table.name] = pa_csv.CSVWriter(
                        folder / f"{raw_table.stem}.csv",
                        table.schema,
                        write_options=pa_csv.WriteOptions(quoting_style="needed"),
                    )
                writers[raw_table.name].write_table(table)
                rows[raw_table.name] = rows.get(raw_table.name, 0) + len(frame)
            del frames
    finally:
        for writer in writers.values():
            writer.close()
    from winback.ingest import manifest as delivery_manifest

    delivery_manifest.write_manifest(folder, _folder_day(folder))  # the marker, written last
    _make_files_private(folder)
    return rows


def _simulate_customers(
    config: SimulationConfig, rng: np.random.Generator, n: int, starts: _IdStarts
) -> dict[str, pd.DataFrame]:
    """`n` customers and everything they did, ids numbered from `starts` (then advanced)."""
    end = datetime.combine(config.as_of, time(23, 59, 59), UTC).timestamp()
    start = end - config.history_days * SECONDS_PER_DAY

    # --- customers
    sectors = np.array(list(config.sector_mix))
    weights = np.array(list(config.sector_mix.values()), dtype=float)
    sector_index = rng.choice(len(sectors), size=n, p=weights / weights.sum())
    customer_sector = sectors[sector_index]
    gap_low = np.array([SECTOR_PROFILES[s].typical_gap_days[0] for s in sectors])[sector_index]
    gap_high = np.array([SECTOR_PROFILES[s].typical_gap_days[1] for s in sectors])[sector_index]
    gap_days = rng.uniform(gap_low, gap_high)
    created = np.sort(rng.uniform(start, end - SECONDS_PER_DAY, size=n))
    customer_ids = _ids("C", n, 8, starts.customers)
    country = rng.choice(COUNTRIES, size=n, p=COUNTRY_WEIGHTS)
    first_names = rng.choice(FIRST_NAMES, size=n)
    last_names = rng.choice(LAST_NAMES, size=n)
    has_email = rng.random(n) < 0.96
    has_phone = rng.random(n) < 0.6
    is_guest = rng.random(n) < 0.1
    # Addresses are ASCII (most shops' ESPs refuse internationalised local parts).
    ascii_first = pd.Series(first_names).map(_ascii_lower).to_numpy().astype(str)
    emails = pd.Series(
        np.char.add(
            np.char.add(np.char.add(ascii_first, "."), last_names),
            np.char.add(np.arange(n).astype(str), "@example.com"),
        )
    ).where(has_email, "")
    phones = pd.Series(_phones(rng, country)).where(has_phone, "")
    customers = pd.DataFrame(
        {
            "customer_id": customer_ids,
            "email": emails,
            "phone": phones,
            "first_name": pd.Series(first_names).where(~is_guest, ""),
            "country": country,
            "created_at": _timestamps(created),
        }
    )

    # --- orders and lines
    first_purchase = created + rng.uniform(0, 3600, size=n)
    owner, ordered = _purchase_times(config, rng, first_purchase, gap_days)
    order_sort = np.lexsort((ordered, owner))
    owner, ordered = owner[order_sort], ordered[order_sort]
    m = len(owner)
    catalogue = product_catalogue()
    status = rng.choice(
        ["completed", "cancelled", "refunded", "pending"], size=m, p=[0.92, 0.04, 0.03, 0.01]
    )
    lines_per_order = rng.integers(1, 5, size=m)
    line_order = np.repeat(np.arange(m), lines_per_order)
    line_number = np.arange(len(line_order)) - np.repeat(
        np.cumsum(lines_per_order) - lines_per_order, lines_per_order
    )
    line_sector = customer_sector[owner][line_order]
    product_pick = np.empty(len(line_order), dtype=object)
    price = np.empty(len(line_order))
    for sector in sectors:
        mask = line_sector == sector
        products = catalogue[catalogue["sector"] == sector].reset_index(drop=True)
        # Each customer has a favourite category: most of their lines come from it.
        pick = rng.integers(0, len(products), size=mask.sum())
        product_pick[mask] = products["product_id"].to_numpy()[pick]
        price[mask] = products["list_price"].astype(float).to_numpy()[pick]
    quantity = rng.choice([1, 1, 1, 2, 3], size=len(line_order))
    unit_price = np.round(price * rng.uniform(0.85, 1.15, size=len(line_order)), 2)
    line_totals = np.bincount(line_order, weights=quantity * unit_price, minlength=m)
    order_ids = _ids("O", m, 9, starts.orders)
    orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": customer_ids.to_numpy()[owner],
            "ordered_at": _timestamps(ordered),
            "status": status,
            "total": _money(line_totals),
            "currency": "EUR",
            "coupon_code": "",
            "discount_total": "",
        }
    )
    categories = catalogue.set_index("product_id")["category"]
    order_lines = pd.DataFrame(
        {
            "order_id": order_ids.to_numpy()[line_order],
            "line_number": (line_number + 1).astype(str),
            "product_id": product_pick,
            "category": categories.reindex(product_pick).to_numpy(),
            "quantity": quantity.astype(str),
            "unit_price": _money(unit_price),
        }
    )

    consents, consent_state = _consents(
        rng, customers, created, end, has_email, has_phone, is_guest, starts.consents
    )
    events = _engagement(config, rng, customer_ids, consent_state, end, starts.events)
    carts = _carts(rng, customer_ids, created, end, starts.carts)
    loyalty = _loyalty(rng, orders, ordered, status, line_totals, end, starts.loyalty_entries)
    frames = {
        "products": catalogue.drop(columns=["sector"]),
        "customers": customers,
        "orders": orders,
        "order_lines": order_lines,
        "consents": consents,
        "engagement_events": events,
        "carts": carts,
        "loyalty_points": loyalty,
    }
    if config.dirty_rate > 0:
        frames = _inject_dirty_rows(config, rng, frames, starts)
    starts.customers += n
    starts.orders += m
    starts.consents += len(consents)
    starts.events += len(events)
    starts.carts += len(carts)
    starts.loyalty_entries += len(loyalty)
    return {name: frame.reset_index(drop=True) for name, frame in frames.items()}


def _ascii_lower(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def _phones(rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
    phones = np.empty(len(country), dtype=object)
    for code, (prefix, digits) in MOBILE_PATTERNS.items():
        mask = country == code
        numbers = rng.integers(0, 10**digits, size=mask.sum())
        phones[mask] = np.char.add(prefix, np.char.zfill(numbers.astype(str), digits))
    return phones


def _consents(rng, customers, created, end, has_email, has_phone, is_guest, first_id=1):
    """The consent log, and each customer's state at the end (for the engagement events)."""
    n = len(customers)
    email_granted = has_email & ~is_guest & (rng.random(n) < 0.68)
    email_withdrawn = email_granted & (rng.random(n) < 0.12)
    sms_granted = has_phone & ~is_guest & (rng.random(n) < 0.45)
    sms_withdrawn = sms_granted & (rng.random(n) < 0.08)
    granted_at = created + rng.uniform(0, 600, size=n)
    email_withdrawn_at = granted_at + rng.uniform(0, 1, size=n) * (end - granted_at)
    sms_withdrawn_at = granted_at + rng.uniform(0, 1, size=n) * (end - granted_at)
    parts = []
    for channel, mask, status, at, source in (
        ("email_newsletter", email_granted, "granted", granted_at, "checkout"),
        ("email_newsletter", email_withdrawn, "withdrawn", email_withdrawn_at, "unsubscribe_link"),
        ("sms", sms_granted, "granted", granted_at + 1, "account_settings"),
        ("sms", sms_withdrawn, "withdrawn", sms_withdrawn_at, "sms_stop"),
    ):
        index = np.flatnonzero(mask)
        parts.append(
            pd.DataFrame(
                {
                    "customer_id": customers["customer_id"].to_numpy()[index],
                    "channel": channel,
                    "status": status,
                    "recorded_at": _timestamps(at[index]).to_numpy(),
                    "source": source,
                    "_at": at[index],
                }
            )
        )
    log = pd.concat(parts, ignore_index=True).sort_values(["_at", "customer_id", "channel"])
    log.insert(0, "consent_id", _ids("K", len(log), 9, first_id).to_numpy())
    state = {
        "email_granted": email_granted,
        "email_withdrawn_at": np.where(email_withdrawn, email_withdrawn_at, np.inf),
        "sms_granted": sms_granted,
        "sms_withdrawn_at": np.where(sms_withdrawn, sms_withdrawn_at, np.inf),
        "granted_at": granted_at,
    }
    return log.drop(columns=["_at"]).reset_index(drop=True), state


def _engagement(config, rng, customer_ids, state, end, first_id=1) -> pd.DataFrame:
    """Newsletters and SMS campaigns of the last months, with a per-customer open habit."""
    n = len(customer_ids)
    open_propensity = rng.beta(2, 5, size=n)
    click_given_open = rng.beta(2, 10, size=n)
    frames = []

    def emit(index, event_type, at, channel, campaign):
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": customer_ids.to_numpy()[index],
                    "channel": channel,
                    "event_type": event_type,
                    "_at": at,
                    "campaign_id": campaign,
                }
            )
        )

    for k in range(config.newsletters):
        sent_at = end - (21 * k + 3) * SECONDS_PER_DAY + 9 * 3600
        campaign = f"newsletter_{k + 1:02d}"
        eligible = (
            state["email_granted"]
            & (state["granted_at"] < sent_at)
            & (state["email_withdrawn_at"] > sent_at)
        )
        index = np.flatnonzero(eligible)
        emit(index, "sent", np.full(len(index), sent_at), "email", campaign)
        bounced = rng.random(len(index)) < 0.015
        emit(index[bounced], "bounce", np.full(bounced.sum(), sent_at + 60), "email", campaign)
        delivered = index[~bounced]
        emit(delivered, "delivered", np.full(len(delivered), sent_at + 30), "email", campaign)
        opened = delivered[rng.random(len(delivered)) < open_propensity[delivered]]
        open_at = sent_at + rng.exponential(6 * 3600, size=len(opened))
        emit(opened, "open", open_at, "email", campaign)
        clicked_mask = rng.random(len(opened)) < click_given_open[opened]
        emit(opened[clicked_mask], "click", open_at[clicked_mask] + 40, "email", campaign)
        complained = delivered[rng.random(len(delivered)) < 0.0005]
        emit(complained, "complaint", np.full(len(complained), sent_at + 7200), "email", campaign)

    # Unsubscribes and STOPs are the provider-side record of the withdrawn consents.
    for channel, key, event_type in (
        ("email", "email_withdrawn_at", "unsubscribe"),
        ("sms", "sms_withdrawn_at", "sms_stop"),
    ):
        index = np.flatnonzero(np.isfinite(state[key]))
        emit(index, event_type, state[key][index], channel, "")

    for k in range(config.sms_campaigns):
        sent_at = end - (45 * k + 10) * SECONDS_PER_DAY + 11 * 3600
        campaign = f"sms_promo_{k + 1:02d}"
        eligible = (
            state["sms_granted"]
            & (state["granted_at"] < sent_at)
            & (state["sms_withdrawn_at"] > sent_at)
        )
        index = np.flatnonzero(eligible)
        emit(index, "sent", np.full(len(index), sent_at), "sms", campaign)
        emit(index, "delivered", np.full(len(index), sent_at + 5), "sms", campaign)
        clicked = index[rng.random(len(index)) < 0.05]
        emit(clicked, "click", np.full(len(clicked), sent_at + 900), "sms", campaign)

    events = pd.concat(frames, ignore_index=True)
    events = events[events["_at"] <= end].sort_values(["_at", "customer_id", "event_type"])
    events.insert(0, "event_id", _ids("E", len(events), 10, first_id).to_numpy())
    events["occurred_at"] = _timestamps(events["_at"].to_numpy()).to_numpy()
    events["message_id"] = np.where(
        events["campaign_id"] != "",
        events["campaign_id"] + ":" + events["customer_id"],
        "",
    )
    return events[
        ["event_id", "customer_id", "channel", "event_type", "occurred_at", "campaign_id",
         "message_id"]
    ].reset_index(drop=True)  # fmt: skip


def _carts(rng, customer_ids, created, end, first_id=1) -> pd.DataFrame:
    n = len(customer_ids)
    index = np.flatnonzero(rng.random(n) < 0.3)
    earliest = np.maximum(created[index], end - 365 * SECONDS_PER_DAY)
    created_at = earliest + rng.uniform(0, 1, size=len(index)) * (end - earliest)
    outcome = rng.choice(["converted", "abandoned", "created"], size=len(index), p=[0.4, 0.5, 0.1])
    changed = np.where(outcome == "converted", created_at + 1800, created_at + 3600)
    changed = np.where(outcome == "created", created_at, np.minimum(changed, end))
    return pd.DataFrame(
        {
            "cart_id": _ids("CART", len(index), 9, first_id),
            "customer_id": customer_ids.to_numpy()[index],
            "created_at": _timestamps(created_at),
            "status": outcome,
            "status_changed_at": _timestamps(changed),
            "cart_value": _money(rng.lognormal(4.0, 0.6, size=len(index))),
        }
    )


def _loyalty(rng, orders, ordered, status, totals, end, first_id=1) -> pd.DataFrame:
    completed = np.flatnonzero(status == "completed")
    earned = pd.DataFrame(
        {
            "customer_id": orders["customer_id"].to_numpy()[completed],
            "_at": ordered[completed],
            "entry_type": "earned",
            "points": np.floor(totals[completed]).astype(int),
            "_expires": ordered[completed] + 365 * SECONDS_PER_DAY,  # points last a year
        }
    )
    spenders = earned.groupby("customer_id", sort=False).agg(
        points=("points", "sum"), last=("_at", "max")
    )
    spenders = spenders[spenders["points"] >= 200]
    spend_mask = rng.random(len(spenders)) < 0.3
    spent = pd.DataFrame(
        {
            "customer_id": spenders.index[spend_mask],
            "_at": np.minimum(spenders["last"].to_numpy()[spend_mask] + 86_400, end),
            "entry_type": "spent",
            "points": -np.minimum(100, spenders["points"].to_numpy()[spend_mask]),
            "_expires": np.nan,
        }
    )
    expired_mask = earned["_expires"].to_numpy() <= end
    expired = earned[expired_mask].assign(
        _at=lambda f: f["_expires"], entry_type="expiring", points=lambda f: -f["points"],
        _expires=np.nan,
    )  # fmt: skip
    ledger = pd.concat([earned, spent, expired], ignore_index=True).sort_values(
        ["_at", "customer_id", "entry_type"]
    )
    expires = pd.Series(
        pd.to_datetime(ledger["_expires"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    ).fillna("")
    return pd.DataFrame(
        {
            "entry_id": _ids("L", len(ledger), 10, first_id).to_numpy(),
            "customer_id": ledger["customer_id"].to_numpy(),
            "occurred_at": _timestamps(ledger["_at"].to_numpy()).to_numpy(),
            "entry_type": ledger["entry_type"].to_numpy(),
            "points": ledger["points"].astype(int).astype(str).to_numpy(),
            "expires_at": expires.to_numpy(),
        }
    )


def _inject_dirty_rows(config, rng, frames, starts: _IdStarts) -> dict[str, pd.DataFrame]:
    """Append broken rows of every kind the loader must quarantine (never valid rows)."""
    per_kind = max(1, round(config.dirty_rate * len(frames["orders"]) / len(DIRTY_KINDS)))
    orders, customers = frames["orders"], frames["customers"]
    future = (config.as_of + timedelta(days=30)).isoformat() + "T10:00:00Z"
    sample = orders.sample(n=per_kind * 6, random_state=config.seed, replace=True)
    sample = sample.reset_index(drop=True)
    parts = [sample.iloc[i * per_kind : (i + 1) * per_kind] for i in range(6)]
    bad_orders = []
    for kind, part in zip(
        ("unparseable_date", "negative_amount", "non_numeric_amount", "duplicate_id",
         "unknown_customer", "future_timestamp"),
        parts,
        strict=True,
    ):  # fmt: skip
        part = part.copy()
        if kind != "duplicate_id":
            part["order_id"] = [f"BAD-{kind}-{starts.orders - 1 + i}" for i in range(len(part))]
        if kind == "unparseable_date":
            part["ordered_at"] = "2026-13-45 25:61"
        elif kind == "negative_amount":
            part["total"] = "-" + part["total"]
        elif kind == "non_numeric_amount":
            part["total"] = part["total"].str.replace(".", ",", regex=False) + "€"
        elif kind == "unknown_customer":
            part["customer_id"] = [f"GHOST-{i}" for i in range(len(part))]
        elif kind == "future_timestamp":
            part["ordered_at"] = future
        bad_orders.append(part)
    bad_customers = customers.sample(n=per_kind * 2, random_state=config.seed + 1).copy()
    bad_customers["customer_id"] = [
        f"BAD-C-{starts.customers - 1 + i}" for i in range(len(bad_customers))
    ]
    half = per_kind
    bad_customers.iloc[:half, bad_customers.columns.get_loc("email")] = "no-at-sign.example.com"
    bad_customers.iloc[half:, bad_customers.columns.get_loc("phone")] = "+39 12"
    frames["orders"] = pd.concat([orders, *bad_orders], ignore_index=True)
    frames["customers"] = pd.concat([customers, bad_customers], ignore_index=True)
    return frames


def write_landing_files(
    frames: dict[str, pd.DataFrame], folder: Path, fmt: str = "csv", manifest: bool = True
) -> None:
    """Write `<folder>/<table>.csv` (or .parquet), header = the contract's columns.

    As a shop's export does by the delivery contract, the `_manifest.json` naming each
    file is written last (`manifest=False` leaves the delivery unmarked, for tests that
    mark it later).
    """
    folder = private_folder(Path(folder))
    for raw_table in TABLES:
        frame = frames.get(raw_table.name)
        if frame is None:
            continue
        frame = frame[raw_table.column_names]
        if fmt == "parquet":
            frame.astype(str).to_parquet(folder / f"{raw_table.stem}.parquet", index=False)
        elif fmt == "csv":
            frame.to_csv(folder / f"{raw_table.stem}.csv", index=False)
        else:
            raise ValueError(f"unknown format {fmt!r}; use csv or parquet")
    if manifest:
        from winback.ingest import manifest as delivery_manifest

        delivery_manifest.write_manifest(folder, _folder_day(folder))
    _make_files_private(folder)


def _make_files_private(folder: Path) -> None:
    """The day's files hold customers' names and addresses: readable by their owner only."""
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


def _folder_day(folder: Path) -> date | None:
    """The delivery day a landing folder is named after, when it is named after one."""
    try:
        return date.fromisoformat(folder.name)
    except ValueError:
        return None


def _unit_hash(seed: int, salt: str, customer_ids: pd.Series) -> np.ndarray:
    """A uniform [0, 1) number per customer, stable for (seed, salt, customer)."""
    return np.array(
        [
            int(hashlib.sha256(f"{seed}:{salt}:{cid}".encode()).hexdigest()[:13], 16) / 16**13
            for cid in customer_ids
        ]
    )


def _uplifts(targets: pd.DataFrame, config: SimulationConfig) -> np.ndarray:
    """Each target's campaign's true uplift (`campaign_uplift` without a campaign_id)."""
    if "campaign_id" not in targets:
        return np.full(len(targets), config.campaign_uplift)
    return (
        targets["campaign_id"]
        .map(lambda c: config.campaign_uplifts.get(c, config.campaign_uplift))
        .to_numpy(dtype=float)
    )


def _response_draws(
    targets: pd.DataFrame, window_start: date, config: SimulationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(uniform draw, order value) per target: a target comes back when its draw is below
    its chance, and then spends its value. Both are fixed for the customer whatever their
    group, so each customer's outcome with and without the campaign is known."""
    salt = window_start.isoformat()
    draw = _unit_hash(config.seed, salt, targets["customer_id"])
    value = np.round(30 + 70 * _unit_hash(config.seed, salt + ":value", targets["customer_id"]), 2)
    return draw, value


def simulate_campaign_responses(
    targets: pd.DataFrame, window_start: date, window_days: int, config: SimulationConfig
) -> dict[str, pd.DataFrame]:
    """Orders of targeted customers who come back within the window.

    `targets` has customer_id, group ('treatment', 'holdout' or 'global_control') and
    optionally campaign_id. A treatment customer comes back with probability
    baseline_reactivation + their campaign's uplift (`campaign_uplifts`, else
    `campaign_uplift`), anyone else with baseline_reactivation.
    """
    chance = np.where(
        targets["group"].to_numpy() == "treatment",
        config.baseline_reactivation + _uplifts(targets, config),
        config.baseline_reactivation,
    )
    salt = window_start.isoformat()
    draw, values = _response_draws(targets, window_start, config)
    returns = draw < chance
    back = targets[returns].reset_index(drop=True)
    offset = _unit_hash(config.seed, salt + ":day", back["customer_id"])
    start = datetime.combine(window_start, time(10), UTC).timestamp()
    at = start + np.floor(offset * window_days) * SECONDS_PER_DAY
    value = values[returns]
    order_ids = "R-" + salt + "-" + back["customer_id"]
    catalogue = product_catalogue()
    orders = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": back["customer_id"],
            "ordered_at": _timestamps(at),
            "status": "completed",
            "total": _money(value),
            "currency": "EUR",
            "coupon_code": "",
            "discount_total": "",
        }
    )
    lines = pd.DataFrame(
        {
            "order_id": order_ids,
            "line_number": "1",
            "product_id": catalogue["product_id"].iloc[0],
            "category": catalogue["category"].iloc[0],
            "quantity": "1",
            "unit_price": _money(value),
        }
    )
    return {"orders": orders, "order_lines": lines}


def true_effects(
    targets: pd.DataFrame,
    window_start: date,
    config: SimulationConfig,
    natural_buyers: set[str],
) -> pd.DataFrame:
    """What being treated does to each target, known exactly because the simulator knows
    both of a customer's outcomes.

    With the campaign a target comes back when their draw is below baseline + uplift,
    without it below the baseline; `natural_buyers` (who bought in the measurement period
    anyway, from the shop's own simulation) are reactivated either way. So a target's
    effect on reactivation is 1 when their draw lies in [baseline, baseline + uplift) and
    they are not a natural buyer, and on revenue the value of that extra order.
    """
    draw, value = _response_draws(targets, window_start, config)
    lifted = (draw >= config.baseline_reactivation) & (
        draw < config.baseline_reactivation + _uplifts(targets, config)
    )
    natural = targets["customer_id"].isin(natural_buyers).to_numpy()
    effects = targets.copy()
    effects["rate_effect"] = (lifted & ~natural).astype(float)
    effects["revenue_effect"] = np.where(lifted, value, 0.0)
    return effects


def true_uplifts(effects: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The true rate and revenue-per-customer uplift each measurement estimates.

    Per campaign (treatment against holdout): the mean effect over its cohort. For the
    program against the global control: the mean, over everyone who entered (the control
    included), of the effect times the share of their campaign's non-control entrants
    that were treated (the program holds a campaign holdout out too). Keyed by campaign
    id, and "global control".
    """
    truths: dict[str, dict[str, float]] = {}
    treated_share: dict[str, float] = {}
    for campaign_id, rows in effects.groupby("campaign_id"):
        cohort = rows[rows["group"].isin(["treatment", "holdout"])]
        if cohort.empty:
            continue
        treated_share[campaign_id] = float((cohort["group"] == "treatment").mean())
        truths[campaign_id] = {
            "rate": float(cohort["rate_effect"].mean()),
            "revenue": float(cohort["revenue_effect"].mean()),
        }
    if len(effects):
        share = effects["campaign_id"].map(treated_share).fillna(0.0).to_numpy()
        truths["global control"] = {
            "rate": float((share * effects["rate_effect"]).mean()),
            "revenue": float((share * effects["revenue_effect"]).mean()),
        }
    return truths


def natural_buyers(orders: pd.DataFrame, start: date, end: date) -> set[str]:
    """Customers with a completed order dated from `start` to `end` (the shop's own)."""
    ordered = pd.to_datetime(orders["ordered_at"], errors="coerce", utc=True, format="mixed")
    day = ordered.dt.date
    inside = (orders["status"] == "completed") & (day >= start) & (day <= end)
    return set(orders.loc[inside.fillna(False), "customer_id"])


def simulate_next_day_orders(
    config: SimulationConfig, day: date, orders: int
) -> dict[str, pd.DataFrame]:
    """`orders` completed orders placed on `day` by distinct existing customers.

    What a shop's next daily drop looks like for a benchmark of the incremental run: the
    buyers are drawn uniformly from the shop's customers (ids as `write_shop` numbers
    them), each with one to four lines from the catalogue. Deterministic for (seed, day).
    """
    rng = np.random.default_rng([config.seed, day.toordinal()])
    buyers = np.sort(
        rng.choice(config.customers, size=min(orders, config.customers), replace=False)
    )
    count = len(buyers)
    start = datetime.combine(day, time(0), UTC).timestamp()
    ordered = start + rng.uniform(0, SECONDS_PER_DAY - 1, size=count)
    catalogue = product_catalogue()
    lines_per_order = rng.integers(1, 5, size=count)
    line_order = np.repeat(np.arange(count), lines_per_order)
    line_number = np.arange(len(line_order)) - np.repeat(
        np.cumsum(lines_per_order) - lines_per_order, lines_per_order
    )
    pick = rng.integers(0, len(catalogue), size=len(line_order))
    quantity = rng.choice([1, 1, 1, 2, 3], size=len(line_order))
    unit_price = np.round(
        catalogue["list_price"].astype(float).to_numpy()[pick]
        * rng.uniform(0.85, 1.15, size=len(line_order)),
        2,
    )
    totals = np.bincount(line_order, weights=quantity * unit_price, minlength=count)
    order_ids = _ids(f"D{day:%Y%m%d}-", count, 7)
    orders_frame = pd.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": _numbered("C", buyers + 1, 8),  # customer i is C<i + 1>
            "ordered_at": _timestamps(ordered),
            "status": "completed",
            "total": _money(totals),
            "currency": "EUR",
            "coupon_code": "",
            "discount_total": "",
        }
    )
    lines = pd.DataFrame(
        {
            "order_id": order_ids.to_numpy()[line_order],
            "line_number": (line_number + 1).astype(str),
            "product_id": catalogue["product_id"].to_numpy()[pick],
            "category": catalogue["category"].to_numpy()[pick],
            "quantity": quantity.astype(str),
            "unit_price": _money(unit_price),
        }
    )
    return {"orders": orders_frame, "order_lines": lines}
