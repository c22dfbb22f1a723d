"""Hostile or broken update containers and deltas: each refused with a clear error, no crash."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bcfl_common.errors import UpdateFormatError
from privacy import he
from privacy.he import keyholder
from privacy.he.format import FIXED_HEADER_BYTES


@pytest.fixture(scope="module")
def update(secret_ctx) -> bytes:
    return keyholder.encrypt_update(secret_ctx, np.random.default_rng(7).normal(0, 0.1, 5000))


def _refused(ctx, data: bytes, match: str, **kw) -> UpdateFormatError:
    with pytest.raises(UpdateFormatError, match=match) as err:
        he.aggregate(ctx, [data], **kw)
    assert err.value.code == "UPDATE_FORMAT"
    return err.value


def _with_body(data: bytes, body: bytes, n_chunks: int) -> bytes:
    """Replace the body keeping a valid sha256 (to reach the checks behind the hash)."""
    header = bytearray(data[: FIXED_HEADER_BYTES + 4 * n_chunks])
    header[48:80] = hashlib.sha256(body).digest()
    return bytes(header) + body


def test_valid_update_is_accepted(public_ctx, update):
    assert he.peek_header(he.aggregate(public_ctx, [update]))["n_params"] == 5000


@pytest.mark.parametrize("cut", [0, 3, FIXED_HEADER_BYTES - 1, FIXED_HEADER_BYTES + 5, -1, -5000])
def test_truncated(public_ctx, update, cut):
    _refused(public_ctx, update[:cut], "length|truncated")


def test_padded(public_ctx, update):
    err = _refused(public_ctx, update + b"\x00" * 16, "trailing bytes")
    assert err.detail["field"] == "length"


def test_random_bytes(public_ctx, update):
    _refused(public_ctx, os.urandom(len(update)), "magic")
    _refused(public_ctx, b"BCFU" + os.urandom(len(update) - 4), "version|kind|flags|preset")


def test_body_altered_is_caught_by_the_hash(public_ctx, update):
    data = bytearray(update)
    data[-100] ^= 0xFF
    _refused(public_ctx, bytes(data), "body_sha256")


def test_oversized_declarations(public_ctx, update):
    n_params = 1 << 40
    data = bytearray(update)
    struct.pack_into("<Q", data, 32, n_params)
    _refused(public_ctx, bytes(data), "n_params")
    data = bytearray(update)
    struct.pack_into("<I", data, FIXED_HEADER_BYTES, 0xFFFFFFF0)  # first chunk size
    _refused(public_ctx, bytes(data), "chunk 0 size")
    with pytest.raises(UpdateFormatError, match="at most 1000 bytes"):
        he.decode_container(update, he.DEFAULT_PRESET, max_bytes=1000)


def test_wrong_preset(secret_ctx, public_ctx, update):
    other = keyholder.generate_context("ckks-n8192-s40")
    foreign = keyholder.encrypt_update(other, np.ones(10))
    _refused(public_ctx, foreign, "preset: got 'ckks-n8192-s40', expected 'ckks-n4096-s33'")
    # Relabelled as the default preset, its ciphertexts have the wrong shape.
    data = bytearray(foreign)
    data[8:32] = he.DEFAULT_PRESET.encode().ljust(24, b"\x00")
    _refused(public_ctx, bytes(data), "chunk 0")


def test_parameter_count_mismatch_between_updates(secret_ctx, public_ctx, update):
    other = keyholder.encrypt_update(secret_ctx, np.ones(4999))
    err = _refused(public_ctx, update, "n_params: got 5000, expected 4999", expected_params=4999)
    assert err.detail["field"] == "n_params"
    with pytest.raises(UpdateFormatError, match="n_params: got 4999, expected 5000"):
        he.aggregate(public_ctx, [update, other])
    with pytest.raises(UpdateFormatError, match="n_params"):
        keyholder.decrypt(secret_ctx, other, expected_params=5000)


def test_aggregate_refuses_too_many_summands(secret_ctx, public_ctx):
    small = keyholder.encrypt_update(secret_ctx, np.ones(3))
    limit = public_ctx.preset.max_summands
    with pytest.raises(UpdateFormatError, match=f"at most {limit}"):
        he.aggregate(public_ctx, [small] * (limit + 1))
    with pytest.raises(UpdateFormatError, match="no updates"):
        he.aggregate(public_ctx, [])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_delta_is_refused_before_encryption(secret_ctx, bad):
    delta = np.zeros(1000)
    delta[417] = bad
    with pytest.raises(UpdateFormatError, match="first at index 417"):
        keyholder.encrypt_update(secret_ctx, delta)


def test_delta_shape_range_and_weight_are_checked(secret_ctx):
    with pytest.raises(UpdateFormatError, match="flat"):
        keyholder.encrypt_update(secret_ctx, np.zeros((10, 10)))
    with pytest.raises(UpdateFormatError, match="between 1 and"):
        keyholder.encrypt_update(secret_ctx, np.zeros(0))
    with pytest.raises(UpdateFormatError, match="max_abs_value|at most"):
        keyholder.encrypt_update(secret_ctx, np.full(10, 1e6))
    with pytest.raises(UpdateFormatError, match="weight"):
        keyholder.encrypt_update(secret_ctx, np.ones(10), weight=float("nan"))


FUZZ = textwrap.dedent(
    """
    import hashlib, random, sys
    import numpy as np
    from bcfl_common.errors import UpdateFormatError
    from privacy.he import keyholder
    from privacy.he.format import FIXED_HEADER_BYTES
    ctx = keyholder.generate_context()
    data = keyholder.encrypt_update(ctx, np.random.default_rng(0).normal(0, 0.1, 3000))
    head = FIXED_HEADER_BYTES + 4 * 2
    rnd = random.Random(int(sys.argv[1]))
    outcomes = {"refused": 0, "accepted": 0}
    for trial in range(300):
        body = bytearray(data[head:])
        for _ in range(rnd.choice([1, 1, 4, 64])):
            pos = rnd.randrange(len(body)) if rnd.random() < 0.5 else rnd.randrange(64)
            body[pos] = rnd.randrange(256)
        header = bytearray(data[:head])
        header[48:80] = hashlib.sha256(body).digest()
        try:
            keyholder.decrypt(ctx, bytes(header) + bytes(body))
            outcomes["accepted"] += 1
        except UpdateFormatError:
            outcomes["refused"] += 1
    import json
    print(json.dumps(outcomes))
    """
)


def test_mutated_ciphertexts_with_a_valid_hash_never_crash_the_process():
    """Ciphertext bytes reach SEAL only after framing checks; SEAL refuses the rest cleanly.
    Run in a child process so that a crash in C++ fails this test instead of killing pytest."""
    proc = subprocess.run(
        [sys.executable, "-c", FUZZ, "11"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcomes["refused"] + outcomes["accepted"] == 300
    assert outcomes["refused"] > 0  # the mutations are really reaching the checks
