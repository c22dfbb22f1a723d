"""Fixtures for tests against real Kubo nodes: private swarms on loopback, always stopped.

A pytest plugin: a test module that needs them says ``pytest_plugins = ["ipfs_fixtures"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.storage_ipfs import IpfsStore, open_ipfs_store
from devnet.kubo import KuboNode, generate_swarm_key, kubo_binary

__all__ = ["IpfsSwarm", "ipfs_pair", "ipfs_swarm", "kubo_bin"]

# Short enough that a missing artifact fails fast, long enough for loopback transfers.
TEST_TIMEOUT = 5.0


@pytest.fixture(scope="session")
def kubo_bin() -> Path:
    """The pinned Kubo binary (deploy/ipfs/build-kubo builds it once into the bcfl cache)."""
    return kubo_binary()


class IpfsSwarm:
    """Nodes of one private swarm (one swarm key), each with a store client; ``close()`` stops all."""

    def __init__(self, binary: Path, directory: Path, swarm_key: bytes | None = None):
        self.binary = binary
        self.directory = directory
        self.swarm_key = swarm_key or generate_swarm_key()
        self.nodes: list[KuboNode] = []
        self._stores: list[IpfsStore] = []

    def node(
        self, *, connect_to: list[KuboNode] | None = None, swarm_key: bytes | None = None
    ) -> KuboNode:
        """Start one more node (of this swarm unless ``swarm_key`` says otherwise)."""
        index = len(self.nodes) + 1
        node = KuboNode(
            self.directory / f"node-{index}",
            swarm_key or self.swarm_key,
            binary=self.binary,
            log_path=self.directory / f"node-{index}.log",
        )
        self.nodes.append(node)  # registered before start: stopped even if start fails half-way
        node.start()
        for peer in connect_to or []:
            node.connect(peer)
        return node

    def store(self, node: KuboNode, timeout: float = TEST_TIMEOUT) -> IpfsStore:
        store = open_ipfs_store(f"{node.store_url}?timeout={timeout:g}")
        self._stores.append(store)
        return store

    def close(self) -> None:
        for store in self._stores:
            store.close()
        for node in self.nodes:
            node.stop()


@pytest.fixture
def ipfs_swarm(kubo_bin: Path, tmp_path: Path) -> Iterator[IpfsSwarm]:
    """An empty private swarm: ``ipfs_swarm.node()`` starts nodes; all are stopped at teardown."""
    swarm = IpfsSwarm(kubo_bin, tmp_path / "ipfs")
    try:
        yield swarm
    finally:
        swarm.close()


@pytest.fixture
def ipfs_pair(ipfs_swarm: IpfsSwarm) -> tuple[KuboNode, KuboNode]:
    """Two connected nodes of one private swarm (hospital A's and hospital B's)."""
    first = ipfs_swarm.node()
    second = ipfs_swarm.node(connect_to=[first])
    return first, second
