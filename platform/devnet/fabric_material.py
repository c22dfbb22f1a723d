"""What a local Fabric network is made of, before any process runs: the pinned binaries, the
layout of its state directory, its plan (organisations, nodes, ports), every node's crypto
material, the peer, orderer and channel configuration, and the chaincode-as-a-service package.

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
    run/<name>.pid        each process's id and start time (devnet.supervisor)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcfl_common.errors import BcflError, ConfigError
from consortium.loopback import stable_port

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


class NetworkError(BcflError):
    """The local Fabric network could not be brought up, inspected or stopped."""

    code = "NETWORK"
    exit_code = 15


# -- binaries ---------------------------------------------------------------------------------------
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


# -- the state directory ----------------------------------------------------------------------------
def short_name(msp_id: str) -> str:
    """Hospital1MSP -> hospital1: the organisation's part of node names and crypto folders."""
    return msp_id.removesuffix("MSP").lower()


@dataclass(frozen=True)
class FabricLayout:
    """Where a network keeps each thing under its state directory."""

    state_dir: Path

    @property
    def info_path(self) -> Path:
        return self.state_dir / NETWORK_FILE

    @property
    def config_dir(self) -> Path:
        return self.state_dir / "config"

    @property
    def channel_block(self) -> Path:
        return self.config_dir / f"{CHANNEL}.block"

    def pid_path(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def node_data(self, name: str) -> Path:
        return self.state_dir / "nodes" / name

    def orderer_dir(self, name: str) -> Path:
        return self.state_dir / "crypto" / "ordererOrganizations" / "orderer" / "orderers" / name

    @property
    def orderer_admin_tls(self) -> Path:
        return (
            self.state_dir
            / "crypto"
            / "ordererOrganizations"
            / "orderer"
            / "users"
            / "Admin"
            / "tls"
        )

    def org_dir(self, msp_id: str) -> Path:
        return self.state_dir / "crypto" / "peerOrganizations" / short_name(msp_id)

    def peer_dir(self, peer: dict[str, Any]) -> Path:
        return self.org_dir(peer["msp_id"]) / "peers" / peer["name"]

    @property
    def orderer_tls_ca(self) -> Path:
        return (
            self.state_dir / "crypto" / "ordererOrganizations" / "orderer" / "tlsca" / "tlsca.pem"
        )


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


# -- the nodes' environments ------------------------------------------------------------------------
# Fabric's default log format, without terminal colours (the logs are files)
LOG_FORMAT = "%{time:2006-01-02 15:04:05.000 MST} [%{module}] %{shortfunc} -> %{level:.4s} %{id:03x} %{message}"
# INFO, less the loggers that write a line or more per request (every gRPC call, chaincode run,
# gateway submission, broadcast stream): blocks, joins, lifecycle and errors stay in the logs.
# $BCFL_FABRIC_LOGGING replaces it (e.g. INFO for everything, or DEBUG, which is expensive).
PEER_LOG_SPEC = "info:comm.grpc.server,endorser,gateway=warning"
ORDERER_LOG_SPEC = "info:comm.grpc.server,orderer.common.broadcast=warning"


def base_env(layout: FabricLayout) -> dict[str, str]:
    """This environment without Fabric's own variables, and the network's config directory."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CORE_", "ORDERER_", "FABRIC_"))
    }
    env["FABRIC_CFG_PATH"] = str(layout.config_dir)
    return env


def orderer_env(layout: FabricLayout, o: dict[str, Any]) -> dict[str, str]:
    """The environment of the ordering node ``o`` (an entry of network.json's orderers)."""
    ndir = layout.orderer_dir(o["name"])
    tls = ndir / "tls"
    data = layout.node_data(o["name"])
    return base_env(layout) | {
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


def peer_env(layout: FabricLayout, peer: dict[str, Any], auth_time_window: str) -> dict[str, str]:
    """The environment of the peer ``peer`` (an entry of network.json's peers)."""
    ndir = layout.peer_dir(peer)
    data = layout.node_data(peer["name"])
    address = f"127.0.0.1:{peer['port']}"
    return base_env(layout) | {
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
        "CORE_PEER_AUTHENTICATION_TIMEWINDOW": auth_time_window,
        "FABRIC_LOGGING_SPEC": os.environ.get("BCFL_FABRIC_LOGGING", PEER_LOG_SPEC),
        "FABRIC_LOGGING_FORMAT": LOG_FORMAT,
    }


def admin_env(layout: FabricLayout, peer: dict[str, Any]) -> dict[str, str]:
    """Environment for the peer CLI acting as the organisation's network admin on ``peer``."""
    ndir = layout.peer_dir(peer)
    return base_env(layout) | {
        "CORE_PEER_LOCALMSPID": peer["msp_id"],
        "CORE_PEER_MSPCONFIGPATH": str(layout.org_dir(peer["msp_id"]) / "users" / "Admin" / "msp"),
        "CORE_PEER_ADDRESS": f"127.0.0.1:{peer['port']}",
        "CORE_PEER_TLS_ENABLED": "true",
        "CORE_PEER_TLS_ROOTCERT_FILE": str(ndir / "tls" / "ca.crt"),
    }


# -- plan, crypto material, configuration, package ------------------------------------------------
def plan_network(
    layout: FabricLayout,
    consortium_dir: Path | None,
    *,
    hospitals: int,
    orderers: int,
    batch_timeout: str,
    max_message_count: int,
    auth_time_window: str,
) -> dict[str, Any]:
    """The network's description (network.json): organisations, nodes and their ports. Without
    ``consortium_dir`` a consortium of ``hospitals`` hospitals is made in the state directory."""
    from consortium.identity import Consortium, init_consortium

    if consortium_dir is None:
        consortium_dir = layout.state_dir / "consortium"
        if not (consortium_dir / "consortium.json").exists():
            init_consortium(consortium_dir, hospitals)
    consortium = Consortium.load(consortium_dir)
    taken: set[int] = set()

    def node_port() -> int:  # below the ephemeral range: still free when a node restarts
        port = stable_port(avoid=taken)
        taken.add(port)
        return port

    orgs = []
    peers = []
    for org in consortium.organisations.values():
        runs_peer = org.kind in ("operator", "hospital")
        orgs.append({"msp_id": org.msp_id, "kind": org.kind, "peer": runs_peer})
        if runs_peer:
            name = f"peer0.{short_name(org.msp_id)}"
            peers.append(
                {
                    "name": name,
                    "msp_id": org.msp_id,
                    "port": node_port(),
                    "chaincode_port": node_port(),
                    "operations_port": node_port(),
                }
            )
    orderer_nodes = [
        {
            "name": f"orderer{i}",
            "port": node_port(),
            "admin_port": node_port(),
            "operations_port": node_port(),
        }
        for i in range(orderers)
    ]
    return {
        "channel": CHANNEL,
        "chaincode": CHAINCODE,
        "consortium_dir": str(consortium_dir),
        "state_dir": str(layout.state_dir),
        "organisations": orgs,
        "orderers": orderer_nodes,
        "peers": peers,
        "chaincode_server": {"port": node_port()},
        "batch_timeout": batch_timeout,
        "max_message_count": max_message_count,
        "auth_time_window": auth_time_window,
        "up": False,
    }


def make_crypto(layout: FabricLayout, info: dict[str, Any]) -> None:
    """Every node's MSP and TLS material: the ordering organisation from CAs of its own, the
    peer organisations' from their CAs in the consortium directory."""
    from consortium.identity import (
        CertificateAuthority,
        Consortium,
        _pem_cert,
        _pem_private,
        _write_public,
        write_msp_folder,
        write_private,
    )

    crypto = layout.state_dir / "crypto"
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
        pdir = crypto / "peerOrganizations" / short_name(msp_id)
        ca = consortium.certificate_authority(msp_id)
        tls_ca = consortium.certificate_authority(msp_id, tls=True)
        write_msp_folder(pdir / "msp", ca, tls_ca)
        admin_cert, admin_key = ca.issue(f"Admin@{short_name(msp_id)}", ["admin"])
        write_msp_folder(pdir / "users" / "Admin" / "msp", ca, tls_ca, admin_cert, admin_key)
        for peer in info["peers"]:
            if peer["msp_id"] != msp_id:
                continue
            ndir = pdir / "peers" / peer["name"]
            cert, key = ca.issue(peer["name"], ["peer"])
            write_msp_folder(ndir / "msp", ca, tls_ca, cert, key)
            write_tls(ndir / "tls", tls_ca, peer["name"])


def write_configs(layout: FabricLayout, info: dict[str, Any], sample: Path) -> Path:
    """core.yaml, orderer.yaml (from the release's samples in ``sample``) and the channel's
    configtx.yaml; returns the config directory, from which configtxgen makes the channel block."""
    config = layout.config_dir
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

    crypto = layout.state_dir / "crypto"
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
            "MSPDir": str(layout.org_dir(msp_id) / "msp"),
            "Policies": org_policies(msp_id),
        }
        anchors = [
            {"Host": "127.0.0.1", "Port": p["port"]} for p in info["peers"] if p["msp_id"] == msp_id
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
        tls = layout.orderer_dir(o["name"]) / "tls" / "server.crt"
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
    return config


def chaincode_package(layout: FabricLayout, info: dict[str, Any]) -> tuple[Path, str]:
    """The chaincode-as-a-service package (deterministic bytes) and its package id."""
    server = info["chaincode_server"]
    connection = json.dumps(
        {"address": f"127.0.0.1:{server['port']}", "dial_timeout": "10s", "tls_required": False}
    ).encode()
    metadata = json.dumps({"type": "ccaas", "label": CHAINCODE_LABEL}).encode()

    def tar_gz(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        # mtime 0 and a fixed gzip header keep the package id stable across runs
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
    path = layout.state_dir / "config" / "bcfl-ccaas.tar.gz"
    path.write_bytes(package)
    return path, f"{CHAINCODE_LABEL}:{hashlib.sha256(package).hexdigest()}"
