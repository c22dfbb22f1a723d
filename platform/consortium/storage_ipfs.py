"""The ``ipfs://`` artifact store: a Kubo node of the consortium's private swarm, over its RPC API.

``ipfs://127.0.0.1:5001?timeout=60`` talks to the Kubo node at that RPC address (``/api/v0``).
Every artifact keeps the seam's public id, ``content_id(data)`` (CIDv1, raw codec, sha2-256 of the
whole bytes), whatever its size, so the ledger's (content id, sha256) pair is the same in every
store. How the bytes live in IPFS depends on their size:

* Up to ``RAW_BLOCK_LIMIT`` (1 MiB, well inside the bitswap spec's 2 MiB block limit): one raw
  block, put with ``block/put?cid-codec=raw&mhtype=sha2-256&pin=true``. Its CID *is* the content
  id, so any node of the swarm fetches it by that id alone (bitswap).
* Larger: a raw block that big cannot cross bitswap, so the bytes are added as a UnixFS DAG
  (``add``: CIDv1, raw leaves, 256 KiB chunks, pinned), whose root differs from the content id.
  The content id is mapped to that root by a *locator*: an IPNS record signed with an Ed25519
  key derived from the content id (``locator_key``). Any node that knows the content id derives
  the same IPNS name and resolves it on the swarm's DHT, which runs only inside the private
  swarm (swarm key, no bootstrap peers, no delegated routers). The writer imports the key into
  its keystore, so Kubo republishes the record while the node runs; ``pin(cid)`` on another node
  copies the bytes there and publishes the locator from that node too.

The locator key is derivable by anyone who knows the content id, so any member of the swarm
could publish a wrong locator: that can deny service, never corrupt data. ``get`` always
re-hashes the bytes against the content id (``StoreIntegrityError`` on mismatch), and the swarm
only admits holders of the swarm key. ``has`` answers for this node only (no network).

Running Kubo nodes of a private swarm on one machine (tests, demos, ``deploy/ipfs/node``) is
``devnet.kubo``'s business; this module is only the client.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
from multiformats import CID, multihash

from bcfl_common.errors import ConfigError, StoreError, StoreIntegrityError
from consortium.storage import (
    MAX_ARTIFACT_BYTES,
    StoredArtifact,
    describe_artifact,
    parse_content_id,
)

log = logging.getLogger(__name__)

DEFAULT_API_PORT = 5001
DEFAULT_TIMEOUT = 60.0
# Larger artifacts become a UnixFS DAG plus a locator (see the module docstring).
RAW_BLOCK_LIMIT = 1024 * 1024
# The UnixFS layout of large artifacts; fixed so the same bytes always give the same root.
ADD_OPTIONS = {
    "cid-version": "1",
    "raw-leaves": "true",
    "hash": "sha2-256",
    "chunker": "size-262144",
}
LOCATOR_KEY_PREFIX = "bcfl-locator-"
_LOCATOR_DOMAIN = b"bcfl/ipfs-store/locator-key/v1\x00"
_EMPTY_SHA256 = hashlib.sha256(b"").digest()
_LIBP2P_ED25519 = b"\x08\x01"  # protobuf field 1 (KeyType) = 1 (Ed25519)


def locator_key(cid: str) -> tuple[bytes, str]:
    """The locator key of a content id: (libp2p protobuf private key, IPNS name ``k51...``).

    Derived only from the content id's digest, so every node computes the same name.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    seed = hashlib.sha256(_LOCATOR_DOMAIN + parse_content_id(cid)).digest()
    public = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    private_pb = _LIBP2P_ED25519 + b"\x12\x40" + seed + public
    public_pb = _LIBP2P_ED25519 + b"\x12\x20" + public
    name = CID("base36", 1, "libp2p-key", multihash.digest(public_pb, "identity"))
    return private_pb, str(name)


class _KuboError(StoreError):
    """An error answer of the Kubo RPC API (HTTP 500 with ``{"Message": ...}``).

    Callers that expect it (absent block, no locator) catch it; any other reaches the user as the
    StoreError it is, naming the node and the command.
    """

    def __init__(self, url: str, command: str, reason: str):
        super().__init__(f"IPFS node {url}: {command} failed: {reason}", detail={"store": url})
        self.reason = reason


class IpfsStore:
    """Content-addressed artifacts on a Kubo node (``ipfs://host:port?timeout=seconds``)."""

    def __init__(self, api: str, *, url: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.api = api.rstrip("/")
        self.url = url or self.api.replace("http://", "ipfs://", 1)
        self.timeout = timeout
        self._client: httpx.Client | None = None

    # -- the seam ---------------------------------------------------------------------------

    def put(self, data: bytes) -> StoredArtifact:
        data, artifact = describe_artifact(data)
        cid = artifact.content_id
        if len(data) <= RAW_BLOCK_LIMIT:
            self._put_raw_block(cid, data)
        else:
            self._put_dag(cid, data)
        return artifact

    def get(self, cid: str, *, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        """The bytes of ``cid`` from this node or the swarm; re-hashed against the content id."""
        digest = parse_content_id(cid)
        if digest == _EMPTY_SHA256:
            # The only bytes with this id; Kubo's swarm does not exchange the empty block.
            return b""
        size = self._local_block_size(cid)
        if size is not None:
            self._check_size(cid, size, max_bytes)
            return self._checked(cid, digest, self._block_get(cid, max_bytes, offline=True), cid)
        root = self._resolve_locator(cid, offline=True) or self._resolve_locator(cid, offline=False)
        if root is not None:
            return self._get_dag(cid, digest, root, max_bytes)
        # Not a large artifact anyone announced: a small one, as a raw block from the swarm.
        return self._checked(cid, digest, self._block_get(cid, max_bytes, offline=False), cid)

    def has(self, cid: str) -> bool:
        """Whether this node holds every block of ``cid`` (no network is asked)."""
        parse_content_id(cid)
        if self._local_block_size(cid) is not None:
            return True
        root = self._resolve_locator(cid, offline=True)
        if root is None:
            return False
        try:
            self._json("dag/stat", arg=root, offline="true", progress="false")
        except _KuboError:
            return False
        return True

    def verify(self, cid: str) -> StoredArtifact:
        data = self.get(cid)
        return StoredArtifact(cid, hashlib.sha256(data).hexdigest(), len(data))

    # -- beyond the seam --------------------------------------------------------------------

    def pin(self, cid: str) -> StoredArtifact:
        """Keep a verified copy of ``cid`` on this node and announce it from here too.

        Fetches (and checks) the bytes, then stores them as ``put`` would: same blocks, same DAG
        root, and the locator published from this node, so the artifact outlives its writer.
        """
        return self.put(self.get(cid))

    def list(self) -> list[str]:
        """Content ids this node keeps (pinned raw blocks and its locators)."""
        ids: set[str] = set()
        for key in self._json("pin/ls", type="recursive").get("Keys") or {}:
            try:
                parsed = CID.decode(key)
            except ValueError:
                continue
            if (
                parsed.version == 1
                and parsed.codec.name == "raw"
                and parsed.hashfun.name == "sha2-256"
            ):
                ids.add(str(parsed.set(base="base32")))
        for key in self._json("key/list").get("Keys") or []:
            name = key.get("Name", "")
            if name.startswith(LOCATOR_KEY_PREFIX):
                ids.add(name[len(LOCATOR_KEY_PREFIX) :])
        return sorted(ids)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> IpfsStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- small artifacts: one raw block -----------------------------------------------------

    def _put_raw_block(self, cid: str, data: bytes) -> None:
        size = self._local_block_size(cid)
        if size is not None:
            try:
                self._checked(
                    cid, parse_content_id(cid), self._block_get(cid, size, offline=True), cid
                )
            except StoreIntegrityError:
                # Kubo skips writing a block it believes it has: drop the corrupted copy first
                # (a pinned block cannot be removed, so unpin it; block/put pins it again).
                log.warning("replacing corrupted block %s on %s", cid, self.url)
                try:
                    self._json("pin/rm", arg=cid)
                except _KuboError:
                    pass  # not pinned
                removed = self._json("block/rm", arg=cid, force="true")
                if removed.get("Error"):
                    raise StoreError(
                        f"IPFS node {self.url} could not drop corrupted block {cid}: {removed['Error']}"
                    ) from None
        answer = self._json(
            "block/put",
            files={"data": ("artifact", data, "application/octet-stream")},
            **{"cid-codec": "raw", "mhtype": "sha2-256", "pin": "true"},
        )
        if answer.get("Key") != cid:
            raise StoreIntegrityError(
                f"IPFS node {self.url} stored the artifact as {answer.get('Key')!r}; expected content id {cid}"
            )

    def _local_block_size(self, cid: str) -> int | None:
        try:
            return int(self._json("block/stat", arg=cid, offline="true")["Size"])
        except _KuboError:
            return None

    def _block_get(self, cid: str, max_bytes: int, *, offline: bool) -> bytes:
        params = {"arg": cid}
        if offline:
            params["offline"] = "true"
        else:
            params["timeout"] = f"{self.timeout}s"
        try:
            return self._stream("block/get", params, cid, max_bytes)
        except _KuboError as exc:
            raise self._not_found(cid, exc) from exc

    # -- large artifacts: UnixFS DAG + locator ----------------------------------------------

    def _put_dag(self, cid: str, data: bytes) -> None:
        announced = self._resolve_locator(cid, offline=True)
        root = self._add_dag(data)
        if announced == root and not self._local_dag_matches(root, parse_content_id(cid)):
            # Stored here before and corrupted since: Kubo's add skips blocks it believes it
            # has, so drop the DAG's blocks and add the good bytes again.
            log.warning("replacing corrupted DAG %s of %s on %s", root, cid, self.url)
            self._drop_dag(root)
            root = self._add_dag(data)
        self._publish_locator(cid, root)

    def _local_dag_matches(self, root: str, digest: bytes) -> bool:
        try:
            data = self._stream(
                "cat", {"arg": f"/ipfs/{root}", "offline": "true"}, root, MAX_ARTIFACT_BYTES
            )
        except _KuboError:
            return False
        return hashlib.sha256(data).digest() == digest

    def _drop_dag(self, root: str) -> None:
        try:
            self._json("pin/rm", arg=root)
        except _KuboError:
            pass  # not pinned
        with self._request(
            "refs", {"arg": root, "recursive": "true", "unique": "true", "offline": "true"}
        ) as answer:
            refs = [
                json.loads(line).get("Ref") for line in answer.read().splitlines() if line.strip()
            ]
        for cid in [root, *filter(None, refs)]:
            self._json("block/rm", arg=cid, force="true")

    def _add_dag(self, data: bytes) -> str:
        # progress=true keeps lines coming while a big artifact is chunked and written, so the
        # read timeout measures silence, not size; the line with "Hash" names the root.
        params = {"pin": "true", "quieter": "true", "progress": "true", **ADD_OPTIONS}
        files = {"file": ("artifact", data, "application/octet-stream")}
        root = None
        with self._request("add", params, files) as response:
            for line in filter(str.strip, response.iter_lines()):
                try:
                    root = json.loads(line).get("Hash") or root
                except (ValueError, AttributeError) as exc:
                    raise StoreError(f"IPFS node {self.url}: add answered {line[:200]!r}") from exc
        if not root:
            raise StoreError(f"IPFS node {self.url} answered add without a root CID")
        return str(root)

    def _publish_locator(self, cid: str, root: str) -> None:
        private_pb, name = locator_key(cid)
        key_name = LOCATOR_KEY_PREFIX + cid
        try:
            imported = self._json(
                "key/import",
                files={"key": ("key", private_pb, "application/octet-stream")},
                arg=key_name,
                format="libp2p-protobuf-cleartext",
            )
            if imported.get("Id") != name:
                raise StoreError(
                    f"IPFS node {self.url} imported locator key {key_name} as {imported.get('Id')}; expected {name}"
                )
        except _KuboError as exc:
            if "already exists" not in exc.reason:
                raise StoreError(
                    f"IPFS node {self.url} refused locator key {key_name}: {exc.reason}"
                ) from exc
        # Stored locally first, then put on the swarm's DHT; Kubo republishes keystore keys.
        self._json(
            "name/publish",
            arg=f"/ipfs/{root}",
            key=key_name,
            resolve="false",
            **{"allow-offline": "true"},
        )

    def _resolve_locator(self, cid: str, *, offline: bool) -> str | None:
        _, name = locator_key(cid)
        params: dict[str, str] = {"arg": f"/ipns/{name}", "recursive": "false"}
        if offline:
            params["offline"] = "true"
        else:
            params["timeout"] = f"{self.timeout}s"
            params["dht-timeout"] = f"{self.timeout}s"
        try:
            path = str(self._json("name/resolve", **params).get("Path", ""))
        except _KuboError:
            return None  # no locator: not a large artifact anyone announced
        if not path.startswith("/ipfs/"):
            raise StoreIntegrityError(
                f"the locator of {cid} on {self.url} points at {path!r}, not /ipfs/<root>"
            )
        return path[len("/ipfs/") :]

    def _get_dag(self, cid: str, digest: bytes, root: str, max_bytes: int) -> bytes:
        try:
            stat = self._json("files/stat", arg=f"/ipfs/{root}", timeout=f"{self.timeout}s")
        except _KuboError as exc:
            raise self._not_found(cid, exc, f" (its locator names DAG {root})") from exc
        if stat.get("Type") != "file":
            raise StoreIntegrityError(
                f"the locator of {cid} on {self.url} names {root}, which is not a file"
            )
        size = int(stat.get("Size", 0))
        self._check_size(cid, size, max_bytes)
        try:
            data = self._stream("cat", {"arg": f"/ipfs/{root}"}, cid, max_bytes)
        except _KuboError as exc:
            raise self._not_found(cid, exc, f" (its locator names DAG {root})") from exc
        if len(data) < size and hashlib.sha256(data).digest() != digest:
            raise StoreError(
                f"artifact {cid}: the transfer of DAG {root} from {self.url} stopped after {len(data)} of {size} bytes",
                code="ARTIFACT_INCOMPLETE",
            )
        return self._checked(cid, digest, data, f"{cid} (DAG {root})")

    # -- plumbing ---------------------------------------------------------------------------

    def _checked(self, cid: str, digest: bytes, data: bytes, what: str) -> bytes:
        actual = hashlib.sha256(data).digest()
        if actual != digest:
            raise StoreIntegrityError(
                f"artifact {what} from {self.url} is corrupted: its bytes hash to {actual.hex()}, "
                f"expected {digest.hex()}",
                detail={"content_id": cid, "store": self.url},
            )
        return data

    @staticmethod
    def _check_size(cid: str, size: int, max_bytes: int) -> None:
        if size > max_bytes:
            raise StoreError(
                f"artifact {cid} is {size} bytes; the caller accepts at most {max_bytes}",
                code="ARTIFACT_TOO_LARGE",
            )

    def _not_found(self, cid: str, exc: _KuboError, note: str = "") -> StoreError:
        reason = exc.reason
        if "deadline" in reason or "timeout" in reason.lower():
            reason = f"no peer of the swarm provided it within {self.timeout:g}s"
        return StoreError(
            f"artifact {cid} is not in store {self.url}{note}: {reason}",
            code="ARTIFACT_NOT_FOUND",
            detail={"content_id": cid, "store": self.url},
        )

    def _http(self) -> httpx.Client:
        if self._client is None:
            # Kubo's own `timeout` bounds lookups; this one (a little longer) bounds silence.
            self._client = httpx.Client(base_url=f"{self.api}/api/v0/", timeout=self.timeout + 10)
        return self._client

    @contextmanager
    def _request(
        self, command: str, params: dict[str, str], files: Any = None
    ) -> Iterator[httpx.Response]:
        try:
            with self._http().stream("POST", command, params=params, files=files) as response:
                if response.status_code != 200:
                    response.read()
                    try:
                        message = response.json().get("Message") or response.text
                    except ValueError:
                        message = response.text.strip() or f"HTTP {response.status_code}"
                    raise _KuboError(self.url, command, message)
                yield response
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise StoreError(
                f"IPFS node {self.url} is unreachable (RPC API {self.api}/api/v0): {exc}; "
                "expected a running Kubo daemon at that address",
                code="STORE_UNREACHABLE",
                detail={"store": self.url},
            ) from exc
        except httpx.TimeoutException as exc:
            raise _KuboError(
                self.url, command, f"timeout: the node sent nothing for {self.timeout + 10:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise StoreError(
                f"IPFS node {self.url}: {command} failed: {exc}", detail={"store": self.url}
            ) from exc

    def _json(self, command: str, *, files: Any = None, **params: str) -> dict[str, Any]:
        with self._request(command, params, files) as response:
            body = response.read()
        # Some commands stream one JSON object per line; the last one is the answer.
        lines = [line for line in body.splitlines() if line.strip()]
        if not lines:
            return {}
        try:
            answer = json.loads(lines[-1])
        except ValueError as exc:
            raise StoreError(
                f"IPFS node {self.url}: {command} answered {body[:200]!r}, not JSON"
            ) from exc
        return answer if isinstance(answer, dict) else {"value": answer}

    def _stream(self, command: str, params: dict[str, str], cid: str, max_bytes: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        with self._request(command, params) as response:
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise StoreError(
                        f"artifact {cid} is more than {max_bytes} bytes, the most the caller accepts",
                        code="ARTIFACT_TOO_LARGE",
                    )
                chunks.append(chunk)
        # An error after the body started arrives as an HTTP trailer, which httpx does not expose:
        # callers notice a short body by its length or its hash.
        return b"".join(chunks)


def open_ipfs_store(url: str, **options: Any) -> IpfsStore:
    """``ipfs://host[:port][?timeout=seconds]``: the Kubo RPC API at http://host:port/api/v0."""
    parsed = urlparse(url)
    expected = "expected ipfs://host:port (a Kubo RPC API) with an optional ?timeout=seconds"
    if parsed.scheme != "ipfs" or not parsed.hostname or parsed.path not in ("", "/"):
        raise ConfigError(f"store URL {url!r}: {expected}")
    try:
        port = parsed.port or DEFAULT_API_PORT
    except ValueError as exc:
        raise ConfigError(f"store URL {url!r}: bad port ({exc}); {expected}") from exc
    query = {
        key: values[-1] for key, values in parse_qs(parsed.query, keep_blank_values=True).items()
    }
    unknown = sorted(set(query) - {"timeout"})
    if unknown:
        raise ConfigError(f"store URL {url!r}: unknown option(s) {', '.join(unknown)}; {expected}")
    raw_timeout = options.pop("timeout", query.get("timeout", DEFAULT_TIMEOUT))
    try:
        timeout = float(raw_timeout)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise ConfigError(
            f"store URL {url!r}: timeout={raw_timeout!r}; expected a positive number of seconds"
        )
    if options:
        raise ConfigError(f"ipfs store: unknown option(s) {', '.join(sorted(options))}")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return IpfsStore(f"http://{host}:{port}", url=url, timeout=timeout)
