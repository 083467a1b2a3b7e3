"""The demo's providers and its return path, started together and stopped together.

The sandbox plays the providers; `winback serve` runs as its own process on 127.0.0.1,
as it would in a deployment; the sandbox pushes its feedback there as signed webhooks
(Twilio status callbacks and STOP replies, SendGrid events), and the messages' tracked
links and unsubscribe links point there (`WINBACK_PUBLIC_URL`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from winback.delivery.returnpath import tokens
from winback.local.ports import free_port
from winback.simulation import sandbox
from winback.simulation.sandbox.webhooks import new_signing_key


@contextlib.contextmanager
def sandbox_with_return_path(**sandbox_settings) -> Iterator[sandbox.SandboxHandle]:
    """Start `winback serve` and a sandbox that sends it webhooks; set the environment
    (provider connections, `WINBACK_PUBLIC_URL`, SendGrid's public key) for this process
    and its children; stop both on exit."""
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    private_key, public_key = new_signing_key()
    providers = sandbox.start_sandbox(
        webhook_url=public_url,
        sendgrid_private_key=private_key,
        sendgrid_public_key=public_key,
        **sandbox_settings,
    )
    os.environ.update(providers.connections_env())
    os.environ.update(providers.returnpath_env())
    os.environ[tokens.PUBLIC_URL_ENV] = public_url
    log_path = os.environ.get("WINBACK_SERVE_LOG", os.devnull)
    with open(log_path, "a") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "winback.cli", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(public_url, service)
        yield providers
    finally:
        providers.stop()
        service.terminate()
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            service.kill()


def _wait_healthy(url: str, service: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"winback serve exited with {service.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"winback serve did not answer on {url} within {timeout:.0f} s")
