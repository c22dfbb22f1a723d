"""Sum encrypted updates with the public context: what the coordinator and auditors do."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import tenseal as ts

from bcfl_common.errors import UpdateFormatError
from privacy.he.context import HEContext
from privacy.he.format import Kind, decode_container, encode_container
from privacy.he.vectors import ciphertexts, load_vector

MAX_WEIGHT = 10**12


def times(vector: ts.CKKSVector, k: int) -> ts.CKKSVector:
    """``k * vector`` for an integer k >= 1 by doubling and adding ciphertexts.

    A plaintext multiplication would need a rescale, which the presets' single data prime does
    not have; additions are exact modular arithmetic, so the result is deterministic bytes and
    its error grows only like k times the input's (the same relative error).
    """
    result: ts.CKKSVector | None = None
    power = vector  # never modified in place: add() returns a new vector
    while True:
        if k & 1:
            result = power if result is None else result.add(power)
        k >>= 1
        if not k:
            break
        power = power.add(power)
    assert result is not None
    return result


def aggregate(
    ctx: HEContext,
    updates: Iterable[bytes],
    *,
    expected_params: int | None = None,
    weights: Sequence[int] | None = None,
) -> bytes:
    """Sum encrypted updates (or aggregates), each times its integer weight, into one aggregate.

    ``weights`` are the contract's aggregation weights (one per update, in the same order; all 1
    when omitted): silos encrypt their plain parameter delta and the weighted sum is made here,
    so a weight the contract capped below a hospital's sample weight is the one applied. Whoever
    decrypts divides by the sum of the weights. Works with the public context. The sum is exact
    modular arithmetic and is serialized without randomness, so anyone recomputing it from the
    same inputs gets the same bytes; inputs are added in the order given.
    """
    blobs = list(updates)
    factors = [1] * len(blobs) if weights is None else list(weights)
    if len(factors) != len(blobs):
        raise UpdateFormatError(
            f"aggregate weights: got {len(factors)} weights for {len(blobs)} updates, "
            "expected one weight per update"
        )
    for i, w in enumerate(factors):
        if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= MAX_WEIGHT:
            raise UpdateFormatError(
                f"aggregate weights[{i}]: got {w!r}, expected an integer from 1 to {MAX_WEIGHT}"
            )
    total: ts.CKKSVector | None = None
    n_params = expected_params
    summands = 0
    for data, weight in zip(blobs, factors, strict=True):
        container = decode_container(data, ctx.preset, expected_params=n_params)
        n_params = container.n_params
        summands += container.n_summands
        if summands > ctx.preset.max_summands:
            raise UpdateFormatError(
                f"aggregate: {summands} summed updates, expected at most "
                f"{ctx.preset.max_summands} for preset {ctx.preset.name!r}"
            )
        vector = load_vector(ctx, container)
        if weight != 1:
            vector = times(vector, weight)
        if total is None:
            total = vector
        else:
            total.add_(vector)
    if total is None or n_params is None:
        raise UpdateFormatError("aggregate: got no updates, expected at least one")
    chunks = ciphertexts(total.serialize())
    return encode_container(Kind.AGGREGATE, ctx.preset, n_params, summands, chunks)
