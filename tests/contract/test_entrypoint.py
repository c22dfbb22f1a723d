"""The contract's entry point as every member sees it through a ledger: unknown functions, sizes, bootstrap, roles."""

from __future__ import annotations

import pytest
from contract_flow import MEMBERS, refused

from chaincode.contract import MAX_ARGS_BYTES


def test_unknown_function(contract_net):
    error = refused("UNKNOWN_FUNCTION", contract_net.client("admin").submit, "drop_all_tables", {})
    assert "create_trial" in error.message  # the message lists what exists


def test_oversized_arguments_are_refused(flow):
    args = flow.trial_args(data_schema={"padding": "x" * MAX_ARGS_BYTES})
    error = refused("ARGS_TOO_LARGE", flow.admin.submit, "create_trial", args)
    assert error.detail["size"] > MAX_ARGS_BYTES
    refused("NOT_FOUND", flow.admin.evaluate, "get_trial", {"trial_id": flow.trial_id})


def test_init_consortium_runs_once(contract_net):
    organisations = [{"msp_id": "CoordinatorMSP", "kind": "operator"}]
    refused(
        "ALREADY_EXISTS",
        contract_net.client("admin").submit,
        "init_consortium",
        {"organisations": organisations},
    )
    refused(
        "FORBIDDEN_ROLE",
        contract_net.client("hospital1").submit,
        "init_consortium",
        {"organisations": organisations},
    )


def test_every_member_can_query_and_sees_its_role(contract_net):
    expected_roles = {"admin": "admin", "coordinator": "coordinator", "auditor": "auditor"}
    consortium = contract_net.client("auditor").evaluate("get_consortium", {})
    kinds = {m: o["kind"] for m, o in consortium["organisations"].items()}
    for name in MEMBERS:
        me = contract_net.client(name).evaluate("whoami", {})
        assert me["member"] is True and me["name"] == name
        assert me["role"] == expected_roles.get(name, "silo")
        assert kinds[me["msp_id"]] == {
            "admin": "operator",
            "coordinator": "operator",
            "auditor": "auditor",
        }.get(name, "hospital")
        assert contract_net.client(name).evaluate("list_trials", {}) == []


def test_a_hospital_ca_cannot_mint_itself_an_admin(contract_net):
    """A certificate with OU=admin issued by a hospital's own CA gets nothing but a refusal."""
    consortium = getattr(contract_net, "consortium", None)
    if consortium is None or not hasattr(contract_net, "url"):
        pytest.skip(
            "this network fixture cannot mint identities; test_invoke covers the rule at the entry point"
        )
    from cryptography.hazmat.primitives import serialization

    from consortium.identity import Identity
    from consortium.ledger import open_ledger

    msp_id = contract_net.client("hospital1").evaluate("whoami", {})["msp_id"]
    cert, key = consortium.certificate_authority(msp_id).issue("rogue-admin", ["admin"])
    rogue = Identity(
        "rogue-admin", msp_id, "admin", cert.public_bytes(serialization.Encoding.PEM), key
    )
    ledger = open_ledger(contract_net.url, rogue, clock=contract_net.clock)
    try:
        me = ledger.evaluate("whoami", {})
        assert me["role"] == "admin" and me["member"] is False
        trial = {
            "trial_id": "t",
            "task": "x",
            "data_schema": {},
            "model": {"name": "m"},
            "rounds": 1,
            "min_silos": 2,
            "initial_model": {"content_id": "c", "sha256": "0" * 64},
        }
        error = refused("FORBIDDEN_ROLE", ledger.submit, "create_trial", trial)
        assert "hospital" in error.message
        refused("FORBIDDEN_ROLE", ledger.evaluate, "list_trials", {})
    finally:
        ledger.close()
