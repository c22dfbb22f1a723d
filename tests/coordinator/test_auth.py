"""Signed requests, replays, stale and untrusted requests, roles and organisations, size limits and malformed input."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from bcfl_common.errors import AuthError, ContractError, IdentityError, SchemaError
from consortium.coordinator_client import CoordinatorClient
from consortium.http_auth import (
    HEADER_CERTIFICATE,
    HEADER_MSP_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    authenticate,
    bcfl_role,
    canonical_request,
    sign_request,
)
from consortium.identity import CertificateAuthority, Identity

WHOAMI = "/api/v1/whoami"


def signed(
    identity: Identity, method: str, target: str, body: bytes = b"", **kwargs: Any
) -> dict[str, str]:
    headers = sign_request(identity, method, target, body, **kwargs)
    if body:
        headers["content-type"] = "application/json"
    return headers


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"code", "message", "detail"}, body
    return body


def trial_on_ledger(
    contract_net: Any, trial_id: str = "trial-1", hospitals: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A trial created straight on the ledger (the initial model ref is irrelevant to these tests)."""
    admin = contract_net.client("admin")
    trial = admin.submit(
        "create_trial",
        {
            "trial_id": trial_id,
            "task": "binary_classification",
            "data_schema": {
                "features": [{"name": "age", "type": "float"}],
                "label": {"name": "y", "positive": [1]},
            },
            "model": {"name": "logistic_regression", "hyperparameters": {}},
            "initial_model": {"content_id": "cid-initial", "sha256": "0" * 64},
            "rounds": 1,
            "min_silos": 2,
        },
    )
    admin.submit("open_enrolment", {"trial_id": trial_id})
    return trial


# -- signatures ---------------------------------------------------------------------------------


def test_signed_request_is_accepted_and_names_the_caller(server: Any, client_as: Any) -> None:
    who = client_as("hospital1").whoami()
    assert who == {
        "msp_id": "Hospital1MSP",
        "name": "hospital1",
        "role": "silo",
        "organisation_kind": "hospital",
        "role_honoured": True,
    }
    assert client_as("admin").whoami()["role"] == "admin"
    assert client_as("auditor").whoami()["role"] == "auditor"


def test_missing_signature_headers_get_401(server: Any) -> None:
    response = httpx.get(server.base_url + WHOAMI)
    assert response.status_code == 401
    body = error(response)
    assert body["code"] == "UNAUTHENTICATED"
    assert HEADER_SIGNATURE in body["message"]


def test_open_endpoints_need_no_signature(server: Any) -> None:
    assert httpx.get(server.base_url + "/healthz").json() == {"status": "ok"}
    document = httpx.get(server.base_url + "/openapi.json").json()
    assert "/api/v1/admin/trials" in document["paths"]
    assert "/api/v1/trials/{trial_id}/rounds/{round_number}/acceptance" in document["paths"]


def test_tampered_body_or_path_fails_the_signature(server: Any, consortium: Any) -> None:
    hospital = consortium.identity("hospital1")
    target = "/api/v1/silo/trials/trial-1/enrolment-requests"
    headers = signed(hospital, "POST", target, b'{"encryption_public_key": "a"}')
    response = httpx.post(
        server.base_url + target, content=b'{"encryption_public_key": "b"}', headers=headers
    )
    assert response.status_code == 401
    assert error(response)["code"] == "BAD_SIGNATURE"
    headers = signed(hospital, "GET", WHOAMI + "?x=1")
    response = httpx.get(server.base_url + WHOAMI + "?x=2", headers=headers)
    assert response.status_code == 401
    assert error(response)["code"] == "BAD_SIGNATURE"


def test_garbage_signature_and_headers_get_401(server: Any, consortium: Any) -> None:
    hospital = consortium.identity("hospital1")
    headers = signed(hospital, "GET", WHOAMI)
    for name, value, code in (
        (HEADER_SIGNATURE, "zz", "MALFORMED_AUTH"),
        (HEADER_SIGNATURE, "3006020101020101", "BAD_SIGNATURE"),
        (HEADER_TIMESTAMP, "yesterday", "MALFORMED_AUTH"),
        (HEADER_NONCE, "short", "MALFORMED_AUTH"),
        (HEADER_CERTIFICATE, "!!!not base64!!!", "MALFORMED_AUTH"),
        (HEADER_CERTIFICATE, base64.b64encode(b"not a certificate").decode(), "BAD_CERTIFICATE"),
        (HEADER_MSP_ID, "NoSuchMSP", "UNKNOWN_ORGANISATION"),
    ):
        response = httpx.get(server.base_url + WHOAMI, headers=dict(headers, **{name: value}))
        assert response.status_code == 401, (name, value, response.text)
        assert error(response)["code"] == code, (name, value, response.text)


def test_certificate_from_a_ca_outside_the_consortium_gets_401(
    server: Any, consortium: Any
) -> None:
    rogue_ca = CertificateAuthority.create("ca.hospital1msp", "Hospital1MSP")
    cert, key = rogue_ca.issue("hospital1", ["client", "silo"])
    assert key is not None
    impostor = Identity(
        name="hospital1",
        msp_id="Hospital1MSP",
        role="silo",
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        private_key=key,
    )
    response = httpx.get(server.base_url + WHOAMI, headers=signed(impostor, "GET", WHOAMI))
    assert response.status_code == 401
    body = error(response)
    assert body["code"] == "CERTIFICATE_NOT_TRUSTED"
    assert "Hospital1MSP" in body["message"]


def test_a_hospital_cannot_sign_as_another_hospitals_msp(server: Any, consortium: Any) -> None:
    hospital1 = consortium.identity("hospital1")
    headers = signed(hospital1, "GET", WHOAMI)
    headers[HEADER_MSP_ID] = "Hospital2MSP"
    response = httpx.get(server.base_url + WHOAMI, headers=headers)
    assert response.status_code == 401
    assert error(response)["code"] == "CERTIFICATE_NOT_TRUSTED"


def test_stale_timestamp_gets_401(server: Any, consortium: Any) -> None:
    hospital = consortium.identity("hospital1")
    for offset in (-301, 400):
        headers = signed(hospital, "GET", WHOAMI, timestamp=int(time.time()) + offset)
        response = httpx.get(server.base_url + WHOAMI, headers=headers)
        assert response.status_code == 401
        body = error(response)
        assert body["code"] == "STALE_REQUEST"
        assert body["detail"]["max_skew"] == 300


def test_replayed_request_is_refused_also_after_a_restart(live: Any, consortium: Any) -> None:
    first = live()
    headers = signed(consortium.identity("hospital1"), "GET", WHOAMI)
    assert httpx.get(first.base_url + WHOAMI, headers=headers).status_code == 200
    replay = httpx.get(first.base_url + WHOAMI, headers=headers)
    assert replay.status_code == 401
    assert error(replay)["code"] == "REPLAYED"
    first.stop()
    # A new process on the same database remembers the nonce.
    second = live()
    replay = httpx.get(second.base_url + WHOAMI, headers=headers)
    assert replay.status_code == 401
    assert error(replay)["code"] == "REPLAYED"
    # The same nonce from another organisation is a different request.
    other = signed(consortium.identity("hospital2"), "GET", WHOAMI, nonce=headers[HEADER_NONCE])
    assert httpx.get(second.base_url + WHOAMI, headers=other).status_code == 200


# -- roles and organisations ------------------------------------------------------------------


def test_auditor_and_hospital_cannot_act_as_admin(
    server: Any, client_as: Any, contract_net: Any
) -> None:
    trial_on_ledger(contract_net)
    for name in ("auditor", "hospital1", "coordinator"):
        with pytest.raises(AuthError) as info:
            client_as(name).start_trial("trial-1")
        assert info.value.code == "FORBIDDEN_ROLE"
        assert info.value.http_status == 403
    with pytest.raises(AuthError):
        client_as("auditor").halt_trial("trial-1", "auditors may not halt")
    assert client_as("auditor").trial("trial-1")["state"] == "ENROLLING"  # nothing changed


def test_admin_cannot_use_silo_endpoints(
    server: Any, client_as: Any, consortium: Any, contract_net: Any
) -> None:
    trial_on_ledger(contract_net)
    key = consortium.identity("hospital1").encryption_public_key_pem()
    with pytest.raises(AuthError) as info:
        client_as("admin").request_enrolment("trial-1", key)
    assert info.value.code == "FORBIDDEN_ROLE"


def test_hospital_cannot_read_or_act_for_another_hospital(
    server: Any, client_as: Any, consortium: Any, contract_net: Any
) -> None:
    trial_on_ledger(contract_net)
    hospital1, hospital2 = client_as("hospital1"), client_as("hospital2")
    hospital2.request_enrolment(
        "trial-1", consortium.identity("hospital2").encryption_public_key_pem()
    )
    assert hospital2.enrolment_request("trial-1")["status"] == "pending"
    with pytest.raises(AuthError) as info:
        hospital1.enrolment_request("trial-1", "Hospital2MSP")
    assert info.value.code == "WRONG_ORGANISATION"
    assert info.value.http_status == 403
    # Acting for another organisation by naming it in the body.
    key = consortium.identity("hospital1").encryption_public_key_pem().decode()
    with pytest.raises(AuthError) as info:
        hospital1.request(
            "POST",
            "/silo/trials/trial-1/enrolment-requests",
            json={"encryption_public_key": key, "msp_id": "Hospital2MSP"},
        )
    assert info.value.code == "WRONG_ORGANISATION"
    assert "Hospital2MSP" in info.value.message
    assert hospital2.enrolment_request("trial-1")["encryption_public_key"] != key


def test_role_not_honoured_from_the_wrong_kind_of_organisation(
    server: Any, consortium: Any
) -> None:
    """A hospital's CA minting an 'admin' certificate does not make an admin."""
    ca = consortium.certificate_authority("Hospital1MSP")
    cert, key = ca.issue("rogue-admin", ["admin"])
    assert key is not None
    rogue = Identity(
        name="rogue-admin",
        msp_id="Hospital1MSP",
        role="admin",
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        private_key=key,
    )
    target = "/api/v1/admin/trials/trial-1/start"
    response = httpx.post(server.base_url + target, headers=signed(rogue, "POST", target))
    assert response.status_code == 403
    assert error(response)["code"] == "FORBIDDEN_ROLE"


# -- sizes and malformed input ------------------------------------------------------------------


def test_oversized_body_gets_413_before_parsing(server: Any, consortium: Any) -> None:
    admin = consortium.identity("admin")
    target = "/api/v1/admin/trials"
    body = b'{"trial_id": "' + b"x" * (1 << 20) + b'"}'
    response = httpx.post(
        server.base_url + target, content=body, headers=signed(admin, "POST", target, body)
    )
    assert response.status_code == 413
    body_json = error(response)
    assert body_json["code"] == "PAYLOAD_TOO_LARGE"
    assert body_json["detail"]["max_body_bytes"] == 1 << 20

    def chunks() -> Any:  # no Content-Length: counted while reading
        for _ in range(20):
            yield b"y" * 65536

    headers = signed(admin, "POST", target, b"")
    response = httpx.post(server.base_url + target, content=chunks(), headers=headers)
    assert response.status_code == 413
    assert error(response)["code"] == "PAYLOAD_TOO_LARGE"


def test_malformed_json_gets_422(server: Any, consortium: Any) -> None:
    admin = consortium.identity("admin")
    target = "/api/v1/admin/trials/trial-1/halt"
    body = b'{"reason": "oops",'
    response = httpx.post(
        server.base_url + target, content=body, headers=signed(admin, "POST", target, body)
    )
    assert response.status_code == 422
    body_json = error(response)
    assert body_json["code"] == "INVALID_REQUEST"
    assert "JSON" in body_json["message"]


def test_unknown_and_bad_fields_get_422_naming_them(server: Any, client_as: Any) -> None:
    admin = client_as("admin")
    with pytest.raises(SchemaError) as info:
        admin.request(
            "POST", "/admin/trials/trial-1/rollback", json={"to_round": 0, "colour": "red"}
        )
    assert info.value.code == "INVALID_REQUEST"
    assert info.value.detail["field"] == "colour"
    assert "colour" in info.value.message and "unknown field" in info.value.message
    with pytest.raises(SchemaError) as info:
        admin.request("POST", "/admin/trials/trial-1/rollback", json={"to_round": -3})
    assert info.value.detail["field"] == "to_round"
    assert "-3" in info.value.message and "greater than or equal to 0" in info.value.message
    with pytest.raises(SchemaError) as info:
        admin.create_trial(
            {
                "trial_id": "bad id!",
                "task": "t",
                "data_schema": {},
                "model": {"name": "mlp"},
                "rounds": 1,
                "min_silos": 2,
            }
        )
    assert info.value.detail["field"] == "trial_id"
    with pytest.raises(SchemaError) as info:
        admin.events("trial-1", since_block=-1)
    assert info.value.detail["field"] == "since_block"


def test_unknown_trial_gets_404_and_unknown_route_gets_json_404(
    server: Any, client_as: Any
) -> None:
    auditor = client_as("auditor")
    with pytest.raises(ContractError) as info:
        auditor.trial("no-such-trial")
    assert info.value.code == "NOT_FOUND"
    assert info.value.http_status == 404
    assert "no-such-trial" in info.value.message
    with pytest.raises(ContractError) as info:
        auditor.request("GET", "/no/such/endpoint")
    assert info.value.http_status == 404


def test_every_request_is_in_the_audit_log(server: Any, client_as: Any) -> None:
    auditor = client_as("auditor")
    auditor.whoami()
    httpx.get(server.base_url + WHOAMI)
    entries = auditor.audit_log(limit=10)
    assert entries[0]["path"] == "/api/v1/audit-log" or entries[0]["path"] == WHOAMI
    statuses = {(e["path"], e["status"], e["msp_id"]) for e in entries}
    assert (WHOAMI, 200, "AuditorMSP") in statuses
    assert (WHOAMI, 401, None) in statuses
    with pytest.raises(AuthError) as info:
        client_as("hospital1").audit_log()
    assert info.value.code == "FORBIDDEN_ROLE"


# -- the signing module on its own --------------------------------------------------------------


def test_canonical_request_and_roles(consortium: Any) -> None:
    assert canonical_request("get", "/a?b=1", 5, "ab", b"") == (
        b"GET\n/a?b=1\n5\nab\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    admin = consortium.identity("admin")
    assert bcfl_role(admin.cert_pem) == "admin"
    assert bcfl_role(consortium.identity("hospital1").cert_pem) == "silo"
    now = int(time.time())
    headers = sign_request(admin, "POST", "/x", b"{}", timestamp=now, nonce="ab" * 16)
    principal = authenticate(headers, "POST", "/x", b"{}", consortium, now=now + 100)
    assert (principal.msp_id, principal.role, principal.timestamp) == (
        "CoordinatorMSP",
        "admin",
        now,
    )
    with pytest.raises(IdentityError) as info:
        authenticate(headers, "POST", "/x", b"{}", consortium, now=now + 1000)
    assert info.value.code == "STALE_REQUEST"


def test_client_errors_are_bcfl_errors(server: Any, consortium: Any) -> None:
    client = CoordinatorClient(server.base_url, consortium.identity("auditor"))
    with pytest.raises(ContractError) as info:
        client.round("no-such-trial", 1)
    assert info.value.to_dict()["code"] == "NOT_FOUND"
    client.close()
    unreachable = CoordinatorClient("http://127.0.0.1:9", consortium.identity("auditor"), timeout=2)
    with pytest.raises(Exception) as info2:
        unreachable.whoami()
    assert info2.value.code == "COORDINATOR_UNAVAILABLE"  # type: ignore[attr-defined]
    assert json.dumps(info2.value.to_dict())  # type: ignore[attr-defined]
