"""Loopback helpers for the processes bcfl starts itself (servers only ever bind 127.0.0.1)."""

from __future__ import annotations

import random
import socket
from collections.abc import Collection
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_STABLE_PORT = 10000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel just found free on ``host`` (loopback by default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections and ``bind(port 0)``."""
    try:
        low, high = (int(x) for x in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def stable_port(host: str = "127.0.0.1", *, avoid: Collection[int] = ()) -> int:
    """A free TCP port below the kernel's ephemeral range, for a server whose port is written
    down once and reused each time it restarts (a Fabric node).

    A port from :func:`free_port` lies inside the ephemeral range: while its server is stopped,
    any outgoing connection or ``bind(port 0)`` on the machine may take it, and a connection
    probe to it may even connect to itself, so the restart finds it "taken". Ports below the
    range are only ever taken by a server asking for them by number. ``avoid`` holds ports
    already handed out for the same configuration (each is only probed here, not held)."""
    low, _high = ephemeral_range()
    ports = list(range(_LOWEST_STABLE_PORT, max(low, _LOWEST_STABLE_PORT + 1000)))
    random.SystemRandom().shuffle(ports)  # two networks planned at once rarely pick alike
    for port in ports:
        if port in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    return free_port(host)  # every low port is taken: the kernel's choice beats none
