"""Trial life cycle through the contract: creation, policies, enrolment, start, halt, completion, keys."""

from __future__ import annotations

from contract_flow import HOSPITALS, digest, refused, x25519_public_key


def test_create_trial_records_resolved_policies_with_dp_and_he_on_by_default(flow):
    trial = flow.admin.submit("create_trial", flow.trial_args(dp=None, evaluation=None))
    assert trial["state"] == "DRAFT"
    assert trial["dp"] == {
        "enabled": True,
        "target_epsilon_micro": 8_000_000,
        "delta": [1, 100_000],
        "max_grad_norm_milli": 1000,
        "local_epochs": 1,
        "accountant": "rdp",
        "grad_sample_mode": "ghost",
    }
    assert trial["he"] == {"enabled": True, "preset": "ckks-n4096-s33"}
    assert trial["evaluation"] == {
        "acceptance_threshold_micro": 10_000,
        "min_voters": 2,
        "reward_per_round": 1000,
        "max_weight_share_micro": 500_000,
        "duplicate_similarity_micro": 999_000,
        "max_norm_ratio_milli": 3000,
        "max_update_norm_milli": None,
        "voter_reward_share_micro": 200_000,
    }
    assert trial["phase_seconds"] == {
        "submit": 3600,
        "reveal": 900,
        "vote_commit": 1800,
        "vote_reveal": 900,
    }
    assert trial["head"] == {"round": 0, "attempt": 0, "model": flow.trial_args()["initial_model"]}
    assert trial["created_by"]["msp_id"] == flow.msp["admin"]
    # Opaque fields are kept as given (floats included: nothing is decided from them).
    assert trial["model"]["hyperparameters"] == {"learning_rate": 0.05, "epochs": 1}
    assert flow.client("auditor").evaluate("get_trial", {"trial_id": flow.trial_id}) == trial


def test_switching_dp_or_he_off_must_be_explicit_and_is_recorded(flow):
    trial = flow.create(
        dp={"enabled": False, "reason": "synthetic data only"},
        he={"enabled": False, "reason": "benchmark"},
    )
    assert trial["dp"] == {"enabled": False, "reason": "synthetic data only"}
    assert trial["he"] == {"enabled": False, "reason": "benchmark"}
    # DP parameters with DP off are a contradiction, not something to ignore.
    flow.trial_id = "trial-2"
    error = refused(
        "INVALID_ARGUMENT", flow.create, dp={"enabled": False, "target_epsilon_micro": 1}
    )
    assert error.detail["field"] == "dp.target_epsilon_micro"


def test_delta_as_string_or_fraction_is_stored_as_reduced_ints(flow):
    assert flow.create(dp={"delta": "1e-6"})["dp"]["delta"] == [1, 1_000_000]
    flow.trial_id = "trial-2"
    assert flow.create(dp={"delta": [2, 200_000]})["dp"]["delta"] == [1, 100_000]
    flow.trial_id = "trial-3"
    refused("INVALID_ARGUMENT", flow.create, dp={"delta": 1e-5})  # a float has no exact meaning
    refused("INVALID_ARGUMENT", flow.create, dp={"delta": "2"})


def test_invalid_arguments_name_the_field_the_value_and_what_was_expected(flow):
    error = refused("INVALID_ARGUMENT", flow.create, rounds="three")
    assert error.detail == {
        "field": "rounds",
        "value": "three",
        "expected": "an integer from 1 to 1000",
    }
    assert "rounds" in error.message and "three" in error.message
    error = refused("INVALID_ARGUMENT", flow.create, evaluation={"acceptance_treshold_micro": 5})
    assert error.detail["field"] == "evaluation.acceptance_treshold_micro"
    assert "no such field" in error.detail["expected"]
    refused("INVALID_ARGUMENT", flow.create, min_silos=1)
    refused("INVALID_ARGUMENT", flow.create, rounds=True)
    refused("INVALID_ARGUMENT", flow.create, trial_id="bad id with spaces")
    refused("INVALID_ARGUMENT", flow.create, initial_model={"content_id": "cid", "sha256": "ABC"})
    args = flow.trial_args()
    del args["data_schema"]
    error = refused("INVALID_ARGUMENT", flow.admin.submit, "create_trial", args)
    assert error.detail["field"] == "data_schema" and error.detail["value"] is None


def test_only_the_admin_creates_and_drives_trials(flow):
    for name in ("coordinator", "auditor", "hospital1"):
        refused("FORBIDDEN_ROLE", flow.client(name).submit, "create_trial", flow.trial_args())
    flow.create()
    for name in ("coordinator", "hospital1"):
        refused(
            "FORBIDDEN_ROLE",
            flow.client(name).submit,
            "open_enrolment",
            {"trial_id": flow.trial_id},
        )
        refused(
            "FORBIDDEN_ROLE",
            flow.client(name).submit,
            "halt_trial",
            {"trial_id": flow.trial_id, "reason": "x"},
        )


def test_trial_ids_are_unique(flow):
    flow.create()
    refused("ALREADY_EXISTS", flow.create)


def test_state_machine_draft_enrolling_running_completed(flow):
    flow.create()
    tid = {"trial_id": flow.trial_id}
    refused("WRONG_STATE", flow.enrol, "hospital1")  # DRAFT: enrolment not open
    refused("WRONG_STATE", flow.admin.submit, "start_trial", tid)
    refused("WRONG_STATE", flow.admin.submit, "halt_trial", {**tid, "reason": "draft"})
    assert flow.admin.submit("open_enrolment", tid)["state"] == "ENROLLING"
    refused("WRONG_STATE", flow.admin.submit, "open_enrolment", tid)
    for name in HOSPITALS[:2]:
        flow.enrol(name)
    flow.members = list(HOSPITALS[:2])
    refused("WRONG_STATE", flow.coordinator.submit, "open_round", tid)  # not RUNNING
    trial = flow.admin.submit("start_trial", tid)
    assert trial["state"] == "RUNNING"
    assert trial["enrolled_at_start"] == sorted(flow.msp[n] for n in HOSPITALS[:2])
    refused("WRONG_STATE", flow.enrol, "hospital3")  # enrolment closed
    refused("WRONG_STATE", flow.admin.submit, "complete_trial", tid)  # no round finalized
    flow.record_keys("hospital1")
    flow.full_round()
    flow.full_round()
    assert flow.admin.submit("complete_trial", tid)["state"] == "COMPLETED"
    refused("WRONG_STATE", flow.admin.submit, "halt_trial", {**tid, "reason": "too late"})
    refused("WRONG_STATE", flow.coordinator.submit, "open_round", tid)


def test_start_needs_min_silos(flow):
    flow.enrolling(hospitals=("hospital1",), min_silos=2)
    error = refused(
        "INSUFFICIENT_SILOS", flow.admin.submit, "start_trial", {"trial_id": flow.trial_id}
    )
    assert error.detail["min_silos"] == 2
    flow.enrol("hospital2")
    assert flow.admin.submit("start_trial", {"trial_id": flow.trial_id})["state"] == "RUNNING"


def test_enrolment_accepts_hospitals_only_with_a_valid_x25519_key(flow):
    flow.enrolling(hospitals=())
    base = {"trial_id": flow.trial_id, "encryption_public_key": x25519_public_key()}
    refused(
        "WRONG_ORGANISATION",
        flow.admin.submit,
        "enrol_hospital",
        {**base, "msp_id": flow.msp["auditor"]},
    )
    refused(
        "WRONG_ORGANISATION",
        flow.admin.submit,
        "enrol_hospital",
        {**base, "msp_id": flow.msp["admin"]},
    )
    refused("NOT_FOUND", flow.admin.submit, "enrol_hospital", {**base, "msp_id": "Hospital99MSP"})
    bad_key = {**base, "msp_id": flow.msp["hospital1"], "encryption_public_key": "bm90IGEga2V5"}
    assert (
        refused("INVALID_ARGUMENT", flow.admin.submit, "enrol_hospital", bad_key).detail["field"]
        == "encryption_public_key"
    )
    pem = x25519_public_key(pem=True)
    # the operator cannot enrol a key the hospital did not register itself
    refused(
        "NOT_FOUND",
        flow.admin.submit,
        "enrol_hospital",
        {**base, "msp_id": flow.msp["hospital1"], "encryption_public_key": pem},
    )
    flow.register_key("hospital1", pem)
    refused(
        "KEY_MISMATCH",
        flow.admin.submit,
        "enrol_hospital",
        {**base, "msp_id": flow.msp["hospital1"]},
    )
    refused(
        "WRONG_ORGANISATION",
        flow.client("hospital2").submit,
        "register_encryption_key",
        {
            "trial_id": flow.trial_id,
            "msp_id": flow.msp["hospital1"],
            "encryption_public_key": x25519_public_key(),
        },
    )
    refused(
        "FORBIDDEN_ROLE",
        flow.admin.submit,
        "register_encryption_key",
        {"trial_id": flow.trial_id, "encryption_public_key": x25519_public_key()},
    )
    record = flow.admin.submit(
        "enrol_hospital", {**base, "msp_id": flow.msp["hospital1"], "encryption_public_key": pem}
    )
    assert (
        record["status"] == "enrolled" and len(record["encryption_public_key"]) == 44
    )  # base64 of 32 bytes
    refused("ALREADY_EXISTS", flow.enrol, "hospital1")


def test_remove_and_re_enrol_keep_history(flow):
    flow.enrolling(hospitals=("hospital1", "hospital2"))
    who = {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital2"]}
    removed = flow.admin.submit("remove_hospital", {**who, "reason": "withdrew consent"})
    assert removed["status"] == "removed" and removed["removal_reason"] == "withdrew consent"
    refused("NOT_ENROLLED", flow.admin.submit, "remove_hospital", who)
    assert flow.enrol("hospital2")["status"] == "enrolled"
    history = flow.client("auditor").evaluate("get_history", {**who, "record": "enrolment"})
    assert [h["value"]["status"] for h in history] == ["enrolled", "removed", "enrolled"][::-1]
    statuses = {
        e["msp_id"]: e["status"]
        for e in flow.admin.evaluate("get_enrolments", {"trial_id": flow.trial_id})
    }
    assert statuses == {flow.msp["hospital1"]: "enrolled", flow.msp["hospital2"]: "enrolled"}


def test_halt_from_enrolling_and_from_running_closes_the_open_round(flow):
    flow.enrolling()
    halted = flow.admin.submit(
        "halt_trial", {"trial_id": flow.trial_id, "reason": "sponsor withdrew"}
    )
    assert halted["state"] == "HALTED" and halted["halt"]["reason"] == "sponsor withdrew"
    refused("WRONG_STATE", flow.enrol, "hospital4")

    flow.trial_id = "trial-2"
    flow.running()
    flow.open_round()
    flow.admin.submit("halt_trial", {"trial_id": flow.trial_id, "reason": "data issue"})
    rnd = flow.get_round()
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "TRIAL_HALTED"
    refused("WRONG_STATE", flow.commit_update, "hospital1")


def test_list_trials_and_filter_by_state(flow):
    flow.create()
    flow.trial_id = "trial-2"
    flow.enrolling()
    everything = flow.client("hospital3").evaluate("list_trials", {})
    assert [t["trial_id"] for t in everything] == ["trial-1", "trial-2"]
    enrolling = flow.client("auditor").evaluate("list_trials", {"state": "ENROLLING"})
    assert [t["trial_id"] for t in enrolling] == ["trial-2"]
    refused("NOT_FOUND", flow.admin.evaluate, "get_trial", {"trial_id": "nope"})


def test_trial_keys_cover_every_enrolled_hospital_once(flow):
    flow.running(keys=False)
    tid = {"trial_id": flow.trial_id}
    refused("WRONG_STATE", flow.coordinator.submit, "open_round", tid)  # rounds need keys first
    refused("FORBIDDEN_ROLE", flow.coordinator.submit, "record_trial_keys", flow.keys_args())
    refused("NOT_ENROLLED", flow.record_keys, "hospital4")
    error = refused("INVALID_ARGUMENT", flow.record_keys, "hospital1", flow.members[:2])
    assert error.detail["field"] == "envelopes"
    refused("INVALID_ARGUMENT", flow.record_keys, "hospital1", [*flow.members, "hospital4"])
    refused(
        "WRONG_ORGANISATION",
        flow.client("hospital1").submit,
        "record_trial_keys",
        {**flow.keys_args(), "msp_id": flow.msp["hospital2"]},
    )
    record = flow.record_keys("hospital2")
    assert record["msp_id"] == flow.msp["hospital2"]
    assert sorted(record["envelopes"]) == sorted(flow.msp[n] for n in flow.members)
    assert record["public_context"]["sha256"] == digest("context", flow.trial_id)
    refused("ALREADY_EXISTS", flow.record_keys, "hospital1")
    assert flow.client("hospital3").evaluate("get_trial_keys", tid) == record
