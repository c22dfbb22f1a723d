"""Ports for the servers bcfl starts: a Fabric node's port must still be free when it restarts."""

from __future__ import annotations

import socket

from consortium.loopback import ephemeral_range, free_port, stable_port


def test_stable_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    low, high = ephemeral_range()
    assert 1024 < low <= high
    taken: set[int] = set()
    for _ in range(20):
        port = stable_port(avoid=taken)
        assert port < low and port not in taken
        taken.add(port)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # free: a server can take it
    assert low <= free_port() <= high  # the kernel's own choice lies inside the range


def test_a_port_a_server_holds_is_never_handed_out() -> None:
    """Only two low ports are left to choose from, one of them held by a listening server: the
    free one comes back every time."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", stable_port()))
        server.listen()
        held = server.getsockname()[1]
        other = stable_port(avoid={held})
        everything_else = set(range(1, ephemeral_range()[0])) - {held, other}
        assert {stable_port(avoid=everything_else) for _ in range(20)} == {other}
