"""The sandbox's HTTP server: routing to each provider's fake, its own endpoints
(`/_sandbox/...`: what it accepted, its counters, the events feed), and the handle a
caller starts and stops it with."""

from __future__ import annotations

import hmac
import json
import logging
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from winback.local.ports import free_port
from winback.simulation.sandbox.mailchimp import (
    BatchResultsHandler,
    MailchimpRoutes,
    settle_batches,
)
from winback.simulation.sandbox.popup import PopupRoutes
from winback.simulation.sandbox.smtp import SmtpHandler, SmtpLookupRoutes
from winback.simulation.sandbox.state import SandboxSettings, SandboxState
from winback.simulation.sandbox.twilio import TwilioRoutes


class Handler(TwilioRoutes, MailchimpRoutes, PopupRoutes, SmtpLookupRoutes):
    """Every fake's routes on one server, as the tests and the demo use one base URL."""

    def _dispatch(self, method: str) -> None:
        state = self.state
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        own = parts[:1] == ["_sandbox"]  # the sandbox's own endpoints are not API traffic
        if not own:
            with state.lock:
                state.active += 1
                state.peak_active = max(state.peak_active, state.active)
                state.request_times.append(time.monotonic())
        family = {"2010-04-01": "twilio", "3.0": "mailchimp", "popup": "popup"}.get(
            parts[0] if parts else "", "api"
        )
        try:
            if not own and state.settings.latency:
                time.sleep(state.settings.latency)  # the network and the provider's work
            left = None if own else state.inside_quiet(family)
            if left is not None and state.settings.refuse_inside_retry_after:
                # Inside a window the provider asked to be left alone (Retry-After).
                self._body()
                self._send(
                    429,
                    {"code": 20429, "message": "Too Many Requests", "status": 429},
                    {"Retry-After": str(max(1, int(left + 0.999)))},
                )
                return
            if family == "mailchimp" and not self._mailchimp_authorized():
                self._body()
                return
            if not own and state.bucket and not state.bucket.take():
                with state.lock:
                    state.counters["throttled"] += 1
                self._body()
                self._send(
                    429,
                    {"code": 20429, "message": "Too Many Requests", "status": 429},
                    {"Retry-After": "1"},
                )
                return
            route = self._route(method, parts)
            if route is None:
                self._body()
                self._send(404, {"status": 404, "detail": "no such resource"})
                return
            route(parts, query)
        finally:
            if not own:
                with state.lock:
                    state.active -= 1

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _route(self, method: str, parts: list[str]):
        if parts[:2] == ["2010-04-01", "Accounts"] and len(parts) >= 4:
            if parts[3] == "Messages.json":
                return self.twilio_create if method == "POST" else self.twilio_list
        if parts[:1] == ["3.0"]:
            if parts[1:2] == ["batches"]:
                if method == "POST" and len(parts) == 2:
                    return self.mailchimp_batch
                if method == "GET" and len(parts) == 2:
                    return self.mailchimp_batch_list
                if method == "GET" and len(parts) == 3:
                    return self.mailchimp_batch_status
            if parts[1:2] == ["lists"] and len(parts) >= 5 and parts[3] == "members":
                if len(parts) == 5 and method == "PUT":
                    return self.mailchimp_put_member
                if len(parts) == 5 and method == "GET":
                    return self.mailchimp_get_member
                if len(parts) == 6 and parts[5] == "tags" and method == "POST":
                    return self.mailchimp_tags
        if parts[:2] == ["popup", "entries"]:
            return self.popup_create if method == "POST" else self.popup_get
        if parts[:1] == ["_sandbox"] and method == "POST" and parts[1:2] == ["credentials"]:
            return self.sandbox_credentials
        if parts[:1] == ["_sandbox"] and method == "GET":
            return {
                "events": self.sandbox_events,
                "accepted": self.sandbox_accepted,
                "stats": self.sandbox_stats,
                "webhooks": self.sandbox_webhooks,
                "smtp-messages": self.smtp_lookup,
            }.get(parts[1] if len(parts) > 1 else "")
        return None

    # -- sandbox's own endpoints ----------------------------------------------------------

    def sandbox_events(self, parts, query):
        token = self.state.settings.events_token
        if token and not hmac.compare_digest(
            (self.headers.get("Authorization") or "").encode(), f"Bearer {token}".encode()
        ):
            self._send(401, {"status": 401, "detail": "a bearer token is required"})
            return
        after, limit = int(query.get("after", 0)), int(query.get("limit", 1000))
        with self.state.lock:
            events = self.state.events[after : after + limit]
        self._send(200, {"events": events, "next": after + len(events)})

    def sandbox_webhooks(self, parts, query):
        dispatcher = getattr(self.state, "dispatcher", None)
        self._send(200, dispatcher.stats() if dispatcher else {"enabled": False})

    def sandbox_accepted(self, parts, query):
        settle_batches(self.state)
        self._send(200, self.state.accepted())

    def sandbox_credentials(self, parts, query):
        """Rotate the credentials the providers accept (an auth token or API key renewed
        at the provider): requests with the old ones get 401 from now on."""
        change = json.loads(self._body() or b"{}")
        with self.state.lock:
            for name in ("auth_token", "api_key"):
                if change.get(name):
                    self.state.credentials[name] = change[name]
        self._send(204, {})

    def sandbox_stats(self, parts, query):
        self._send(200, self.state.stats())


# --------------------------------------------------------------------------- handles


# What this sandbox takes from one client, declared on the connections it hands out the
# way a user declares what their provider agreed to (docs/providers.md), so the sync's
# limiter paces the demo and the tests as it paces production. The sandbox runs in its
# own process on the same machine: on two quiet cores it takes ~260 SMTP messages/s from
# 8 reused sessions (~200/s with one session per message), the client's message
# building being the larger cost, and answers an HTTP request in ~2 ms per connection.
# A sandbox started with a `rate_limit` declares that rate instead, as a provider's
# contract would.
LOCAL_LIMITS: dict[str, dict[str, float]] = {
    "smtp": {"requests_per_second": 200, "max_concurrency": 8},
    "twilio": {"requests_per_second": 300, "max_concurrency": 8},
    "popup": {"requests_per_second": 300, "max_concurrency": 8},
    "mailchimp": {"requests_per_second": 50, "max_concurrency": 10},
}


@dataclass
class SandboxHandle:
    url: str
    smtp_port: int | None
    _stop: object
    settings: SandboxSettings = field(default_factory=SandboxSettings)

    def stop(self) -> None:
        self._stop()

    def rotate_credentials(self, auth_token: str | None = None, api_key: str | None = None):
        """Renew the Twilio auth token and/or the Mailchimp API key at the 'provider'."""
        import httpx

        change = {"auth_token": auth_token, "api_key": api_key}
        httpx.post(f"{self.url}/_sandbox/credentials", json=change, timeout=10).raise_for_status()

    def _get(self, path: str) -> dict:
        import httpx

        token = self.settings.events_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=60).json()

    def accepted(self) -> dict:
        """What the provider accepted: messages per client reference, members per list."""
        return self._get("/_sandbox/accepted")

    def stats(self) -> dict:
        return self._get("/_sandbox/stats")

    def events(self, after: int = 0) -> list[dict]:
        return self._get(f"/_sandbox/events?after={after}&limit=100000")["events"]

    @property
    def rate_limit(self) -> float | None:
        """Requests per second the sandbox enforces, if any."""
        return self.settings.rate_limit

    def declared_limits(self, provider: str) -> dict[str, float]:
        """The `requests_per_second` and `max_concurrency` its connections declare."""
        limits = dict(LOCAL_LIMITS[provider])
        if self.rate_limit:
            limits["requests_per_second"] = min(limits["requests_per_second"], self.rate_limit)
        return limits

    def webhook_stats(self) -> dict:
        """Webhooks sent to `winback serve`: sent, refused (forged on purpose), failed,
        pending."""
        return self._get("/_sandbox/webhooks")

    def wait_for_webhooks(self, timeout: float = 120.0) -> dict:
        """Wait until every event produced so far has been pushed; returns the stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.webhook_stats()
            if not stats.get("pending"):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"sandbox webhooks still pending after {timeout} s: {stats}")
            time.sleep(0.1)

    def returnpath_env(self) -> dict[str, str]:
        """What `winback serve` needs to accept this sandbox's webhooks: SendGrid's public
        key (the Twilio auth token is the Twilio connection's password)."""
        return {"WINBACK_SENDGRID_WEBHOOK_PUBLIC_KEY": self.settings.sendgrid_public_key}

    def connections_env(self, list_id: str = "winback-list") -> dict[str, str]:
        """`AIRFLOW_CONN_*` values that point winback's providers at this sandbox.

        The Twilio connection trusts a lookup that does not find a message once the
        sandbox's list lag has passed (a real account keeps Twilio's documented bound).
        """
        settings = self.settings
        env = {
            "AIRFLOW_CONN_WINBACK_TWILIO": json.dumps(
                {
                    "conn_type": "http",
                    "login": settings.account_sid,
                    "password": settings.auth_token,
                    "extra": {
                        "base_url": self.url,
                        "from": "+15005550006",
                        # Twilio posts status callbacks to this URL: winback serve's
                        # route when the sandbox pushes webhooks, else its own sink.
                        "status_callback": (
                            f"{settings.webhook_url.rstrip('/')}/webhooks/twilio/status"
                            if settings.webhook_url
                            else f"{self.url}/_sandbox/twilio-status"
                        ),
                        "lookup_trust_seconds": settings.list_lag + 1.0,
                        **self.declared_limits("twilio"),
                    },
                }
            ),
            "AIRFLOW_CONN_WINBACK_MAILCHIMP": json.dumps(
                {
                    "conn_type": "http",
                    "password": settings.api_key,
                    "extra": {
                        "base_url": self.url,
                        "list_id": list_id,
                        **self.declared_limits("mailchimp"),
                    },
                }
            ),
            "AIRFLOW_CONN_WINBACK_POPUP": json.dumps(
                {
                    "conn_type": "http",
                    "extra": {"base_url": self.url, **self.declared_limits("popup")},
                }
            ),
        }
        if not settings.webhook_url:  # no webhooks: winback polls the sandbox's feed
            events = {"conn_type": "http", "extra": {"url": f"{self.url}/_sandbox/events"}}
            if settings.events_token:
                events["password"] = settings.events_token
            env["AIRFLOW_CONN_WINBACK_EVENTS"] = json.dumps(events)
        if self.smtp_port:
            env["AIRFLOW_CONN_WINBACK_SMTP"] = json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": self.smtp_port,
                    "extra": {
                        "from": "winback@shop.test",
                        "lookup_url": f"{self.url}/_sandbox/smtp-messages",
                        # The sandbox's search knows a message the moment it is accepted.
                        "lookup_trust_seconds": 1.0,
                        **self.declared_limits("smtp"),
                    },
                }
            )
        return env


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        # `stop` waits for the loop to notice its shutdown: socketserver's default poll of
        # half a second, for each of the two servers, added a second to every stop.
        super().serve_forever(poll_interval)

    def handle_error(self, request, client_address):
        # A client that gives up (timeout) or dies (the kill test) resets its connection:
        # expected here, not worth a traceback.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


def _serve(settings: SandboxSettings, host: str, port: int, smtp: bool):
    state = SandboxState(settings)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = _Server((host, port), handler)
    server.daemon_threads = True
    # Mailchimp's batch results live on another host (S3): a server of their own.
    results = _Server((host, 0), type("BoundResults", (BatchResultsHandler,), {"state": state}))
    state.batch_results_url = f"http://{host}:{results.server_address[1]}/batch-results"
    threading.Thread(target=results.serve_forever, daemon=True).start()
    server.results_server = results
    controller = None
    if smtp:
        from aiosmtpd.controller import Controller

        # aiosmtpd logs every envelope at INFO, addresses included: keep them out of logs.
        logging.getLogger("mail.log").setLevel(logging.WARNING)

        # aiosmtpd checks its server by connecting to the port: it needs a real one.
        controller = Controller(SmtpHandler(state), hostname=host, port=free_port(host))
        controller.start()
    state.dispatcher = None
    if settings.webhook_url:
        from winback.simulation.sandbox.webhooks import WebhookDispatcher

        state.dispatcher = WebhookDispatcher(state, settings.webhook_url)
        state.dispatcher.start()
    return server, controller


def start_sandbox(
    fault_rate: float = 0.0,
    seed: int = 0,
    rate_limit: float | None = None,
    *,
    smtp: bool = True,
    in_process: bool = False,
    host: str = "127.0.0.1",
    port: int = 0,
    **settings,
) -> SandboxHandle:
    """Start the sandbox in a thread (or, `in_process=True`, a child process so its work
    does not compete with the caller's interpreter lock) and return its handle."""
    config = SandboxSettings(fault_rate=fault_rate, seed=seed, rate_limit=rate_limit, **settings)
    if config.webhook_url and not config.sendgrid_private_key:
        from winback.simulation.sandbox.webhooks import new_signing_key

        config.sendgrid_private_key, config.sendgrid_public_key = new_signing_key()
    if not in_process:
        server, controller = _serve(config, host, port, smtp)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop_thread():
            server.shutdown()
            server.server_close()
            server.results_server.shutdown()
            server.results_server.server_close()
            if controller:
                controller.stop()
            if server.RequestHandlerClass.state.dispatcher:
                server.RequestHandlerClass.state.dispatcher.stop()

        smtp_port = controller.port if controller else None
        url = f"http://{host}:{server.server_address[1]}"
        return SandboxHandle(url, smtp_port, stop_thread, config)

    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    process = context.Process(
        target=_run_child, args=(config, host, port, smtp, ready), daemon=True
    )
    process.start()
    http_port, smtp_port = ready.get(timeout=60)

    def stop_process():
        process.terminate()
        process.join(10)

    return SandboxHandle(f"http://{host}:{http_port}", smtp_port, stop_process, config)


def _run_child(config: SandboxSettings, host: str, port: int, smtp: bool, ready) -> None:
    server, controller = _serve(config, host, port, smtp)
    smtp_port = controller.port if controller else None
    ready.put((server.server_address[1], smtp_port))
    server.serve_forever()


def serve_forever(handle: SandboxHandle) -> None:  # pragma: no cover - interactive
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        handle.stop()
