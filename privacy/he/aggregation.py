"""Sum encrypted updates with the public context: what the coordinator and auditors do."""

from __future__ import annotations

from collections.abc import Iterable

import tenseal as ts

from bcfl_common.errors import UpdateFormatError
from privacy.he.context import HEContext
from privacy.he.format import Kind, decode_container, encode_container
from privacy.he.vectors import ciphertexts, load_vector


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
        vector = load_vector(ctx, container)
        if total is None:
            total = vector
        else:
            total.add_(vector)
    if total is None or n_params is None:
        raise UpdateFormatError("aggregate: got no updates, expected at least one")
    chunks = ciphertexts(total.serialize())
    return encode_container(Kind.AGGREGATE, ctx.preset, n_params, summands, chunks)
