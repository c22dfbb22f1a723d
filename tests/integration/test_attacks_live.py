"""Attacks by a dishonest minority, against live processes: a coordinator server and one silo
agent process per hospital (the attackers run ``python -m devnet.red_team``), as `bcfl demo`
runs them. Each test asserts what the honest hospitals see: their updates accepted, the trial
COMPLETED, the attackers' rewards zero or bounded, and a ledger `bcfl audit verify` accepts.

Rounds close as soon as every hospital has acted; the demo's phase windows (minutes) only bound
how long a round waits for a hospital that does not, so nothing here depends on timing.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from consortium.identity import Consortium
from consortium.ledger import open_ledger
from devnet.demo import run_demo
from devnet.local_network import bcfl_command

pytestmark = pytest.mark.slow


class Outcome:
    """A finished trial: the demo's summary and the ledger's records, read as the auditor."""

    def __init__(self, summary: dict[str, Any]):
        self.summary = summary
        self.root = Path(summary["workdir"])
        self.trial_id = summary["trial_id"]
        self.bad = set(summary["malicious"])
        consortium = Consortium.load(self.root / "consortium")
        ledger = open_ledger(self.ledger_url, consortium.identity("auditor"))
        try:
            self.rounds = {
                r["round"]: r
                for r in ledger.evaluate("list_rounds", {"trial_id": self.trial_id})
                if r["phase"] == "FINALIZED"
            }
            self.acceptance = {
                n: ledger.evaluate("get_acceptance", {"trial_id": self.trial_id, "round": n})
                for n in self.rounds
            }
            self.submissions = {
                n: {
                    s["msp_id"]: s
                    for s in ledger.evaluate(
                        "get_submissions", {"trial_id": self.trial_id, "round": n}
                    )
                }
                for n in self.rounds
            }
            self.enrolled = sorted(
                e["msp_id"] for e in ledger.evaluate("get_enrolments", {"trial_id": self.trial_id})
            )
        finally:
            ledger.close()

    @property
    def ledger_url(self) -> str:
        return f"embedded://{self.root / 'ledger' / 'ledger.db'}"

    @property
    def honest(self) -> list[str]:
        return [m for m in self.enrolled if m not in self.bad]

    def totals(self) -> dict[str, int]:
        out = {m: 0 for m in self.enrolled}
        for acceptance in self.acceptance.values():
            for msp, reward in acceptance["rewards"].items():
                out[msp] += reward
        return out

    def log(self, hospital: str) -> str:
        return (self.root / "logs" / f"{hospital}.log").read_text(errors="replace")

    def assert_honest_hospitals_unharmed(self, rounds: int) -> None:
        assert self.summary["state"] == "COMPLETED", self.summary["state"]
        assert sorted(self.rounds) == list(range(1, rounds + 1))
        for number, acceptance in self.acceptance.items():
            assert set(self.honest) <= set(acceptance["accepted"]), (number, acceptance["rejected"])

    def assert_audit_verifies(self) -> None:
        verify = subprocess.run(
            bcfl_command(
                "audit",
                "verify",
                "--ledger",
                self.ledger_url,
                "--consortium",
                str(self.root / "consortium"),
                "--as",
                "auditor",
                "--store",
                f"file://{self.root / 'store'}",
                self.trial_id,
            ),
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]


def attack_trial(
    tmp_path: Path, attack: str, *, malicious: int = 1, hospitals: int = 4, rounds: int = 2
) -> Outcome:
    """A DP-off breast cancer trial whose last ``malicious`` hospitals run ``attack``."""
    summary = run_demo(
        workdir=tmp_path / "trial",
        dataset_name="breast-cancer",
        data_dir=None,
        hospitals=hospitals,
        rounds=rounds,
        malicious=malicious,
        attack=attack,
        dp=False,
        epsilon=None,
        seed=0,
        fresh=True,
        timeout=900,
        console=Console(file=io.StringIO(), width=160),
    )
    return Outcome(summary)


def test_a_thief_gets_nothing(tmp_path: Path) -> None:
    """Hospital4 waits for every peer's commitment, finds no update bytes to steal (they reach
    the store only in REVEAL), commits to a zero update, and its reveal of Hospital1's bytes is
    refused; Hospital1 keeps its update and the thief earns no update reward."""
    outcome = attack_trial(tmp_path, "thief")
    outcome.assert_honest_hospitals_unharmed(rounds=2)
    (thief,) = outcome.bad
    log = outcome.log("hospital4")
    for number in (1, 2):  # one attempt per round, refused
        assert f"r{number}.1] theft refused: Hospital1MSP's update: COMMITMENT_MISMATCH" in log
    assert "REVEALED A STOLEN UPDATE" not in log
    for number in (1, 2):
        subs = outcome.submissions[number]
        assert subs[thief]["sha256"] not in {subs[m]["sha256"] for m in outcome.honest}
        assert outcome.acceptance[number]["candidates"][thief]["reward"] == 0
        assert outcome.rounds[number]["excluded"] == {}
    outcome.assert_audit_verifies()


@pytest.mark.parametrize("attack", ["zero", "inflated_weight"])
def test_free_riders_earn_no_update_reward(tmp_path: Path, attack: str) -> None:
    """A zero update (and one claiming 100,000 training records) improves nothing: no update
    reward, and the inflated claim buys at most the policy's share of the aggregation weight."""
    outcome = attack_trial(tmp_path, attack)
    outcome.assert_honest_hospitals_unharmed(rounds=2)
    (rider,) = outcome.bad
    for number, acceptance in outcome.acceptance.items():
        decision = acceptance["candidates"][rider]
        assert decision["reward"] == 0, (number, decision)
        assert not decision["improves"]
        share = acceptance["policy"]["max_weight_share_micro"]
        assert decision["weight"] * 1_000_000 <= share * acceptance["total_weight"]
        if attack == "inflated_weight":
            assert decision["sample_weight"] == 100_000
    totals = outcome.totals()
    assert totals[rider] <= min(totals[m] for m in outcome.honest)
    outcome.assert_audit_verifies()


def test_two_of_five_colluding_voters_cannot_reject_honest_updates(tmp_path: Path) -> None:
    """Hospital4 and Hospital5 report every other update as harmful (fake problems, norms and
    similarities) and boost each other; they are 2 of the 4 voters of every honest update, never
    a majority, so every honest update is accepted. Their updates are honest and paid like any
    (by capped weight), but their lies cost them voter reward: every honest voter agreed with
    more outcomes, and earned more for it, than any colluder."""
    outcome = attack_trial(tmp_path, "vote_down", malicious=2, hospitals=5)
    outcome.assert_honest_hospitals_unharmed(rounds=2)
    for acceptance in outcome.acceptance.values():
        for honest in outcome.honest:
            counts = acceptance["candidates"][honest]["counts"]
            assert sum(counts.values()) >= 2  # the ring did lie about it
        voters = acceptance["voters"]
        assert max(voters[m]["agreed"] for m in outcome.bad) < min(
            voters[m]["agreed"] for m in outcome.honest
        )
        assert max(voters[m]["reward"] for m in outcome.bad) < min(
            voters[m]["reward"] for m in outcome.honest
        )
    outcome.assert_audit_verifies()


def test_an_aggregate_copy_is_invalid(tmp_path: Path) -> None:
    """In round 2 Hospital4 sends round 1's aggregate container as its update: every honest voter
    finds the wrong container kind, the update is rejected, and it earns nothing for it."""
    outcome = attack_trial(tmp_path, "aggregate_copy")
    outcome.assert_honest_hospitals_unharmed(rounds=2)
    (copier,) = outcome.bad
    assert outcome.submissions[2][copier]["sha256"] == outcome.rounds[1]["aggregate"]["sha256"]
    decision = outcome.acceptance[2]["candidates"][copier]
    assert (decision["accepted"], decision["reason"], decision["problem"]) == (
        False,
        "invalid",
        "wrong_kind",
    )
    assert decision["reward"] == 0
    outcome.assert_audit_verifies()
