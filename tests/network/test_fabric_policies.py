"""The channel's policies as the network writes them: a majority of the organisations endorses, enforced at commit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc

from consortium.identity import Consortium
from consortium.ledger import open_ledger
from consortium.ledger.base import TxResult
from consortium.ledger.fabric import FabricLedger, TransactionInvalid, make_proposal
from devnet.fabric_material import majority_endorsement_policy

pytestmark = pytest.mark.fabric


def test_the_endorsement_policy_is_a_majority_of_every_organisation() -> None:
    def orgs(*names: str) -> dict[str, Any]:
        return {"organisations": [{"msp_id": n, "peer": n != "AuditorMSP"} for n in names]}

    # organisations without a peer count, as in the channel's ImplicitMeta "MAJORITY Endorsement"
    six = orgs(
        "CoordinatorMSP",
        "AuditorMSP",
        "Hospital1MSP",
        "Hospital2MSP",
        "Hospital3MSP",
        "Hospital4MSP",
    )
    assert majority_endorsement_policy(six) == (
        "OutOf(4, 'CoordinatorMSP.peer', 'AuditorMSP.peer', 'Hospital1MSP.peer', 'Hospital2MSP.peer', "
        "'Hospital3MSP.peer', 'Hospital4MSP.peer')"
    )
    assert majority_endorsement_policy(orgs("A", "B", "C", "D", "E")).startswith("OutOf(3, ")
    assert majority_endorsement_policy(orgs("A", "B")).startswith("OutOf(2, ")
    assert majority_endorsement_policy(orgs("A")) == "OutOf(1, 'A.peer')"


def _trial(trial_id: str) -> dict[str, Any]:
    from contract_flow import Flow

    flow = Flow.__new__(Flow)
    flow.trial_id = trial_id
    return Flow.trial_args(flow)


def _submit_endorsed_by(
    ledger: FabricLedger, function: str, args: dict[str, Any], orgs: list[str]
) -> TxResult:
    """A submission whose endorsers the client names (the Gateway then endorses on exactly those)."""
    proposal = make_proposal(
        ledger.identity,
        ledger.target.channel,
        ledger.target.chaincode,
        ledger._args(function, args),
    )
    request = gateway_pb2.EndorseRequest(
        transaction_id=proposal.tx_id,
        channel_id=ledger.target.channel,
        proposed_transaction=proposal.signed,
        endorsing_organizations=orgs,
    )
    stub = gateway_pb2_grpc.GatewayStub(ledger._channel(ledger.target.peers[0].address))
    # A peer restarted by an earlier fault test rejoins gossip (which the Gateway's discovery uses)
    # after a few alive intervals; until then naming its organisation finds no endorser.
    deadline = time.monotonic() + 90
    while True:
        try:
            prepared = stub.Endorse(request, timeout=ledger.timeout).prepared_transaction
            break
        except grpc.RpcError as exc:
            if (
                exc.code() != grpc.StatusCode.UNAVAILABLE
                or "endorsing peers" not in (exc.details() or "")
                or time.monotonic() > deadline
            ):
                raise
            time.sleep(1.0)
    return ledger.submit_envelope(proposal.tx_id, ledger.sign_envelope(prepared), function)


def test_fewer_endorsements_than_a_majority_are_invalidated(
    fabric_contract_factory: Any, consortium_template: Path
) -> None:
    consortium = Consortium.load(consortium_template)
    admin = open_ledger(fabric_contract_factory(), consortium.identity("admin"))
    try:
        three = [
            "CoordinatorMSP",
            "Hospital1MSP",
            "Hospital2MSP",
        ]  # of 6 organisations: not a majority
        with pytest.raises(TransactionInvalid) as info:
            _submit_endorsed_by(admin, "create_trial", _trial("minority"), three)
        assert info.value.code == "ENDORSEMENT_POLICY_FAILURE"
        assert admin.evaluate("list_trials", {}) == []
        _submit_endorsed_by(admin, "create_trial", _trial("majority"), [*three, "Hospital3MSP"])
        assert len(admin.evaluate("list_trials", {})) == 1
    finally:
        admin.close()
