"""Free TCP ports on this machine, for the servers winback and its tests start locally.

Every local server (the embedded PostgreSQL, Airflow's api-server and log servers,
`winback serve`, the provider sandbox, the benchmarks' services) listens on a port the
operating system says is free, never on a fixed one, so checkouts, test sessions and a
running `make airflow` never collide.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now, chosen by the operating system.

    The probe closes before the caller's server binds, so start that server soon after.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_is_free(port: int, host: str = LOOPBACK, *, reuse_address: bool = False) -> bool:
    """Whether a server could bind `port` now.

    `reuse_address=True` asks as a server that binds with SO_REUSEADDR (PostgreSQL does):
    a port whose last connections linger in TIME_WAIT is free for it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if reuse_address:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
