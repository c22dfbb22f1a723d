"""Loopback helpers for the processes bcfl starts itself (servers only ever bind 127.0.0.1)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel just found free on ``host`` (loopback by default)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
