"""Where a ``fabric://`` URL points: the gateway peers (in failover order), channel, chaincode and TLS roots."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from bcfl_common.errors import ConfigError

DEFAULT_TIMEOUT = 30.0


@dataclass
class GatewayPeer:
    address: str
    msp_id: str | None = None


@dataclass
class FabricTarget:
    peers: list[GatewayPeer]
    channel: str
    chaincode: str
    tls_root_pems: bytes
    server_name: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def parse_fabric_url(url: str, msp_id: str | None = None) -> FabricTarget:
    parsed = urlparse(url)
    if parsed.scheme != "fabric":
        raise ConfigError(f"ledger URL {url!r}: expected scheme fabric://")
    query = {k: v for k, v in parse_qs(parsed.query).items()}
    options = {k: v[-1] for k, v in query.items()}
    if not parsed.netloc:
        target = _target_from_profile(Path(unquote(parsed.path)), msp_id, options)
        target.channel = options.get("channel", target.channel)
        target.chaincode = options.get("chaincode", target.chaincode)
        return target
    parts = [p for p in unquote(parsed.path).split("/") if p]
    if len(parts) != 2:
        raise ConfigError(
            f"ledger URL {url!r}: expected fabric://HOST:PORT[,HOST:PORT]/CHANNEL/CHAINCODE?tls_ca=PATH "
            "or fabric:///path/to/network.json"
        )
    cas = query.get("tls_ca", [])
    if not cas:
        raise ConfigError(
            f"ledger URL {url!r}: TLS is required; add ?tls_ca=/path/to/peer-tls-ca.pem"
        )
    pems = b"".join(_read_file(p, "tls_ca") for p in cas)
    peers = [GatewayPeer(a.strip()) for a in parsed.netloc.split(",") if a.strip()]
    return FabricTarget(peers, parts[0], parts[1], pems, options.get("server_name"), options)


def _read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}={path}: cannot read it ({exc.strerror})") from exc


def _target_from_profile(path: Path, msp_id: str | None, options: dict[str, str]) -> FabricTarget:
    try:
        info = json.loads(_read_file(path, "network profile"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not a network description (JSON): {exc}") from exc
    state = Path(info["state_dir"])
    peers, pems = [], b""
    for p in info["peers"]:
        peers.append(GatewayPeer(f"127.0.0.1:{p['port']}", p["msp_id"]))
        short = p["msp_id"].removesuffix("MSP").lower()
        ca = state / "crypto" / "peerOrganizations" / short / "peers" / p["name"] / "tls" / "ca.crt"
        pem = _read_file(ca, "peer TLS CA")
        if pem not in pems:
            pems += pem
    # own organisation's peer first, then the others in a stable, per-organisation rotated order
    own = [p for p in peers if p.msp_id == msp_id]
    others = [p for p in peers if p.msp_id != msp_id]
    if others and msp_id:
        shift = int(hashlib.sha256(msp_id.encode()).hexdigest(), 16) % len(others)
        others = others[shift:] + others[:shift]
    return FabricTarget(own + others, info["channel"], info["chaincode"], pems, None, options)
