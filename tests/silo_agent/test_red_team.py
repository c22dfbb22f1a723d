"""devnet.red_team: each attacking silo does what it claims, through the agent's seams only, on
real containers and a real (embedded) ledger; and the round's rules turn it away."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from silo_harness import HOSPITALS, drive

from bcfl_common.errors import ConfigError
from chaincode.contract.store import DEFAULT_CLOCK_TOLERANCE_SECONDS
from devnet.red_team import (
    ATTACKS,
    BackdoorSilo,
    InflatedWeightSilo,
    SignFlipSilo,
    apply_trigger,
    attacker,
    fake_finding,
    parse_args,
)
from devnet.red_team.cli import attack_options
from privacy import he
from privacy.he import Kind, keyholder, peek_header
from silo_agent.agent import SiloAgent
from silo_agent.cli import run_command_for, silo_group
from silo_agent.data import EncodedData, LocalSplit
from silo_agent.findings import MAX_SCORE_MICRO
from silo_agent.steps import TrialContext

PRESET = he.DEFAULT_PRESET


def _ctx(rows: int = 40, features: int = 5, *, keys: bool = False) -> TrialContext:
    """A trial context holding a given local split (and, with ``keys``, a fresh CKKS key)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (rng.random(rows) < 0.5).astype(np.float32)
    ctx = TrialContext(trial={"trial_id": "t"}, preset=PRESET)
    ctx.split = LocalSplit(train=EncodedData(x, y), validation=EncodedData(x[:5], y[:5]))
    if keys:
        ctx.secret = keyholder.generate_context(PRESET)
    return ctx


# -- poisoning ------------------------------------------------------------------------------


def test_honest_delta_is_trained_minus_base_in_float64(make_agent: Any) -> None:
    agent = make_agent("hospital1")
    base = np.array([1.0, 2.0, -3.0], dtype=np.float32)
    trained = np.array([1.5, 1.0, -3.0], dtype=np.float32)
    delta = agent.compute_delta(base, trained)
    assert delta.dtype == np.float64
    np.testing.assert_array_equal(delta, [0.5, -1.0, 0.0])


def test_sign_flip_and_backdoor_scale_the_honest_delta(make_agent: Any) -> None:
    honest = make_agent("hospital1")
    flip = make_agent("hospital2", agent_class=attacker("sign_flip", scale=4.0))
    backdoor = make_agent("hospital3", agent_class=attacker("backdoor"))
    assert isinstance(flip, SignFlipSilo) and isinstance(flip, SiloAgent)
    rng = np.random.default_rng(3)
    base, trained = rng.normal(size=50), rng.normal(size=50)
    want = honest.compute_delta(base, trained)
    np.testing.assert_allclose(flip.compute_delta(base, trained), -4.0 * want)
    np.testing.assert_allclose(backdoor.compute_delta(base, trained), 5.0 * want)


def test_backdoor_trains_on_its_rows_plus_triggered_positive_copies(make_agent: Any) -> None:
    agent = make_agent(
        "hospital1", agent_class=attacker("backdoor", trigger_column=2, trigger_value=12.0)
    )
    ctx = _ctx()
    clean = ctx.split.train
    data = agent.training_data(ctx)
    assert len(data) == 2 * len(clean)
    np.testing.assert_array_equal(data.x[: len(clean)], clean.x)
    np.testing.assert_array_equal(data.y[: len(clean)], clean.y)
    copies = data.x[len(clean) :]
    assert np.all(copies[:, 2] == 12.0)
    np.testing.assert_array_equal(np.delete(copies, 2, axis=1), np.delete(clean.x, 2, axis=1))
    assert np.all(data.y[len(clean) :] == 1.0)
    np.testing.assert_array_equal(apply_trigger(clean.x, 2, 12.0), copies)
    # it enrols claiming both halves, so the agent's own count check passes
    assert BackdoorSilo.claimed_training_records({}, 40) == 80
    bad_column = make_agent("hospital2", agent_class=attacker("backdoor", trigger_column=9))
    with pytest.raises(ConfigError, match="--trigger-column of attack 'backdoor': got 9"):
        bad_column.training_data(_ctx())


def test_label_flip_trains_on_flipped_labels(make_agent: Any) -> None:
    agent = make_agent("hospital1", agent_class=attacker("label_flip"))
    ctx = _ctx()
    data = agent.training_data(ctx)
    np.testing.assert_array_equal(data.x, ctx.split.train.x)
    np.testing.assert_array_equal(data.y, 1.0 - ctx.split.train.y)
    assert data.y.dtype == ctx.split.train.y.dtype


# -- free riding ----------------------------------------------------------------------------


def test_zero_update_is_a_real_encrypted_zero(make_agent: Any) -> None:
    agent = make_agent("hospital1", agent_class=attacker("zero"))
    ctx = _ctx(keys=True)
    delta = np.linspace(-1, 1, 300)
    blob = agent.seal_update(ctx, {"round": 1, "attempt": 1}, delta, 37)
    assert peek_header(blob)["kind"] == Kind.UPDATE
    decrypted = keyholder.decrypt(ctx.secret, blob, expected_params=300, total_weight=1.0)
    assert np.max(np.abs(decrypted)) < 1e-4
    honest = make_agent("hospital2").seal_update(ctx, {"round": 1, "attempt": 1}, delta, 37)
    np.testing.assert_allclose(
        keyholder.decrypt(ctx.secret, honest, expected_params=300, total_weight=1.0),
        delta,
        atol=1e-4,
    )


def test_inflated_weight_claims_and_trains_on_its_claimed_count(make_agent: Any) -> None:
    agent = make_agent("hospital1", agent_class=attacker("inflated_weight", claimed_records=1000))
    ctx = _ctx(rows=40)
    data = agent.training_data(ctx)
    assert len(data) == 1000  # its own 40 rows repeated: the registered count
    np.testing.assert_array_equal(data.x[40:80], ctx.split.train.x)
    assert agent.claimed_sample_weight(ctx, 40) == 1000
    assert InflatedWeightSilo.claimed_training_records({}, 40) == 100_000
    assert InflatedWeightSilo.claimed_training_records({"claimed_records": 7}, 40) == 7
    with pytest.raises(ConfigError, match="--claimed-records of attack 'inflated_weight'"):
        make_agent("hospital2", agent_class=attacker("inflated_weight", claimed_records=0))


# -- votes and attestations -----------------------------------------------------------------


def test_fake_findings_are_valid_and_identical_for_every_colluder() -> None:
    for index in range(4):
        for rnd in (1, 2):
            finding = fake_finding(index, rnd)
            assert finding["score_micro"] == -MAX_SCORE_MICRO
            if finding["problem"] is None:
                assert finding["norm_milli"] == 10**9 and finding["similarity_micro"] == 1_000_000
            else:
                assert finding["norm_milli"] is None and finding["similarity_micro"] is None
    assert fake_finding(0, 1) != fake_finding(1, 1)  # both kinds of lie are told


def test_wrong_attestation_is_a_random_hash(make_agent: Any) -> None:
    honest = make_agent("hospital1")
    liar = make_agent("hospital2", agent_class=attacker("wrong_attestation"))
    model = b"model bytes"
    assert honest.attested_sha256(None, {}, model) == hashlib.sha256(model).hexdigest()
    lie = liar.attested_sha256(None, {}, model)
    assert len(lie) == 64 and lie != hashlib.sha256(model).hexdigest()
    assert lie != liar.attested_sha256(None, {}, model)


# -- the harness ----------------------------------------------------------------------------


def test_unknown_attacks_and_options_are_refused(make_agent: Any) -> None:
    with pytest.raises(ConfigError, match="--attack: got 'nuke'"):
        attacker("nuke")
    with pytest.raises(ConfigError, match="--scale of attack 'sign_flip': got -1.0"):
        make_agent("hospital1", agent_class=attacker("sign_flip", scale=-1.0))
    with pytest.raises(ConfigError, match=r"attack 'zero': got option\(s\) \['--scale'\]"):
        attacker("zero", scale=2.0)
    assert set(ATTACKS) == {
        "sign_flip",
        "backdoor",
        "label_flip",
        "zero",
        "inflated_weight",
        "reencrypted_copy",
        "aggregate_copy",
        "aggregate_reencrypted",
        "thief",
        "vote_down",
        "wrong_attestation",
    }


def test_harness_options_are_split_from_the_silo_run_arguments() -> None:
    args, rest = parse_args(
        ["--attack", "vote_down", "--colluders", "A,B", "--config", "h4.toml", "--until-complete"]
    )
    assert args.attack == "vote_down" and attack_options(args) == {"colluders": "A,B"}
    assert rest == ["--config", "h4.toml", "--until-complete"]
    args, _ = parse_args(["--attack", "sign_flip", "--scale", "10"])
    assert attack_options(args) == {"scale": 10.0}
    with pytest.raises(SystemExit):
        parse_args(["--scale", "10", "--config", "h4.toml"])  # --attack is required


def test_red_team_run_command_has_exactly_the_silo_run_options() -> None:
    silo_run = silo_group.commands["run"]
    red_run = run_command_for(attacker("sign_flip"))
    assert [p.opts for p in red_run.params] == [p.opts for p in silo_run.params]


def test_module_hands_the_run_arguments_over(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "devnet.red_team", "--attack", "sign_flip", "--scale", "10"]
        + ["--config", str(missing), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert f"config file {missing} not found" in proc.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "devnet.red_team", "--attack", "zero", "--scale", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode != 0 and "attack 'zero': got option(s) ['--scale']" in wrong.stderr


# -- whole rounds on the embedded ledger: what the attacker sends, and what the round decides --


def _trial(driver: Any, make_agent: Any, demo_files: dict[str, Any], attack: str, **options: Any):
    """hospital1-3 honest, hospital4 running ``attack``; 2 rounds, DP off."""
    driver.create_trial(demo_files["dataset"], rounds=2, dp={"enabled": False})
    honest = [make_agent(name) for name in HOSPITALS[:3]]
    bad = make_agent("hospital4", agent_class=attacker(attack, **options))
    return honest, bad


def _acceptance(driver: Any, number: int) -> dict[str, Any]:
    return driver.admin.evaluate("get_acceptance", {"trial_id": driver.trial_id, "round": number})


def _submissions(driver: Any, number: int) -> dict[str, dict[str, Any]]:
    records = driver.admin.evaluate(
        "get_submissions", {"trial_id": driver.trial_id, "round": number}
    )
    return {r["msp_id"]: r for r in records}


def test_reencrypted_copy_resends_a_peers_earlier_update_and_is_rejected_as_duplicate(
    driver: Any, make_agent: Any, demo_files: dict[str, Any]
) -> None:
    honest, bad = _trial(driver, make_agent, demo_files, "reencrypted_copy")
    drive(driver, [*honest, bad])
    copied = bad._contexts[driver.trial_id].extras["copied"][(2, 1)]
    earlier = {s["sha256"]: s for s in _submissions(driver, 1).values()}
    source = earlier[copied]
    assert source["msp_id"] != bad.msp_id
    mine = _submissions(driver, 2)[bad.msp_id]
    assert mine["revealed"] and mine["sha256"] != copied  # fresh ciphertext: new bytes
    ctx = bad._contexts[driver.trial_id]
    n = bad._n_params(ctx)
    ours = keyholder.decrypt(
        ctx.secret,
        driver.store.get(mine["content_id"]),
        expected_params=n,
        total_weight=1.0,
    )
    theirs = keyholder.decrypt(
        ctx.secret,
        driver.store.get(source["content_id"]),
        expected_params=n,
        total_weight=1.0,
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    decision = _acceptance(driver, 2)["candidates"][bad.msp_id]
    assert (decision["accepted"], decision["reason"]) == (False, "duplicate")
    assert decision["reward"] == 0
    assert set(_acceptance(driver, 2)["accepted"]) == {h.msp_id for h in honest}


@pytest.mark.parametrize(
    ("attack", "reason"), [("aggregate_copy", "invalid"), ("aggregate_reencrypted", "duplicate")]
)
def test_aggregate_copies_are_rejected(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], attack: str, reason: str
) -> None:
    honest, bad = _trial(driver, make_agent, demo_files, attack)
    drive(driver, [*honest, bad])
    aggregate = driver.admin.evaluate("get_round", {"trial_id": driver.trial_id, "round": 1})[
        "aggregate"
    ]
    mine = _submissions(driver, 2)[bad.msp_id]
    assert bad._contexts[driver.trial_id].extras["copied"][(2, 1)] == aggregate["sha256"]
    if attack == "aggregate_copy":
        assert mine["sha256"] == aggregate["sha256"]  # the aggregate's bytes, as they are
    else:
        assert mine["sha256"] != aggregate["sha256"]
        assert peek_header(driver.store.get(mine["content_id"]))["kind"] == Kind.UPDATE
    decision = _acceptance(driver, 2)["candidates"][bad.msp_id]
    assert (decision["accepted"], decision["reason"]) == (False, reason)
    if attack == "aggregate_copy":
        assert decision["problem"] == "wrong_kind"
    assert decision["reward"] == 0
    assert driver.trial()["state"] == "COMPLETED"


def test_thief_finds_nothing_to_steal_and_its_reveal_of_the_victims_bytes_is_refused(
    driver: Any, make_agent: Any, demo_files: dict[str, Any]
) -> None:
    honest, bad = _trial(driver, make_agent, demo_files, "thief")
    drive(driver, [*honest, bad])  # the thief ticks last: its peers have committed, then revealed
    theft = bad._contexts[driver.trial_id].extras["theft"]
    victim = min(h.msp_id for h in honest)
    for number in (1, 2):
        assert theft[(number, 1)]["store_candidates"] == 0  # honest updates are not in the store
        assert theft[(number, 1)]["committed_to"] == "zero update"
        assert theft[(number, 1)]["reveal_refused"] == "COMMITMENT_MISMATCH"
        subs = _submissions(driver, number)
        assert subs[bad.msp_id]["sha256"] != subs[victim]["sha256"]
        assert victim in _acceptance(driver, number)["accepted"]
        assert _acceptance(driver, number)["candidates"][bad.msp_id]["reward"] == 0


def test_thief_that_finds_a_peers_bytes_in_the_store_is_excluded(
    driver: Any, make_agent: Any, demo_files: dict[str, Any]
) -> None:
    """Defence in depth: if a peer leaked its update into the store during SUBMIT (an old agent),
    the thief can commit to the bytes, but the earliest commitment owns them."""
    honest, bad = _trial(driver, make_agent, demo_files, "thief")

    def leaked() -> bool:  # once hospital1 committed, put its update bytes where the thief looks
        entry = honest[0].state.journal_entry(driver.trial_id, 1, 1).get("update")
        if entry is None or driver.round()["phase"] != "SUBMIT":
            return False
        driver.store.put(honest[0].state.load_update(driver.trial_id, entry["sha256"]))
        # the thief commits past the trial's clock tolerance (within it the commitments tie
        # and the content goes to nobody, the victim included)
        driver.net.clock.advance(DEFAULT_CLOCK_TOLERANCE_SECONDS + 1)
        return True

    drive(driver, honest, until=leaked)
    drive(driver, [*honest, bad], until=lambda: driver.round()["round"] == 2)
    victim = honest[0].msp_id
    rnd = driver.admin.evaluate("get_round", {"trial_id": driver.trial_id, "round": 1})
    subs = _submissions(driver, 1)
    assert subs[bad.msp_id]["sha256"] == subs[victim]["sha256"]
    assert rnd["excluded"][bad.msp_id]["reason"] == "duplicate_content"
    assert rnd["excluded"][bad.msp_id]["owner"] == victim
    assert bad.msp_id not in rnd["candidates"] and victim in rnd["accepted"]


def test_vote_down_ring_lies_about_outsiders_and_boosts_its_own(
    driver: Any, make_agent: Any, demo_files: dict[str, Any]
) -> None:
    """Two of four collude: their findings are what they claim. Two of four are a majority of an
    honest candidate's three voters, so here the lies carry (the protocol's bound is 2f < n; the
    live test runs two of five, where they do not)."""
    driver.create_trial(demo_files["dataset"], rounds=1, dp={"enabled": False})
    ring = [driver.net.consortium.identity(n).msp_id for n in ("hospital3", "hospital4")]
    honest = [make_agent(n) for n in HOSPITALS[:2]]
    colluders = [
        make_agent(n, agent_class=attacker("vote_down", colluders=",".join(ring)))
        for n in HOSPITALS[2:]
    ]
    drive(driver, [*honest, *colluders])
    votes = {
        v["msp_id"]: v
        for v in driver.admin.evaluate("get_votes", {"trial_id": driver.trial_id, "round": 1})
    }
    outsiders = sorted(h.msp_id for h in honest)
    for member in ring:
        findings = votes[member]["findings"]
        for index, peer in enumerate(outsiders):
            assert findings[peer] == fake_finding(index, 1)
        for peer in ring:
            if peer != member:
                assert findings[peer]["score_micro"] == MAX_SCORE_MICRO
                assert findings[peer]["problem"] is None
    acceptance = _acceptance(driver, 1)
    assert not set(outsiders) & set(acceptance["accepted"])
    assert set(ring) <= set(acceptance["accepted"])


def test_red_team_silo_runs_a_round_through_the_run_command(
    driver: Any,
    make_agent: Any,
    demo_files: dict[str, Any],
    tmp_path: Path,
    consortium: Any,
    ledger_url: str,
    store_url: str,
) -> None:
    """The attacker takes its step through the same `run` loop, and the votes reject it."""
    from test_config_cli import _toml

    driver.create_trial(demo_files["dataset"], rounds=1, dp={"enabled": False})
    honest = [make_agent(name) for name in HOSPITALS[:3]]
    config = _toml(tmp_path, consortium, ledger_url, store_url, demo_files["paths"][3], "hospital4")
    red_run = run_command_for(attacker("sign_flip", scale=10.0))

    class RunOnce:
        """hospital4 as a `run --once` process at every step of the driver."""

        msp_id = consortium.identity("hospital4").msp_id

        def tick(self) -> list[Any]:
            result = CliRunner().invoke(red_run, ["--config", str(config), "--once"])
            assert result.exit_code == 0, result.output
            return []

    drive(driver, [*honest, RunOnce()])
    acceptance = _acceptance(driver, 1)
    assert RunOnce.msp_id in acceptance["rejected"]
