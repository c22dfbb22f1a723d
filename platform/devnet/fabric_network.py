"""A native Hyperledger Fabric network on loopback, without Docker: its processes, channel and contract.

One Raft ordering service (1, 3 or 5 nodes), one peer per organisation that runs one (the
coordinator organisation and every hospital), TLS everywhere, one channel created with
``osnadmin`` and joined with the peer CLI, a MAJORITY endorsement policy, and the contract of
``chaincode/`` running as a chaincode-as-a-service process (``python -m chaincode.host_fabric``).

What the network is made of (plan, crypto material, configuration) is in
``devnet.fabric_material``; every process runs under ``devnet.supervisor``, found again from its
pid file by later invocations (``bcfl network status|down|stop-node|start-node``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcfl_common.errors import ConfigError
from bcfl_common.files import write_atomic
from devnet.fabric_material import (
    CHAINCODE,
    CHANNEL,
    DEFAULT_BATCH_TIMEOUT,
    ORDERER_MSP,
    REPO_ROOT,
    FabricLayout,
    NetworkError,
    admin_env,
    base_env,
    chaincode_package,
    default_state_dir,
    fabric_bin_dir,
    majority_endorsement_policy,
    make_crypto,
    orderer_env,
    peer_env,
    plan_network,
    write_configs,
)
from devnet.supervisor import ProcessError, Supervised, port_open


@dataclass
class Proc:
    """A process the network runs: how to start it and where its output goes."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int  # the port that answers once it is up


class FabricNetwork:
    """A local Fabric network rooted in a state directory; every method is safe to repeat."""

    def __init__(
        self,
        state_dir: str | Path | None = None,
        *,
        consortium_dir: str | Path | None = None,
        hospitals: int = 4,
        orderers: int = 1,
        batch_timeout: str = DEFAULT_BATCH_TIMEOUT,
        max_message_count: int = 200,
        auth_time_window: str = "15m",
        python: str | None = None,
    ):
        self.state_dir = Path(state_dir or default_state_dir()).expanduser().resolve()
        self.consortium_dir = (
            Path(consortium_dir).expanduser().resolve() if consortium_dir else None
        )
        self.hospitals = hospitals
        if orderers not in (1, 3, 5):
            raise ConfigError(f"--orderers={orderers}: expected 1, 3 or 5 Raft nodes")
        self.orderers = orderers
        self.batch_timeout = batch_timeout
        self.max_message_count = max_message_count
        # how far a proposal's timestamp may be from the peer's clock (Fabric's replay window);
        # tests that move the transaction clock forward by hours widen it
        self.auth_time_window = auth_time_window
        self.python = python or sys.executable
        self.layout = FabricLayout(self.state_dir)
        self._bin: Path | None = None
        self.report: Callable[[str], None] = lambda step: None

    # -- paths ------------------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.layout.info_path

    def load_info(self) -> dict[str, Any] | None:
        if not self.info_path.is_file():
            return None
        return json.loads(self.info_path.read_text())

    def _save_info(self, info: dict[str, Any]) -> None:
        write_atomic(self.info_path, (json.dumps(info, indent=2) + "\n").encode(), durable=False)

    @property
    def bin(self) -> Path:
        if self._bin is None:
            self._bin = fabric_bin_dir(report=self.report)
        return self._bin

    # -- up -----------------------------------------------------------------------------------------
    def up(self, report: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Bring the network up (or finish bringing it up); returns the network description."""
        if report:
            self.report = report
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "run", "nodes", "config", "crypto"):
            (self.state_dir / sub).mkdir(exist_ok=True)
        info = self.load_info()
        if info is None:
            self.report("identities and configuration")
            info = plan_network(
                self.layout,
                self.consortium_dir,
                hospitals=self.hospitals,
                orderers=self.orderers,
                batch_timeout=self.batch_timeout,
                max_message_count=self.max_message_count,
                auth_time_window=self.auth_time_window,
            )
            make_crypto(self.layout, info)
            self._make_channel_block(info)
            self._save_info(info)
        self.report("ordering service")
        for orderer in info["orderers"]:
            self._ensure_running(self._orderer_proc(info, orderer))
        self._join_orderers(info)
        self.report("peers")
        for peer in info["peers"]:
            self._ensure_running(self._peer_proc(info, peer))
        self._join_peers(info)
        self.report("chaincode as a service")
        self._deploy_chaincode(info)
        self.report("waiting for the peers to see each other")
        self._wait_discovery(info)
        self.report("bootstrapping the contract")
        self._bootstrap_contract(info)
        info["up"] = True
        self._save_info(info)
        return info

    def _bootstrap_contract(self, info: dict[str, Any]) -> None:
        """The contract's first transaction: the consortium admin registers the organisations' kinds.

        Like the embedded ledger's creation, this must come before anything else so that no other
        member can bootstrap the contract with itself as operator. Idempotent.
        """
        from bcfl_common.errors import ContractError
        from consortium.identity import Consortium, organisation_kinds
        from consortium.ledger import open_ledger

        consortium = Consortium.load(info["consortium_dir"])
        admin = open_ledger(self.ledger_url(), consortium.identity("admin"))
        try:
            if admin.evaluate("get_consortium", {}) is None:
                admin.submit("init_consortium", {"organisations": organisation_kinds(consortium)})
        except ContractError as exc:
            if exc.code != "NOT_INITIALISED":
                raise
            admin.submit("init_consortium", {"organisations": organisation_kinds(consortium)})
        finally:
            admin.close()

    # -- processes ----------------------------------------------------------------------------------
    def _orderer_proc(self, info: dict[str, Any], o: dict[str, Any]) -> Proc:
        env = orderer_env(self.layout, o)
        return Proc(o["name"], [str(self.bin / "orderer")], env, o["admin_port"])

    def _peer_env(self, peer: dict[str, Any]) -> dict[str, str]:
        window = (self.load_info() or {}).get("auth_time_window", "15m")
        return peer_env(self.layout, peer, window)

    def _peer_proc(self, info: dict[str, Any], peer: dict[str, Any]) -> Proc:
        return Proc(
            peer["name"],
            [str(self.bin / "peer"), "node", "start"],
            self._peer_env(peer),
            peer["port"],
        )

    def _chaincode_proc(self, info: dict[str, Any]) -> Proc:
        server = info["chaincode_server"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CORE_", "CHAINCODE_"))}
        env |= {
            "CHAINCODE_ID": server["package_id"],
            "CHAINCODE_SERVER_ADDRESS": f"127.0.0.1:{server['port']}",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), str(REPO_ROOT / "platform"), env.get("PYTHONPATH", "")]
            ),
        }
        return Proc("chaincode", [self.python, "-m", "chaincode.host_fabric"], env, server["port"])

    def _make_channel_block(self, info: dict[str, Any]) -> None:
        config = write_configs(self.layout, info, self.bin.parent / "config")
        self._run(
            [
                str(self.bin / "configtxgen"),
                "-configPath",
                str(config),
                "-profile",
                "BcflChannel",
                "-channelID",
                CHANNEL,
                "-outputBlock",
                str(self.layout.channel_block),
            ],
            what="configtxgen",
        )

    def _supervised(self, name: str, spec: Proc | None = None) -> Supervised:
        """The node ``name`` under devnet.supervisor; its pid file finds it from any invocation."""
        return Supervised(
            name,
            spec.argv if spec else [],
            self.layout.log_path(name),
            env=spec.env if spec else None,
            cwd=self.state_dir,
            pid_file=self.layout.pid_path(name),
        )

    def pid(self, name: str) -> int | None:
        """The id of a process this network started, if it still runs (and is still that process)."""
        return self._supervised(name).pid

    def _ensure_running(self, spec: Proc, timeout: float = 60.0) -> None:
        node = self._supervised(spec.name, spec)
        if not node.running:
            if port_open(spec.port):
                raise NetworkError(
                    f"port {spec.port} for {spec.name} is taken by another process; "
                    f"run `bcfl network down --state-dir {self.state_dir}` and up again",
                    code="PORT_IN_USE",
                )
            node.start()
        try:
            node.wait_port(spec.port, timeout=timeout)
        except ProcessError as exc:
            code = "NODE_TIMEOUT" if exc.code == "PROCESS_TIMEOUT" else "NODE_FAILED"
            raise NetworkError(exc.message, code=code) from exc

    def _stop(self, name: str, timeout: float = 10.0) -> bool:
        return self._supervised(name).stop(timeout)

    def _run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        what: str,
        check: bool = True,
        retries: int = 0,
    ) -> subprocess.CompletedProcess[str]:
        for attempt in range(retries + 1):
            proc = subprocess.run(
                argv,
                env=env or base_env(self.layout),
                capture_output=True,
                text=True,
                cwd=self.state_dir,
                timeout=120,
            )
            if proc.returncode == 0 or not check:
                return proc
            if attempt < retries:
                time.sleep(1.0)
        raise NetworkError(
            f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}",
            code="FABRIC_COMMAND",
        )

    # -- channel ----------------------------------------------------------------------------------
    def _join_orderers(self, info: dict[str, Any]) -> None:
        admin = self.layout.orderer_admin_tls
        block = self.layout.channel_block
        for o in info["orderers"]:
            common = [
                "-o",
                f"127.0.0.1:{o['admin_port']}",
                "--ca-file",
                str(self.layout.orderer_tls_ca),
                "--client-cert",
                str(admin / "server.crt"),
                "--client-key",
                str(admin / "server.key"),
            ]
            listing = self._run(
                [str(self.bin / "osnadmin"), "channel", "list", *common],
                what="osnadmin channel list",
                retries=5,
            )
            if f'"name": "{CHANNEL}"' in listing.stdout or f'"name":"{CHANNEL}"' in listing.stdout:
                continue
            self._run(
                [
                    str(self.bin / "osnadmin"),
                    "channel",
                    "join",
                    "--channelID",
                    CHANNEL,
                    "--config-block",
                    str(block),
                    *common,
                ],
                what=f"osnadmin channel join on {o['name']}",
            )

    def admin_env(self, peer: dict[str, Any]) -> dict[str, str]:
        """Environment for the peer CLI acting as the organisation's network admin on ``peer``."""
        return admin_env(self.layout, peer)

    def _orderer_args(self, info: dict[str, Any]) -> list[str]:
        o = info["orderers"][0]
        return [
            "-o",
            f"127.0.0.1:{o['port']}",
            "--tls",
            "--cafile",
            str(self.layout.orderer_tls_ca),
        ]

    def _join_peers(self, info: dict[str, Any]) -> None:
        block = self.layout.channel_block
        for peer in info["peers"]:
            env = self.admin_env(peer)
            listing = self._run(
                [str(self.bin / "peer"), "channel", "list"],
                env=env,
                what="peer channel list",
                retries=5,
            )
            if CHANNEL in listing.stdout.split():
                continue
            self._run(
                [str(self.bin / "peer"), "channel", "join", "-b", str(block)],
                env=env,
                what=f"peer channel join on {peer['name']}",
                retries=3,
            )

    # -- chaincode -------------------------------------------------------------------------------
    def _deploy_chaincode(self, info: dict[str, Any]) -> None:
        package, package_id = chaincode_package(self.layout, info)
        info["chaincode_server"]["package_id"] = package_id
        self._save_info(info)
        peer_bin = str(self.bin / "peer")
        for peer in info["peers"]:
            env = self.admin_env(peer)
            installed = self._run(
                [peer_bin, "lifecycle", "chaincode", "queryinstalled"],
                env=env,
                what="peer lifecycle chaincode queryinstalled",
                retries=3,
            )
            if package_id not in installed.stdout:
                self._run(
                    [peer_bin, "lifecycle", "chaincode", "install", str(package)],
                    env=env,
                    what=f"chaincode install on {peer['name']}",
                )
        self._ensure_running(self._chaincode_proc(info), timeout=60)
        self.define_chaincode(CHAINCODE, info)

    def define_chaincode(self, name: str, info: dict[str, Any] | None = None) -> None:
        """Approve and commit a chaincode definition ``name`` backed by the running contract server.

        Every name is its own namespace of state on the channel: tests get a fresh contract this way.
        """
        info = info or self.load_info()
        if info is None or "package_id" not in info.get("chaincode_server", {}):
            raise NetworkError(
                f"no network with chaincode in {self.state_dir}; run `bcfl network up`",
                code="NO_NETWORK",
            )
        package_id = info["chaincode_server"]["package_id"]
        peer_bin = str(self.bin / "peer")
        committed = self._run(
            [peer_bin, "lifecycle", "chaincode", "querycommitted", "-C", CHANNEL, "-n", name],
            env=self.admin_env(info["peers"][0]),
            what="querycommitted",
            check=False,
        )
        if committed.returncode == 0 and "Sequence: 1" in committed.stdout:
            return
        definition = [
            "-C",
            CHANNEL,
            "-n",
            name,
            "--version",
            "1",
            "--sequence",
            "1",
            "--signature-policy",
            majority_endorsement_policy(info),
        ]
        for peer in info["peers"]:
            env = self.admin_env(peer)
            ready = self._run(
                [
                    peer_bin,
                    "lifecycle",
                    "chaincode",
                    "checkcommitreadiness",
                    *definition,
                    "-O",
                    "json",
                ],
                env=env,
                what="checkcommitreadiness",
                check=False,
            )
            try:
                approvals = json.loads(ready.stdout)["approvals"]
            except (ValueError, KeyError):
                approvals = {}
            if approvals.get(peer["msp_id"]):
                continue
            self._run(
                [
                    peer_bin,
                    "lifecycle",
                    "chaincode",
                    "approveformyorg",
                    *definition,
                    "--package-id",
                    package_id,
                    *self._orderer_args(info),
                    "--waitForEventTimeout",
                    "60s",
                ],
                env=env,
                what=f"approveformyorg for {peer['msp_id']}",
                retries=2,
            )
        targets: list[str] = []
        for peer in info["peers"]:
            targets += [
                "--peerAddresses",
                f"127.0.0.1:{peer['port']}",
                "--tlsRootCertFiles",
                str(self.layout.peer_dir(peer) / "tls" / "ca.crt"),
            ]
        self._run(
            [
                peer_bin,
                "lifecycle",
                "chaincode",
                "commit",
                *definition,
                *self._orderer_args(info),
                *targets,
                "--waitForEventTimeout",
                "60s",
            ],
            env=self.admin_env(info["peers"][0]),
            what="chaincode commit",
            retries=2,
        )

    def _wait_discovery(
        self, info: dict[str, Any], timeout: float = 60.0, name: str = CHAINCODE
    ) -> None:
        """Wait until every peer has committed the chaincode definition (gossip has caught up)."""
        deadline = time.monotonic() + timeout
        peer_bin = str(self.bin / "peer")
        for peer in info["peers"]:
            while True:
                out = self._run(
                    [
                        peer_bin,
                        "lifecycle",
                        "chaincode",
                        "querycommitted",
                        "-C",
                        CHANNEL,
                        "-n",
                        name,
                    ],
                    env=self.admin_env(peer),
                    what="querycommitted",
                    check=False,
                )
                if out.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise NetworkError(
                        f"{peer['name']} did not see the chaincode definition within {timeout:.0f} s",
                        code="NODE_TIMEOUT",
                    )
                time.sleep(0.5)
        # Gossip membership (which discovery, and so the Gateway, relies on) takes a few alive intervals.
        time.sleep(float(os.environ.get("BCFL_NETWORK_SETTLE", "3")))

    # -- single nodes (fault tests) ---------------------------------------------------------------
    def node_names(self) -> list[str]:
        info = self.load_info() or {}
        return (
            [o["name"] for o in info.get("orderers", [])]
            + [p["name"] for p in info.get("peers", [])]
            + (["chaincode"] if info else [])
        )

    def stop_node(self, name: str) -> bool:
        if name not in self.node_names():
            raise ConfigError(
                f"no node {name!r} in this network; expected one of {self.node_names()}"
            )
        return self._stop(name)

    def start_node(self, name: str) -> None:
        info = self.load_info()
        if info is None:
            raise NetworkError(
                f"no network in {self.state_dir}; run `bcfl network up` first", code="NO_NETWORK"
            )
        for o in info["orderers"]:
            if o["name"] == name:
                return self._ensure_running(self._orderer_proc(info, o))
        for p in info["peers"]:
            if p["name"] == name:
                return self._ensure_running(self._peer_proc(info, p))
        if name == "chaincode":
            return self._ensure_running(self._chaincode_proc(info))
        raise ConfigError(f"no node {name!r} in this network; expected one of {self.node_names()}")

    # -- down / status ---------------------------------------------------------------------------------
    def down(self, purge: bool = True) -> list[str]:
        """Stop every process this network started; with ``purge`` remove its state too."""
        stopped = []
        run = self.state_dir / "run"
        names = set(self.node_names())
        if run.is_dir():
            names |= {p.stem for p in run.glob("*.pid")}
        # chaincode first, orderers last, so nothing logs a storm of reconnect errors
        order = sorted(
            names, key=lambda n: (0 if n == "chaincode" else 2 if n.startswith("orderer") else 1, n)
        )
        for name in order:
            if self._stop(name):
                stopped.append(name)
        if purge and self.state_dir.exists():
            if not (self.info_path.exists() or (self.state_dir / "run").exists()):
                raise ConfigError(
                    f"{self.state_dir} does not look like a network state directory; not removing it"
                )
            shutil.rmtree(self.state_dir)
        return stopped

    def status(self) -> dict[str, Any]:
        info = self.load_info()
        if info is None:
            return {"state_dir": str(self.state_dir), "exists": False, "nodes": []}
        nodes = []
        for o in info["orderers"]:
            nodes.append(
                {
                    "name": o["name"],
                    "kind": "orderer",
                    "msp_id": ORDERER_MSP,
                    "address": f"127.0.0.1:{o['port']}",
                    "pid": self.pid(o["name"]),
                    "listening": port_open(o["port"]),
                }
            )
        for p in info["peers"]:
            nodes.append(
                {
                    "name": p["name"],
                    "kind": "peer",
                    "msp_id": p["msp_id"],
                    "address": f"127.0.0.1:{p['port']}",
                    "pid": self.pid(p["name"]),
                    "listening": port_open(p["port"]),
                }
            )
        cc = info["chaincode_server"]
        nodes.append(
            {
                "name": "chaincode",
                "kind": "chaincode",
                "msp_id": "",
                "address": f"127.0.0.1:{cc['port']}",
                "pid": self.pid("chaincode"),
                "listening": port_open(cc["port"]),
            }
        )
        return {
            "state_dir": str(self.state_dir),
            "exists": True,
            "up": info.get("up", False),
            "channel": info["channel"],
            "chaincode": info["chaincode"],
            "consortium_dir": info["consortium_dir"],
            "ledger_url": self.ledger_url(),
            "logs": str(self.state_dir / "logs"),
            "nodes": nodes,
        }

    def ledger_url(self, msp_id: str | None = None) -> str:
        """A ``fabric://`` URL for this network (the network.json form, or one peer's for ``msp_id``)."""
        if msp_id is None:
            return f"fabric://{self.info_path}"
        info = self.load_info() or {}
        for p in info.get("peers", []):
            if p["msp_id"] == msp_id:
                return (
                    f"fabric://127.0.0.1:{p['port']}/{CHANNEL}/{CHAINCODE}"
                    f"?tls_ca={self.layout.peer_dir(p) / 'tls' / 'ca.crt'}"
                )
        raise ConfigError(f"no peer of {msp_id!r} in this network")
