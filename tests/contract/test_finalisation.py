"""Aggregate, attestation quorum and mismatch, rewards credit and settlement, rollback, abort, lineage and history."""

from __future__ import annotations

import pytest
from contract_flow import HOSPITALS, digest, refused

from bcfl_common.canonical import canonical_json
from chaincode.contract.context import Tx
from chaincode.contract.finalisation import norm_bounds
from chaincode.contract.store import dp_schedule_key


@pytest.fixture
def aggregating(flow):
    """Round 1 of a 3-hospital trial in AGGREGATE with every update accepted."""
    flow.running()
    flow.open_round()
    flow.submit_updates(flow.members)
    flow.vote(flow.scores(flow.members, flow.members))
    assert flow.get_round()["phase"] == "AGGREGATE"
    return flow


def test_the_aggregate_must_sum_exactly_the_accepted_updates(aggregating):
    flow = aggregating
    accepted = flow.get_round()["accepted_sha256s"]
    assert len(accepted) == 3
    refused(
        "FORBIDDEN_ROLE",
        flow.client("admin").submit,
        "record_aggregate",
        flow.at(content_id="c", sha256=digest("a"), update_sha256s=accepted),
    )
    refused(
        "FORBIDDEN_ROLE",
        flow.client("hospital1").submit,
        "record_aggregate",
        flow.at(content_id="c", sha256=digest("a"), update_sha256s=accepted),
    )
    refused("AGGREGATE_MISMATCH", flow.aggregate, accepted[:2])
    refused("AGGREGATE_MISMATCH", flow.aggregate, [*accepted[:2], digest("not an update")])
    refused("INVALID_ARGUMENT", flow.aggregate, [*accepted, accepted[0]])
    refused("WRONG_STATE", flow.attest, "hospital1")  # nothing to attest yet
    rnd = flow.aggregate(list(reversed(accepted)))  # order does not matter
    assert rnd["phase"] == "ATTEST"
    assert (
        rnd["aggregate"]["update_sha256s"] == accepted and rnd["aggregate"]["total_weight"] == 300
    )
    refused("LATE", flow.aggregate)


def test_a_quorum_of_equal_attestations_finalizes_and_credits_rewards(aggregating):
    flow = aggregating
    flow.aggregate()
    refused("FORBIDDEN_ROLE", flow.attest, "coordinator")
    refused("NOT_ENROLLED", flow.attest, "hospital4")
    refused("WRONG_ORGANISATION", flow.attest, "hospital1", msp_id=flow.msp["hospital2"])
    first = flow.attest("hospital1", content_id="cid-model-1")
    assert first["round"]["phase"] == "ATTEST" and first["round"]["attestation_quorum"] == 2
    refused("DUPLICATE", flow.attest, "hospital1")
    done = flow.attest("hospital2")
    rnd = done["round"]
    assert rnd["phase"] == "FINALIZED"
    assert rnd["model"] == {"content_id": "cid-model-1", "sha256": flow.model_sha()}
    trial = flow.trial()
    assert trial["head"] == {"round": 1, "attempt": 1, "model": rnd["model"]}
    assert trial["lineage"] == [
        {"round": 1, "attempt": 1, "model": rnd["model"], "finalized_at": rnd["finalized_at"]}
    ]
    rewards = flow.client("auditor").evaluate("get_rewards", {"trial_id": flow.trial_id})
    assert rewards["rounds"][0]["status"] == "credited"
    # update pool 800 in thirds (267, 267, 266), voter pool 200 in thirds (67, 67, 66)
    assert {a["msp_id"]: a["total"] for a in rewards["accounts"]} == {
        flow.msp["hospital1"]: 334,
        flow.msp["hospital2"]: 334,
        flow.msp["hospital3"]: 332,
    }
    assert sum(a["total"] for a in rewards["accounts"]) == 1000
    # A late attestation that agrees is recorded; the next round starts from the attested model.
    late = flow.attest("hospital3")
    assert late["round"]["phase"] == "FINALIZED" and late["round"]["disputes"] == []
    assert len(flow.admin.evaluate("get_attestations", flow.at())) == 3
    assert flow.open_round()["base"]["model"] == rnd["model"]
    refused(
        "LATE",
        flow.client("hospital1").submit,
        "attest_model",
        {"trial_id": flow.trial_id, "round": 1, "sha256": digest("x")},
    )


def test_a_minority_dissent_becomes_a_dispute_and_the_round_finalizes(aggregating):
    flow = aggregating
    flow.aggregate()
    odd = digest("a different model")
    first = flow.attest("hospital1", odd, content_id="cid-odd")  # the dissent comes first
    assert first["round"]["phase"] == "ATTEST"
    second = flow.attest("hospital2", content_id="cid-model")
    assert second["round"]["phase"] == "ATTEST"  # 1 : 1 of quorum 2, hospital3 still to attest
    rnd = flow.attest("hospital3")["round"]
    assert rnd["phase"] == "FINALIZED" and rnd["halt"] is None
    # the model is the majority's, named by the first content id given for that hash
    assert rnd["model"] == {"content_id": "cid-model", "sha256": flow.model_sha()}
    assert rnd["disputes"] == [
        {
            "msp_id": flow.msp["hospital1"],
            "sha256": odd,
            "at": first["attestation"]["attested_at"],
            "against": flow.model_sha(),
        }
    ]
    assert flow.trial()["head"]["model"] == rnd["model"]
    rewards = flow.admin.evaluate("get_rewards", {"trial_id": flow.trial_id})
    assert rewards["rounds"][0]["status"] == "credited"


def test_a_split_that_no_hash_can_win_halts_the_round_and_voids_its_rewards(aggregating):
    flow = aggregating
    flow.aggregate()
    flow.attest("hospital1")
    assert flow.attest("hospital2", digest("model B"))["round"]["phase"] == "ATTEST"
    result = flow.attest("hospital3", digest("model C"))  # 1 : 1 : 1, nobody left: quorum 2 lost
    rnd = result["round"]
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "ATTESTATION_MISMATCH"
    assert rnd["halt"]["attestations"] == {
        flow.msp["hospital1"]: flow.model_sha(),
        flow.msp["hospital2"]: digest("model B"),
        flow.msp["hospital3"]: digest("model C"),
    }
    refused("WRONG_STATE", flow.attest, "hospital3")
    rewards = flow.admin.evaluate("get_rewards", {"trial_id": flow.trial_id})
    assert rewards["accounts"] == [] and rewards["rounds"][0]["status"] == "void"
    assert flow.trial()["head"]["round"] == 0
    # The round is re-run as attempt 2 from the same base model.
    again = flow.open_round()
    assert (again["round"], again["attempt"]) == (1, 2) and again["base"]["round"] == 0


def test_a_split_halts_as_soon_as_no_hash_can_reach_the_quorum(flow):
    flow.running(hospitals=HOSPITALS)
    flow.to_attest(list(HOSPITALS))  # quorum 3 of 4
    flow.attest("hospital1", digest("A"))
    assert flow.attest("hospital2", digest("B"))["round"]["phase"] == "ATTEST"  # 1 + 2 left = 3
    rnd = flow.attest("hospital3", digest("C"))["round"]  # 1 + 1 left < 3
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "ATTESTATION_MISMATCH"


def test_only_participants_count_towards_the_quorum(flow):
    flow.running(hospitals=HOSPITALS)
    names = list(HOSPITALS[:3])  # hospital4 is enrolled but neither submits nor votes
    flow.open_round()
    updates = {n: flow.commit_update(n) for n in names}
    flow.net.advance_time(3601)  # close_update_commits waits for hospital4 until the deadline
    flow.close("close_update_commits")
    for n in names:
        flow.reveal_update(n, updates[n])
    flow.close("close_update_reveals")
    flow.vote(flow.scores(names, names), wait=1801)  # the commits wait out hospital4
    flow.aggregate()
    rnd = flow.get_round()
    assert rnd["participants"] == sorted(flow.msp[n] for n in names)
    assert rnd["attestation_quorum"] == 2
    assert flow.attest("hospital4")["round"]["phase"] == "ATTEST"  # recorded, not counted
    assert flow.attest("hospital1")["round"]["phase"] == "ATTEST"
    assert flow.attest("hospital2")["round"]["phase"] == "FINALIZED"


def test_a_dissent_after_finalization_is_recorded_without_undoing_it(aggregating):
    flow = aggregating
    flow.aggregate()
    flow.attest("hospital1")
    flow.attest("hospital2")
    result = flow.attest("hospital3", digest("odd model"))
    assert result["round"]["phase"] == "FINALIZED"
    assert result["round"]["disputes"] == [
        {
            "msp_id": flow.msp["hospital3"],
            "sha256": digest("odd model"),
            "at": result["attestation"]["attested_at"],
            "against": flow.model_sha(),
        }
    ]


def test_quorum_is_a_majority_of_participants(flow):
    flow.running(hospitals=HOSPITALS)
    flow.to_attest(list(HOSPITALS))
    assert flow.get_round()["attestation_quorum"] == 3
    for name in HOSPITALS[:2]:
        assert flow.attest(name)["round"]["phase"] == "ATTEST"
    assert flow.attest("hospital3")["round"]["phase"] == "FINALIZED"


def test_settlement_is_recorded_once_for_a_finalized_round(aggregating):
    flow = aggregating
    settle = {
        "trial_id": flow.trial_id,
        "round": 1,
        "chain_id": 31337,
        "tx_hash": "0x" + digest("tx"),
    }
    flow.aggregate()
    refused("WRONG_STATE", flow.coordinator.submit, "record_settlement", settle)
    flow.attest("hospital1")
    flow.attest("hospital2")
    refused("FORBIDDEN_ROLE", flow.admin.submit, "record_settlement", settle)
    refused(
        "INVALID_ARGUMENT",
        flow.coordinator.submit,
        "record_settlement",
        {**settle, "tx_hash": digest("tx")},
    )
    record = flow.coordinator.submit("record_settlement", settle)
    assert record["settlement"]["tx_hash"] == settle["tx_hash"] and record["status"] == "credited"
    refused(
        "ALREADY_EXISTS",
        flow.coordinator.submit,
        "record_settlement",
        {**settle, "tx_hash": "0x" + digest("tx2")},
    )
    refused("NO_SUCH_ROUND", flow.coordinator.submit, "record_settlement", {**settle, "round": 2})


def test_rollback_reopens_training_from_an_earlier_round_and_keeps_history(flow):
    flow.running(rounds=3)
    flow.full_round()
    model_1 = flow.trial()["head"]["model"]
    flow.full_round()
    tid = {"trial_id": flow.trial_id}
    refused("NO_SUCH_ROUND", flow.admin.submit, "rollback", {**tid, "to_round": 3})
    refused("NO_SUCH_ROUND", flow.admin.submit, "rollback", {**tid, "to_round": 99})
    refused("FORBIDDEN_ROLE", flow.coordinator.submit, "rollback", {**tid, "to_round": 1})
    flow.open_round()
    refused(
        "WRONG_STATE", flow.admin.submit, "rollback", {**tid, "to_round": 1}
    )  # a round is in progress
    flow.admin.submit("abort_round", flow.at(reason="operator decided to roll back"))
    # Every hospital spent 2 of the 3 reveals its DP schedule plans: rounds 2 and 3 again would
    # need 2 more each, so the full plan is refused up front, naming what would fit.
    error = refused("INFEASIBLE", flow.admin.submit, "rollback", {**tid, "to_round": 1})
    assert error.detail["feasible"] == 1 and "final_round=2 would fit" in error.message
    assert error.detail["reveals_left"] == {m: 1 for m in flow.trial()["enrolled_at_start"]}
    trial = flow.admin.submit(
        "rollback", {**tid, "to_round": 1, "reason": "round 2 model drifted", "final_round": 2}
    )
    assert trial["final_round"] == 2 and trial["rounds"] == 3
    assert trial["head"] == {"round": 1, "attempt": 1, "model": model_1}
    assert [(e["round"], e["attempt"]) for e in trial["lineage"]] == [(1, 1)]
    assert trial["rollbacks"][0]["from_round"] == 2 and trial["rollbacks"][0]["to_round"] == 1
    assert (trial["rollbacks"][0]["rounds_before"], trial["rollbacks"][0]["rounds_after"]) == (3, 2)
    rnd = flow.open_round()
    assert (rnd["round"], rnd["attempt"]) == (2, 2) and rnd["base"]["model"] == model_1
    # A stale update trained on the rolled-back round-2 model is refused.
    old_model_2 = flow.admin.evaluate("get_round", {**tid, "round": 2, "attempt": 1})["model"][
        "sha256"
    ]
    refused("STALE", flow.commit_update, "hospital1", base=old_model_2)
    # Nothing was deleted: the abandoned round 2 and the aborted round 3 are still there.
    rounds = flow.client("auditor").evaluate("list_rounds", tid)
    assert [(r["round"], r["attempt"], r["phase"]) for r in rounds] == [
        (1, 1, "FINALIZED"),
        (2, 1, "FINALIZED"),
        (2, 2, "SUBMIT"),
        (3, 1, "HALTED"),
    ]
    history = flow.client("auditor").evaluate("get_history", {**tid, "record": "trial"})
    heads = [h["value"]["head"]["round"] for h in history]
    assert heads[0] == 1 and 2 in heads  # newest first; the head was at 2 before the rollback
    lineage = flow.client("auditor").evaluate("get_model_lineage", tid)
    assert lineage["head"]["round"] == 1 and len(lineage["rollbacks"]) == 1


def test_rollback_to_round_zero_restarts_from_the_initial_model(flow):
    flow.running()
    flow.full_round()
    # DP on: the one reveal left of each hospital carries one round, not the two planned.
    refused("INFEASIBLE", flow.admin.submit, "rollback", {"trial_id": flow.trial_id, "to_round": 0})
    trial = flow.admin.submit(
        "rollback", {"trial_id": flow.trial_id, "to_round": 0, "final_round": 1}
    )
    assert trial["head"] == {"round": 0, "attempt": 0, "model": flow.trial_args()["initial_model"]}
    assert flow.open_round()["base"]["round"] == 0


def test_complete_needs_the_last_planned_round_finalized_in_the_current_lineage(flow):
    # DP off: with DP on the one reveal its schedule allows would be spent by the first round.
    flow.running(rounds=1, dp={"enabled": False, "reason": "re-runs a round"})
    flow.full_round()
    refused(
        "WRONG_STATE", flow.coordinator.submit, "open_round", {"trial_id": flow.trial_id}
    )  # all rounds done
    flow.admin.submit("rollback", {"trial_id": flow.trial_id, "to_round": 0})
    refused("WRONG_STATE", flow.admin.submit, "complete_trial", {"trial_id": flow.trial_id})
    flow.full_round()
    trial = flow.admin.submit("complete_trial", {"trial_id": flow.trial_id})
    assert trial["state"] == "COMPLETED" and trial["head"]["attempt"] == 2


def test_abort_round(flow):
    flow.running()
    flow.open_round()
    refused("FORBIDDEN_ROLE", flow.coordinator.submit, "abort_round", flow.at(reason="x"))
    rnd = flow.admin.submit("abort_round", flow.at(reason="silo outage"))
    assert rnd["phase"] == "HALTED" and rnd["halt"] == {
        **rnd["halt"],
        "code": "ABORTED",
        "reason": "silo outage",
    }
    refused("WRONG_STATE", flow.admin.submit, "abort_round", flow.at(reason="again"))


def test_history_and_lineage_are_open_to_auditors(flow):
    flow.running()
    flow.full_round()
    auditor = flow.client("auditor")
    history = auditor.evaluate(
        "get_history", {"trial_id": flow.trial_id, "record": "round", "round": 1}
    )
    phases = [h["value"]["phase"] for h in reversed(history)]
    assert phases == [
        "SUBMIT",
        "REVEAL",
        "VOTE_COMMIT",
        "VOTE_REVEAL",
        "AGGREGATE",
        "ATTEST",
        "FINALIZED",
    ]
    assert all(h["tx_id"] and h["timestamp"] and not h["is_delete"] for h in history)
    update_history = auditor.evaluate(
        "get_history",
        {
            "trial_id": flow.trial_id,
            "record": "update",
            "round": 1,
            "msp_id": flow.msp["hospital2"],
        },
    )
    assert [h["value"]["revealed"] for h in update_history] == [True, False]
    lineage = auditor.evaluate("get_model_lineage", {"trial_id": flow.trial_id})
    assert [r["round"] for r in lineage["rounds"]] == [1]
    assert lineage["rounds"][0]["model"]["content_id"] == "cid-model-1"
    refused("NO_SUCH_ROUND", auditor.evaluate, "get_round", {"trial_id": flow.trial_id, "round": 2})
    refused("NOT_FOUND", auditor.evaluate, "get_acceptance", {"trial_id": "nope", "round": 1})
    refused(
        "INVALID_ARGUMENT",
        auditor.evaluate,
        "get_history",
        {"trial_id": flow.trial_id, "record": "round"},
    )


class RecordsOnly:
    """A state holding given records (what ``norm_bounds`` reads), at time 0."""

    def __init__(self, records: dict[str, object]):
        self.records = {key: canonical_json(value) for key, value in records.items()}

    def get_state(self, key: str) -> bytes | None:
        return self.records.get(key)

    def get_tx_timestamp(self) -> int:
        return 0


def test_norm_bounds_come_from_the_policy_else_the_dp_schedule_else_none():
    schedule = {
        "trial_id": "t",
        "entries": {
            "A": {"max_update_norm_milli": 1500, "epsilon_micro": [1]},
            "B": {"max_update_norm_milli": None, "epsilon_micro": [1]},
        },
    }
    tx = Tx(RecordsOnly({dp_schedule_key("t"): schedule}))
    trial = {
        "trial_id": "t",
        "dp": {"enabled": True},
        "evaluation": {"max_update_norm_milli": None},
    }
    # the schedule's bound per hospital; none in the entry or no entry: no bound
    assert norm_bounds(tx, trial, ["A", "B", "C"]) == {"A": 1500, "B": None, "C": None}
    # an explicit policy bound wins for everyone
    explicit = {**trial, "evaluation": {"max_update_norm_milli": 700}}
    assert norm_bounds(tx, explicit, ["A", "C"]) == {"A": 700, "C": 700}
    # DP off: a schedule (there should be none) is not read
    off = {**trial, "dp": {"enabled": False, "reason": "synthetic data"}}
    assert norm_bounds(tx, off, ["A"]) == {"A": None}
    # DP on before the schedule is recorded: no bound
    assert norm_bounds(Tx(RecordsOnly({})), trial, ["A"]) == {"A": None}
