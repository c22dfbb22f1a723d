"""Release a decrypted model outside the key holders: noise flooding and rounding."""

from __future__ import annotations

import numpy as np

from bcfl_common.errors import PrivacyError


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
