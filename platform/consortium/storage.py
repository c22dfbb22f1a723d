"""The ArtifactStore seam: content-addressed bytes (CIDv1, raw codec, sha2-256), chosen by URL.

``file:///path/store`` keeps each artifact as one file named by its content id, written
atomically (temporary file, fsync, rename) and re-hashed on every read. Models and encrypted updates live here; the ledger holds
their content id and sha256.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from multiformats import CID, multihash

from bcfl_common.errors import ConfigError, StoreError, StoreIntegrityError
from bcfl_common.files import write_atomic

# Largest artifact a store accepts (an encrypted update of ~10M parameters fits).
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024


def content_id(data: bytes) -> str:
    """CIDv1 (base32, raw codec, sha2-256) of ``data``: the same id IPFS gives raw blocks."""
    return str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))


def parse_content_id(cid: str) -> bytes:
    """Validate a content id string; return its sha2-256 digest."""
    try:
        parsed = CID.decode(cid)
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"content id {cid!r} is not a valid CID ({exc})", code="BAD_CONTENT_ID"
        ) from exc
    if parsed.version != 1 or parsed.hashfun.name != "sha2-256":
        raise StoreError(
            f"content id {cid!r} is CIDv{parsed.version} with {parsed.hashfun.name}; expected CIDv1 with sha2-256",
            code="BAD_CONTENT_ID",
        )
    return bytes(parsed.raw_digest)


@dataclass(frozen=True)
class StoredArtifact:
    content_id: str
    sha256: str
    size: int


def describe_artifact(data: bytes | bytearray | memoryview) -> tuple[bytes, StoredArtifact]:
    """Check what a store is asked to put (bytes, within MAX_ARTIFACT_BYTES) and name it."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StoreError(f"artifact must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_ARTIFACT_BYTES:
        raise StoreError(
            f"artifact of {len(data)} bytes exceeds the store limit of {MAX_ARTIFACT_BYTES} bytes",
            code="ARTIFACT_TOO_LARGE",
        )
    return data, StoredArtifact(content_id(data), hashlib.sha256(data).hexdigest(), len(data))


class ArtifactStore(Protocol):
    url: str

    def put(self, data: bytes) -> StoredArtifact: ...

    def get(self, cid: str, *, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        """The bytes of ``cid``; raises StoreIntegrityError if they do not hash to it."""
        ...

    def has(self, cid: str) -> bool: ...

    def verify(self, cid: str) -> StoredArtifact: ...


class FileStore:
    """Content-addressed files under one directory (``file:///path``)."""

    def __init__(self, root: Path, url: str | None = None):
        self.root = root
        self.url = url or root.as_uri()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, cid: str) -> Path:
        parse_content_id(cid)
        # Two-character fan-out keeps directories small; the id itself is the file name.
        return self.root / cid[-2:] / cid

    def put(self, data: bytes) -> StoredArtifact:
        data, artifact = describe_artifact(data)
        cid = artifact.content_id
        path = self._path(cid)
        if path.exists():
            try:
                self.verify(cid)
                return artifact
            except StoreIntegrityError:
                pass  # a corrupted copy is replaced by the good bytes we were given
        write_atomic(path, data)
        return artifact

    def get(self, cid: str, *, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        digest = parse_content_id(cid)
        path = self._path(cid)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise StoreError(
                f"artifact {cid} is not in store {self.url}", code="ARTIFACT_NOT_FOUND"
            ) from exc
        if size > max_bytes:
            raise StoreError(
                f"artifact {cid} is {size} bytes; the caller accepts at most {max_bytes}",
                code="ARTIFACT_TOO_LARGE",
            )
        data = path.read_bytes()
        if hashlib.sha256(data).digest() != digest:
            raise StoreIntegrityError(
                f"artifact {cid} in {self.url} is corrupted: its bytes hash to "
                f"{hashlib.sha256(data).hexdigest()}, expected {digest.hex()}"
            )
        return data

    def has(self, cid: str) -> bool:
        return self._path(cid).exists()

    def verify(self, cid: str) -> StoredArtifact:
        data = self.get(cid)
        return StoredArtifact(cid, hashlib.sha256(data).hexdigest(), len(data))

    def list(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("??/*") if not p.name.startswith("."))


def _open_file_store(url: str, **_: Any) -> FileStore:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost") or not parsed.path:
        raise ConfigError(f"store URL {url!r}: expected file:///absolute/path")
    return FileStore(Path(unquote(parsed.path)), url=url)


_STORE_SCHEMES: dict[str, str | Callable[..., ArtifactStore]] = {
    "file": _open_file_store,
    "ipfs": "consortium.storage_ipfs:open_ipfs_store",
}


def open_store(url: str, **options: Any) -> ArtifactStore:
    """Open the artifact store at ``url`` (``file:///path``)."""
    scheme = urlparse(url).scheme
    target = _STORE_SCHEMES.get(scheme)
    if target is None:
        raise ConfigError(
            f"store URL {url!r} has scheme {scheme!r}; expected one of "
            + ", ".join(f"{s}://" for s in sorted(_STORE_SCHEMES)),
            code="UNKNOWN_SCHEME",
        )
    if isinstance(target, str):
        module_name, attr = target.split(":")
        target = getattr(importlib.import_module(module_name), attr)
    return target(url, **options)
