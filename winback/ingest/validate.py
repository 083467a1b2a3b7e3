"""Step 2: every value rule, as a vectorised screen and the reference checks behind it.

The screen (`screen_batch`) proves most rows valid with pyarrow.compute; every row it
cannot prove goes through the reference checks (`validate_chunk`, plain pandas), which
decide and word the reason, so a verdict never depends on which path a row took.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from winback.ingest import contract, phones
from winback.ingest.contract import Column, RawTable
from winback.ingest.quarantine import Normalisation, Rejection, raw_record

# RFC 5322 allows far more, but a winback email must be deliverable by an ordinary ESP:
# one @, no spaces, a dotted domain with an alphabetic top-level label.
_DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
EMAIL_PATTERN = re.compile(
    rf"^[a-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*\.[a-z]{{2,}}$"
)
MAX_AMOUNT = 10**12  # numeric(14, 2): 12 integer digits
AMOUNT_SCALE = Decimal("0.01")  # numeric(14, 2): 2 fraction digits
# A number as PostgreSQL's numeric input reads it: ASCII digits, one optional point, an
# optional exponent; no '_' or non-ASCII digits, which Python's Decimal would accept.
NUMBER_PATTERN = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Control characters (C0 but NUL, DEL, C1 with NEL) and the Unicode line and paragraph
# separators: in a free-text value (a first name, a product name) each run of them becomes
# one space, so no name can break a message header or a CSV line downstream. NUL is left
# to its own rule (PostgreSQL text cannot hold it: the row is quarantined). The RE2 form
# is the screen's (pyarrow.compute).
CONTROL_CHARACTERS = re.compile("[\x01-\x1f\x7f-\x9f\u2028\u2029]+")
CONTROL_CHARACTERS_RE2 = r"[\x01-\x1f\x{7f}-\x{9f}\x{2028}\x{2029}]"


def _decimal(text: str) -> Decimal | None:
    """The exact decimal `text` writes, or None; never a float, so nothing is rounded."""
    if not NUMBER_PATTERN.match(text):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _ascii_lower(values: pd.Series) -> pd.Series:
    # str.lower() turns some non-ASCII letters into ASCII ones (KELVIN SIGN into 'k'),
    # which would make a different, deliverable address: only A-Z are folded.
    return values.map(lambda v: v.translate(ASCII_LOWER))


def _countries(values: pd.Series) -> pd.Series:
    upper = values.str.strip().map(lambda v: v.translate(ASCII_UPPER))
    return upper.map(lambda v: contract.COUNTRY_CODE_ALIASES.get(v, v))


# --------------------------------------------------------------------------- reference checks
# The rules as plain pandas code: the authority on every verdict, reason text and rule
# code. The loader runs them only on the rows the vectorised screen below cannot prove
# valid (broken rows, and unusual but possibly valid spellings), so they cost little.


@dataclass
class ValidatedChunk:
    valid: pd.DataFrame  # normalised values, ready for COPY
    rejected: pd.DataFrame  # _source_line, column_name, reason, raw_record
    changed: list[Normalisation] = field(default_factory=list)  # text values of valid rows


def _check_column(
    column: Column, values: pd.Series, frame: pd.DataFrame, latest_allowed: pd.Timestamp
) -> tuple[pd.Series, pd.Series]:
    """Return (normalised values, reason or '' per row, rule or '' per row) for one column."""
    stripped = values.str.strip()
    empty = stripped == ""
    reason = pd.Series("", index=values.index, dtype=object)
    rule = pd.Series("", index=values.index, dtype=object)

    def flag(mask: pd.Series, text, code: str) -> None:
        reason[mask] = text if isinstance(text, str) else text[mask]
        rule[mask] = code

    normalised: pd.Series = stripped.astype(object)
    kind = column.kind

    if kind == "timestamp" or kind == "date":
        parsed = pd.to_datetime(stripped.where(~empty), errors="coerce", utc=True, format="ISO8601")
        bad = parsed.isna() & ~empty
        flag(bad, f"unparseable {kind} '" + stripped + "'", f"unparseable_{kind}")
        if kind == "timestamp":  # events cannot be in the future; dates (expiries) can
            future = (parsed > latest_allowed) & ~bad
            flag(
                future,
                f"timestamp in the future (after {latest_allowed.isoformat()})",
                "future_timestamp",
            )
        if kind == "timestamp":
            normalised = parsed.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").astype(object)
        else:
            normalised = parsed.dt.strftime("%Y-%m-%d").astype(object)
        normalised[parsed.isna()] = ""
    elif kind in ("amount", "integer"):
        numbers = stripped.map(_decimal)
        parsed_ok = numbers.notna()
        bad = ~parsed_ok & ~empty
        flag(bad, f"non-numeric {kind} '" + stripped + "'", f"non_numeric_{kind}")
        ok = parsed_ok.copy()
        if kind == "integer":
            fractional = ok & numbers.map(lambda v: v is not None and v != v.to_integral_value())
            flag(fractional, "not a whole number '" + stripped + "'", "not_whole_number")
            ok &= ~fractional
        if not column.signed:
            negative = ok & numbers.map(lambda v: v is not None and v < 0)
            flag(negative, f"negative {kind} " + stripped, f"negative_{kind}")
        too_large = ok & numbers.map(lambda v: v is not None and abs(v) >= MAX_AMOUNT)
        flag(too_large, f"{kind} out of range " + stripped, f"{kind}_out_of_range")
        ok &= ~too_large
        if kind == "amount":
            # Never rounded: a value with more decimals than the column keeps is refused.
            too_precise = ok & numbers.map(
                lambda v: v is not None and abs(v) < MAX_AMOUNT and v != v.quantize(AMOUNT_SCALE)
            )
            flag(too_precise, "more than 2 decimals " + stripped, "too_precise")
        if kind == "integer" and ok.any():
            # '2.0' or '1e3' are whole numbers, but bigint's input parser refuses them.
            normalised = normalised.astype(object)
            normalised[ok] = numbers[ok].map(lambda v: str(int(v))).astype(object)
    elif kind == "email":
        lowered = _ascii_lower(stripped)
        bad = ~empty & ~lowered.str.match(EMAIL_PATTERN)
        flag(bad, "malformed email", "malformed_email")
        normalised = lowered.astype(object)
    elif kind == "phone":
        countries = _countries(frame["country"]) if "country" in frame else ""
        e164_values = pd.Series("", index=values.index, dtype=object)
        for idx in stripped.index[~empty]:
            e164 = phones.to_e164(stripped[idx], countries[idx] if len(countries) else "")
            if e164 is None:
                reason[idx] = "invalid phone number for the customer's country"
                rule[idx] = "invalid_phone"
            else:
                e164_values[idx] = e164
        normalised = e164_values
    elif kind == "country":
        upper = _countries(stripped)
        bad = ~empty & ~upper.isin(contract.country_codes())
        flag(bad, "not an ISO 3166-1 country code '" + stripped + "'", "invalid_country")
        normalised = upper.astype(object)
    elif kind == "currency":
        upper = stripped.map(lambda v: v.translate(ASCII_UPPER))
        bad = ~empty & ~upper.isin(contract.currency_codes())
        flag(bad, "not an ISO 4217 currency code '" + stripped + "'", "invalid_currency")
        normalised = upper.astype(object)
    elif kind == "text":
        normalised = stripped.str.replace(CONTROL_CHARACTERS, " ", regex=True).str.strip()
    elif kind == "enum":
        lowered = _ascii_lower(stripped)
        bad = ~empty & ~lowered.isin(column.choices)
        expected = f"' (expected one of {', '.join(column.choices)})"
        flag(bad, "unexpected value '" + stripped + expected, "unexpected_value")
        normalised = lowered.astype(object)

    # Last, so that they win over the kind's reason, which would quote the value.
    longest = contract.max_length(column)
    lengths = stripped.str.len()
    flag(
        lengths > longest,
        lengths.map(lambda n: f"{n} characters, at most {longest}"),
        "value_too_long",
    )
    holds_nul = values.str.contains("\x00", regex=False)
    flag(holds_nul, "a NUL character, which PostgreSQL text cannot hold", "invalid_character")
    if column.required:
        flag(empty, "missing value", "missing_value")
    return normalised, reason, rule


def validate_chunk(raw_table: RawTable, frame: pd.DataFrame, load_date: date) -> ValidatedChunk:
    # Data for day D may carry any time of day D, in any time zone ahead of UTC.
    latest_allowed = pd.Timestamp(datetime.combine(load_date + timedelta(days=1), time(), UTC))
    latest_allowed += pd.Timedelta(hours=14)
    reasons: dict[str, pd.Series] = {}
    rules: dict[str, pd.Series] = {}
    normalised: dict[str, pd.Series] = {}
    for column in raw_table.columns:
        values, reason, rule = _check_column(column, frame[column.name], frame, latest_allowed)
        normalised[column.name] = values
        reasons[column.name] = reason
        rules[column.name] = rule

    reason_frame = pd.DataFrame(reasons)
    has_reason = reason_frame != ""
    is_bad = has_reason.any(axis=1)
    first_bad_column = has_reason.idxmax(axis=1)
    all_reasons = reason_frame[is_bad].apply(
        lambda row: "; ".join(f"{col}: {text}" for col, text in row.items() if text), axis=1
    )
    rule_frame = pd.DataFrame(rules)
    first_rule = pd.Series(
        [rule_frame.at[i, c] for i, c in first_bad_column[is_bad].items()],
        index=first_bad_column[is_bad].index,
        dtype=object,
    )

    valid = pd.DataFrame(normalised)[~is_bad]
    valid["_source_line"] = frame.loc[~is_bad, "_source_line"]
    changed = [
        Normalisation(int(line), column.name, written, loaded)
        for column in raw_table.columns
        if column.kind == "text"
        for line, written, loaded in zip(
            frame.loc[~is_bad, "_source_line"],
            frame.loc[~is_bad, column.name],
            valid[column.name],
            strict=True,
        )
        if loaded != written.strip()
    ]
    rejected_raw = frame.loc[is_bad, raw_table.column_names]
    rejected = pd.DataFrame(
        {
            "_source_line": frame.loc[is_bad, "_source_line"],
            "column_name": first_bad_column[is_bad],
            "rule": first_rule,
            "reason": all_reasons if len(all_reasons) else pd.Series(dtype=object),
            "raw_record": rejected_raw.apply(lambda r: raw_record(r.to_dict()), axis=1)
            if len(rejected_raw)
            else pd.Series(dtype=object),
        }
    )
    return ValidatedChunk(valid=valid, rejected=rejected, changed=changed)


# --------------------------------------------------------------------------- the screen
# Vectorised checks that prove a value valid only where the reference checks would accept
# it and normalise it the same way; anything else is left to the reference checks.
# Strict forms only: a timestamp 'YYYY-MM-DDTHH:MM:SSZ' (no fraction, offset or leap
# second; a year pandas can represent), a date 'YYYY-MM-DD', a decimal with at most 12
# integer and 2 fraction digits, ASCII emails and codes (Python's lower/upper equal the
# ASCII ones there).

_YMD = r"(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
STRICT_TIMESTAMP = rf"^{_YMD}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$"
STRICT_DATE = rf"^{_YMD}$"
STRICT_AMOUNT = r"^[0-9]{1,12}(?:\.[0-9]{1,2})?$"
STRICT_INTEGER = r"^[0-9]{1,12}$"
STRICT_SIGNED_INTEGER = r"^-?[0-9]{1,12}$"
CODE_LISTS = {"country": contract.country_codes, "currency": contract.currency_codes}
UTC_SECONDS = pa.timestamp("s", "UTC")


@functools.cache
def python_whitespace() -> str:
    """Every character `str.strip()` removes, so that the screen trims exactly as it does."""
    return "".join(filter(str.isspace, map(chr, range(sys.maxunicode + 1))))


def _latest_allowed(load_date: date) -> datetime:
    # Data for day D may carry any time of day D, in any time zone ahead of UTC.
    return datetime.combine(load_date + timedelta(days=1), time(), UTC) + timedelta(hours=14)


def _calendar_checked(trimmed: pa.Array, pattern: str, fmt: str, placeholder: str, as_type):
    """(strict-form mask, parsed value): the strict form that names a real calendar day."""
    strict = pc.match_substring_regex(trimmed, pattern)
    filled = pc.if_else(strict, trimmed, placeholder)
    try:
        # Arrow's ISO 8601 cast refuses an impossible day ('2025-02-30') for the whole
        # block, so it only serves when every strict value is a real day (the usual case).
        return strict, pc.cast(filled, as_type)
    except pa.ArrowInvalid:
        pass
    # strptime rolls an impossible day over ('2025-02-30' -> March 2): compare the day.
    parsed = pc.strptime(filled, format=fmt, unit="s", error_is_null=True)
    day_written = pc.cast(pc.utf8_slice_codeunits(filled, 8, 10), pa.int64())
    same_day = pc.fill_null(pc.equal(pc.day(parsed), day_written), False)
    return pc.and_(strict, same_day), pc.cast(parsed, as_type)


def _screen_phones(trimmed: pa.Array, countries: pa.Array | None, empty: pa.Array):
    """(E.164 or null, valid) per row; each distinct number and country is parsed once."""
    rows = len(trimmed)
    filled = pc.indices_nonzero(pc.invert(empty))
    values = np.full(rows, None, dtype=object)
    valid = np.ones(rows, dtype=bool)
    if len(filled):
        numbers = trimmed.take(filled).to_pylist()
        codes = countries.take(filled).to_pylist() if countries is not None else [""] * len(numbers)
        e164 = phones.to_e164_many(list(zip(numbers, codes, strict=True)))
        where = filled.to_numpy()
        values[where] = e164
        valid[where] = [v is not None for v in e164]
    return pa.array(values, pa.string()), pa.array(valid)


def screen_batch(raw_table: RawTable, batch: pa.Table, load_date: date):
    """(normalised string columns with null for empty, rows proven valid) for one block."""
    latest = pa.scalar(_latest_allowed(load_date), pa.timestamp("s", "UTC"))
    trimmed = {
        c.name: pc.utf8_trim(batch.column(c.name).combine_chunks(), python_whitespace())
        for c in raw_table.columns
    }
    countries = pc.ascii_upper(trimmed["country"]) if "country" in trimmed else None
    proven = pa.array(np.ones(batch.num_rows, dtype=bool))
    normalised: dict[str, pa.Array] = {}
    for column in raw_table.columns:
        value = trimmed[column.name]
        empty = pc.equal(pc.binary_length(value), 0)
        ok, value = _screen_column(column, value, empty, countries, latest)
        ok = pc.and_not(ok, empty) if column.required else pc.or_(ok, empty)
        proven = pc.and_(proven, ok)
        normalised[column.name] = pc.if_else(empty, pa.scalar(None, pa.string()), value)
    return normalised, proven


def _fits(column: Column, value: pa.Array) -> pa.Array:
    """Short enough for the column, and no NUL (which PostgreSQL text cannot hold)."""
    short = pc.less_equal(pc.utf8_length(value), contract.max_length(column))
    return pc.and_(short, pc.invert(pc.match_substring(value, "\x00")))


def _screen_column(column: Column, value, empty, countries, latest):
    kind = column.kind
    if kind == "id":
        return _fits(column, value), value
    if kind == "text":  # control characters are replaced (and recorded) by the checks
        plain = pc.invert(pc.match_substring_regex(value, CONTROL_CHARACTERS_RE2))
        return pc.and_(_fits(column, value), plain), value
    if kind == "timestamp":
        ok, parsed = _calendar_checked(
            value, STRICT_TIMESTAMP, "%Y-%m-%dT%H:%M:%SZ", "2000-01-01T00:00:00Z", UTC_SECONDS
        )
        return pc.and_(ok, pc.fill_null(pc.less_equal(parsed, latest), False)), value
    if kind == "date":
        return _calendar_checked(value, STRICT_DATE, "%Y-%m-%d", "2000-01-01", pa.date32())[
            0
        ], value
    if kind == "amount":
        return pc.match_substring_regex(value, STRICT_AMOUNT), value
    if kind == "integer":
        pattern = STRICT_SIGNED_INTEGER if column.signed else STRICT_INTEGER
        return pc.match_substring_regex(value, pattern), value
    if kind == "phone":
        e164, valid = _screen_phones(value, countries, empty)
        return pc.and_(valid, _fits(column, value)), e164
    ascii_only = pc.string_is_ascii(value)
    if kind == "email":
        lowered = pc.ascii_lower(value)
        matches = pc.match_substring_regex(lowered, EMAIL_PATTERN.pattern)
        return pc.and_(pc.and_(ascii_only, matches), _fits(column, value)), lowered
    if kind in CODE_LISTS:
        upper = pc.ascii_upper(value)
        codes = pa.array(sorted(CODE_LISTS[kind]()), pa.string())
        return pc.and_(ascii_only, pc.is_in(upper, value_set=codes)), upper
    if kind == "enum":
        lowered = pc.ascii_lower(value)
        choices = pa.array(column.choices, pa.string())
        return pc.and_(ascii_only, pc.is_in(lowered, value_set=choices)), lowered
    raise ValueError(f"no screen for column kind {kind!r}")


@dataclass
class CheckedBatch:
    valid: pa.Table  # normalised strings (null for empty) and _source_line, ready for COPY
    rejected: list[Rejection]
    changed: list[Normalisation] = field(default_factory=list)


def check_batch(raw_table: RawTable, batch: pa.Table, load_date: date) -> CheckedBatch:
    """Every value rule for one block: the screen, then the reference checks on the rest."""
    normalised, proven = screen_batch(raw_table, batch, load_date)
    names = raw_table.column_names
    screened = pa.table({**normalised, "_source_line": batch.column("_source_line")})
    if pc.all(proven).as_py():
        return CheckedBatch(valid=screened, rejected=[])
    doubtful = batch.filter(pc.invert(proven)).to_pandas()
    checked = validate_chunk(raw_table, doubtful, load_date)
    rescued = pa.table(
        {
            **{
                c: pa.array(
                    [v if isinstance(v, str) and v else None for v in checked.valid[c]],
                    pa.string(),
                )
                for c in names
            },
            "_source_line": pa.array(checked.valid["_source_line"].to_numpy(), pa.int64()),
        }
    )
    rejected = [
        Rejection(int(line), column, rule, reason, record)
        for line, column, rule, reason, record in checked.rejected[
            ["_source_line", "column_name", "rule", "reason", "raw_record"]
        ].itertuples(index=False)
    ]
    return CheckedBatch(
        valid=pa.concat_tables([screened.filter(proven), rescued]),
        rejected=rejected,
        changed=checked.changed,
    )
