"""The encrypted update container: the one wire format for CKKS updates and aggregates."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import IntEnum

from bcfl_common.errors import UpdateFormatError
from privacy.he.presets import SEAL_HEADER_BYTES, HEPreset, get_preset

# Layout (little endian), version 1:
#   0  magic        4s   b"BCFU"
#   4  version      u16  FORMAT_VERSION
#   6  kind         u8   1 = one silo's update, 2 = an aggregate of updates
#   7  flags        u8   0 (reserved)
#   8  preset       24s  preset name, ASCII, NUL padded
#  32  n_params     u64  number of encrypted values
#  40  n_summands   u32  updates summed into this container (1 for an update)
#  44  n_chunks     u32  ciphertexts; always ceil(n_params / preset slots)
#  48  body_sha256  32s  sha256 of the body
#  80  chunk sizes  u32 * n_chunks
#  ..  body         the ciphertexts, SEAL-serialized (zstd), concatenated in order
MAGIC = b"BCFU"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<4sHBB24sQII32s")
FIXED_HEADER_BYTES = _FIXED.size
# Hard caps, checked from the header before anything is read or parsed: 1 GiB per container and
# 2^25 (33.5 M) values; a larger model is split into several containers by the caller.
MAX_CONTAINER_BYTES = 1 << 30
MAX_PARAMETERS = 1 << 25

_SEAL_MAGIC = 0xA15E
_SEAL_VERSION_MAJOR = 4
_SEAL_COMPR_ZSTD = 2
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_MAX_BLOCK = 128 * 1024


class Kind(IntEnum):
    UPDATE = 1
    AGGREGATE = 2


@dataclass(frozen=True)
class Container:
    """A parsed, validated container; ``chunks`` are still-unparsed SEAL ciphertext bytes."""

    kind: Kind
    preset: HEPreset
    n_params: int
    n_summands: int
    chunks: tuple[memoryview, ...]
    body_sha256: str


def _fail(field: str, value: object, expected: str) -> UpdateFormatError:
    return UpdateFormatError(
        f"update container {field}: got {value}, expected {expected}",
        detail={"field": field, "value": str(value), "expected": expected},
    )


def encode_container(
    kind: Kind, preset: HEPreset, n_params: int, n_summands: int, chunks: list[bytes]
) -> bytes:
    """Build a container; the inverse of :func:`decode_container`."""
    if len(chunks) != preset.n_chunks(n_params):
        raise _fail("n_chunks", len(chunks), f"{preset.n_chunks(n_params)} for {n_params} values")
    body = b"".join(chunks)
    header = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        int(kind),
        0,
        preset.name.encode("ascii"),
        n_params,
        n_summands,
        len(chunks),
        hashlib.sha256(body).digest(),
    )
    sizes = struct.pack(f"<{len(chunks)}I", *(len(c) for c in chunks))
    return header + sizes + body


def peek_header(data: bytes) -> dict[str, object]:
    """The header fields, checked for form only (for logs and listings; not a validation)."""
    if len(data) < FIXED_HEADER_BYTES:
        raise _fail("length", len(data), f"at least {FIXED_HEADER_BYTES} bytes of header")
    magic, version, kind, flags, preset, n_params, n_summands, n_chunks, digest = (
        _FIXED.unpack_from(data)
    )
    if magic != MAGIC:
        raise _fail("magic", magic.hex(), MAGIC.hex())
    return {
        "version": version,
        "kind": kind,
        "flags": flags,
        "preset": preset.rstrip(b"\x00").decode("ascii", "replace"),
        "n_params": n_params,
        "n_summands": n_summands,
        "n_chunks": n_chunks,
        "body_sha256": digest.hex(),
    }


def decode_container(
    data: bytes | bytearray | memoryview,
    preset: HEPreset | str,
    *,
    expected_params: int | None = None,
    kind: Kind | None = None,
    max_bytes: int = MAX_CONTAINER_BYTES,
) -> Container:
    """Validate ``data`` completely (sizes, shape, hash, every ciphertext's framing) without
    handing any byte to TenSEAL. Raises UpdateFormatError naming the first problem."""
    preset = get_preset(preset)
    data = bytes(data)
    if len(data) > max_bytes:
        raise _fail("length", len(data), f"at most {max_bytes} bytes")
    head = peek_header(data)
    if head["version"] != FORMAT_VERSION:
        raise _fail("version", head["version"], str(FORMAT_VERSION))
    if head["kind"] not in (Kind.UPDATE, Kind.AGGREGATE):
        raise _fail("kind", head["kind"], "1 (update) or 2 (aggregate)")
    if kind is not None and head["kind"] != kind:
        raise _fail("kind", Kind(head["kind"]).name.lower(), kind.name.lower())
    if head["flags"] != 0:
        raise _fail("flags", head["flags"], "0")
    if head["preset"] != preset.name:
        raise _fail("preset", repr(head["preset"]), repr(preset.name))
    n_params = int(head["n_params"])
    if not 1 <= n_params <= MAX_PARAMETERS:
        raise _fail("n_params", n_params, f"an integer in [1, {MAX_PARAMETERS}]")
    if expected_params is not None and n_params != expected_params:
        raise _fail("n_params", n_params, f"{expected_params} (the model's parameter count)")
    n_summands = int(head["n_summands"])
    if head["kind"] == Kind.UPDATE and n_summands != 1:
        raise _fail("n_summands", n_summands, "1 for an update")
    if not 1 <= n_summands <= preset.max_summands:
        raise _fail("n_summands", n_summands, f"an integer in [1, {preset.max_summands}]")
    n_chunks = int(head["n_chunks"])
    if n_chunks != preset.n_chunks(n_params):
        raise _fail("n_chunks", n_chunks, f"{preset.n_chunks(n_params)} for {n_params} values")
    header_len = FIXED_HEADER_BYTES + 4 * n_chunks
    if len(data) < header_len:
        raise _fail("length", len(data), f"at least {header_len} bytes of header (truncated)")
    sizes = struct.unpack_from(f"<{n_chunks}I", data, FIXED_HEADER_BYTES)
    lo = SEAL_HEADER_BYTES + 12
    for i, size in enumerate(sizes):
        if not lo <= size <= preset.max_chunk_bytes:
            raise _fail(f"chunk {i} size", size, f"between {lo} and {preset.max_chunk_bytes} bytes")
    total = header_len + sum(sizes)
    if total > max_bytes:
        raise _fail("declared length", total, f"at most {max_bytes} bytes")
    if len(data) != total:
        what = "truncated" if len(data) < total else "trailing bytes"
        raise _fail("length", len(data), f"exactly {total} bytes as the header declares ({what})")
    digest = hashlib.sha256(memoryview(data)[header_len:]).hexdigest()
    if digest != head["body_sha256"]:
        raise _fail("body_sha256", digest, f"{head['body_sha256']} (the header's)")
    chunks = []
    offset = header_len
    view = memoryview(data)  # chunks are views: no copy of the body
    for i, size in enumerate(sizes):
        chunk = view[offset : offset + size]
        _check_ciphertext_framing(chunk, preset, i)
        chunks.append(chunk)
        offset += size
    return Container(
        Kind(head["kind"]), preset, n_params, n_summands, tuple(chunks), str(head["body_sha256"])
    )


def _check_ciphertext_framing(chunk: memoryview, preset: HEPreset, index: int) -> None:
    """SEAL header, then one zstd frame whose declared and maximum output sizes are exactly one
    ciphertext of this preset: no decompression bomb, no trailing data, no foreign shapes."""
    field = f"chunk {index}"
    magic, hsize, major, _minor, compr, reserved, size = struct.unpack_from("<HBBBBHQ", chunk)
    if magic != _SEAL_MAGIC or hsize != SEAL_HEADER_BYTES or reserved != 0:
        raise _fail(f"{field} SEAL header", bytes(chunk[:8]).hex(), "a SEAL 4 ciphertext header")
    if major != _SEAL_VERSION_MAJOR:
        raise _fail(f"{field} SEAL version", major, str(_SEAL_VERSION_MAJOR))
    if compr != _SEAL_COMPR_ZSTD:
        raise _fail(f"{field} compression", compr, f"{_SEAL_COMPR_ZSTD} (zstd)")
    if size != len(chunk):
        raise _fail(f"{field} SEAL size", size, f"{len(chunk)} (the chunk's length)")
    pos = SEAL_HEADER_BYTES
    if chunk[pos : pos + 4] != _ZSTD_MAGIC:
        raise _fail(f"{field} zstd magic", bytes(chunk[pos : pos + 4]).hex(), _ZSTD_MAGIC.hex())
    fhd = chunk[pos + 4]
    pos += 5
    fcs_flag, single, reserved_bit, checksum, dict_flag = (
        fhd >> 6,
        (fhd >> 5) & 1,
        (fhd >> 3) & 1,
        (fhd >> 2) & 1,
        fhd & 3,
    )
    if reserved_bit or dict_flag:
        raise _fail(f"{field} zstd frame header", hex(fhd), "no dictionary, reserved bit clear")
    if not single:
        pos += 1  # window descriptor
    fcs_len = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fcs_flag]
    if fcs_len == 0 or pos + fcs_len > len(chunk):
        raise _fail(f"{field} zstd content size", "absent", "a declared content size")
    fcs = int.from_bytes(chunk[pos : pos + fcs_len], "little") + (256 if fcs_len == 2 else 0)
    pos += fcs_len
    expected = preset.ciphertext_raw_bytes
    if fcs != expected:
        raise _fail(f"{field} content size", fcs, f"{expected} (one ciphertext of {preset.name})")
    produced = 0
    while True:
        if pos + 3 > len(chunk):
            raise _fail(f"{field} zstd blocks", "truncated", "a complete frame")
        head = int.from_bytes(chunk[pos : pos + 3], "little")
        pos += 3
        last, btype, bsize = head & 1, (head >> 1) & 3, head >> 3
        if btype == 3 or bsize > _ZSTD_MAX_BLOCK:
            raise _fail(f"{field} zstd block", hex(head), "a raw, RLE or compressed block")
        pos += 1 if btype == 1 else bsize
        produced += bsize if btype in (0, 1) else 1
        if produced > expected or pos > len(chunk):
            raise _fail(f"{field} zstd blocks", "oversized", f"at most {expected} bytes of output")
        if last:
            break
    pos += 4 if checksum else 0
    if pos != len(chunk):
        raise _fail(f"{field} zstd frame end", pos, f"{len(chunk)} (the chunk's length)")
