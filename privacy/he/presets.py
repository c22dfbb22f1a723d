"""Named CKKS parameter presets, all checked for 128-bit security or more."""

from __future__ import annotations

from dataclasses import dataclass

from bcfl_common.errors import PrivacyError

# Largest total coefficient-modulus bit count per ring degree at each security level, from the
# HomomorphicEncryption.org standard (the same table SEAL enforces; see tests).
MAX_COEFF_BITS: dict[int, dict[int, int]] = {
    128: {2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}
SEAL_HEADER_BYTES = 16
# SEAL's serialized ciphertext members besides the coefficients (parms id, flags, sizes, scale,
# correction factor, and the inner DynArray header); checked against TenSEAL in the tests.
_CIPHERTEXT_MEMBER_OVERHEAD = 97


@dataclass(frozen=True)
class HEPreset:
    """CKKS parameters for one trial. The last prime of ``coeff_mod_bit_sizes`` is SEAL's special
    prime; ciphertexts live on the level of the others. Aggregation is additions only.

    ``max_summands`` updates may be summed into one aggregate; each encrypted value must satisfy
    ``abs(value) <= max_abs_value`` so that any such sum stays inside the plaintext range (CKKS
    wraps around silently when it does not).
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    max_summands: int
    security_bits: int = 128

    def __post_init__(self) -> None:
        check_parameters(
            self.poly_modulus_degree,
            self.coeff_mod_bit_sizes,
            self.scale_bits,
            security_bits=self.security_bits,
        )
        if not 1 <= len(self.name.encode("ascii", "replace")) <= 24 or not self.name.isascii():
            raise PrivacyError(f"preset name: got {self.name!r}, expected 1 to 24 ASCII characters")
        if not 1 <= self.max_summands <= 65536:
            raise PrivacyError(
                f"max_summands: got {self.max_summands}, expected an integer in [1, 65536]"
            )

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_primes(self) -> int:
        return len(self.coeff_mod_bit_sizes) - 1

    @property
    def data_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def max_abs_sum(self) -> float:
        """Largest magnitude a decrypted sum may reach (a factor 4 below the wrap-around point)."""
        return float(2 ** (self.data_bits - 3 - self.scale_bits))

    @property
    def max_abs_value(self) -> float:
        return self.max_abs_sum / self.max_summands

    @property
    def ciphertext_raw_bytes(self) -> int:
        """Uncompressed size of one serialized ciphertext's members (two polynomials)."""
        return _CIPHERTEXT_MEMBER_OVERHEAD + 2 * 8 * self.poly_modulus_degree * self.data_primes

    @property
    def max_chunk_bytes(self) -> int:
        """Largest acceptable serialized ciphertext: the raw size plus zstd framing."""
        raw = self.ciphertext_raw_bytes
        return SEAL_HEADER_BYTES + 18 + raw + 3 * (raw // 1024 + 2)

    def n_chunks(self, n_params: int) -> int:
        return -(-n_params // self.slots)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
            "security_bits": self.security_bits,
            "slots": self.slots,
            "max_summands": self.max_summands,
            "max_abs_value": self.max_abs_value,
        }


def check_parameters(
    poly_modulus_degree: int,
    coeff_mod_bit_sizes: tuple[int, ...] | list[int],
    scale_bits: int,
    *,
    security_bits: int | None = 128,
) -> None:
    """Refuse CKKS parameters below 128-bit security, or that ask for the check to be off."""
    if security_bits not in MAX_COEFF_BITS:
        raise PrivacyError(
            f"security_bits: got {security_bits!r}, expected one of 128, 192, 256 "
            "(the security check cannot be switched off)",
            detail={"field": "security_bits", "value": security_bits},
        )
    table = MAX_COEFF_BITS[security_bits]
    if poly_modulus_degree not in table:
        raise PrivacyError(
            f"poly_modulus_degree: got {poly_modulus_degree!r}, expected one of {sorted(table)}"
        )
    bits = list(coeff_mod_bit_sizes)
    if len(bits) < 2 or not all(isinstance(b, int) and 20 <= b <= 60 for b in bits):
        raise PrivacyError(
            f"coeff_mod_bit_sizes: got {bits}, expected at least two prime sizes in [20, 60] bits "
            "(the data level and SEAL's special prime)"
        )
    total, limit = sum(bits), table[poly_modulus_degree]
    if total > limit:
        raise PrivacyError(
            f"coeff_mod_bit_sizes: total {total} bits for N={poly_modulus_degree} is insecure, "
            f"expected at most {limit} bits for {security_bits}-bit security",
            detail={"field": "coeff_mod_bit_sizes", "value": bits, "max_total_bits": limit},
        )
    if not isinstance(scale_bits, int) or not 20 <= scale_bits <= sum(bits[:-1]) - 8:
        raise PrivacyError(
            f"scale_bits: got {scale_bits!r}, expected an integer in [20, {sum(bits[:-1]) - 8}] "
            "(at least 8 bits of headroom under the data modulus)"
        )


# Default: single-level ring, as the aggregation only adds. Ciphertexts are one 54-bit prime
# wide (about 30 bytes per parameter after SEAL's zstd); scale 2^33 keeps the error of a sum of
# 100 updates near 1e-6 while leaving |sum| <= 2^18.
DEFAULT = HEPreset("ckks-n4096-s33", 4096, (54, 54), 33, max_summands=256)
# The parameters most CKKS tutorials use; 2.7x bigger, kept as a baseline and for trials that
# want a much wider value range.
COMMON = HEPreset("ckks-n8192-s40", 8192, (60, 40, 40, 60), 40, max_summands=1024)

PRESETS: dict[str, HEPreset] = {p.name: p for p in (DEFAULT, COMMON)}
DEFAULT_PRESET = DEFAULT.name


def get_preset(name: str | HEPreset) -> HEPreset:
    """Look a preset up by name (a preset passes through)."""
    if isinstance(name, HEPreset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise PrivacyError(
            f"HE preset: got {name!r}, expected one of {sorted(PRESETS)}",
            detail={"field": "preset", "value": str(name)},
        ) from None
