"""Benchmark CKKS updates: size per parameter and encrypt / aggregate / decrypt throughput."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import report, timed  # noqa: E402

from privacy import he  # noqa: E402
from privacy.he import keyholder  # noqa: E402
from privacy.he.format import decode_container  # noqa: E402
from privacy.he.vectors import load_vector  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
UPDATES = 10  # summed per aggregate


def bench_preset(preset: str, n: int, rng: np.random.Generator) -> dict[str, object]:
    ctx = keyholder.generate_context(preset, n_threads=1)
    pub = he.load_public_context(ctx.public_bytes(), preset)
    deltas = [rng.normal(0, 0.05, n) for _ in range(UPDATES)]
    repeat = 3 if n <= 100_000 else 1

    enc_s = timed(lambda: keyholder.encrypt_update(ctx, deltas[0]), repeat=repeat)
    plain_enc_s = timed(lambda: deltas[0].astype(np.float32).tobytes(), repeat=5)
    updates = [keyholder.encrypt_update(ctx, d) for d in deltas]

    agg_s = timed(lambda: he.aggregate(pub, updates), repeat=repeat)
    vectors = [load_vector(pub, decode_container(u, preset)) for u in updates]

    def add_only() -> None:
        acc = vectors[0] + vectors[1]
        for v in vectors[2:]:
            acc.add_(v)

    add_s = timed(add_only, repeat=repeat)
    plain = [d.astype(np.float32) for d in deltas]

    def plain_sum() -> None:
        acc = plain[0].copy()
        for p in plain[1:]:
            acc += p

    plain_add_s = timed(plain_sum, repeat=5)
    total = he.aggregate(pub, updates)
    dec_s = timed(lambda: keyholder.decrypt(ctx, total), repeat=repeat)
    blob = plain[0].tobytes()
    plain_dec_s = timed(lambda: np.frombuffer(blob, dtype=np.float32).astype(np.float64), repeat=5)
    err = float(np.max(np.abs(keyholder.decrypt(ctx, total) - np.sum(deltas, axis=0))))
    added = (UPDATES - 1) * n
    m = 1e-6
    return {
        "preset": preset,
        "params": n,
        "bytes_per_param": len(updates[0]) / n,
        "x_float32": len(updates[0]) / n / 4,
        "encrypt": m * n / enc_s,
        "encrypt_plain": m * n / plain_enc_s,
        "aggregate": m * UPDATES * n / agg_s,
        "add_only": m * added / add_s,
        "aggregate_plain": m * added / plain_add_s,
        "decrypt": m * n / dec_s,
        "decrypt_plain": m * n / plain_dec_s,
        "max_error_sum10": err,
    }


def main() -> None:
    # Per-core figures: TenSEAL contexts are created with one thread (n_threads=1).
    rng = np.random.default_rng(0)
    rows = []
    started = time.perf_counter()
    for n in SIZES:
        rows.append(bench_preset(he.DEFAULT_PRESET, n, rng))
    rows.append(bench_preset("ckks-n8192-s40", 100_000, rng))
    columns = [
        ("preset", ""),
        ("params", "count"),
        ("bytes_per_param", "B"),
        ("x_float32", "ratio"),
        ("encrypt", "Mparam/s"),
        ("encrypt_plain", "Mparam/s"),
        ("aggregate", "Mparam/s"),
        ("add_only", "Mparam/s"),
        ("aggregate_plain", "Mparam/s"),
        ("decrypt", "Mparam/s"),
        ("decrypt_plain", "Mparam/s"),
        ("max_error_sum10", "abs"),
    ]
    report(
        "he",
        title="CKKS update encryption (one core)",
        parameters={
            "sizes": list(SIZES),
            "updates_per_aggregate": UPDATES,
            "delta": "normal(0, 0.05) float64",
            "presets": {name: p.describe() for name, p in he.PRESETS.items()},
            "one_core": True,
            "seconds": round(time.perf_counter() - started, 1),
        },
        columns=columns,
        rows=rows,
        notes=[
            "encrypt: flat float64 delta to container bytes; plain: float32 tobytes",
            "aggregate: per added update, from container bytes (validation, sha256, zstd decode, "
            "SEAL checks, addition), amortised over 10 updates including serializing the result",
            "add_only: ciphertext additions in memory; plain: numpy float32 +=",
            "decrypt: container bytes to float64; plain: float32 frombuffer to float64",
        ],
    )


if __name__ == "__main__":
    main()
