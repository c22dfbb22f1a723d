"""The API's shape: every operation documents its answer, and one role dependency guards each router."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from consortium.http_auth import sign_request
from coordinator.schemas import RoundRecord, TrialRecord


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    ]


def _concrete(path: str) -> str:
    """A path with every template parameter filled with a valid value."""
    return re.sub(r"\{round_number\}", "1", re.sub(r"\{(\w+)\}", "x-1", path))


def test_every_operation_documents_a_2xx_response_schema(server: Any) -> None:
    spec = httpx.get(server.base_url + "/openapi.json", timeout=30).json()
    operations = _operations(spec)
    assert len(operations) == 49
    for method, path, operation in operations:
        answers = {
            status: response
            for status, response in operation["responses"].items()
            if status.startswith("2")
        }
        assert answers, f"{method} {path}: no 2xx response"
        for status, response in answers.items():
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            assert schema, f"{method} {path}: {status} has no JSON schema"
        assert "401" in operation["responses"] or not path.startswith("/api/")


@pytest.mark.parametrize(
    ("prefix", "role"), [("/api/v1/admin/", "admin"), ("/api/v1/silo/", "silo")]
)
def test_each_router_refuses_other_roles(
    server: Any, consortium: Any, prefix: str, role: str
) -> None:
    spec = httpx.get(server.base_url + "/openapi.json", timeout=30).json()
    guarded = [(m, p) for m, p, _ in _operations(spec) if p.startswith(prefix)]
    assert guarded
    caller = consortium.identity("auditor")
    for method, path in guarded:
        target = _concrete(path)
        headers = sign_request(caller, method, target, b"")
        response = httpx.request(method, server.base_url + target, headers=headers, timeout=30)
        assert response.status_code == 403, (method, target, response.text)
        body = response.json()
        assert body["code"] == "FORBIDDEN_ROLE"
        assert body["detail"] == {"role": "auditor", "allowed": [role], "required": role}


def test_reads_for_admins_and_auditors_only(server: Any, consortium: Any) -> None:
    hospital, auditor = consortium.identity("hospital1"), consortium.identity("auditor")
    for target in (
        "/api/v1/ledger/verify",
        "/api/v1/audit-log",
        "/api/v1/audit/trials",
        "/api/v1/audit/verify",
    ):
        response = httpx.get(
            server.base_url + target, headers=sign_request(hospital, "GET", target, b""), timeout=30
        )
        assert response.status_code == 403
        assert response.json()["detail"]["allowed"] == ["admin", "auditor"]
        response = httpx.get(
            server.base_url + target, headers=sign_request(auditor, "GET", target, b""), timeout=30
        )
        assert response.status_code == 200, response.text


def test_records_pass_through_unchanged() -> None:
    """A key the typed record does not name (yet) is kept, at the top and nested, not dropped."""
    trial = TypeAdapter(TrialRecord).json_schema()
    assert "trial_id" in trial["properties"]
    record = {
        "trial_id": "t",
        "round": 1,
        "attempt": 1,
        "phase": "SUBMIT",
        "base": {"round": 0, "attempt": 0, "model": {"content_id": None, "sha256": "ab", "new": 1}},
        "enrolled": [],
        "opened_at": 1,
        "opened_by": {"msp_id": "m", "name": "n", "role": "admin"},
        "phase_changed_at": 1,
        "deadline": None,
        "deadlines": {},
        "committed": [],
        "candidates": ["h2"],
        "excluded": {"h3": {"reason": "duplicate_content", "sha256": "cd", "owner": "h2"}},
        "vote_committed": [],
        "accepted": [],
        "accepted_sha256s": [],
        "total_weight": 0,
        "participants": [],
        "attestation_quorum": None,
        "aggregate": None,
        "model": None,
        "finalized_at": None,
        "halt": None,
        "disputes": [{"msp_id": "h1", "sha256": "ef", "at": 2, "against": "ab"}],
        "later_field": {"x": [1, 2]},
    }
    adapter = TypeAdapter(RoundRecord)
    assert adapter.dump_python(adapter.validate_python(record), mode="json") == record


def test_served_records_are_the_ledger_records(server: Any, client_as: Any) -> None:
    """The response models validate what the API answers and pass it through byte for byte."""
    client_as("admin").create_trial(
        {
            "trial_id": "trial-1",
            "task": "binary_classification",
            "data_schema": {
                "features": [{"name": "age", "type": "float", "min": 0, "max": 120}],
                "label": {"name": "outcome", "positive": [1]},
            },
            "model": {"name": "mlp", "hyperparameters": {"hidden": [4]}},
            "rounds": 1,
            "min_silos": 2,
        }
    )
    auditor = client_as("auditor")
    ledger = server.service
    assert auditor.trial("trial-1") == ledger.trial("trial-1")
    assert auditor.request("GET", "/trials") == ledger.query("list_trials", {})
    for path, function in (
        ("/lineage", "get_model_lineage"),
        ("/rewards", "get_rewards"),
        ("/privacy", "get_privacy_ledger"),
        ("/enrolments", "get_enrolments"),
        ("/history", "get_history"),
    ):
        args = {"trial_id": "trial-1"} | ({"record": "trial"} if function == "get_history" else {})
        assert auditor.request("GET", "/trials/trial-1" + path) == ledger.query(function, args)
    assert auditor.datasets() == ledger.query("get_datasets", {})
    # The audit reports are JSON with ok, checks and problems, and pass the rest through.
    report = auditor.audit_report("trial", "trial-1")
    assert report["ok"] and report["trial"]["trial_id"] == "trial-1"
    assert auditor.audit_report("trials")["trials"][0]["trial_id"] == "trial-1"
    assert auditor.audit_verify("trial-1")["ok"]
