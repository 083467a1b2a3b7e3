"""Free ports for the local servers (winback.local.ports)."""

from __future__ import annotations

import socket

from winback.local import ports


def test_a_free_port_is_bindable_and_a_listening_one_is_not():
    port = ports.free_port()
    assert port > 0 and ports.port_is_free(port)
    with socket.socket() as busy:
        busy.bind((ports.LOOPBACK, port))
        busy.listen()
        assert not ports.port_is_free(port)
        # SO_REUSEADDR lets a server past TIME_WAIT, never past a listener.
        assert not ports.port_is_free(port, reuse_address=True)
