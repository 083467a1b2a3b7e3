"""Provider adapters behind one small interface.

A *message provider* delivers one outbox row (an email, an SMS, a popup entry) and can,
when it supports it, look up whether a message it may or may not have accepted is there:
`send` and `lookup` are all the exactly-once machinery in `winback.delivery.send` needs. An
*audience provider* mirrors a set of members (Mailchimp tags, a Meta Custom Audience).

Every adapter is configured from an Airflow connection (`connection(conn_id)`), read from
the `AIRFLOW_CONN_<ID>` environment variable (JSON or URI, as Airflow itself accepts
them), so the same code runs inside a task and from the command line, and no secret is
ever written to a file. Adding a provider is one new module with a `from_connection`
constructor, registered in `winback.delivery.providers.registry`: returned by
`message_providers()` (keyed by the channel it delivers) or `audience_providers()`.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

from winback.delivery.providers.ratelimit import RateLimits, concurrency_for


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"  # the provider acknowledged it, with its message id
    REJECTED = "rejected"  # permanently refused (invalid number, bad address): never resent
    RETRY = "retry"  # certainly not accepted (429, connection refused): send again later
    UNCLEAR = "unclear"  # may or may not have been accepted (timeout, 5xx): look up first
    # Refused for the account or the sender, not for this message (401 bad credentials,
    # 403, an unknown account, Twilio's 21611 full sender queue): nothing was sent, and
    # every other message would get the same answer. The provider is paused for the run
    # and the row is sent again by a later run, without counting it as an attempt.
    PAUSED = "paused"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    provider_message_id: str | None = None
    reason: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class OutgoingMessage:
    idempotency_key: str
    customer_id: str
    campaign_id: str
    channel: str
    to: str | None
    subject: str | None
    body: str


@runtime_checkable
class MessageProvider(Protocol):
    name: str
    limits: RateLimits
    # False when the provider has no way to say whether it has a message (plain SMTP): an
    # unclear result then stays unclear instead of being resent.
    can_lookup: bool
    # How long after a request that may have been accepted a lookup that does not find
    # the message can be believed: the provider's documented bound on how late an
    # accepted message can appear in what `lookup` reads. Before that, "not found" means
    # "not yet known", and the row waits (see docs/providers.md for each provider's bound).
    negative_lookup_trusted_after: float

    async def send(self, message: OutgoingMessage) -> SendResult: ...

    async def lookup(self, message: OutgoingMessage, since: datetime) -> SendResult | None:
        """ACCEPTED with the provider's id when it has the message, None when it has not.

        Raises when the lookup itself fails: the row then stays unclear for the next run.
        """

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Member:
    """One contact of an audience; `email`/`phone` never leave the adapter unhashed
    unless the provider needs the address itself (Mailchimp does, Meta does not)."""

    customer_id: str
    email: str | None = None
    phone: str | None = None
    has_newsletter_consent: bool = False


@dataclass(frozen=True)
class MemberChange:
    audience: str  # the tag or audience name, e.g. "winback:we_miss_you"
    member: Member
    action: str  # "add" or "remove"


@dataclass
class AudienceResult:
    accepted: list[MemberChange] = field(default_factory=list)
    rejected: list[tuple[MemberChange, str]] = field(default_factory=list)
    retry: list[tuple[MemberChange, str]] = field(default_factory=list)
    # taken by the provider and still running: (change, the provider's batch id)
    pending: list[tuple[MemberChange, str]] = field(default_factory=list)

    def extend(self, other: AudienceResult) -> None:
        self.accepted.extend(other.accepted)
        self.rejected.extend(other.rejected)
        self.retry.extend(other.retry)
        self.pending.extend(other.pending)


class AccountRefused(Exception):
    """The provider refused the account or its credentials (401, 403): no request of the
    run would pass, so the provider is paused for the run."""


@runtime_checkable
class AudienceProvider(Protocol):
    name: str
    limits: RateLimits

    async def apply(self, changes: list[MemberChange], on_submitted=None) -> AudienceResult:
        """Apply adds and removes; each change ends accepted, rejected (with the reason),
        to retry, or pending in a batch the provider took (`on_submitted(changes, batch_id)`
        is called when it does). Applying a change twice has the effect of applying it
        once."""

    async def reconcile(self, changes: list[MemberChange]) -> set[MemberChange]:
        """The changes the provider already reflects (asked before re-applying changes a
        killed run left in flight)."""

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- connections


@dataclass(frozen=True)
class Connection:
    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """`extra.base_url`, else scheme://host[:port]."""
        if self.extra.get("base_url"):
            return str(self.extra["base_url"]).rstrip("/")
        host = self.host or ""
        if "://" in host:
            return host.rstrip("/")
        # As Airflow's HttpHook: the scheme is the `schema` field, http by default.
        if self.schema in ("http", "https"):
            scheme = self.schema
        else:
            scheme = "http" if self.conn_type == "http" else "https"
        port = f":{self.port}" if self.port else ""
        return f"{scheme}://{host}{port}"

    def limits(self, default: RateLimits, expected_latency: float | None = None) -> RateLimits:
        """The connection's limits over the provider's defaults.

        With `expected_latency` (seconds per request), a connection that sets no
        `max_concurrency` gets rate x latency connections (`extra.expected_latency_seconds`
        overrides the latency), so raising `requests_per_second` alone still reaches it.
        """
        rate = float(self.extra.get("requests_per_second", default.requests_per_second))
        if "max_concurrency" in self.extra:
            concurrency = int(self.extra["max_concurrency"])
        elif expected_latency is not None:
            latency = float(self.extra.get("expected_latency_seconds", expected_latency))
            concurrency = concurrency_for(rate, latency)
        else:
            concurrency = default.max_concurrency
        return RateLimits(
            requests_per_second=rate,
            max_concurrency=concurrency,
            timeout_seconds=float(self.extra.get("timeout_seconds", default.timeout_seconds)),
        )

    def __repr__(self) -> str:  # never print the password
        return f"Connection({self.conn_id!r}, {self.conn_type!r}, host={self.host!r})"


class ConnectionNotConfigured(LookupError):
    pass


def env_var_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def is_configured(conn_id: str) -> bool:
    return bool(os.environ.get(env_var_name(conn_id)))


def connection(conn_id: str) -> Connection:
    """The Airflow connection `conn_id`, from `AIRFLOW_CONN_<ID>` (JSON or URI).

    Airflow sets the same variables for connections defined in its environment; a
    connection stored only in Airflow's metadata database is read through the Task SDK
    when running inside a task.
    """
    text = os.environ.get(env_var_name(conn_id))
    if text:
        return parse_connection(conn_id, text)
    try:  # inside an Airflow task, a connection may live in the metadata database
        from airflow.sdk import BaseHook  # noqa: PLC0415

        found = BaseHook.get_connection(conn_id)
    except Exception as error:  # noqa: BLE001  Airflow absent or no such connection
        raise ConnectionNotConfigured(
            f"connection {conn_id!r} is not configured: set {env_var_name(conn_id)}"
        ) from error
    return Connection(
        conn_id,
        found.conn_type or "",
        found.host,
        found.port,
        found.login,
        found.password,
        found.schema,
        found.extra_dejson or {},
    )


def parse_connection(conn_id: str, text: str) -> Connection:
    text = text.strip()
    if text.startswith("{"):
        data = json.loads(text)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra else {}
        return Connection(
            conn_id,
            data.get("conn_type", ""),
            data.get("host"),
            int(data["port"]) if data.get("port") else None,
            data.get("login"),
            data.get("password"),
            data.get("schema"),
            extra,
        )
    parts = urlsplit(text)
    query = dict(parse_qsl(parts.query))
    if "__extra__" in query:
        extra = json.loads(query["__extra__"])
    else:
        extra = dict(query)  # as Airflow does: URI extras are strings
    return Connection(
        conn_id,
        parts.scheme.replace("-", "_"),
        unquote(parts.hostname) if parts.hostname else None,
        parts.port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
        unquote(parts.path.lstrip("/")) or None,
        extra,
    )
