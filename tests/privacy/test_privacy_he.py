"""CKKS encryption of updates: round trips, verifiable aggregation, keys and envelopes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bcfl_common.errors import PrivacyError, UpdateFormatError
from privacy import he
from privacy.he import keyholder
from privacy.he.presets import MAX_COEFF_BITS


def test_sum_of_100_updates_of_100k_round_trips_within_1e_5(secret_ctx, public_ctx, rng):
    n = 100_000
    exact = np.zeros(n)
    updates = []
    for _ in range(100):
        delta = rng.uniform(-1.0, 1.0, n)
        exact += delta
        updates.append(keyholder.encrypt_update(secret_ctx, delta))
    total = he.aggregate(public_ctx, updates, expected_params=n)
    assert he.peek_header(total)["n_summands"] == 100
    got = keyholder.decrypt(secret_ctx, total, expected_params=n)
    assert np.max(np.abs(got - exact)) <= 1e-5


def test_weighted_updates_normalise_after_decryption(secret_ctx, public_ctx, rng):
    a, b = rng.normal(0, 0.1, 5000), rng.normal(0, 0.1, 5000)
    total = he.aggregate(
        public_ctx,
        [
            keyholder.encrypt_update(secret_ctx, a, weight=3.0),
            keyholder.encrypt_update(secret_ctx, b, weight=1.0),
        ],
    )
    got = keyholder.decrypt(secret_ctx, total, total_weight=4.0)
    assert np.allclose(got, (3 * a + b) / 4, atol=1e-6)


def test_default_preset_is_small_and_secure(secret_ctx, rng):
    preset = he.get_preset(he.DEFAULT_PRESET)
    assert preset.security_bits == 128
    assert sum(preset.coeff_mod_bit_sizes) <= MAX_COEFF_BITS[128][preset.poly_modulus_degree]
    n = 50_000
    data = keyholder.encrypt_update(secret_ctx, rng.normal(0, 1, n))
    assert len(data) / n <= 32


def test_security_table_matches_seal():
    from tenseal.sealapi import SEC_LEVEL_TYPE, CoeffModulus

    levels = {128: SEC_LEVEL_TYPE.TC128, 192: SEC_LEVEL_TYPE.TC192, 256: SEC_LEVEL_TYPE.TC256}
    for bits, table in MAX_COEFF_BITS.items():
        for n, limit in table.items():
            assert CoeffModulus.MaxBitCount(n, levels[bits]) == limit


def test_serialized_ciphertext_size_matches_preset(secret_ctx, rng):
    """The framing check relies on the exact uncompressed ciphertext size of each preset."""
    for name in he.PRESETS:
        ctx = secret_ctx if name == he.DEFAULT_PRESET else keyholder.generate_context(name)
        data = keyholder.encrypt_update(ctx, rng.normal(0, 1, 10))
        assert he.decode_container(data, name).n_params == 10


@pytest.mark.parametrize(
    ("n", "bits", "scale", "security"),
    [
        (4096, (60, 60), 30, 128),  # 120 bits > 109
        (8192, (60, 60, 60, 60), 40, 128),  # 240 bits > 218
        (2048, (30, 30), 25, 128),  # 60 bits > 54
        (1024, (27, 27), 20, 128),  # ring too small to be offered
        (4096, (54, 54), 33, None),  # switching the check off
        (4096, (54, 54), 33, 0),
        (4096, (54, 54), 50, 128),  # no headroom for the values
    ],
)
def test_insecure_parameters_are_refused(n, bits, scale, security):
    with pytest.raises(PrivacyError) as err:
        he.HEPreset("custom", n, bits, scale, max_summands=16, security_bits=security)
    assert err.value.message


def test_unknown_preset_is_refused():
    with pytest.raises(PrivacyError, match="expected one of"):
        keyholder.generate_context("ckks-n1024-insecure")


def test_public_context_holds_no_secret_and_cannot_decrypt_or_encrypt(secret_ctx, public_ctx, rng):
    assert not public_ctx.has_secret_key
    assert len(public_ctx.public_bytes()) < 1024  # parameters only
    data = keyholder.encrypt_update(secret_ctx, rng.normal(0, 1, 100))
    with pytest.raises(PrivacyError, match="no secret key"):
        keyholder.decrypt(public_ctx, data)
    with pytest.raises(PrivacyError, match="public context"):
        keyholder.encrypt_update(public_ctx, rng.normal(0, 1, 100))
    with pytest.raises(PrivacyError, match="secret key"):
        he.load_public_context(secret_ctx.secret_bytes(), he.DEFAULT_PRESET)
    with pytest.raises(PrivacyError, match="without a secret key"):
        keyholder.load_secret_context(public_ctx.public_bytes(), he.DEFAULT_PRESET)


def test_context_of_another_preset_is_refused(secret_ctx):
    with pytest.raises(PrivacyError, match="do not match preset"):
        he.load_public_context(secret_ctx.public_bytes(), "ckks-n8192-s40")


def test_secret_context_round_trips(secret_ctx, rng):
    delta = rng.normal(0, 1, 3000)
    reopened = keyholder.load_secret_context(secret_ctx.secret_bytes(), he.DEFAULT_PRESET)
    got = keyholder.decrypt(reopened, keyholder.encrypt_update(secret_ctx, delta))
    assert np.allclose(got, delta, atol=1e-6)


def test_release_floods_and_rounds(rng):
    values = rng.normal(0, 1, 1000)
    out = keyholder.release(values, rng=np.random.default_rng(0))
    q = 2.0**-16
    assert np.allclose(out / q, np.round(out / q))
    assert 0 < np.max(np.abs(out - values)) < 1e-3
    with pytest.raises(PrivacyError):
        keyholder.release(np.array([np.nan]))


AGGREGATE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from privacy import he
    folder = Path(sys.argv[1])
    ctx = he.load_public_context((folder / "public.ctx").read_bytes(), he.DEFAULT_PRESET)
    updates = [p.read_bytes() for p in sorted(folder.glob("update-*.bin"))]
    (folder / "aggregate.bin").write_bytes(he.aggregate(ctx, updates))
    """
)


def test_aggregate_bytes_are_identical_when_recomputed_in_another_process(
    secret_ctx, public_ctx, rng, tmp_path: Path
):
    updates = [keyholder.encrypt_update(secret_ctx, rng.normal(0, 0.1, 20_000)) for _ in range(5)]
    for i, data in enumerate(updates):
        (tmp_path / f"update-{i}.bin").write_bytes(data)
    (tmp_path / "public.ctx").write_bytes(public_ctx.public_bytes())
    here = he.aggregate(public_ctx, updates)
    subprocess.run([sys.executable, "-c", AGGREGATE_SCRIPT, str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / "aggregate.bin").read_bytes() == here
    # Addition is exact modular arithmetic: the order does not change a byte either.
    assert he.aggregate(public_ctx, updates[::-1]) == here


def test_aggregate_applies_integer_weights_by_doubling_and_adding(secret_ctx, public_ctx, rng):
    """The contract's (possibly capped) weights are applied by the aggregator: silos encrypt
    their plain delta, so nobody's pre-multiplied sample weight can override a cap."""
    deltas = [rng.normal(0, 0.05, 3000) for _ in range(3)]
    weights = [1, 37, 1000]
    blobs = [keyholder.encrypt_update(secret_ctx, d) for d in deltas]
    total = he.aggregate(public_ctx, blobs, weights=weights)
    got = keyholder.decrypt(secret_ctx, total, total_weight=float(sum(weights)))
    exact = sum(w * d for w, d in zip(weights, deltas, strict=True)) / sum(weights)
    assert np.max(np.abs(got - exact)) <= 1e-6
    # Deterministic, and the same as adding the ciphertext w times.
    assert he.aggregate(public_ctx, blobs, weights=weights) == total
    repeated = keyholder.decrypt(secret_ctx, he.aggregate(public_ctx, [blobs[1]] * 37))
    assert np.max(np.abs(repeated - 37 * deltas[1])) <= 37 * 1e-7  # error grows like k
    for bad in ([1, 2], [1, 0, 1], [1, 2.5, 1], [1, True, 1]):
        with pytest.raises(UpdateFormatError, match="weights"):
            he.aggregate(public_ctx, blobs, weights=bad)


def _x25519_pair() -> tuple[X25519PrivateKey, bytes, bytes]:
    key = X25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, priv_pem, pub_pem


def test_key_envelope_opens_only_for_its_recipient(secret_ctx):
    alice, alice_priv_pem, alice_pub_pem = _x25519_pair()
    bob, _, _ = _x25519_pair()
    secret = secret_ctx.secret_bytes()
    envelope = keyholder.seal_envelope(
        secret, alice_pub_pem, trial_id="trial-A", recipient="Hosp1MSP"
    )
    assert secret not in envelope
    assert (
        keyholder.open_envelope(envelope, alice, trial_id="trial-A", recipient="Hosp1MSP") == secret
    )
    assert (
        keyholder.open_envelope(envelope, alice_priv_pem, trial_id="trial-A", recipient="Hosp1MSP")
        == secret
    )
    with pytest.raises(PrivacyError, match="cannot be opened"):
        keyholder.open_envelope(envelope, bob, trial_id="trial-A", recipient="Hosp1MSP")
    with pytest.raises(PrivacyError, match="trial_id"):
        keyholder.open_envelope(envelope, alice, trial_id="trial-B", recipient="Hosp1MSP")
    with pytest.raises(PrivacyError, match="recipient"):
        keyholder.open_envelope(envelope, alice, trial_id="trial-A", recipient="Hosp2MSP")


def test_key_envelope_cannot_be_rebound_to_another_trial_or_hospital(secret_ctx):
    alice, _, _ = _x25519_pair()
    envelope = keyholder.seal_envelope(
        b"secret", alice.public_key(), trial_id="trial-A", recipient="Hosp1MSP"
    )
    # Rewrite the clear-text header to claim trial B: the HPKE info no longer matches.
    forged = envelope.replace(b'"trial_id":"trial-A"', b'"trial_id":"trial-B"')
    assert forged != envelope
    with pytest.raises(PrivacyError, match="cannot be opened"):
        keyholder.open_envelope(forged, alice, trial_id="trial-B", recipient="Hosp1MSP")
    tampered = envelope[:-1] + bytes([envelope[-1] ^ 1])
    with pytest.raises(PrivacyError, match="cannot be opened"):
        keyholder.open_envelope(tampered, alice, trial_id="trial-A", recipient="Hosp1MSP")


def test_envelope_refuses_keys_of_the_wrong_type():
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pub_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(Exception, match="expected an X25519 key"):
        keyholder.seal_envelope(b"x", ec_pub_pem, trial_id="t", recipient="r")
