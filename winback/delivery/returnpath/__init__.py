"""The return path: what comes back from customers and providers, served by `winback serve`.

- `links`: tracked short links (`GET /r/{code}`), a 302 to the stored landing page and
  one `clicked` event per message;
- `unsubscribe`: signed per-recipient opt-out links, one-click (RFC 8058) and a page;
- `twilio`, `mailchimp`, `sendgrid`: each provider's signed webhooks, verified as its
  documentation says, stored once per provider event before the 2xx;
- `app`: the ASGI application that routes them; `tokens`: the HMAC tokens.

docs/providers.md names the documentation each module follows.
"""
