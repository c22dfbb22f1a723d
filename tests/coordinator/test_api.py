"""The admin, silo and auditor API end to end: create a trial, enrol hospitals, start, read, remove, halt."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from silo_side import register_for_trial

from bcfl_common.errors import ContractError, SchemaError
from consortium.ledger import open_ledger
from consortium.storage import open_store
from coordinator.cli import coordinator_group
from privacy.he import DEFAULT_PRESET

DATA_SCHEMA = {
    "features": [
        {"name": "age", "type": "float", "min": 0, "max": 120},
        {"name": "sex", "type": "category", "categories": ["f", "m"]},
    ],
    "label": {"name": "outcome", "positive": [1]},
}


def spec(trial_id: str = "trial-1", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "trial_id": trial_id,
        "task": "binary_classification",
        "data_schema": DATA_SCHEMA,
        "model": {"name": "mlp", "hyperparameters": {"hidden": [8], "learning_rate": 0.05}},
        "rounds": 2,
        "min_silos": 2,
        "dp": {"target_epsilon_micro": 4_000_000, "delta": "1/100000"},
        "evaluation": {"min_voters": 1},
        "phase_seconds": {"submit": 600},
        "initial_model_seed": 7,
    }
    data.update(overrides)
    return data


def raw_key_b64(pem: bytes) -> str:
    key = serialization.load_pem_public_key(pem)
    return base64.b64encode(
        key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def test_create_enrol_start_through_the_api(
    server: Any, client_as: Any, consortium: Any, store_url: str, ledger_url: str
) -> None:
    admin, auditor = client_as("admin"), client_as("auditor")
    trial = admin.create_trial(spec())
    assert trial["state"] == "ENROLLING"
    assert trial["he"] == {"enabled": True, "preset": DEFAULT_PRESET}
    assert trial["created_by"]["role"] == "admin"
    # The initial model is in the store, under the ledger's content id and hash, and reproducible.
    from model_registry.models import initial_model

    expected = initial_model(spec()["model"], DATA_SCHEMA, 7)
    stored = open_store(store_url).get(trial["initial_model"]["content_id"])
    assert stored == expected
    assert trial["initial_model"]["sha256"] == hashlib.sha256(expected).hexdigest()

    with pytest.raises(ContractError) as info:
        admin.create_trial(spec())
    assert info.value.code == "ALREADY_EXISTS" and info.value.http_status == 409

    hospitals = {name: client_as(name) for name in ("hospital1", "hospital2", "hospital3")}
    for name, client in hospitals.items():
        request = client.request_enrolment(
            "trial-1", consortium.identity(name).encryption_public_key_pem()
        )
        assert request["status"] == "pending"
        assert request["msp_id"] == consortium.identity(name).msp_id
    with pytest.raises(ContractError) as info:
        hospitals["hospital1"].request_enrolment(
            "trial-1", consortium.identity("hospital1").encryption_public_key_pem()
        )
    assert info.value.code == "ALREADY_EXISTS"
    with pytest.raises(SchemaError) as info2:
        client_as("hospital4").request_enrolment("trial-1", "not a key")
    assert info2.value.detail["field"] == "encryption_public_key"
    assert [r["msp_id"] for r in admin.enrolment_requests("trial-1", "pending")] == [
        "Hospital1MSP",
        "Hospital2MSP",
        "Hospital3MSP",
    ]

    for name in ("hospital1", "hospital2"):
        ledger = open_ledger(ledger_url, consortium.identity(name))
        register_for_trial(ledger, consortium.identity(name), "trial-1")
        ledger.close()
    record = admin.enrol("trial-1", "Hospital1MSP")
    assert record["encryption_public_key"] == raw_key_b64(
        consortium.identity("hospital1").encryption_public_key_pem()
    )
    # Starting with one hospital is refused and changes nothing.
    with pytest.raises(ContractError) as info:
        admin.start_trial("trial-1")
    assert info.value.code == "INSUFFICIENT_SILOS" and info.value.http_status == 409
    assert auditor.trial("trial-1")["state"] == "ENROLLING"

    admin.enrol("trial-1", "Hospital2MSP")
    assert (
        admin.enrol("trial-1", "Hospital2MSP")["status"] == "enrolled"
    )  # approving twice is harmless
    rejected = admin.reject_enrolment("trial-1", "Hospital3MSP", "not in this study")
    assert rejected["status"] == "rejected"
    assert hospitals["hospital3"].enrolment_request("trial-1")["reason"] == "not in this study"
    with pytest.raises(ContractError) as info:
        admin.enrol("trial-1", "Hospital3MSP")
    assert info.value.code == "WRONG_STATE"
    with pytest.raises(ContractError) as info:
        admin.enrol("trial-1", "Hospital4MSP")
    assert info.value.code == "NOT_FOUND"

    started = admin.start_trial("trial-1")
    assert started["state"] == "RUNNING"
    assert started["enrolled_at_start"] == ["Hospital1MSP", "Hospital2MSP"]
    assert hospitals["hospital1"].enrolment_request("trial-1")["status"] == "approved"

    # Auditor reads: thin views of the contract's queries.
    assert [t["trial_id"] for t in auditor.list_trials(state="RUNNING")] == ["trial-1"]
    assert [e["msp_id"] for e in auditor.enrolments("trial-1")] == ["Hospital1MSP", "Hospital2MSP"]
    assert auditor.lineage("trial-1")["head"]["round"] == 0
    assert auditor.rounds("trial-1") == []
    assert {p["msp_id"] for p in auditor.privacy_ledger("trial-1")} == {
        "Hospital1MSP",
        "Hospital2MSP",
    }
    assert auditor.rewards("trial-1")["accounts"] == []
    feed = auditor.events("trial-1")
    names = [e["name"] for e in feed["events"]]
    assert names == [
        "TrialCreated",
        "EnrolmentOpened",
        "EncryptionKeyRegistered",
        "EncryptionKeyRegistered",
        "HospitalEnrolled",
        "HospitalEnrolled",
        "TrialStarted",
    ]
    later = auditor.events("trial-1", since_block=feed["events"][5]["block_number"])
    assert [e["name"] for e in later["events"]] == ["HospitalEnrolled", "TrialStarted"]
    page = auditor.events("trial-1", limit=2)
    assert len(page["events"]) == 2 and page["next_block"] == feed["events"][2]["block_number"]
    assert auditor.verify_ledger()["ok"] is True
    assert auditor.history("trial-1")[0]["value"]["state"] == "RUNNING"
    with pytest.raises(ContractError) as info:
        auditor.round("trial-1", 1)
    assert info.value.code == "NO_SUCH_ROUND" and info.value.http_status == 404

    halted = admin.halt_trial("trial-1", "ethics review")
    assert halted["state"] == "HALTED" and halted["halt"]["reason"] == "ethics review"
    assert halted["halt"]["code"] == "HALTED_BY_ADMIN"
    progress = auditor.progress("trial-1")
    assert progress["code"] == "HALTED_BY_ADMIN" and "ethics review" in progress["reason"]
    resumed = admin.resume_trial("trial-1", "ethics approved")
    assert resumed["state"] == "RUNNING" and resumed["resumes"][0]["reason"] == "ethics approved"
    assert auditor.progress("trial-1")["waiting_for"] == ["Hospital1MSP", "Hospital2MSP"]  # keys
    # Removing one of the two hospitals leaves fewer than min_silos: the trial ends, saying so.
    removed = admin.remove_hospital("trial-1", "Hospital2MSP", "withdrew consent")
    assert removed["status"] == "removed"
    assert hospitals["hospital2"].enrolment_request("trial-1")["status"] == "removed"
    trial = auditor.trial("trial-1")
    assert trial["state"] == "HALTED" and trial["halt"]["code"] == "TOO_FEW_HOSPITALS"
    assert auditor.progress("trial-1")["code"] == "TOO_FEW_HOSPITALS"
    with pytest.raises(ContractError) as info:
        admin.resume_trial("trial-1", "try anyway")
    assert info.value.code == "INSUFFICIENT_SILOS" and info.value.http_status == 409
    with pytest.raises(ContractError) as info:
        admin.start_trial("trial-1")
    assert info.value.code == "WRONG_STATE"


def test_bad_trial_specs_are_refused_naming_the_field(server: Any, client_as: Any) -> None:
    admin = client_as("admin")
    cases = [
        (spec(model={"name": "resnet-9000"}), "MODEL_SPEC", "resnet-9000"),
        (spec(data_schema={"features": []}), "SCHEMA", "features"),
        (spec(he={"preset": "tiny"}), "INVALID_REQUEST", "he.preset"),
        (spec(he={"enabled": False}), "INVALID_REQUEST", "he.enabled"),
        (spec(rounds=0), "INVALID_REQUEST", "rounds"),
        (spec(dp={"target_epsilon": 3}), "INVALID_REQUEST", "dp.target_epsilon"),
        (spec(dp={"delta": "2"}), "INVALID_ARGUMENT", "dp.delta"),
    ]
    for body, code, named in cases:
        with pytest.raises(Exception) as info:
            admin.create_trial(body)
        error = info.value
        assert error.code == code, (body, error.to_dict())  # type: ignore[attr-defined]
        assert error.http_status == 422, (body, error.to_dict())  # type: ignore[attr-defined]
        assert named in error.message, (body, error.message)  # type: ignore[attr-defined]
    assert client_as("auditor").list_trials() == []  # nothing was half-created


def test_cli_drives_the_api(server: Any, consortium: Any, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(
        'trial_id = "cli-trial"\ntask = "binary_classification"\nrounds = 1\nmin_silos = 2\n'
        '[model]\nname = "logistic_regression"\n'
        '[data_schema]\nfeatures = [{name = "age", type = "float"}]\nlabel = {name = "y", positive = [1]}\n'
    )
    runner = CliRunner()
    base = ["--url", server.base_url, "--consortium", str(consortium.directory)]
    result = runner.invoke(
        coordinator_group, ["trial", "create", *base, "--spec", str(spec_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["state"] == "ENROLLING"
    result = runner.invoke(coordinator_group, ["trial", "status", *base, "cli-trial"])
    assert result.exit_code == 0, result.output
    assert "ENROLLING" in result.output and "cli-trial" in result.output
    result = runner.invoke(
        coordinator_group, ["trial", "status", *base, "--as", "auditor", "--json"]
    )
    assert [t["trial_id"] for t in json.loads(result.output)] == ["cli-trial"]
    result = runner.invoke(
        coordinator_group, ["trial", "start", *base, "--as", "auditor", "cli-trial"]
    )
    assert result.exit_code != 0
    assert (
        result.exception is not None and getattr(result.exception, "code", None) == "FORBIDDEN_ROLE"
    )
