"""Trial CKKS contexts as everyone holds them: the public context, loaded and checked.

A public context carries the ring parameters and nothing else, so it can add ciphertexts but can
neither encrypt nor decrypt. Making and opening the secret context is the key holders' business
(:mod:`privacy.he.keyholder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import tenseal as ts

from bcfl_common.errors import PrivacyError
from privacy.he.presets import HEPreset, get_preset

# A serialized secret context of the largest preset is under 1 MiB; refuse anything far beyond.
MAX_CONTEXT_BYTES = 16 << 20


@dataclass(frozen=True)
class HEContext:
    """A TenSEAL context tied to the preset it was made or checked against.

    Contexts use symmetric (secret-key) encryption: only key holders encrypt, and the public
    context carries the ring parameters and nothing else.
    """

    preset: HEPreset
    context: ts.Context

    @property
    def has_secret_key(self) -> bool:
        return bool(self.context.has_secret_key())

    def public_bytes(self) -> bytes:
        """The public context: parameters only, never the secret key."""
        return self.context.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )


def load_public_context(data: bytes, preset: HEPreset | str, *, n_threads: int = 1) -> HEContext:
    """Load a public context, refusing one that carries a secret key or other parameters."""
    checked, ctx = parse_context(data, preset, n_threads)
    if ctx.has_secret_key():
        raise PrivacyError(
            "HE public context: got a context holding a secret key, expected parameters only"
        )
    return HEContext(checked, ctx)


def parse_context(
    data: bytes, preset: HEPreset | str, n_threads: int
) -> tuple[HEPreset, ts.Context]:
    """Parse serialized context bytes (size-checked first) and check them against ``preset``."""
    preset = get_preset(preset)
    if not isinstance(data, bytes | bytearray) or not 0 < len(data) <= MAX_CONTEXT_BYTES:
        size = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
        raise PrivacyError(f"HE context: got {size} bytes, expected 1 to {MAX_CONTEXT_BYTES}")
    try:
        ctx = ts.context_from(bytes(data), n_threads=n_threads)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on malformed input
        raise PrivacyError(f"HE context: cannot be parsed ({exc})") from exc
    check_matches(ctx, preset)
    return preset, ctx


def check_matches(ctx: ts.Context, preset: HEPreset) -> None:
    """The context's ring and scale must be exactly the preset's (which passed the 128-bit check)."""
    sc = ctx.seal_context().data
    if not sc.parameters_set():
        raise PrivacyError(
            f"HE context: parameters rejected by SEAL ({sc.parameters_error_message()})"
        )
    key, first = sc.key_context_data(), sc.first_context_data()
    got = {
        "poly_modulus_degree": key.parms().poly_modulus_degree(),
        "levels": key.chain_index() + 1,
        "data_level_chain_index": first.chain_index(),
        "total_bits": key.total_coeff_modulus_bit_count(),
        "data_bits": first.total_coeff_modulus_bit_count(),
        "scale": float(ctx.global_scale) if ctx.global_scale else None,
    }
    want = {
        "poly_modulus_degree": preset.poly_modulus_degree,
        "levels": len(preset.coeff_mod_bit_sizes),
        "data_level_chain_index": len(preset.coeff_mod_bit_sizes) - 2,
        "scale": preset.scale,
    }
    bad = {k: got[k] for k in want if got[k] != want[k]}
    # Products of primes may have one bit less than the sum of their sizes.
    n = len(preset.coeff_mod_bit_sizes)
    if not 0 <= sum(preset.coeff_mod_bit_sizes) - got["total_bits"] < n:
        bad["total_bits"] = got["total_bits"]
    if not 0 <= preset.data_bits - got["data_bits"] < n:
        bad["data_bits"] = got["data_bits"]
    if bad:
        raise PrivacyError(
            f"HE context: parameters {bad} do not match preset {preset.name!r} {preset.describe()}",
            detail={"preset": preset.name, "mismatch": {k: str(v) for k, v in bad.items()}},
        )
