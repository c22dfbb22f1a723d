"""Two of five hospitals collude against the round protocol, on the embedded host.

The suite-wide consortium has four hospitals; these tests need five (f = 2 < 5/2), so this
module makes its own five-hospital consortium and runs on the embedded ledger only.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contract_flow import TRAINING_RECORDS, Flow, finding

from consortium.identity import Consortium, init_consortium
from consortium.ledger import open_ledger
from consortium.ledger.embedded import create_embedded_ledger

FIVE = ("hospital1", "hospital2", "hospital3", "hospital4", "hospital5")
HONEST = FIVE[:3]
COLLUDERS = FIVE[3:]


@pytest.fixture(scope="module")
def five_hospitals_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("five-hospitals") / "consortium"
    init_consortium(directory, hospitals=5, name="collusion-consortium")
    return directory


class Client:
    def __init__(self, ledger: Any):
        self.ledger = ledger

    def submit(self, function: str, args: dict[str, Any]) -> Any:
        return self.ledger.submit(function, args).result

    def evaluate(self, function: str, args: dict[str, Any]) -> Any:
        return self.ledger.evaluate(function, args)


class FiveNet:
    """The contract on an embedded ledger of the five-hospital consortium."""

    host = "embedded"

    def __init__(self, consortium: Consortium, url: str, clock: Any):
        self.consortium, self.url, self.clock = consortium, url, clock
        self.clients: dict[str, Client] = {}

    def client(self, name: str) -> Client:
        if name not in self.clients:
            ledger = open_ledger(self.url, self.consortium.identity(name), clock=self.clock)
            self.clients[name] = Client(ledger)
        return self.clients[name]

    def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)


@pytest.fixture
def flow(five_hospitals_template: Path, tmp_path: Path, clock: Any) -> Iterator[Flow]:
    directory = tmp_path / "consortium"
    shutil.copytree(five_hospitals_template, directory)
    consortium = Consortium.load(directory)
    url = f"embedded://{tmp_path / 'ledger' / 'ledger.db'}"
    bootstrap = create_embedded_ledger(url, consortium, consortium.identity("admin"), clock=clock)
    net = FiveNet(consortium, url, clock)
    driver = Flow(net)
    driver.msp["hospital5"] = net.client("hospital5").evaluate("whoami", {})["msp_id"]
    driver.running(hospitals=FIVE)
    yield driver
    for client in net.clients.values():
        client.ledger.close()
    bootstrap.close()


def honest_findings() -> dict[str, dict[str, Any]]:
    """Every hospital's update is a fine one (each improves the model by 20_000)."""
    return {v: {c: finding(20_000) for c in FIVE if c != v} for v in FIVE}


def submit_all(flow: Flow, weights: dict[str, int] | None = None) -> None:
    flow.open_round()
    names = list(FIVE)
    updates = {
        n: flow.commit_update(n, flow.make_update(n, weight=(weights or {}).get(n, 100)))
        for n in names
    }
    flow.close("close_update_commits")
    for n in names:
        flow.reveal_update(n, updates[n])
    flow.close("close_update_reveals")


def test_two_colluders_cannot_reject_honest_updates_nor_out_earn_honest_hospitals(flow):
    submit_all(flow)
    by_voter = honest_findings()
    # hospital4 and hospital5 call every honest update harmful, broken, oversized, a copy...
    lies = [
        finding(-(10**12), norm_milli=10**15, similarity_micro=1_000_000),
        finding(-(10**12), problem="wrong_kind"),
        finding(-(10**9), norm_milli=0, similarity_micro=999_999),
    ]
    for i, colluder in enumerate(COLLUDERS):
        for j, victim in enumerate(HONEST):
            by_voter[colluder][victim] = lies[(i + j) % len(lies)]
        # ... and praise each other
        partner = COLLUDERS[1 - i]
        by_voter[colluder][partner] = finding(10**12, norm_milli=1, similarity_micro=0)
    acceptance = flow.vote(by_voter)
    c = acceptance["candidates"]
    msp = flow.msp
    assert acceptance["accepted"] == sorted(msp[n] for n in FIVE)
    for victim in HONEST:
        decision = c[msp[victim]]
        assert decision["accepted"] and decision["reason"] == "accepted"
        assert decision["improvement_micro"] == 20_000  # the honest score, not the lies
        assert max(decision["counts"].values()) <= 2  # two of four: never a majority
    for colluder in COLLUDERS:
        # praise from one colluder does not lift the upper median over the three honest scores
        assert c[msp[colluder]]["improvement_micro"] == 20_000
    voters = acceptance["voters"]
    assert all(voters[msp[h]]["agreed"] == 4 for h in HONEST)
    assert all(voters[msp[m]]["agreed"] == 1 for m in COLLUDERS)
    rewards = acceptance["rewards"]
    assert max(rewards[msp[m]] for m in COLLUDERS) < min(rewards[msp[h]] for h in HONEST)
    assert sum(rewards.values()) == acceptance["paid"] == 1000


def test_colluders_boosting_each_others_zero_updates_earn_no_update_reward(flow):
    submit_all(flow)
    by_voter = honest_findings()
    for v in HONEST:
        for m in COLLUDERS:  # the colluders send empty updates: honest voters see no change
            by_voter[v][m] = finding(0, norm_milli=0)
    for i, m in enumerate(COLLUDERS):
        by_voter[m][COLLUDERS[1 - i]] = finding(10**12, norm_milli=0)
    acceptance = flow.vote(by_voter)
    c = acceptance["candidates"]
    for m in COLLUDERS:
        decision = c[flow.msp[m]]
        assert decision["accepted"] and decision["improvement_micro"] == 0
        assert not decision["improves"] and decision["reward"] == 0
    # the update pool (800) goes to the three honest updates only
    assert [c[flow.msp[h]]["reward"] for h in HONEST] == [267, 267, 266]


def test_a_colluders_inflated_weight_is_capped_and_a_boosted_update_is_an_outlier(flow):
    submit_all(flow, weights={"hospital4": TRAINING_RECORDS})  # all it registered
    by_voter = honest_findings()
    for v in (*HONEST, "hospital4"):
        by_voter[v]["hospital5"] = finding(
            500_000, norm_milli=4_000
        )  # 4x the others, under the bound
    acceptance = flow.vote(by_voter)
    c = acceptance["candidates"]
    h4, h5 = flow.msp["hospital4"], flow.msp["hospital5"]
    assert c[h5]["reason"] == "norm_outlier" and acceptance["reference_norm_milli"] == 1000
    # hospital4 claims all its registered records: capped at 50% of the accepted weight (M = 300)
    assert c[h4]["sample_weight"] == TRAINING_RECORDS and c[h4]["weight"] == 300
    assert acceptance["total_weight"] == 600
