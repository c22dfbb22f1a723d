"""The file-backed content-addressed store: ids, atomic writes, tamper detection, bad input."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from bcfl_common.errors import ConfigError, StoreError, StoreIntegrityError
from consortium.storage import FileStore, content_id, open_store


def test_put_get_roundtrip_and_ids(tmp_path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    data = b"encrypted update bytes" * 100
    artifact = store.put(data)
    # CIDv1 raw sha2-256 in base32: the id IPFS gives the same raw block
    assert artifact.content_id.startswith("bafkrei")
    assert artifact.content_id == content_id(data)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get(artifact.content_id) == data
    assert store.has(artifact.content_id)
    assert store.put(data) == artifact  # idempotent
    assert content_id(b"hello") == "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def test_flipped_byte_is_detected(tmp_path) -> None:
    store = FileStore(tmp_path / "store")
    artifact = store.put(b"model weights v1")
    path = store._path(artifact.content_id)
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreIntegrityError, match=artifact.content_id):
        store.get(artifact.content_id)
    with pytest.raises(StoreIntegrityError):
        store.verify(artifact.content_id)
    # putting the right bytes again repairs the copy
    store.put(b"model weights v1")
    assert store.get(artifact.content_id) == b"model weights v1"


def test_bad_ids_missing_and_oversized(tmp_path) -> None:
    store = FileStore(tmp_path / "store")
    with pytest.raises(StoreError, match="not a valid CID"):
        store.get("not-a-cid")
    with pytest.raises(StoreError, match="not in store"):
        store.get(content_id(b"never stored"))
    artifact = store.put(b"x" * 1000)
    with pytest.raises(StoreError, match="at most 10"):
        store.get(artifact.content_id, max_bytes=10)
    with pytest.raises(ConfigError, match="scheme 'ftp'"):
        open_store("ftp://example/store")
    with pytest.raises(ConfigError, match="expected file:///absolute/path"):
        open_store("file://somehost/store")


def test_no_partial_files_left(tmp_path) -> None:
    store = FileStore(tmp_path / "store")
    for i in range(20):
        store.put(f"artifact {i}".encode())
    leftovers = [p for p in (tmp_path / "store").rglob(".*.tmp")]
    assert leftovers == []
    assert len(store.list()) == 20


def test_cli_put_get_verify(tmp_path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"\x00\x01binary model\xff")
    url = f"file://{tmp_path / 'store'}"

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "bcfl_cli", "store", *args],  # noqa: E731
            capture_output=True,
        )

    put = run("put", url, str(src))
    assert put.returncode == 0, put.stderr
    cid = put.stdout.decode().strip()
    got = run("get", url, cid)
    assert got.stdout == src.read_bytes()
    assert run("verify", url).returncode == 0
    path = FileStore(tmp_path / "store")._path(cid)
    path.write_bytes(b"tampered")
    bad = run("verify", url)
    assert bad.returncode != 0
    assert b"corrupted" in bad.stderr and cid.encode() in bad.stderr
