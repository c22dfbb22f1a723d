"""Encrypt a silo's flat model delta and decrypt updates or aggregates: key holders only."""

from __future__ import annotations

import numpy as np
import tenseal as ts

from bcfl_common.errors import PrivacyError, UpdateFormatError
from privacy.he.context import HEContext
from privacy.he.format import MAX_PARAMETERS, Kind, decode_container, encode_container
from privacy.he.vectors import load_vector, only_ciphertext


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
        only_ciphertext(ts.ckks_vector(ctx.context, values[i : i + slots]).serialize())
        for i in range(0, values.size, slots)
    ]
    return encode_container(Kind.UPDATE, preset, values.size, 1, chunks)


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
    vector = load_vector(ctx, container)
    out = np.asarray(vector.decrypt(), dtype=np.float64)
    if out.size != container.n_params:
        raise UpdateFormatError(
            f"decrypted length: got {out.size}, expected {container.n_params} (header n_params)"
        )
    return out / total_weight if total_weight != 1.0 else out


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
