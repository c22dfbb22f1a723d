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
        "duplicate_similarity_micro": 999_990,
        "max_norm_ratio_milli": 3000,
        "max_update_norm_milli": None,
        "voter_reward_share_micro": 200_000,
        "harm_se_milli": 2000,
        # DP on: an update's norm is mostly its noise, set by each hospital's noise multiplier
        "norm_outlier_scaling": "none",
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
    # DP off: an update's norm grows with its local steps, so outliers are judged per square
    # root of sample weight (chaincode.rules.norm_outlier)
    assert trial["evaluation"]["norm_outlier_scaling"] == "sqrt_sample_weight"
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
    trial = flow.start()
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
    error = refused("INSUFFICIENT_SILOS", flow.admin.submit, "start_trial", flow.start_args())
    assert error.detail["min_silos"] == 2
    flow.enrol("hospital2")
    assert flow.start()["state"] == "RUNNING"


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


# ---------------------------------------------------------------------------------------------
# Registered datasets and their lifetime epsilon
# ---------------------------------------------------------------------------------------------


def test_a_dataset_is_registered_once_by_its_own_hospital(flow):
    record = flow.register_dataset("hospital1", "ward-a", records=800, lifetime_epsilon_micro=9)
    assert record == {
        "msp_id": flow.msp["hospital1"],
        "dataset_id": "ward-a",
        "commitment": digest("dataset", "hospital1", "ward-a"),
        "records": 800,
        "lifetime_epsilon_micro": 9,
        "registered_at": record["registered_at"],
        "trials": [],
    }
    # Registering again could reset its lifetime budget: refused, whatever the values.
    error = refused(
        "ALREADY_EXISTS", flow.register_dataset, "hospital1", "ward-a", lifetime_epsilon_micro=10**6
    )
    assert error.detail["field"] == "dataset_id"
    # Another hospital's dataset of the same name is its own record.
    flow.register_dataset("hospital2", "ward-a")
    for name in ("admin", "coordinator", "auditor"):
        refused("FORBIDDEN_ROLE", flow.register_dataset, name, "ward-b")
    for bad in ({"records": 0}, {"records": 10**9 + 1}, {"lifetime_epsilon_micro": 0}):
        refused("INVALID_ARGUMENT", flow.register_dataset, "hospital3", "ward-c", **bad)
    mine = flow.client("auditor").evaluate("get_datasets", {"msp_id": flow.msp["hospital1"]})
    assert mine == [record]
    everyone = flow.client("hospital3").evaluate("get_datasets", {})
    assert [(d["msp_id"], d["dataset_id"]) for d in everyone] == [
        (flow.msp["hospital1"], "ward-a"),
        (flow.msp["hospital2"], "ward-a"),
    ]


def test_a_hospital_trains_only_on_its_own_dataset_and_within_its_records(flow):
    flow.enrolling(hospitals=())
    flow.register_dataset("hospital2", "theirs")
    # hospital1 names hospital2's dataset: not found among its own.
    error = refused(
        "NOT_FOUND", flow.register_key, "hospital1", dataset_id="theirs", training_records=10
    )
    assert error.detail == {"field": "dataset_id", "value": "theirs"}
    flow.register_dataset("hospital1", "mine", records=500)
    error = refused(
        "INVALID_ARGUMENT", flow.register_key, "hospital1", dataset_id="mine", training_records=501
    )
    assert error.detail["field"] == "training_records" and "500" in error.detail["expected"]
    refused(
        "INVALID_ARGUMENT", flow.register_key, "hospital1", dataset_id="mine", training_records=0
    )
    enrolment = flow.enrol("hospital1", dataset_id="mine", training_records=500)
    assert (enrolment["dataset_id"], enrolment["training_records"]) == ("mine", 500)
    [dataset] = flow.admin.evaluate("get_datasets", {"msp_id": flow.msp["hospital1"]})
    assert dataset["trials"] == [flow.trial_id]


def budget(flow, name, dataset_id):
    return flow.client("auditor").evaluate(
        "get_dataset_budget", {"msp_id": flow.msp[name], "dataset_id": dataset_id}
    )


def test_enrolment_cannot_over_commit_a_datasets_lifetime_epsilon(flow):
    flow.register_dataset("hospital1", "cohort", lifetime_epsilon_micro=5_000_000)
    flow.trial_id = "first"
    flow.create(rounds=2, dp={"target_epsilon_micro": 3_000_000})
    flow.admin.submit("open_enrolment", {"trial_id": "first"})
    flow.enrol("hospital1", dataset_id="cohort")
    flow.enrol("hospital2")
    flow.members = ["hospital1", "hospital2"]
    # A second trial planning 3 more on the same data would reach 6 of its 5.
    flow.trial_id = "second"
    flow.create(dp={"target_epsilon_micro": 3_000_000})
    flow.admin.submit("open_enrolment", {"trial_id": "second"})
    error = refused("BUDGET_EXCEEDED", flow.enrol, "hospital1", dataset_id="cohort")
    assert error.detail == {
        "dataset_id": "cohort",
        "lifetime_micro": 5_000_000,
        "committed_micro": 3_000_000,
        "remaining_micro": 2_000_000,
        "planned_micro": 3_000_000,
    }
    assert "cohort" in error.message and "remaining 2000000" in error.message
    # DP off is allowed on any dataset, and listed with nothing planned.
    flow.trial_id = "public"
    flow.create(dp={"enabled": False, "reason": "synthetic"})
    flow.admin.submit("open_enrolment", {"trial_id": "public"})
    flow.enrol("hospital1", dataset_id="cohort")
    # The first trial runs one round with a schedule below its target, then halts.
    flow.trial_id = "first"
    flow.start(dp_schedule=flow.dp_schedule([1_000_000, 2_000_000]))
    running = budget(flow, "hospital1", "cohort")
    assert running["trials"]["first"] == {
        "state": "RUNNING",
        "dp_enabled": True,
        "planned_micro": 2_000_000,  # its schedule's budget, not the trial's target
        "spent_micro": 0,
        "counted_micro": 2_000_000,
    }
    flow.record_keys("hospital1")
    flow.full_round()
    flow.admin.submit("halt_trial", {"trial_id": "first", "reason": "stopped early"})
    # A halted trial counts only what it spent.
    after = budget(flow, "hospital1", "cohort")
    assert after == {
        "msp_id": flow.msp["hospital1"],
        "dataset_id": "cohort",
        "lifetime_epsilon_micro": 5_000_000,
        "committed_micro": 1_000_000,
        "remaining_micro": 4_000_000,
        "trials": {
            "first": {
                "state": "HALTED",
                "dp_enabled": True,
                "planned_micro": 2_000_000,
                "spent_micro": 1_000_000,
                "counted_micro": 1_000_000,
            },
            "public": {
                "state": "ENROLLING",
                "dp_enabled": False,
                "planned_micro": 0,
                "spent_micro": 0,
                "counted_micro": 0,
            },
        },
    }
    flow.trial_id = "second"
    assert flow.enrol("hospital1", dataset_id="cohort")["status"] == "enrolled"
    assert budget(flow, "hospital1", "cohort")["remaining_micro"] == 1_000_000
    refused("NOT_FOUND", budget, flow, "hospital1", "nope")


def test_a_completed_trial_counts_what_it_spent_and_a_removed_hospital_frees_its_plan(flow):
    flow.register_dataset("hospital1", "cohort", lifetime_epsilon_micro=3_000_000)
    flow.create(rounds=1, dp={"target_epsilon_micro": 3_000_000})
    flow.admin.submit("open_enrolment", {"trial_id": flow.trial_id})
    flow.enrol("hospital1", dataset_id="cohort")
    for name in ("hospital2", "hospital3"):
        flow.enrol(name)
    flow.members = ["hospital1", "hospital2", "hospital3"]
    flow.start(dp_schedule=flow.dp_schedule([1_200_000]))
    flow.record_keys("hospital1")
    flow.full_round()
    flow.admin.submit("complete_trial", {"trial_id": flow.trial_id})
    spent = budget(flow, "hospital1", "cohort")
    assert spent["trials"][flow.trial_id]["counted_micro"] == 1_200_000
    assert spent["remaining_micro"] == 1_800_000
    # Removal during enrolment: the trial no longer counts its plan against the dataset.
    flow.register_dataset("hospital2", "small", lifetime_epsilon_micro=3_000_000)
    flow.trial_id = "later"
    flow.create(dp={"target_epsilon_micro": 3_000_000})
    flow.admin.submit("open_enrolment", {"trial_id": "later"})
    flow.enrol("hospital2", dataset_id="small")
    who = {"trial_id": "later", "msp_id": flow.msp["hospital2"]}
    flow.admin.submit("remove_hospital", who)
    assert budget(flow, "hospital2", "small")["remaining_micro"] == 3_000_000
    # ... and enrolling it again counts the plan once, not twice.
    flow.enrol("hospital2", dataset_id="small")
    small = budget(flow, "hospital2", "small")
    assert small["remaining_micro"] == 0 and list(small["trials"]) == ["later"]


# ---------------------------------------------------------------------------------------------
# The DP schedule recorded at start
# ---------------------------------------------------------------------------------------------


def test_start_records_a_well_formed_dp_schedule_and_refuses_anything_else(flow):
    flow.enrolling(rounds=3, dp={"target_epsilon_micro": 3_000_000})
    good = flow.dp_schedule([1_000_000, 1_000_000, 3_000_000])
    h1, h4 = flow.msp["hospital1"], flow.msp["hospital4"]

    def start_with(schedule, field):
        error = refused("INVALID_ARGUMENT", flow.start, dp_schedule=schedule)
        assert error.detail["field"] == field, error.message
        return error

    def with_entry(**changes):
        return {**good, h1: {**good[h1], **changes}}

    error = refused(
        "INVALID_ARGUMENT", flow.admin.submit, "start_trial", {"trial_id": flow.trial_id}
    )
    assert error.detail["field"] == "dp_schedule" and "DP on" in error.message
    without_h1 = {m: e for m, e in good.items() if m != h1}
    assert f"missing [{h1!r}]" in start_with(without_h1, "dp_schedule").message
    assert f"not enrolled [{h4!r}]" in start_with({**good, h4: good[h1]}, "dp_schedule").message
    entry = f"dp_schedule.{h1}"
    error = start_with(with_entry(epsilon_micro=[1, 2]), f"{entry}.epsilon_micro")
    assert "exactly 3" in error.message
    error = start_with(with_entry(epsilon_micro=[5, 4, 6]), f"{entry}.epsilon_micro[1]")
    assert "never decrease" in error.message
    error = start_with(with_entry(epsilon_micro=[1, 2, 3_000_001]), f"{entry}.epsilon_micro[2]")
    assert "3000000" in error.message
    start_with(with_entry(epsilon_micro=[0, 1, 2]), f"{entry}.epsilon_micro[0]")
    start_with(with_entry(epsilon_micro=[1, 2.5, 3]), f"{entry}.epsilon_micro[1]")
    error = start_with(with_entry(training_records=999), f"{entry}.training_records")
    assert "1000" in error.message
    start_with(with_entry(steps_per_round=0), f"{entry}.steps_per_round")
    start_with(with_entry(noise_multiplier_micro=0), f"{entry}.noise_multiplier_micro")
    start_with(with_entry(max_update_norm_milli=0), f"{entry}.max_update_norm_milli")
    start_with(with_entry(epsilon_spent_micro=1), f"{entry}.epsilon_spent_micro")
    missing = {k: v for k, v in good[h1].items() if k != "batches_per_epoch"}
    start_with({**good, h1: missing}, f"{entry}.batches_per_epoch")
    assert flow.trial()["state"] == "ENROLLING"  # nothing was recorded
    refused("NOT_FOUND", flow.admin.evaluate, "get_dp_schedule", {"trial_id": flow.trial_id})
    # No norm bound follows from some policies (weight decay): null is a valid bound.
    accepted = with_entry(max_update_norm_milli=None)
    assert flow.start(dp_schedule=accepted)["state"] == "RUNNING"
    record = flow.client("hospital2").evaluate("get_dp_schedule", {"trial_id": flow.trial_id})
    assert record["entries"] == accepted and record["trial_id"] == flow.trial_id
    assert record["recorded_by"]["msp_id"] == flow.msp["admin"]
    budgets = {
        e["msp_id"]: e["budget_micro"]
        for e in flow.admin.evaluate("get_privacy_ledger", {"trial_id": flow.trial_id})
    }
    assert budgets == {m: 3_000_000 for m in good}
