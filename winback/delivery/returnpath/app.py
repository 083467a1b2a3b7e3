"""`winback serve`: one ASGI application for everything that comes back.

| route | what |
| --- | --- |
| `GET /healthz` | 200 when the warehouse answers |
| `GET`, `HEAD /r/{code}` | tracked link: 302 to its landing page (`links`) |
| `GET`, `POST /u/{token}` | unsubscribe page, and one-click unsubscribe (`unsubscribe`) |
| `POST /webhooks/twilio/status`, `/webhooks/twilio/inbound` | Twilio (`twilio`) |
| `GET`, `POST /webhooks/mailchimp/{secret}` | Mailchimp list webhooks (`mailchimp`) |
| `POST /webhooks/sendgrid` | SendGrid Event Webhook (`sendgrid`) |

Every webhook is verified before anything is read from it (a bad or missing signature
is a 403 that changes nothing), stored once per provider event id, and committed before
the 2xx, so a provider that retries after a lost answer changes nothing. Request bodies
are bounded (`MAX_BODY_BYTES`). The access log has the route, never the path: codes,
tokens and the Mailchimp secret stay out of it, as does every value of a request.

Settings: `WINBACK_PUBLIC_URL` (the base the providers and customers reach, used to
check Twilio's signature and to build links), the Twilio auth token from connection
`winback_twilio` (its password; `extra.secondary_auth_token` during a rotation),
`WINBACK_MAILCHIMP_WEBHOOK_SECRET`, `WINBACK_SENDGRID_WEBHOOK_PUBLIC_KEY`.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import queue
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl

import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Route

from winback.delivery import feedback
from winback.delivery.providers import connection, is_configured
from winback.delivery.returnpath import links, mailchimp, sendgrid, tokens, twilio, unsubscribe
from winback.warehouse import db, tables

log = logging.getLogger("winback.serve")

MAILCHIMP_SECRET_ENV = "WINBACK_MAILCHIMP_WEBHOOK_SECRET"
SENDGRID_KEY_ENV = "WINBACK_SENDGRID_WEBHOOK_PUBLIC_KEY"
TWILIO_CONN_ID = "winback_twilio"
MAX_BODY_BYTES = 1_000_000  # SendGrid batches up to about 768 KB; nothing else comes close
MIN_SECRET_LENGTH = 32
POOL_SIZE = 8


class BodyTooLarge(Exception):
    pass


class ConnectionPool:
    """A few warehouse connections reused across requests (each request is one
    transaction, committed before its answer)."""

    def __init__(self, url: str, size: int = POOL_SIZE):
        self.url = url
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue(maxsize=size)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = psycopg.connect(self.url)
        try:
            with conn.transaction():
                yield conn
        except BaseException:
            conn.close()
            raise
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _form(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def _store(pool: ConnectionPool, events: list[dict]) -> feedback.IngestResult:
    with pool.transaction() as conn:
        return feedback.ingest(conn, events, ensure=False)


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.5rem 1rem}}</style></head><body>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=html.escape(title), body=body), status_code=status)


def not_found() -> HTMLResponse:
    return _page(
        "Link not found",
        "<h1>This link is not valid</h1><p>It may be mistyped or too old.</p>",
        404,
    )


def create_app(database_url: str | None = None) -> Starlette:
    pool = ConnectionPool(database_url or db.database_url())
    with pool.transaction() as conn:  # the tables every route reads or writes, once
        tables.ensure_schema(conn)

    def twilio_tokens() -> list[str]:
        if not is_configured(TWILIO_CONN_ID):
            return []
        conn = connection(TWILIO_CONN_ID)
        return [conn.password or "", str(conn.extra.get("secondary_auth_token", ""))]

    async def health(request: Request):
        def ping() -> None:
            with pool.transaction() as conn:
                conn.execute("select 1")

        try:
            await run_in_threadpool(ping)
        except psycopg.Error:
            return JSONResponse({"status": "warehouse unreachable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def redirect(request: Request):
        code = request.path_params["code"]

        def follow():
            with pool.transaction() as conn:
                target = links.resolve(conn, code)
                if target is not None and request.method == "GET":
                    links.record_click(conn, code, target)
                return target

        target = await run_in_threadpool(follow)
        if target is None:
            return not_found()
        return RedirectResponse(target.target_url, status_code=302)

    async def unsubscribe_link(request: Request):
        reference = tokens.verify_unsubscribe_token(request.path_params["token"])
        if reference is None:
            return not_found()
        body = await _body(request)
        form = dict(_form(body))
        if request.method == "GET":
            return _page(
                "Unsubscribe",
                "<h1>Unsubscribe</h1><p>Which messages should we stop sending you?</p>"
                '<form method="post">'
                '<p><label><input type="radio" name="channels" value="email" checked> '
                "Emails</label></p>"
                '<p><label><input type="radio" name="channels" value="sms"> Text messages'
                "</label></p>"
                '<p><label><input type="radio" name="channels" value="email,sms"> Both'
                "</label></p>"
                "<button>Unsubscribe</button></form>",
            )
        if form.get("List-Unsubscribe") == "One-Click" or "channels" not in form:
            chosen: tuple[str, ...] = ()  # one click: the message's own channel
        else:
            chosen = tuple(c for c in form["channels"].split(",") if c in unsubscribe.CHANNELS)
            if not chosen:
                return _page("Unsubscribe", "<p>Choose email, text messages or both.</p>", 400)

        def opt_out() -> bool:
            with pool.transaction() as conn:
                message = unsubscribe.find_message(conn, reference)
                if message is None:
                    return False
                unsubscribe.unsubscribe(conn, message, chosen or (message.channel,))
                return True

        if not await run_in_threadpool(opt_out):
            return not_found()
        return _page(
            "Unsubscribed",
            "<h1>You are unsubscribed</h1><p>You will not get these messages any more.</p>",
        )

    async def twilio_webhook(request: Request):
        body = await _body(request)
        params = _form(body)
        url = (
            tokens.public_url()
            + request.url.path
            + (f"?{request.url.query}" if request.url.query else "")
        )
        signature = request.headers.get(twilio.SIGNATURE_HEADER, "")
        if not twilio.is_genuine(twilio_tokens(), url, params, signature):
            return PlainTextResponse("signature does not match", status_code=403)
        form = dict(params)
        kind = request.path_params["kind"]
        event = twilio.status_event(form) if kind == "status" else twilio.inbound_event(form)
        if event is not None:
            await run_in_threadpool(_store, pool, [event])
        if kind == "inbound":  # TwiML: no automatic reply of ours (Twilio answers STOP itself)
            return PlainTextResponse("<Response/>", media_type="text/xml")
        return PlainTextResponse("", status_code=204)

    async def mailchimp_webhook(request: Request):
        secret = os.environ.get(MAILCHIMP_SECRET_ENV, "")
        if len(secret) < MIN_SECRET_LENGTH or not mailchimp.is_genuine(
            secret, request.path_params["secret"]
        ):
            return PlainTextResponse("not found", status_code=403)
        if request.method == "GET":  # Mailchimp checks the URL when the webhook is created
            return PlainTextResponse("ok")
        event = mailchimp.list_event(dict(_form(await _body(request))))
        if event is not None:
            await run_in_threadpool(_store, pool, [event])
        return PlainTextResponse("ok")

    async def sendgrid_webhook(request: Request):
        body = await _body(request)
        if not sendgrid.is_genuine(
            os.environ.get(SENDGRID_KEY_ENV, ""),
            body,
            request.headers.get(sendgrid.SIGNATURE_HEADER, ""),
            request.headers.get(sendgrid.TIMESTAMP_HEADER, ""),
        ):
            return PlainTextResponse("signature does not match", status_code=403)
        try:
            events = sendgrid.events(json.loads(body))
        except ValueError:
            return PlainTextResponse("expected a JSON array of events", status_code=400)
        if events:
            await run_in_threadpool(_store, pool, events)
        return PlainTextResponse("", status_code=204)

    routes = [
        Route("/healthz", health, methods=["GET"]),
        Route("/r/{code}", redirect, methods=["GET", "HEAD"]),
        Route("/u/{token}", unsubscribe_link, methods=["GET", "POST"]),
        Route("/webhooks/twilio/{kind:str}", twilio_webhook, methods=["POST"]),
        Route("/webhooks/mailchimp/{secret}", mailchimp_webhook, methods=["GET", "POST"]),
        Route("/webhooks/sendgrid", sendgrid_webhook, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        pool.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    # No redirect of ours but a tracked link's: a path with a trailing slash is a 404.
    app.router.redirect_slashes = False
    app.add_middleware(_AccessLog)
    return app


ROUTE_TEMPLATES = (
    ("/r/", "/r/{code}"),
    ("/u/", "/u/{token}"),
    ("/webhooks/mailchimp/", "/webhooks/mailchimp/{secret}"),
)


def route_template(path: str) -> str:
    """The path with its identifiers replaced: what the access log may show."""
    for prefix, template in ROUTE_TEMPLATES:
        if path.startswith(prefix):
            return template
    return (
        path
        if path in ("/healthz", "/webhooks/sendgrid") or path.startswith("/webhooks/twilio/")
        else "(other)"
    )


class _AccessLog:
    """One structured line per request: method, route template, status, milliseconds.
    Also turns an over-long body into 413 wherever it is read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except BodyTooLarge:
            status["code"] = 413
            response = PlainTextResponse("request body too large", status_code=413)
            await response(scope, receive, send)
        finally:
            log.info(
                "%s",
                json.dumps(
                    {
                        "method": scope["method"],
                        "route": route_template(scope["path"]),
                        "status": status["code"],
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                    }
                ),
            )


def serve(host: str = "127.0.0.1", port: int = 8090) -> None:
    """Run the service with uvicorn until interrupted (its own access log is off: ours
    carries no path identifiers)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(), host=host, port=port, access_log=False, log_level="warning")
