"""A local provider sandbox: a real HTTP (and SMTP) server speaking the providers' API
shapes, for tests, the benchmark and the demo.

It speaks Twilio's Messages API, Mailchimp's members, tags and batch operations, a popup
webhook, and (optionally) SMTP with an ESP-style message search. It records every
message and member change it accepted, so a caller can check the sync against the
provider's own record: nothing lost, nothing twice. It injects faults at a set rate,
deterministically from the seed, the request's key and its attempt number:

    rate_limit              429 with Retry-After (SMTP: 421)
    server_error            500, nothing accepted
    unavailable             503, nothing accepted
    timeout                 no answer within the client's timeout, nothing accepted
    accepted_then_error     accepted and recorded, then 500: the duplicate trap
    accepted_then_timeout   accepted and recorded, then no answer in time
    partial_batch           (Mailchimp batches) some operations fail with 503, the rest run

A configured `rate_limit` (requests per second) is enforced like a provider does, with
429s; those are counted apart from the injected ones (`stats()["throttled"]`).

For each accepted message it also produces the engagement feedback a real provider sends
(delivered, opened, clicked, bounced, complained, unsubscribed; SMS delivered or
undelivered and STOP replies) at configurable deterministic rates, readable from
`GET /_sandbox/events?after=<seq>`.

    handle = start_sandbox(fault_rate=0.3, seed=7, rate_limit=200)
    handle.url, handle.accepted(), handle.stats(), handle.stop()
One module per provider, each stating which published document its behaviour follows:
`twilio` (Programmable Messaging), `mailchimp` (Marketing API members, tags and batch
operations), `popup` (the shop's own webhook), `smtp` (SMTP and an ESP-style message
search); `state` holds the record and the fault injection, `server` the HTTP plumbing and
the handle. Meta's Custom Audience is written to files (`winback.delivery.providers.meta`),
so it needs no fake.
"""

from winback.simulation.sandbox.server import (
    LOCAL_LIMITS,
    SandboxHandle,
    serve_forever,
    start_sandbox,
)
from winback.simulation.sandbox.state import (
    BATCH_FAULT_KINDS,
    DEFAULT_FEEDBACK,
    FAULT_KINDS,
    STOP_WORDS,
    SandboxSettings,
    SandboxState,
)

__all__ = [
    "BATCH_FAULT_KINDS",
    "DEFAULT_FEEDBACK",
    "FAULT_KINDS",
    "LOCAL_LIMITS",
    "STOP_WORDS",
    "SandboxHandle",
    "SandboxSettings",
    "SandboxState",
    "serve_forever",
    "start_sandbox",
]
