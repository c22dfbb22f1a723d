"""`bcfl network up|down|status`: a native Hyperledger Fabric network on loopback, without Docker.

One Raft ordering service (1 or 3 nodes), one peer per organisation that runs one (the coordinator
organisation and every hospital), TLS everywhere, one channel created with ``osnadmin`` and joined
with the peer CLI, a MAJORITY endorsement policy, and the contract of ``chaincode/`` running as a
chaincode-as-a-service process (``python -m chaincode.host_fabric``).

Identities have one source of truth: the consortium directory of ``bcfl consortium init``. Every
node certificate (peers, their TLS, each organisation's network admin) is issued by that
organisation's CA from the consortium directory; only the ordering organisation, which is network
infrastructure and not a consortium member, gets a CA of its own under the state directory.

The state directory (``--state-dir``, ``$BCFL_NETWORK_DIR``, default ``~/.cache/bcfl/network``)
holds everything the network writes::

    network.json          what `status` shows and what `fabric:///…/network.json` URLs read
    consortium/           the consortium, when none was given with --consortium
    crypto/               node MSPs and TLS material
    config/               core.yaml (peer), orderer.yaml, configtx.yaml
    nodes/<name>/         each node's ledger
    logs/<name>.log       each process's output
    run/<name>.pid        each process's id
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bcfl_common.errors import BcflError, ConfigError
from consortium.loopback import free_port

CHANNEL = "bcfl"
CHAINCODE = "bcfl"
CHAINCODE_LABEL = "bcfl_ccaas"
ORDERER_MSP = "OrdererMSP"
NETWORK_FILE = "network.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "fabric"
BUILDER_DIR = DEPLOY_DIR / "builders" / "ccaas"
DEFAULT_BATCH_TIMEOUT = "50ms"
REQUIRED_BINARIES = ("peer", "orderer", "configtxgen", "osnadmin")
# Fabric's default log format, without terminal colours (the logs are files)
LOG_FORMAT = "%{time:2006-01-02 15:04:05.000 MST} [%{module}] %{shortfunc} -> %{level:.4s} %{id:03x} %{message}"
# INFO, less the loggers that write a line or more per request (every gRPC call, chaincode run,
# gateway submission, broadcast stream): blocks, joins, lifecycle and errors stay in the logs.
# $BCFL_FABRIC_LOGGING replaces it (e.g. INFO for everything, or DEBUG, which is expensive).
PEER_LOG_SPEC = "info:comm.grpc.server,endorser,gateway=warning"
ORDERER_LOG_SPEC = "info:comm.grpc.server,orderer.common.broadcast=warning"


class NetworkError(BcflError):
    """The local Fabric network could not be brought up, inspected or stopped."""

    code = "NETWORK"
    exit_code = 15


def default_state_dir() -> Path:
    env = os.environ.get("BCFL_NETWORK_DIR")
    if env:
        return Path(env).expanduser()
    return (
        Path(os.environ.get("BCFL_CACHE", Path.home() / ".cache" / "bcfl")).expanduser() / "network"
    )


def fabric_bin_dir(build: bool = True, report: Callable[[str], None] | None = None) -> Path:
    """The pinned Fabric binaries: ``$BCFL_FABRIC_BIN``, else the cache, built on first use."""
    env = os.environ.get("BCFL_FABRIC_BIN")
    if env:
        path = Path(env).expanduser()
        missing = [b for b in REQUIRED_BINARIES if not (path / b).is_file()]
        if missing:
            raise ConfigError(
                f"BCFL_FABRIC_BIN={env} lacks {', '.join(missing)}; expected Fabric binaries"
            )
        return path
    script = DEPLOY_DIR / "build-binaries.sh"
    if not build:
        return _cached_bin_dir()
    if report:
        report("Fabric binaries (building them the first time takes minutes)")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetworkError(
            f"building the Fabric binaries failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}",
            code="FABRIC_BUILD",
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def fabric_unavailable_reason() -> str | None:
    """None when a network can be brought up here, else why not (for tests to skip with)."""
    if os.environ.get("BCFL_FABRIC_BIN"):
        return None
    try:
        _cached_bin_dir()
        return None
    except NetworkError:
        pass
    if shutil.which("go") is None:
        return "no cached Fabric binaries and no Go toolchain to build them (deploy/fabric/build-binaries.sh)"
    return None


def _cached_bin_dir() -> Path:
    root = (
        Path(os.environ.get("BCFL_CACHE", Path.home() / ".cache" / "bcfl")).expanduser() / "fabric"
    )
    for candidate in sorted(root.glob("*/.complete")):
        return candidate.parent / "bin"
    raise NetworkError(
        f"no Fabric binaries under {root}; run deploy/fabric/build-binaries.sh", code="FABRIC_BUILD"
    )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _short(msp_id: str) -> str:
    return msp_id.removesuffix("MSP").lower()


@dataclass
class Proc:
    """A process the network runs: how to start it and where its output goes."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int  # the port that answers once it is up


def majority_endorsement_policy(info: dict[str, Any]) -> str:
    """The chaincode's endorsement policy: a majority of the channel's organisations, as a signature policy.

    It is the rule of the channel's ``MAJORITY Endorsement`` (an ImplicitMeta policy over every
    application organisation's ``OR('<MSP>.peer')``): more than half of *all* the organisations,
    those without a peer included, must endorse. Written as one ``OutOf(k, ...)`` over the same
    principals it is evaluated once per transaction, each endorsement signature verified once;
    Fabric evaluates the ImplicitMeta form organisation by organisation, re-verifying every
    endorsement signature for each (4 to 6 evaluations x 4 signatures with 6 organisations), which
    was a quarter of every peer's CPU time at commit. A changed set of organisations needs a new
    chaincode definition (the network's organisations are fixed when it is planned).
    """
    msp_ids = [org["msp_id"] for org in info["organisations"]]
    principals = ", ".join(f"'{msp_id}.peer'" for msp_id in msp_ids)
    return f"OutOf({len(msp_ids) // 2 + 1}, {principals})"


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
        self._bin: Path | None = None
        self.report: Callable[[str], None] = lambda step: None

    # -- paths ------------------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.state_dir / NETWORK_FILE

    def _pid_path(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.pid"

    def _log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def load_info(self) -> dict[str, Any] | None:
        if not self.info_path.is_file():
            return None
        return json.loads(self.info_path.read_text())

    def _save_info(self, info: dict[str, Any]) -> None:
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.info_path)

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
            info = self._plan()
            self._make_crypto(info)
            self._write_configs(info)
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

    def _plan(self) -> dict[str, Any]:
        from consortium.identity import Consortium, init_consortium

        if self.consortium_dir is None:
            consortium_dir = self.state_dir / "consortium"
            if not (consortium_dir / "consortium.json").exists():
                init_consortium(consortium_dir, self.hospitals)
        else:
            consortium_dir = self.consortium_dir
        consortium = Consortium.load(consortium_dir)
        orgs = []
        peers = []
        for org in consortium.organisations.values():
            runs_peer = org.kind in ("operator", "hospital")
            orgs.append({"msp_id": org.msp_id, "kind": org.kind, "peer": runs_peer})
            if runs_peer:
                name = f"peer0.{_short(org.msp_id)}"
                peers.append(
                    {
                        "name": name,
                        "msp_id": org.msp_id,
                        "port": free_port(),
                        "chaincode_port": free_port(),
                        "operations_port": free_port(),
                    }
                )
        orderers = [
            {
                "name": f"orderer{i}",
                "port": free_port(),
                "admin_port": free_port(),
                "operations_port": free_port(),
            }
            for i in range(self.orderers)
        ]
        return {
            "channel": CHANNEL,
            "chaincode": CHAINCODE,
            "consortium_dir": str(consortium_dir),
            "state_dir": str(self.state_dir),
            "organisations": orgs,
            "orderers": orderers,
            "peers": peers,
            "chaincode_server": {"port": free_port()},
            "batch_timeout": self.batch_timeout,
            "max_message_count": self.max_message_count,
            "auth_time_window": self.auth_time_window,
            "up": False,
        }

    # -- crypto material -----------------------------------------------------------------------------
    def _make_crypto(self, info: dict[str, Any]) -> None:
        from consortium.identity import (
            CertificateAuthority,
            Consortium,
            _pem_cert,
            _pem_private,
            _write_public,
            write_msp_folder,
            write_private,
        )

        crypto = self.state_dir / "crypto"
        consortium = Consortium.load(info["consortium_dir"])

        def write_tls(directory: Path, tls_ca: CertificateAuthority, cn: str) -> None:
            cert, key = tls_ca.issue(
                cn, [], hostnames=["localhost", cn], ip_addresses=["127.0.0.1"], tls=True
            )
            _write_public(directory / "server.crt", _pem_cert(cert))
            assert key is not None
            write_private(directory / "server.key", _pem_private(key))
            _write_public(directory / "ca.crt", _pem_cert(tls_ca.cert))

        # The ordering organisation: network infrastructure with CAs of its own.
        odir = crypto / "ordererOrganizations" / "orderer"
        ca = CertificateAuthority.create("ca.orderer", ORDERER_MSP)
        tls_ca = CertificateAuthority.create("tlsca.orderer", ORDERER_MSP)
        ca.save(odir / "ca", "ca")
        tls_ca.save(odir / "tlsca", "tlsca")
        write_msp_folder(odir / "msp", ca, tls_ca)
        for orderer in info["orderers"]:
            ndir = odir / "orderers" / orderer["name"]
            cert, key = ca.issue(orderer["name"], ["orderer"])
            write_msp_folder(ndir / "msp", ca, tls_ca, cert, key)
            write_tls(ndir / "tls", tls_ca, orderer["name"])
        admin_cert, admin_key = ca.issue("Admin@orderer", ["admin"])
        write_msp_folder(odir / "users" / "Admin" / "msp", ca, tls_ca, admin_cert, admin_key)
        write_tls(odir / "users" / "Admin" / "tls", tls_ca, "Admin@orderer")

        # Peer organisations: every certificate from the organisation's CA in the consortium.
        for org in info["organisations"]:
            msp_id = org["msp_id"]
            pdir = crypto / "peerOrganizations" / _short(msp_id)
            ca = consortium.certificate_authority(msp_id)
            tls_ca = consortium.certificate_authority(msp_id, tls=True)
            write_msp_folder(pdir / "msp", ca, tls_ca)
            admin_cert, admin_key = ca.issue(f"Admin@{_short(msp_id)}", ["admin"])
            write_msp_folder(pdir / "users" / "Admin" / "msp", ca, tls_ca, admin_cert, admin_key)
            for peer in info["peers"]:
                if peer["msp_id"] != msp_id:
                    continue
                ndir = pdir / "peers" / peer["name"]
                cert, key = ca.issue(peer["name"], ["peer"])
                write_msp_folder(ndir / "msp", ca, tls_ca, cert, key)
                write_tls(ndir / "tls", tls_ca, peer["name"])

    def _orderer_dir(self, name: str) -> Path:
        return self.state_dir / "crypto" / "ordererOrganizations" / "orderer" / "orderers" / name

    def _org_dir(self, msp_id: str) -> Path:
        return self.state_dir / "crypto" / "peerOrganizations" / _short(msp_id)

    def _peer_dir(self, peer: dict[str, Any]) -> Path:
        return self._org_dir(peer["msp_id"]) / "peers" / peer["name"]

    @property
    def orderer_tls_ca(self) -> Path:
        return (
            self.state_dir / "crypto" / "ordererOrganizations" / "orderer" / "tlsca" / "tlsca.pem"
        )

    # -- configuration ---------------------------------------------------------------------------------
    def _write_configs(self, info: dict[str, Any]) -> None:
        config = self.state_dir / "config"
        sample = self.bin.parent / "config"
        core = (sample / "core.yaml").read_text()
        # The peer must not talk to a Docker daemon (its health check would wait for one): no VM
        # endpoint, and our chaincode-as-a-service builder as the only external builder.
        replacements = {
            "endpoint: unix:///var/run/docker.sock": 'endpoint: ""',
            "path: /opt/hyperledger/ccaas_builder": f"path: {BUILDER_DIR}",
        }
        for old, new in replacements.items():
            if old not in core:
                raise NetworkError(
                    f"Fabric's sample core.yaml has no {old!r}; the pinned release changed?"
                )
            core = core.replace(old, new)
        (config / "core.yaml").write_text(core)
        shutil.copy(sample / "orderer.yaml", config / "orderer.yaml")

        def org_policies(msp_id: str, orderer: bool = False) -> dict[str, Any]:
            member = "peer" if not orderer else "orderer"
            return {
                "Readers": {
                    "Type": "Signature",
                    "Rule": f"OR('{msp_id}.admin', '{msp_id}.{member}', '{msp_id}.client')",
                },
                "Writers": {
                    "Type": "Signature",
                    "Rule": f"OR('{msp_id}.admin', '{msp_id}.client')"
                    if not orderer
                    else f"OR('{msp_id}.member')",
                },
                "Admins": {"Type": "Signature", "Rule": f"OR('{msp_id}.admin')"},
                "Endorsement": {"Type": "Signature", "Rule": f"OR('{msp_id}.peer')"},
            }

        crypto = self.state_dir / "crypto"
        orderer_org = {
            "Name": ORDERER_MSP,
            "ID": ORDERER_MSP,
            "MSPDir": str(crypto / "ordererOrganizations" / "orderer" / "msp"),
            "Policies": org_policies(ORDERER_MSP, orderer=True),
            "OrdererEndpoints": [f"127.0.0.1:{o['port']}" for o in info["orderers"]],
        }
        app_orgs = []
        for org in info["organisations"]:
            msp_id = org["msp_id"]
            entry: dict[str, Any] = {
                "Name": msp_id,
                "ID": msp_id,
                "MSPDir": str(self._org_dir(msp_id) / "msp"),
                "Policies": org_policies(msp_id),
            }
            anchors = [
                {"Host": "127.0.0.1", "Port": p["port"]}
                for p in info["peers"]
                if p["msp_id"] == msp_id
            ]
            if anchors:
                entry["AnchorPeers"] = anchors
            app_orgs.append(entry)

        def implicit(rule: str) -> dict[str, str]:
            return {"Type": "ImplicitMeta", "Rule": rule}

        def any_member(roles: tuple[str, ...]) -> dict[str, str]:
            # = ImplicitMeta "ANY <policy>" over the organisations' policies above (each OR of these
            # roles of its own MSP), written as one signature policy: Fabric evaluates the
            # ImplicitMeta form organisation by organisation, in no fixed order, verifying the
            # request's signature again for each; this verifies it once. Every proposal (the
            # Propose ACL: Writers) and every commit status request (Readers) is checked with it.
            principals = ", ".join(
                f"'{org['msp_id']}.{role}'" for org in info["organisations"] for role in roles
            )
            return {"Type": "Signature", "Rule": f"OR({principals})"}

        consenters = []
        for o in info["orderers"]:
            tls = self._orderer_dir(o["name"]) / "tls" / "server.crt"
            consenters.append(
                {
                    "Host": "127.0.0.1",
                    "Port": o["port"],
                    "ClientTLSCert": str(tls),
                    "ServerTLSCert": str(tls),
                }
            )
        profile = {
            "Policies": {
                "Readers": implicit("ANY Readers"),
                "Writers": implicit("ANY Writers"),
                "Admins": implicit("MAJORITY Admins"),
            },
            "Capabilities": {"V3_0": True},
            "Orderer": {
                "OrdererType": "etcdraft",
                "BatchTimeout": info["batch_timeout"],
                "BatchSize": {
                    "MaxMessageCount": info["max_message_count"],
                    "AbsoluteMaxBytes": "10 MB",
                    "PreferredMaxBytes": "2 MB",
                },
                "EtcdRaft": {
                    "Consenters": consenters,
                    "Options": {
                        "TickInterval": "100ms",
                        "ElectionTick": 10,
                        "HeartbeatTick": 1,
                        "MaxInflightBlocks": 5,
                        "SnapshotIntervalSize": "16 MB",
                    },
                },
                "Organizations": [orderer_org],
                "Policies": {
                    "Readers": implicit("ANY Readers"),
                    "Writers": implicit("ANY Writers"),
                    "Admins": implicit("MAJORITY Admins"),
                    "BlockValidation": implicit("ANY Writers"),
                },
                "Capabilities": {"V2_0": True},
            },
            "Application": {
                "Organizations": app_orgs,
                "Policies": {
                    "Readers": any_member(("admin", "peer", "client")),
                    "Writers": any_member(("admin", "client")),
                    "Admins": implicit("MAJORITY Admins"),
                    "LifecycleEndorsement": implicit("MAJORITY Endorsement"),
                    "Endorsement": implicit("MAJORITY Endorsement"),
                },
                "Capabilities": {"V2_5": True},
            },
        }
        # JSON is YAML: configtxgen reads this file as its configtx.yaml.
        (config / "configtx.yaml").write_text(
            json.dumps({"Profiles": {"BcflChannel": profile}}, indent=2)
        )
        block = self.state_dir / "config" / f"{CHANNEL}.block"
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
                str(block),
            ],
            what="configtxgen",
        )

    # -- processes ----------------------------------------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CORE_", "ORDERER_", "FABRIC_"))
        }
        env["FABRIC_CFG_PATH"] = str(self.state_dir / "config")
        return env

    def _orderer_proc(self, info: dict[str, Any], o: dict[str, Any]) -> Proc:
        ndir = self._orderer_dir(o["name"])
        tls = ndir / "tls"
        data = self.state_dir / "nodes" / o["name"]
        env = self._base_env() | {
            "ORDERER_GENERAL_LISTENADDRESS": "127.0.0.1",
            "ORDERER_GENERAL_LISTENPORT": str(o["port"]),
            "ORDERER_GENERAL_LOCALMSPID": ORDERER_MSP,
            "ORDERER_GENERAL_LOCALMSPDIR": str(ndir / "msp"),
            "ORDERER_GENERAL_BOOTSTRAPMETHOD": "none",
            "ORDERER_GENERAL_TLS_ENABLED": "true",
            "ORDERER_GENERAL_TLS_PRIVATEKEY": str(tls / "server.key"),
            "ORDERER_GENERAL_TLS_CERTIFICATE": str(tls / "server.crt"),
            "ORDERER_GENERAL_TLS_ROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_GENERAL_CLUSTER_CLIENTCERTIFICATE": str(tls / "server.crt"),
            "ORDERER_GENERAL_CLUSTER_CLIENTPRIVATEKEY": str(tls / "server.key"),
            "ORDERER_GENERAL_CLUSTER_ROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_FILELEDGER_LOCATION": str(data / "ledger"),
            "ORDERER_CONSENSUS_WALDIR": str(data / "etcdraft" / "wal"),
            "ORDERER_CONSENSUS_SNAPDIR": str(data / "etcdraft" / "snapshot"),
            "ORDERER_CHANNELPARTICIPATION_ENABLED": "true",
            "ORDERER_ADMIN_LISTENADDRESS": f"127.0.0.1:{o['admin_port']}",
            "ORDERER_ADMIN_TLS_ENABLED": "true",
            "ORDERER_ADMIN_TLS_PRIVATEKEY": str(tls / "server.key"),
            "ORDERER_ADMIN_TLS_CERTIFICATE": str(tls / "server.crt"),
            "ORDERER_ADMIN_TLS_ROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED": "true",
            "ORDERER_ADMIN_TLS_CLIENTROOTCAS": f"[{tls / 'ca.crt'}]",
            "ORDERER_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{o['operations_port']}",
            "ORDERER_METRICS_PROVIDER": "disabled",
            "FABRIC_LOGGING_SPEC": os.environ.get("BCFL_FABRIC_LOGGING", ORDERER_LOG_SPEC),
            "FABRIC_LOGGING_FORMAT": LOG_FORMAT,
        }
        return Proc(o["name"], [str(self.bin / "orderer")], env, o["admin_port"])

    def _peer_env(self, peer: dict[str, Any]) -> dict[str, str]:
        ndir = self._peer_dir(peer)
        data = self.state_dir / "nodes" / peer["name"]
        address = f"127.0.0.1:{peer['port']}"
        return self._base_env() | {
            "CORE_PEER_ID": peer["name"],
            "CORE_PEER_ADDRESS": address,
            "CORE_PEER_LISTENADDRESS": address,
            "CORE_PEER_CHAINCODEADDRESS": f"127.0.0.1:{peer['chaincode_port']}",
            "CORE_PEER_CHAINCODELISTENADDRESS": f"127.0.0.1:{peer['chaincode_port']}",
            "CORE_PEER_GOSSIP_BOOTSTRAP": address,
            "CORE_PEER_GOSSIP_ENDPOINT": address,
            "CORE_PEER_GOSSIP_EXTERNALENDPOINT": address,
            "CORE_PEER_GOSSIP_USELEADERELECTION": "false",
            "CORE_PEER_GOSSIP_ORGLEADER": "true",
            "CORE_PEER_GOSSIP_ALIVETIMEINTERVAL": "1s",
            "CORE_PEER_GOSSIP_ALIVEEXPIRATIONTIMEOUT": "10s",
            "CORE_PEER_GOSSIP_RECONNECTINTERVAL": "2s",
            "CORE_PEER_LOCALMSPID": peer["msp_id"],
            "CORE_PEER_MSPCONFIGPATH": str(ndir / "msp"),
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_CERT_FILE": str(ndir / "tls" / "server.crt"),
            "CORE_PEER_TLS_KEY_FILE": str(ndir / "tls" / "server.key"),
            "CORE_PEER_TLS_ROOTCERT_FILE": str(ndir / "tls" / "ca.crt"),
            "CORE_PEER_FILESYSTEMPATH": str(data / "production"),
            "CORE_LEDGER_SNAPSHOTS_ROOTDIR": str(data / "snapshots"),
            "CORE_OPERATIONS_LISTENADDRESS": f"127.0.0.1:{peer['operations_port']}",
            "CORE_METRICS_PROVIDER": "disabled",
            "CORE_CHAINCODE_EXECUTETIMEOUT": "30s",
            # gateways keep connections to the other peers alive; do not GOAWAY them (too_many_pings)
            "CORE_PEER_KEEPALIVE_MININTERVAL": "5s",
            "CORE_PEER_AUTHENTICATION_TIMEWINDOW": (self.load_info() or {}).get(
                "auth_time_window", "15m"
            ),
            "FABRIC_LOGGING_SPEC": os.environ.get("BCFL_FABRIC_LOGGING", PEER_LOG_SPEC),
            "FABRIC_LOGGING_FORMAT": LOG_FORMAT,
        }

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

    def _pid(self, name: str) -> int | None:
        """The id of a process this network started, if it still runs (and is still ours)."""
        path = self._pid_path(name)
        if not path.is_file():
            return None
        try:
            pid = int(path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (ValueError, OSError):
            return None
        # A recycled pid belongs to someone else: ours carry our state dir in their environment.
        marker = f"BCFL_NETWORK_NODE={self.state_dir}/{name}".encode()
        if marker not in environ.split(b"\0") or not cmdline:
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
        except OSError:
            return None
        return pid

    def _ensure_running(self, proc: Proc, timeout: float = 60.0) -> None:
        if self._pid(proc.name) is None:
            if port_open(proc.port):
                raise NetworkError(
                    f"port {proc.port} for {proc.name} is taken by another process; "
                    f"run `bcfl network down --state-dir {self.state_dir}` and up again",
                    code="PORT_IN_USE",
                )
            log = open(self._log_path(proc.name), "ab")
            env = proc.env | {"BCFL_NETWORK_NODE": f"{self.state_dir}/{proc.name}"}
            child: subprocess.Popen[bytes] | None = subprocess.Popen(
                proc.argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.state_dir,
                start_new_session=True,
            )
            log.close()
            assert child is not None
            self._pid_path(proc.name).write_text(f"{child.pid}\n")
        else:
            child = None
        deadline = time.monotonic() + timeout
        while not port_open(proc.port):
            # right after the fork /proc/<pid>/environ is still ours: ask the child object instead
            if (child.poll() is not None) if child is not None else self._pid(proc.name) is None:
                raise NetworkError(
                    f"{proc.name} exited while starting; see {self._log_path(proc.name)}:\n"
                    + self._tail(proc.name),
                    code="NODE_FAILED",
                )
            if time.monotonic() > deadline:
                raise NetworkError(
                    f"{proc.name} did not listen on port {proc.port} within {timeout:.0f} s; "
                    f"see {self._log_path(proc.name)}",
                    code="NODE_TIMEOUT",
                )
            time.sleep(0.1)

    def _tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self._log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _stop(self, name: str, timeout: float = 10.0) -> bool:
        pid = self._pid(name)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)  # its own session: the process and its children only
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self._pid(name) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._pid(name) is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                while self._pid(name) is not None and time.monotonic() < deadline + 5:
                    time.sleep(0.1)
        self._pid_path(name).unlink(missing_ok=True)
        return pid is not None

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
                env=env or self._base_env(),
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
        admin = (
            self.state_dir
            / "crypto"
            / "ordererOrganizations"
            / "orderer"
            / "users"
            / "Admin"
            / "tls"
        )
        block = self.state_dir / "config" / f"{CHANNEL}.block"
        for o in info["orderers"]:
            common = [
                "-o",
                f"127.0.0.1:{o['admin_port']}",
                "--ca-file",
                str(self.orderer_tls_ca),
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
        ndir = self._peer_dir(peer)
        return self._base_env() | {
            "CORE_PEER_LOCALMSPID": peer["msp_id"],
            "CORE_PEER_MSPCONFIGPATH": str(
                self._org_dir(peer["msp_id"]) / "users" / "Admin" / "msp"
            ),
            "CORE_PEER_ADDRESS": f"127.0.0.1:{peer['port']}",
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_ROOTCERT_FILE": str(ndir / "tls" / "ca.crt"),
        }

    def _orderer_args(self, info: dict[str, Any]) -> list[str]:
        o = info["orderers"][0]
        return ["-o", f"127.0.0.1:{o['port']}", "--tls", "--cafile", str(self.orderer_tls_ca)]

    def _join_peers(self, info: dict[str, Any]) -> None:
        block = self.state_dir / "config" / f"{CHANNEL}.block"
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
    def _package(self, info: dict[str, Any]) -> tuple[Path, str]:
        """The chaincode-as-a-service package (deterministic bytes) and its package id."""
        server = info["chaincode_server"]
        connection = json.dumps(
            {"address": f"127.0.0.1:{server['port']}", "dial_timeout": "10s", "tls_required": False}
        ).encode()
        metadata = json.dumps({"type": "ccaas", "label": CHAINCODE_LABEL}).encode()

        def tar_gz(files: dict[str, bytes]) -> bytes:
            buf = io.BytesIO()
            # mtime 0 and a fixed gzip header keep the package id stable across runs
            import gzip

            with (
                gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
                tarfile.open(fileobj=gz, mode="w") as tar,
            ):
                for name, data in files.items():
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    member.mode = 0o644
                    tar.addfile(member, io.BytesIO(data))
            return buf.getvalue()

        package = tar_gz(
            {"metadata.json": metadata, "code.tar.gz": tar_gz({"connection.json": connection})}
        )
        path = self.state_dir / "config" / "bcfl-ccaas.tar.gz"
        path.write_bytes(package)
        return path, f"{CHAINCODE_LABEL}:{hashlib.sha256(package).hexdigest()}"

    def _deploy_chaincode(self, info: dict[str, Any]) -> None:
        package, package_id = self._package(info)
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
                str(self._peer_dir(peer) / "tls" / "ca.crt"),
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
                    "pid": self._pid(o["name"]),
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
                    "pid": self._pid(p["name"]),
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
                "pid": self._pid("chaincode"),
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
                    f"?tls_ca={self._peer_dir(p) / 'tls' / 'ca.crt'}"
                )
        raise ConfigError(f"no peer of {msp_id!r} in this network")


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the network keeps its state and logs [default: $BCFL_NETWORK_DIR or ~/.cache/bcfl/network].",
)


@click.group("network")
def network_group() -> None:
    """Run a local Hyperledger Fabric network (native processes on 127.0.0.1, no Docker)."""


@network_group.command("up")
@_state_dir_option
@click.option(
    "--consortium",
    "consortium_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Consortium directory from `bcfl consortium init` [default: one made in the state dir].",
)
@click.option(
    "--hospitals",
    type=int,
    default=4,
    show_default=True,
    help="Hospitals of the consortium made when --consortium is not given.",
)
@click.option(
    "--orderers",
    type=click.Choice(["1", "3", "5"]),
    default="1",
    show_default=True,
    help="Raft ordering nodes.",
)
@click.option(
    "--batch-timeout",
    default=DEFAULT_BATCH_TIMEOUT,
    show_default=True,
    help="Orderer BatchTimeout (block cutting latency).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the network description as JSON.")
def up_command(
    state_dir: Path | None,
    consortium_dir: Path | None,
    hospitals: int,
    orderers: str,
    batch_timeout: str,
    as_json: bool,
) -> None:
    """Bring the network up (idempotent: finishes or restarts what is missing)."""
    from rich.console import Console

    network = FabricNetwork(
        state_dir,
        consortium_dir=consortium_dir,
        hospitals=hospitals,
        orderers=int(orderers),
        batch_timeout=batch_timeout,
    )
    console = Console(stderr=True)
    start = time.monotonic()
    with console.status("bringing the Fabric network up") as status:

        def report(step: str) -> None:
            status.update(f"network up: {step}")
            console.log(step)

        network.up(report)
    if as_json:
        click.echo(json.dumps(network.status(), indent=2))
    else:
        _print_status(network.status())
        click.echo(f"up in {time.monotonic() - start:.1f} s")


@network_group.command("down")
@_state_dir_option
@click.option(
    "--keep-state", is_flag=True, help="Stop the processes but keep ledgers, identities and logs."
)
def down_command(state_dir: Path | None, keep_state: bool) -> None:
    """Stop every process of the network and (unless --keep-state) remove its state."""
    network = FabricNetwork(state_dir)
    stopped = network.down(purge=not keep_state)
    click.echo(
        f"stopped {len(stopped)} process(es)"
        + ("" if keep_state else f"; removed {network.state_dir}")
    )


@network_group.command("status")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(state_dir: Path | None, as_json: bool) -> None:
    """Show the network's nodes, whether they run, the ledger URL and where the logs are."""
    status = FabricNetwork(state_dir).status()
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        _print_status(status)


@network_group.command("stop-node")
@_state_dir_option
@click.argument("name")
def stop_node_command(state_dir: Path | None, name: str) -> None:
    """Stop one node (e.g. peer0.hospital1) to simulate a failure."""
    FabricNetwork(state_dir).stop_node(name)
    click.echo(f"stopped {name}")


@network_group.command("start-node")
@_state_dir_option
@click.argument("name")
def start_node_command(state_dir: Path | None, name: str) -> None:
    """Start one stopped node again; a peer catches up with the channel by itself."""
    FabricNetwork(state_dir).start_node(name)
    click.echo(f"started {name}")


def _print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not status["exists"]:
        console.print(f"no network in {status['state_dir']}")
        return
    table = Table(title=f"Fabric network in {status['state_dir']}")
    for column in ("node", "kind", "organisation", "address", "pid", "state"):
        table.add_column(column)
    for node in status["nodes"]:
        state = (
            "running"
            if node["pid"] and node["listening"]
            else ("starting" if node["pid"] else "stopped")
        )
        table.add_row(
            node["name"],
            node["kind"],
            node["msp_id"],
            node["address"],
            str(node["pid"] or "-"),
            state,
        )
    console.print(table)
    console.print(f"channel {status['channel']}, chaincode {status['chaincode']}")
    console.print(f"ledger URL: {status['ledger_url']}")
    console.print(f"consortium: {status['consortium_dir']}")
    console.print(f"logs: {status['logs']}")
