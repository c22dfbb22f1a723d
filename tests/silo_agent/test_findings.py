"""Findings on real TenSEAL containers: problems, norms, and similarity with earlier updates.

Two rounds of honest DP-SGD on the demo data (4 hospitals, breast cancer), encrypted under a real
CKKS key: round 2's honest updates must stay well below the duplicate threshold against round
1's updates and aggregate, while a re-encrypted copy of a round-1 update (other bytes, same
values: the "stale update" / "stolen update" attack) reaches it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_registry.artifact import decode_model, initial_model
from model_registry.registry import build_from_spec, parameter_count
from privacy import he
from privacy.he import keyholder
from silo_agent import findings as f
from silo_agent.data import encode, split
from silo_agent.datasets import load_demo_dataset
from silo_agent.steps import TrialContext
from silo_agent.training import (
    TrainingSettings,
    evaluate,
    open_accountant,
    row_losses,
    train_local,
)

DUPLICATE_SIMILARITY_MICRO = 999_990  # the evaluation policy's default


@dataclass
class Rounds:
    """Two honest DP rounds, encrypted; ``decrypted[r][i]`` is hospital i's delta in round r."""

    secret: Any
    trial: dict[str, Any]
    n_params: int
    blobs: dict[int, list[bytes]]
    weights: list[int]
    decrypted: dict[int, list[np.ndarray]]
    aggregate: bytes
    aggregate_delta: np.ndarray
    plain: dict[int, list[np.ndarray]]


def _train_round(ds: Any, trial: dict, base: np.ndarray, folder: Path, r: int) -> list:
    settings = TrainingSettings.from_hyperparameters(ds.model["hyperparameters"])
    out = []
    for i, hospital in enumerate(ds.hospitals):
        local = split(
            encode(hospital.train, ds.schema),
            trial_id=trial["trial_id"],
            msp_id=f"H{i}",
            validation_fraction=0.2,
        )
        accountant = open_accountant(folder / f"acc{i}-{r}.json", trial, settings, len(local.train))
        result = train_local(
            ds.model, ds.schema, base, local.train, accountant=accountant, seed=100 * r + i
        )
        out.append((np.asarray(result.params, np.float64) - base, len(local.train)))
    return out


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory) -> Rounds:
    folder = tmp_path_factory.mktemp("findings")
    ds = load_demo_dataset("breast-cancer", hospitals=4)
    trial = {
        "trial_id": "t",
        "rounds": 3,
        "model": ds.model,
        "data_schema": ds.schema,
        "dp": dict(ds.dp, enabled=True, noise_multiplier_milli=None),
    }
    secret = keyholder.generate_context(he.DEFAULT_PRESET)
    base = decode_model(initial_model(ds.model, ds.schema, 1)).params.astype(np.float64)
    n_params = parameter_count(build_from_spec(ds.model, ds.schema))
    blobs: dict[int, list[bytes]] = {}
    decrypted: dict[int, list[np.ndarray]] = {}
    plain: dict[int, list[np.ndarray]] = {}
    weights: list[int] = []
    aggregate = b""
    aggregate_delta = np.zeros(n_params)
    for r in (1, 2):
        trained = _train_round(ds, trial, base, folder, r)
        weights = [w for _, w in trained]
        plain[r] = [d for d, _ in trained]
        # Update containers hold the plain delta; the aggregate applies the weights.
        blobs[r] = [keyholder.encrypt_update(secret, d) for d, _ in trained]
        decrypted[r] = [keyholder.decrypt(secret, b, expected_params=n_params) for b in blobs[r]]
        if r == 1:
            aggregate = he.aggregate(secret, blobs[1], weights=weights)
            aggregate_delta = keyholder.decrypt(
                secret, aggregate, expected_params=n_params, total_weight=float(sum(weights))
            )
            base = base + aggregate_delta
    return Rounds(
        secret, trial, n_params, blobs, weights, decrypted, aggregate, aggregate_delta, plain
    )


def history_of_round_1(rounds: Rounds) -> list[np.ndarray]:
    return [*rounds.decrypted[1], rounds.aggregate_delta]


def test_honest_dp_updates_of_consecutive_rounds_are_not_duplicates(rounds: Rounds) -> None:
    history = history_of_round_1(rounds)
    similarities = [f.similarity_micro(d, history) for d in rounds.decrypted[2]]
    print(f"largest honest round-2 similarity (micro): {max(similarities)}; all: {similarities}")
    # Measured 894_721 (4 hospitals, seeded); the threshold is 999_990.
    assert max(similarities) < 950_000
    # Nothing earlier (round 1): similarity 0.
    assert all(f.similarity_micro(d, []) == 0 for d in rounds.decrypted[1])


def test_a_re_encrypted_copy_of_an_earlier_update_is_a_duplicate(rounds: Rounds) -> None:
    # The copier decrypts hospital 1's round-1 update and encrypts it again as its own round-2
    # update (new bytes, a new sha256: the contract's DUPLICATE_CONTENT cannot see it).
    stolen = rounds.decrypted[1][0]
    copy = keyholder.encrypt_update(rounds.secret, stolen)
    assert hashlib.sha256(copy).digest() != hashlib.sha256(rounds.blobs[1][0]).digest()
    delta = keyholder.decrypt(rounds.secret, copy, expected_params=rounds.n_params)
    assert f.similarity_micro(delta, history_of_round_1(rounds)) >= DUPLICATE_SIMILARITY_MICRO
    # Replaying the round-1 aggregate as an update is a duplicate too.
    replay = keyholder.encrypt_update(rounds.secret, rounds.aggregate_delta)
    replayed = keyholder.decrypt(rounds.secret, replay, expected_params=rounds.n_params)
    assert f.similarity_micro(replayed, history_of_round_1(rounds)) >= DUPLICATE_SIMILARITY_MICRO
    # A scaled copy (boosted) is still a duplicate: cosine ignores the scale.
    assert f.similarity_micro(3.0 * delta, history_of_round_1(rounds)) >= 999_990


def test_norms_are_numpys_rounded_up(rounds: Rounds) -> None:
    for plain, decrypted in zip(rounds.plain[1], rounds.decrypted[1], strict=True):
        assert f.norm_milli(decrypted) == math.ceil(1000 * np.linalg.norm(decrypted))
        # CKKS noise is far below a milli-unit of the norm.
        assert abs(f.norm_milli(decrypted) - math.ceil(1000 * np.linalg.norm(plain))) <= 1
    assert f.norm_milli(np.zeros(5)) == 0
    assert f.norm_milli(np.array([3.0, 4.0])) == 5000


def test_similarity_rules() -> None:
    a = np.array([1.0, 0.0, 0.0])
    assert f.similarity_micro(a, [a]) == 1_000_000
    assert f.similarity_micro(a, [-a]) == 0  # opposite counts as 0, never negative
    assert f.similarity_micro(a, [np.array([1.0, 1.0, 0.0])]) == round(1e6 / math.sqrt(2))
    assert f.similarity_micro(np.zeros(3), [a]) == 0  # a zero delta has no direction
    assert f.similarity_micro(a, [np.zeros(3)]) == 0


def test_container_problems_on_real_containers(rounds: Rounds) -> None:
    preset, n = he.DEFAULT_PRESET, rounds.n_params
    assert f.container_problem(rounds.blobs[1][0], preset=preset, n_params=n) is None
    # An aggregate passed off as an update (the aggregate-copy attack).
    assert f.container_problem(rounds.aggregate, preset=preset, n_params=n) == f.WRONG_KIND
    other = keyholder.encrypt_update(rounds.secret, np.ones(n + 1) * 0.01)
    assert f.container_problem(other, preset=preset, n_params=n) == f.WRONG_SHAPE
    assert f.container_problem(b"not a container", preset=preset, n_params=n) == f.UNDECRYPTABLE
    assert f.container_problem(b"", preset=preset, n_params=n) == f.UNDECRYPTABLE


def test_score_micro_is_clamped_and_non_finite_is_the_lowest() -> None:
    assert f.score_micro(0.5, 0.4) == 100_000
    assert f.score_micro(0.5, float("inf")) == f.REJECT_SCORE_MICRO
    assert f.score_micro(0.5, float("nan")) == f.REJECT_SCORE_MICRO
    assert f.score_micro(1e9, 0.0) == f.MAX_SCORE_MICRO


def test_problem_finding_shape() -> None:
    assert f.problem_finding(f.WRONG_KIND) == {
        "score_micro": f.REJECT_SCORE_MICRO,
        "score_se_micro": None,
        "norm_milli": None,
        "similarity_micro": None,
        "problem": "wrong_kind",
    }
    with pytest.raises(ValueError, match="expected one of"):
        f.problem_finding("bad")
    with pytest.raises(f.UnusableUpdate) as info:
        f.finite_delta(np.array([1.0, np.nan, np.inf]))
    assert info.value.problem == f.NOT_FINITE and "2 decrypted values" in info.value.reason


def test_candidate_delta_names_the_problem_of_each_container(
    rounds: Rounds, make_agent: Any, store_url: str
) -> None:
    """The agent's own check, on containers in a real file store."""
    agent = make_agent("hospital1")
    ctx = TrialContext(trial=rounds.trial, preset=he.DEFAULT_PRESET, secret=rounds.secret)

    def record(blob: bytes, *, weight: int = 10, sha: str | None = None) -> dict[str, Any]:
        stored = agent.store.put(blob)
        return {
            "revealed": True,
            "content_id": stored.content_id,
            "sha256": sha or stored.sha256,
            "sample_weight": weight,
        }

    def problem(rec: dict[str, Any] | None) -> str:
        with pytest.raises(f.UnusableUpdate) as info:
            agent.candidate_delta(ctx, rec, rounds.n_params)
        return info.value.problem

    good = rounds.blobs[1][1]
    delta = agent.candidate_delta(ctx, record(good, weight=rounds.weights[1]), rounds.n_params)
    # The plain delta whatever the revealed weight (the aggregator applies the contract's).
    np.testing.assert_allclose(delta, rounds.plain[1][1], atol=1e-4)
    assert problem(None) == f.UNAVAILABLE
    assert problem({**record(good), "revealed": False}) == f.UNAVAILABLE
    assert problem(record(good, sha="0" * 64)) == f.UNAVAILABLE  # bytes do not match the reveal
    assert problem({**record(good), "content_id": None}) == f.UNAVAILABLE
    assert problem(record(rounds.aggregate)) == f.WRONG_KIND
    assert problem(record(keyholder.encrypt_update(rounds.secret, np.ones(3)))) == f.WRONG_SHAPE
    assert problem(record(b"garbage" * 20)) == f.UNDECRYPTABLE
    # A valid header over a damaged body: decode_container refuses it before TenSEAL parses it.
    damaged = bytearray(good)
    damaged[-40:] = bytes(40)
    assert problem(record(bytes(damaged))) == f.UNDECRYPTABLE
    # Encrypted under another trial's key: decrypts to noise, or fails; never a usable update
    # that looks like the real one.
    foreign = keyholder.encrypt_update(
        keyholder.generate_context(he.DEFAULT_PRESET), rounds.plain[1][1]
    )
    try:
        noise = agent.candidate_delta(ctx, record(foreign), rounds.n_params)
    except f.UnusableUpdate as exc:
        assert exc.problem in (f.UNDECRYPTABLE, f.NOT_FINITE)
    else:
        assert f.similarity_micro(noise, [rounds.plain[1][1]]) < 500_000


def test_a_score_on_the_validation_split_rewards_an_honest_update(rounds: Rounds) -> None:
    ds = load_demo_dataset("breast-cancer", hospitals=4)
    local = split(
        encode(ds.hospitals[2].train, ds.schema), trial_id="t", msp_id="H2", validation_fraction=0.2
    )
    base = decode_model(initial_model(ds.model, ds.schema, 1)).params.astype(np.float64)
    base_losses = row_losses(ds.model, ds.schema, base, local.validation)
    # evaluate's loss is the rows' mean
    assert evaluate(ds.model, ds.schema, base, local.validation)["loss"] == pytest.approx(
        float(base_losses.mean()), rel=1e-6
    )
    delta = rounds.decrypted[1][0]
    losses = row_losses(ds.model, ds.schema, base + delta, local.validation)
    finding = f.finding(delta, base_losses=base_losses, losses=losses, history=[])
    assert finding["problem"] is None and finding["similarity_micro"] == 0
    assert finding["score_micro"] > 0
    decreases = base_losses - losses
    expected_se = decreases.std(ddof=1) / np.sqrt(decreases.size)
    assert finding["score_se_micro"] == pytest.approx(expected_se * 1e6, abs=1)
    flipped = f.finding(
        -10 * delta,
        base_losses=base_losses,
        losses=row_losses(ds.model, ds.schema, base - 10 * delta, local.validation),
        history=[delta],
    )
    assert flipped["score_micro"] < -30_000 and flipped["similarity_micro"] == 0


def test_a_clamped_score_has_no_standard_error() -> None:
    """A hugely scaled update: its score is clamped, its error would be too, and would only
    widen nothing but its own record."""
    base = np.array([0.5, 0.6, 0.7])
    wrecked = np.array([1e7, 2e7, 0.1])
    out = f.finding(np.ones(3), base_losses=base, losses=wrecked, history=[])
    assert out["score_micro"] == -f.MAX_SCORE_MICRO and out["score_se_micro"] is None


def test_the_score_standard_error_needs_two_finite_rows() -> None:
    assert f.score_se_micro(np.array([0.7]), np.array([0.6])) is None
    assert f.score_se_micro(np.array([0.7, 0.7]), np.array([0.6, np.inf])) is None
    # decreases 0.1 and 0.3: sd 0.1414, over sqrt(2): 0.1 -> 100_000 micro (rounded up)
    assert f.score_se_micro(np.array([0.7, 0.9]), np.array([0.6, 0.6])) == pytest.approx(
        100_000, abs=1
    )
