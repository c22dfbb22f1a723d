"""TenSEAL vector framing: the SEAL ciphertexts inside a TenSEAL CKKSVector serialization.

Containers carry bare SEAL ciphertexts; these helpers take them out of TenSEAL's output and
rebuild TenSEAL's protobuf from validated container chunks (shape from the header, never from
untrusted bytes).
"""

from __future__ import annotations

import struct

import tenseal as ts

from bcfl_common.errors import UpdateFormatError
from privacy.he.context import HEContext
from privacy.he.format import Container


# TenSEAL serializes a CKKSVector as protobuf: 1 = packed sizes, 2 = ciphertexts, 3 = scale.
def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def ciphertexts(proto: bytes) -> list[bytes]:
    """The SEAL ciphertexts in a TenSEAL vector serialization (our own, trusted output)."""
    pos, found = 0, []
    while pos < len(proto):
        key, pos = _read_varint(proto, pos)
        wire = key & 7
        if wire == 2:
            length, pos = _read_varint(proto, pos)
            if key >> 3 == 2:
                found.append(proto[pos : pos + length])
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 0:
            _, pos = _read_varint(proto, pos)
        else:
            raise RuntimeError(f"unexpected TenSEAL protobuf wire type {wire}")
    return found


def only_ciphertext(proto: bytes) -> bytes:
    found = ciphertexts(proto)
    if len(found) != 1:
        raise RuntimeError(f"expected one ciphertext in TenSEAL output, found {len(found)}")
    return found[0]


def _vector_proto(container: Container) -> bytes:
    """TenSEAL's protobuf for a vector, built from validated chunks and header-derived shape."""
    preset = container.preset
    slots, n = preset.slots, container.n_params
    sizes = [slots] * (len(container.chunks) - 1) + [n - slots * (len(container.chunks) - 1)]
    packed = b"".join(_varint(s) for s in sizes)
    parts = [b"\x0a", _varint(len(packed)), packed]
    for chunk in container.chunks:
        parts += [b"\x12", _varint(len(chunk)), chunk]
    parts += [b"\x19", struct.pack("<d", preset.scale)]
    return b"".join(parts)


def load_vector(ctx: HEContext, container: Container) -> ts.CKKSVector:
    try:
        vector = ts.ckks_vector_from(ctx.context, _vector_proto(container))
    except Exception as exc:  # SEAL validates each ciphertext against the context
        raise UpdateFormatError(
            f"update container: a ciphertext is not valid for preset {ctx.preset.name!r} ({exc})"
        ) from exc
    data_primes = ctx.preset.data_primes
    for i, ct in enumerate(vector.ciphertext()):
        if ct.size() != 2 or ct.coeff_modulus_size() != data_primes or ct.scale != ctx.preset.scale:
            raise UpdateFormatError(
                f"chunk {i}: got a ciphertext of size {ct.size()}, {ct.coeff_modulus_size()} "
                f"primes, scale {ct.scale}; expected size 2, {data_primes} primes, scale "
                f"2^{ctx.preset.scale_bits}"
            )
    return vector
