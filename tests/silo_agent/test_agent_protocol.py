"""The issue-14 protocol from the silo's side, against a real embedded ledger and file store:
enrolment with a registered dataset, upload only after the commitments are fixed, the DP
schedule check, and restarts around the SUBMIT/REVEAL split."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from silo_harness import HOSPITALS, drive

from bcfl_common.errors import ConfigError, ContractError
from consortium.storage import content_id
from privacy.dp import PrivacyAccountant
from silo_agent.data import load_split
from silo_agent.enrolment import enrol


class Killed(BaseException):
    """A kill -9 stand-in: not an Exception, so nothing in the agent catches it."""


def _admin(contract_net: Any) -> Any:
    return contract_net.client("admin")


def _submissions(contract_net: Any, round: int = 1) -> dict[str, dict[str, Any]]:
    records = _admin(contract_net).evaluate(
        "get_submissions", {"trial_id": "trial-1", "round": round}
    )
    return {s["msp_id"]: s for s in records}


def _phase(driver: Any) -> str:
    return driver.round()["phase"]


def _until_phase(driver: Any, agents: list, phase: str, max_steps: int = 20) -> None:
    for _ in range(max_steps):
        if driver.trial()["current"] is not None and _phase(driver) == phase:
            return
        for agent in agents:
            agent.tick()
        driver.advance()
    raise AssertionError(f"phase {phase} not reached: {driver.log[-5:]}")


def test_enrolment_registers_the_dataset_once_and_the_key_with_training_records(
    driver: Any, demo_files: dict[str, Any], contract_net: Any, config_for: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1)
    admin = _admin(contract_net)
    trial = driver.trial()
    for index, name in enumerate(HOSPITALS):
        msp = contract_net.consortium.identity(name).msp_id
        (dataset,) = admin.evaluate("get_datasets", {"msp_id": msp})
        rows = len(demo_files["dataset"].hospitals[index].train)
        assert dataset["dataset_id"] == "train.csv" and dataset["records"] == rows
        assert dataset["lifetime_epsilon_micro"] == 10_000_000
        file_hash = hashlib.sha256(demo_files["paths"][index]["train"].read_bytes()).hexdigest()
        assert file_hash not in dataset["commitment"]  # salted: no fingerprint of the records
        config = config_for(name)
        train = load_split(
            config.data_path,
            trial["data_schema"],
            trial_id="trial-1",
            msp_id=msp,
            validation_fraction=config.validation_fraction,
        ).train
        (enrolment,) = [
            e
            for e in admin.evaluate("get_enrolments", {"trial_id": "trial-1"})
            if e["msp_id"] == msp
        ]
        assert enrolment["dataset_id"] == "train.csv"
        assert enrolment["training_records"] == len(train) < rows
    # A second trial reuses the registered dataset (registered once) and lists both trials.
    second = type(driver)(driver.net, driver.store, driver.config_for, trial_id="trial-2")
    second.create_trial(demo_files["dataset"], rounds=1, hospitals=HOSPITALS[:2])
    msp = contract_net.consortium.identity("hospital1").msp_id
    (dataset,) = admin.evaluate("get_datasets", {"msp_id": msp})
    assert sorted(dataset["trials"]) == ["trial-1", "trial-2"]
    budget = admin.evaluate("get_dataset_budget", {"msp_id": msp, "dataset_id": "train.csv"})
    assert set(budget["trials"]) == {"trial-1", "trial-2"}


def test_a_changed_data_file_is_a_new_dataset_not_a_recount(
    driver: Any, demo_files: dict[str, Any], contract_net: Any, config_for: Any, tmp_path: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1, hospitals=HOSPITALS[:2])
    second = type(driver)(driver.net, driver.store, driver.config_for, trial_id="trial-2")
    second.create_trial(demo_files["dataset"], rounds=1, hospitals=(), start=False)
    bigger = tmp_path / "train.csv"
    frame = demo_files["dataset"].hospitals[0].train
    frame.to_csv(bigger, index=False)
    with bigger.open("a") as handle:  # more rows than registered, under the same dataset id
        frame.head(20).to_csv(handle, index=False, header=False)
    config = config_for("hospital1")
    config.data_path = bigger
    identity = contract_net.consortium.identity("hospital1")
    with pytest.raises(ConfigError, match="dataset_id 'train.csv'.*does not match"):
        enrol(contract_net.client("hospital1").ledger, identity, config, "trial-2")


def test_the_update_reaches_the_store_only_in_reveal(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1)
    agents = [make_agent(name) for name in HOSPITALS]
    _until_phase(driver, agents, "SUBMIT")
    for agent in agents:
        agent.tick()
    committed = _submissions(contract_net)
    assert set(committed) == {a.msp_id for a in agents}
    for agent in agents:
        update = agent.state.journal_entry("trial-1", 1, 1)["update"]
        assert committed[agent.msp_id]["content_id"] is None
        assert "content_id" not in update
        blob = agent.state.load_update("trial-1", update["sha256"])
        assert blob is not None and hashlib.sha256(blob).hexdigest() == update["sha256"]
        # Nobody can copy what is not in the store while the commit phase is open.
        assert not agent.store.has(content_id(blob))
    driver.advance()  # close_update_commits
    assert _phase(driver) == "REVEAL"
    for agent in agents:
        agent.tick()
    revealed = _submissions(contract_net)
    for agent in agents:
        update = agent.state.journal_entry("trial-1", 1, 1)["update"]
        record = revealed[agent.msp_id]
        assert record["revealed"] and record["sha256"] == update["sha256"]
        assert record["content_id"] == update["content_id"]
        assert agent.store.has(record["content_id"])
    drive(driver, agents)
    assert driver.trial()["state"] == "COMPLETED"


def test_a_wrong_schedule_entry_refuses_training_and_sends_nothing(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=2, start=False)
    schedule = driver.dp_schedule()
    victim = contract_net.consortium.identity("hospital1").msp_id
    entry = schedule[victim]
    # The coordinator understates what each reveal costs this hospital: still well formed.
    schedule[victim] = {**entry, "epsilon_micro": [e // 2 for e in entry["epsilon_micro"]]}
    driver.start_trial(schedule)
    agents = [make_agent(name) for name in HOSPITALS]
    _until_phase(driver, agents, "SUBMIT")
    for agent in agents:
        agent.tick()
    problem = agents[0].state.journal("trial-1")["problem"]
    assert problem.startswith("SCHEDULE_MISMATCH") and "epsilon_micro" in problem
    assert victim not in _submissions(contract_net)
    assert set(_submissions(contract_net)) == {a.msp_id for a in agents[1:]}
    # Not trained: its accountant charged nothing, no update was kept.
    path = agents[0].state.accountant_path("trial-1")
    assert not path.exists() or not PrivacyAccountant.open(path).rounds
    assert not (agents[0].state.trial_dir("trial-1") / "updates").exists()


def test_restart_between_upload_and_reveal_reveals_the_committed_update(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1)
    agents = [make_agent(name) for name in HOSPITALS]
    victim = agents[0]
    real_submit = victim._submit

    def submit(name: str, **args: Any) -> Any:
        if name == "reveal_update":
            raise Killed(name)  # after the upload, before the reveal reaches the ledger
        return real_submit(name, **args)

    victim._submit = submit  # type: ignore[method-assign]
    with pytest.raises(Killed):
        drive(driver, agents)
    update = victim.state.journal_entry("trial-1", 1, 1)["update"]
    assert victim.store.has(update["content_id"])  # uploaded, journaled
    restarted = make_agent("hospital1")
    calls: list[str] = []
    restarted_submit = restarted._submit

    def counting(name: str, **args: Any) -> Any:
        calls.append(name)
        return restarted_submit(name, **args)

    restarted._submit = counting  # type: ignore[method-assign]
    agents[0] = restarted
    drive(driver, agents)
    assert driver.trial()["state"] == "COMPLETED"
    record = _submissions(contract_net)[restarted.msp_id]
    assert record["revealed"] and record["sha256"] == update["sha256"]
    assert "commit_update" not in calls and calls.count("reveal_update") == 1
    assert len(PrivacyAccountant.open(restarted.state.accountant_path("trial-1")).rounds) == 1


def test_a_lost_kept_update_is_reported_not_replaced(
    driver: Any, make_agent: Any, demo_files: dict[str, Any], contract_net: Any
) -> None:
    driver.create_trial(demo_files["dataset"], rounds=1)
    agents = [make_agent(name) for name in HOSPITALS]
    _until_phase(driver, agents, "SUBMIT")
    for agent in agents:
        agent.tick()
    update = agents[0].state.journal_entry("trial-1", 1, 1)["update"]
    agents[0].state.update_path("trial-1", update["sha256"]).unlink()
    driver.advance()
    steps = agents[0].tick()
    assert any(s.action == "cannot reveal" and "missing" in s.detail for s in steps)
    assert not _submissions(contract_net)[agents[0].msp_id]["revealed"]


def test_a_claim_over_the_registered_dataset_is_refused(
    driver: Any, demo_files: dict[str, Any], contract_net: Any, config_for: Any
) -> None:
    """Inflated sample weights start at enrolment: the key registration's training_records may
    not exceed the dataset's registered records (only the red-team harness claims a count)."""
    driver.create_trial(demo_files["dataset"], rounds=1, hospitals=(), start=False)
    identity = contract_net.consortium.identity("hospital1")
    ledger = contract_net.client("hospital1").ledger
    rows = len(demo_files["dataset"].hospitals[0].train)
    with pytest.raises(ContractError) as info:
        enrol(
            ledger, identity, config_for("hospital1"), "trial-1", claimed_training_records=rows + 1
        )
    assert info.value.code == "INVALID_ARGUMENT" and "training_records" in info.value.message
    # The honest count is accepted, and the dataset was registered once either way.
    registration = enrol(ledger, identity, config_for("hospital1"), "trial-1")
    assert registration["training_records"] < rows
    assert len(_admin(contract_net).evaluate("get_datasets", {"msp_id": identity.msp_id})) == 1
