"""Encrypt a flat model delta, aggregate encrypted updates, decrypt, and release safely."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np
import tenseal as ts

from bcfl_common.errors import PrivacyError, UpdateFormatError
from privacy.he.format import MAX_PARAMETERS, Container, Kind, decode_container, encode_container
from privacy.he.keys import HEContext


def encrypt_update(ctx: HEContext, delta: np.ndarray, *, weight: float = 1.0) -> bytes:
    """Encrypt ``weight * delta`` (a flat, finite float vector) as an update container.

    The silo applies its sample weight here; whoever decrypts the aggregate divides by the sum of
    the weights (:func:`decrypt`'s ``total_weight``).
    """
    if not ctx.has_secret_key:
        raise PrivacyError("encrypt: got a public context, expected the trial's secret context")
    values = _check_delta(delta, weight)
    preset = ctx.preset
    values = values * float(weight) if weight != 1.0 else values
    peak = float(np.max(np.abs(values)))
    if peak > preset.max_abs_value:
        raise UpdateFormatError(
            f"delta: largest |weight * value| is {peak:.6g}, expected at most "
            f"{preset.max_abs_value:.6g} for preset {preset.name!r} (use smaller sample weights)",
            detail={"field": "delta", "value": peak, "max_abs_value": preset.max_abs_value},
        )
    slots = preset.slots
    chunks = [
        _only_ciphertext(ts.ckks_vector(ctx.context, values[i : i + slots]).serialize())
        for i in range(0, values.size, slots)
    ]
    return encode_container(Kind.UPDATE, preset, values.size, 1, chunks)


def aggregate(
    ctx: HEContext, updates: Iterable[bytes], *, expected_params: int | None = None
) -> bytes:
    """Sum encrypted updates (or aggregates) into one aggregate container.

    Works with the public context. The sum is exact modular arithmetic and is serialized without
    randomness, so anyone recomputing it from the same inputs gets the same bytes; inputs are
    added in the order given.
    """
    total: ts.CKKSVector | None = None
    n_params = expected_params
    summands = 0
    for data in updates:
        container = decode_container(data, ctx.preset, expected_params=n_params)
        n_params = container.n_params
        summands += container.n_summands
        if summands > ctx.preset.max_summands:
            raise UpdateFormatError(
                f"aggregate: {summands} summed updates, expected at most "
                f"{ctx.preset.max_summands} for preset {ctx.preset.name!r}"
            )
        vector = _load_vector(ctx, container)
        if total is None:
            total = vector
        else:
            total.add_(vector)
    if total is None or n_params is None:
        raise UpdateFormatError("aggregate: got no updates, expected at least one")
    chunks = _ciphertexts(total.serialize())
    return encode_container(Kind.AGGREGATE, ctx.preset, n_params, summands, chunks)


def decrypt(
    ctx: HEContext,
    data: bytes,
    *,
    expected_params: int | None = None,
    total_weight: float = 1.0,
) -> np.ndarray:
    """Decrypt an update or aggregate container and divide by ``total_weight`` (float64)."""
    if not ctx.has_secret_key:
        raise PrivacyError(
            "decrypt: got a public context (no secret key), expected the trial's secret context"
        )
    if not (np.isfinite(total_weight) and total_weight > 0):
        raise PrivacyError(f"total_weight: got {total_weight!r}, expected a positive number")
    container = decode_container(data, ctx.preset, expected_params=expected_params)
    vector = _load_vector(ctx, container)
    out = np.asarray(vector.decrypt(), dtype=np.float64)
    if out.size != container.n_params:
        raise UpdateFormatError(
            f"decrypted length: got {out.size}, expected {container.n_params} (header n_params)"
        )
    return out / total_weight if total_weight != 1.0 else out


def release(
    values: np.ndarray,
    *,
    quantum: float = 2.0**-16,
    flood_sigma: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Prepare a decrypted model for anyone outside the key holders.

    CKKS decryptions leak the secret key through their error to whoever also saw the ciphertext
    (Li and Micciancio, IND-CPA-D). Before a decrypted model leaves the silos, noise far above the
    CKKS error is added (noise flooding, Gaussian, ``flood_sigma`` defaulting to ``quantum``; the
    default preset's error is ~1e-6, so 1.5e-5 floods it by more than 10x) and the result is
    rounded to a multiple of ``quantum``. This is the usual practical mitigation, not a proof at
    statistical distance 2^-128.
    """
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise PrivacyError("release: values contain NaN or Inf, expected finite numbers")
    if not (np.isfinite(quantum) and quantum > 0):
        raise PrivacyError(f"quantum: got {quantum!r}, expected a positive number")
    sigma = quantum if flood_sigma is None else flood_sigma
    if not (np.isfinite(sigma) and sigma >= 0):
        raise PrivacyError(f"flood_sigma: got {sigma!r}, expected a non-negative number")
    rng = rng if rng is not None else np.random.default_rng()
    noisy = arr + rng.normal(0.0, sigma, size=arr.shape) if sigma > 0 else arr
    return np.round(noisy / quantum) * quantum


def _check_delta(delta: np.ndarray, weight: float) -> np.ndarray:
    arr = np.asarray(delta)
    if arr.ndim != 1:
        raise UpdateFormatError(
            f"delta: got an array of shape {arr.shape}, expected a flat (1-D) vector"
        )
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise UpdateFormatError(f"delta: got dtype {arr.dtype}, expected a float vector")
    if not 1 <= arr.size <= MAX_PARAMETERS:
        raise UpdateFormatError(
            f"delta: got {arr.size} values, expected between 1 and {MAX_PARAMETERS}"
        )
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise UpdateFormatError(
            f"delta: {bad.size} values are NaN or Inf (first at index {int(bad[0])}), "
            "expected finite numbers; nothing was encrypted",
            detail={"field": "delta", "non_finite": int(bad.size), "first_index": int(bad[0])},
        )
    if not (np.isfinite(weight) and weight > 0):
        raise UpdateFormatError(f"weight: got {weight!r}, expected a positive finite number")
    return arr


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


def _ciphertexts(proto: bytes) -> list[bytes]:
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


def _only_ciphertext(proto: bytes) -> bytes:
    found = _ciphertexts(proto)
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


def _load_vector(ctx: HEContext, container: Container) -> ts.CKKSVector:
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
