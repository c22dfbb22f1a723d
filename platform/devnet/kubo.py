"""Kubo (IPFS) nodes of a private swarm on one machine, for tests, demos and ``deploy/ipfs/node``.

``KuboNode`` makes a node's repo (``ipfs init --profile test --empty-repo``, then
``private_swarm_config`` and the swarm key), runs its daemon under ``devnet.supervisor`` with
``LIBP2P_FORCE_PNET=1`` (so it refuses to start without the key), and connects nodes to each
other. ``private_swarm_problems`` checks that a node's config never dials outside its swarm.
The artifact store that talks to these nodes is ``consortium.storage_ipfs.IpfsStore``.

``python -m devnet.kubo DIRECTORY [--nodes N]`` runs N connected nodes until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bcfl_common.errors import ConfigError, StoreError
from bcfl_common.files import write_atomic, write_private
from devnet.supervisor import ProcessError, Supervised

_REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = _REPO_ROOT / "deploy" / "ipfs" / "build-kubo"


def kubo_binary() -> Path:
    """The pinned Kubo ``ipfs`` binary: ``$BCFL_KUBO``, or built and cached by deploy/ipfs/build-kubo."""
    explicit = os.environ.get("BCFL_KUBO")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(
                f"BCFL_KUBO={explicit!r} is not a file; expected the path of Kubo's ipfs binary"
            )
        return path
    if not BUILD_SCRIPT.exists():
        raise ConfigError(
            "no Kubo binary: set BCFL_KUBO, or run deploy/ipfs/build-kubo from a bcfl checkout"
        )
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ConfigError(
            f"deploy/ipfs/build-kubo failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return Path(lines[-1])


def generate_swarm_key() -> bytes:
    """A new pre-shared key for a private swarm, in Kubo's ``swarm.key`` format."""
    return b"/key/swarm/psk/1.0.0/\n/base16/\n" + secrets.token_hex(32).encode() + b"\n"


def _section(config: dict[str, Any], *path: str) -> dict[str, Any]:
    node = config
    for part in path:
        if not isinstance(node.get(part), dict):  # missing, or null in Kubo's defaults
            node[part] = {}
        node = node[part]
    return node


def private_swarm_config(config: dict[str, Any], *, host: str = "127.0.0.1") -> dict[str, Any]:
    """``config`` (a Kubo config) changed so the node only ever talks to its private swarm."""
    addr = f"/ip4/{host}/tcp/0"
    _section(config, "Addresses").update(
        {"API": [addr], "Gateway": [addr], "Swarm": [addr], "Announce": [], "AppendAnnounce": []}
    )
    config["Bootstrap"] = []
    _section(config, "Discovery", "MDNS")["Enabled"] = False
    _section(config, "AutoConf")["Enabled"] = False
    _section(config, "AutoTLS")["Enabled"] = False
    # The DHT carries the locators of large artifacts; with a swarm key it only ever reaches
    # members. No HTTP routers, no delegated IPNS publishers, no DNS-over-HTTPS resolvers.
    _section(config, "Routing").update(
        {
            "Type": "dht",
            "DelegatedRouters": [],
            "LoopbackAddressesOnLanDHT": host.startswith("127."),
        }
    )
    _section(config, "Ipns")["DelegatedPublishers"] = []
    _section(config, "DNS")["Resolvers"] = {}
    swarm = _section(config, "Swarm")
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["EnableHolePunching"] = False
    # Websocket shares the TCP listener, which private networks do not support; no relaying.
    _section(config, "Swarm", "Transports", "Network").update({"Websocket": False, "Relay": False})
    _section(config, "Gateway")["ExposeRoutingAPI"] = False
    _section(config, "Plugins", "Plugins")["telemetry"] = {"Disabled": True}
    return config


def private_swarm_problems(config: dict[str, Any], *, loopback_only: bool = True) -> list[str]:
    """What in a Kubo config could make the node dial outside its private swarm (empty: nothing)."""

    def get(path: str) -> Any:
        node: Any = config
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    problems: list[str] = []
    if get("Bootstrap"):
        problems.append(f"Bootstrap is {get('Bootstrap')!r}; expected []")
    if get("Discovery.MDNS.Enabled") is not False:
        problems.append("Discovery.MDNS.Enabled is not false")
    for flag in ("AutoConf.Enabled", "AutoTLS.Enabled", "Swarm.RelayClient.Enabled"):
        if get(flag) is not False:
            problems.append(f"{flag} is {get(flag)!r}; expected false")
    if get("Swarm.DisableNatPortMap") is not True:
        problems.append(
            "Swarm.DisableNatPortMap is not true (UPnP/NAT-PMP would talk to the router)"
        )
    if get("Routing.Type") not in ("dht", "dhtclient", "dhtserver", "none"):
        problems.append(
            f"Routing.Type is {get('Routing.Type')!r}; expected dht or none (no HTTP routers)"
        )
    for listed in ("Routing.DelegatedRouters", "Ipns.DelegatedPublishers", "Addresses.Announce"):
        if get(listed):
            problems.append(f"{listed} is {get(listed)!r}; expected []")
    if get("Routing.Routers"):
        problems.append("Routing.Routers is set; expected no custom routers")
    if any(get("DNS.Resolvers") or {}):
        problems.append(f"DNS.Resolvers is {get('DNS.Resolvers')!r}; expected {{}}")
    telemetry = get("Plugins.Plugins.telemetry") or {}
    if telemetry.get("Disabled") is not True:
        problems.append("Plugins.Plugins.telemetry.Disabled is not true")
    if loopback_only:
        for field in (
            "Addresses.API",
            "Addresses.Gateway",
            "Addresses.Swarm",
            "Addresses.AppendAnnounce",
        ):
            value = get(field) or []
            for addr in [value] if isinstance(value, str) else value:
                if not addr.startswith(("/ip4/127.", "/ip6/::1/")):
                    problems.append(f"{field} has {addr!r}; expected loopback only")
        for peer in get("Peering.Peers") or []:
            for addr in peer.get("Addrs") or []:
                if not addr.startswith(("/ip4/127.", "/ip6/::1/")):
                    problems.append(f"Peering.Peers has {addr!r}; expected loopback only")
    return problems


class KuboNode:
    """One Kubo daemon of a private swarm, repo in ``repo``; ``stop()`` (or ``with``) always ends it.

    ``init()`` creates the repo (``--profile test``: loopback, random ports, no bootstrap, no
    mDNS), writes the swarm key and applies ``private_swarm_config``; the daemon runs with
    ``LIBP2P_FORCE_PNET=1`` so it refuses to start without the key.
    """

    def __init__(
        self,
        repo: str | os.PathLike[str],
        swarm_key: bytes,
        *,
        binary: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.repo = Path(repo)
        self.swarm_key = swarm_key
        self.binary = Path(binary) if binary else None
        self.log_path = Path(log_path) if log_path else self.repo.with_name(self.repo.name + ".log")
        self.host = host
        self.daemon: Supervised | None = None
        self.api_port: int | None = None
        self.peer_id: str | None = None
        self.swarm_addrs: list[str] = []

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def store_url(self) -> str:
        return f"ipfs://{self.host}:{self.api_port}"

    @property
    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"IPFS_PATH": str(self.repo), "LIBP2P_FORCE_PNET": "1", "IPFS_TELEMETRY": "off"})
        return env

    def _ipfs(self, *args: str) -> str:
        assert self.binary is not None
        done = subprocess.run(
            [str(self.binary), *args],
            env=self._env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            raise StoreError(f"ipfs {' '.join(args)} failed for {self.repo}: {done.stderr.strip()}")
        return done.stdout

    def config(self) -> dict[str, Any]:
        return json.loads((self.repo / "config").read_text())

    def init(self) -> KuboNode:
        if self.binary is None:
            self.binary = kubo_binary()
        if not (self.repo / "config").exists():
            self.repo.mkdir(parents=True, exist_ok=True)
            self._ipfs("init", "--profile", "test", "--empty-repo")
        config = private_swarm_config(self.config(), host=self.host)
        write_atomic(self.repo / "config", json.dumps(config, indent=2).encode(), durable=False)
        # the pre-shared key is the swarm's only secret: never world-readable, even briefly
        write_private(self.repo / "swarm.key", self.swarm_key)
        return self

    def start(self, timeout: float = 60.0) -> KuboNode:
        if not (self.repo / "config").exists():
            self.init()
        if self.binary is None:
            self.binary = kubo_binary()
        problems = private_swarm_problems(self.config(), loopback_only=self.host.startswith("127."))
        if problems:
            raise ConfigError(
                f"IPFS repo {self.repo} could dial outside its swarm: " + "; ".join(problems)
            )
        (self.repo / "api").unlink(missing_ok=True)
        self.daemon = Supervised(
            f"Kubo daemon for {self.repo}",
            [str(self.binary), "daemon", "--migrate=false"],
            self.log_path,
            env=self._env(),
        ).start()
        try:
            self.daemon.wait_ready(self._answers, timeout=timeout, what="answering")
        except ProcessError as exc:
            self.stop()
            raise StoreError(f"{exc.message}\n{self._log_tail()}") from exc
        return self

    def _answers(self) -> bool:
        """Whether the daemon wrote its API address and answers ``id`` with swarm addresses."""
        try:
            match = re.search(r"/tcp/(\d+)", (self.repo / "api").read_text())
        except OSError:
            return False
        if not match:
            return False
        self.api_port = int(match.group(1))
        try:
            ident = httpx.post(f"{self.api_url}/api/v0/id", timeout=5).json()
            self.peer_id = ident["ID"]
            self.swarm_addrs = list(ident.get("Addresses") or [])
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return bool(self.swarm_addrs)

    def connect(self, other: KuboNode, timeout: float = 30.0) -> None:
        """Connect to ``other`` (and keep reconnecting: Kubo peering) until each sees the other."""
        for node, peer in ((self, other), (other, self)):
            for addr in peer.swarm_addrs:
                httpx.post(
                    f"{node.api_url}/api/v0/swarm/peering/add", params={"arg": addr}, timeout=10
                )
        httpx.post(
            f"{self.api_url}/api/v0/swarm/connect",
            params={"arg": other.swarm_addrs[0]},
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._dht_knows(other) and other._dht_knows(self):
                return
            time.sleep(0.1)
        raise StoreError(
            f"IPFS nodes {self.peer_id} and {other.peer_id} did not see each other within {timeout:g}s"
        )

    def _dht_knows(self, other: KuboNode) -> bool:
        # Connected and in the routing table: locators published by one resolve on the other.
        answer = httpx.post(f"{self.api_url}/api/v0/stats/dht", timeout=10)
        return answer.status_code == 200 and (other.peer_id or "?") in answer.text

    def stop(self, timeout: float = 20.0) -> None:
        # Kubo shuts down cleanly on SIGTERM (SIGINT may be ignored in background jobs).
        if self.daemon is not None:
            self.daemon.stop(timeout)
        self.daemon = None

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no log)"

    def __enter__(self) -> KuboNode:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``deploy/ipfs/node``: run nodes of a private swarm on loopback until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="deploy/ipfs/node", description=main.__doc__)
    parser.add_argument(
        "directory", type=Path, help="where the repos (node-1, node-2, ...) and swarm.key live"
    )
    parser.add_argument(
        "--nodes", type=int, default=1, help="how many connected nodes to run (default 1)"
    )
    args = parser.parse_args(argv)
    key_path = args.directory / "swarm.key"
    args.directory.mkdir(parents=True, exist_ok=True)
    if not key_path.exists():
        write_private(key_path, generate_swarm_key())
    nodes = [
        KuboNode(args.directory / f"node-{i + 1}", key_path.read_bytes()) for i in range(args.nodes)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes[1:]:
            nodes[0].connect(node)
        for node in nodes:
            print(
                f"{node.repo.name}: store {node.store_url}  peer {node.peer_id}  log {node.log_path}",
                flush=True,
            )
        print("Ctrl-C stops the swarm.", flush=True)
        for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
            signal.signal(signum, signal.default_int_handler)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for node in nodes:
            node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
