"""The local Fabric network and the Gateway client: bring-up, faults, replays, impersonation, verify."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bcfl_common.errors import ContractError, IdentityError, LedgerError
from consortium.identity import Consortium, Identity
from consortium.ledger import open_ledger
from consortium.ledger.fabric import make_proposal
from devnet.supervisor import log_tail

pytestmark = pytest.mark.fabric


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_is_idempotent_and_down_leaves_no_process(tmp_path: Path) -> None:
    from devnet.fabric_material import fabric_unavailable_reason
    from devnet.fabric_network import FabricNetwork

    reason = fabric_unavailable_reason()
    if reason:
        pytest.skip(reason)

    network = FabricNetwork(tmp_path / "net", hospitals=1)
    try:
        network.up()
        first = network.status()
        assert all(node["pid"] and node["listening"] for node in first["nodes"])
        assert {n["kind"] for n in first["nodes"]} == {"orderer", "peer", "chaincode"}
        network.up()  # again: nothing restarts
        assert [n["pid"] for n in network.status()["nodes"]] == [n["pid"] for n in first["nodes"]]
        assert (tmp_path / "net" / "logs" / "peer0.hospital1.log").stat().st_size > 0
    finally:
        network.down()
    assert not any(_alive(n["pid"]) for n in first["nodes"])
    assert not (tmp_path / "net").exists()


def test_status_names_every_node_and_the_ledger_url(fabric_network) -> None:
    status = fabric_network.status()
    peers = sorted(n["msp_id"] for n in status["nodes"] if n["kind"] == "peer")
    assert peers == [
        "CoordinatorMSP",
        "Hospital1MSP",
        "Hospital2MSP",
        "Hospital3MSP",
        "Hospital4MSP",
    ]
    down = [n for n in status["nodes"] if not (n["pid"] and n["listening"])]
    assert not down, (down, [log_tail(fabric_network.layout.log_path(n["name"]), 20) for n in down])
    assert status["ledger_url"].startswith("fabric://")


@pytest.fixture
def url(fabric_contract_factory) -> str:
    return fabric_contract_factory()


def test_submit_evaluate_events_blocks_and_verify(url: str, consortium_template: Path) -> None:
    consortium = Consortium.load(consortium_template)
    auditor = open_ledger(url, consortium.identity("auditor"))
    hospital = open_ledger(url, consortium.identity("hospital2"))
    try:
        assert hospital.evaluate("whoami", {})["msp_id"] == "Hospital2MSP"
        assert auditor.evaluate("get_consortium", {})  # the bootstrap is committed
        events = list(auditor.events())
        assert events and events[-1].name
        # the channel holds the session's other chaincodes too: their events are not this one's
        assert [e.name for e in events].count("ConsortiumInitialised") == 1
        report = auditor.verify()
        assert report.ok, report.problems
        assert report.blocks == auditor.height() and report.transactions > 0
        blocks = list(auditor.blocks())
        assert all(b.previous_hash == a.hash for a, b in zip(blocks, blocks[1:], strict=False))
    finally:
        auditor.close()
        hospital.close()


def test_contract_errors_come_back_with_their_code(url: str, consortium_template: Path) -> None:
    consortium = Consortium.load(consortium_template)
    hospital = open_ledger(url, consortium.identity("hospital1"))
    try:
        with pytest.raises(ContractError) as info:
            hospital.submit("create_trial", {"trial_id": "t"})  # a silo may not create a trial
        assert info.value.code and info.value.code != "CONTRACT"
        with pytest.raises(ContractError):
            hospital.evaluate("no_such_function", {})
    finally:
        hospital.close()


def test_a_member_claiming_another_organisation_is_refused(
    url: str, consortium_template: Path
) -> None:
    consortium = Consortium.load(consortium_template)
    real = consortium.identity("hospital1")
    impostor = Identity(
        name="impostor",
        msp_id="Hospital2MSP",
        role="silo",
        cert_pem=real.cert_pem,
        private_key=real.private_key,
    )
    ledger = open_ledger(url, impostor)
    try:
        with pytest.raises(IdentityError):
            ledger.evaluate("whoami", {})
        with pytest.raises(IdentityError):
            ledger.submit("commit_update", {"trial_id": "t", "round": 1, "commitment": "00"})
    finally:
        ledger.close()


def test_a_replayed_transaction_is_refused(url: str, consortium_template: Path) -> None:
    consortium = Consortium.load(consortium_template)
    admin = open_ledger(url, consortium.identity("admin"))
    try:
        proposal = make_proposal(
            admin.identity,
            admin.target.channel,
            admin.target.chaincode,
            admin._args("create_trial", _trial("replayed")),
        )
        envelope = admin.sign_envelope(admin.endorse(proposal))
        first = admin.submit_envelope(proposal.tx_id, envelope, "create_trial")
        # the same signed proposal again: the peers refuse to endorse a known transaction id
        with pytest.raises(LedgerError) as info:
            admin.endorse(proposal)
        assert info.value.code == "DUPLICATE_TXID"
        # the same signed envelope again: ordered, but invalidated as a duplicate, with no effect
        admin.submit_envelope(proposal.tx_id, envelope, "create_trial")
        deadline = time.monotonic() + 10
        while True:
            txs = [
                t
                for b in admin.blocks(first.block_number)
                for t in b.transactions
                if t["proposal"]["tx_id"] == proposal.tx_id
            ]
            if len(txs) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [t["validation_code"] for t in txs] == ["VALID", "DUPLICATE_TXID"]
        assert len(admin.evaluate("list_trials", {})) == 1
    finally:
        admin.close()


@pytest.mark.parametrize("hours", [-49, 49])
def test_a_proposal_dated_outside_the_peers_time_window_is_refused(
    url: str, consortium_template: Path, hours: int
) -> None:
    """A client sets its proposal's time: a hospital backdating a commitment (or a coordinator
    post-dating a phase close) past the peers' window (48 h on the test network, 15 min by
    default) is refused by the endorsing peers; within it, ``clock_tolerance_seconds`` decides."""
    consortium = Consortium.load(consortium_template)
    admin = open_ledger(url, consortium.identity("admin"))
    trial_id = f"dated{'-back' if hours < 0 else '-ahead'}"
    try:
        proposal = make_proposal(
            admin.identity,
            admin.target.channel,
            admin.target.chaincode,
            admin._args("create_trial", _trial(trial_id)),
            now=time.time() + hours * 3600,
        )
        with pytest.raises(LedgerError) as info:
            admin.endorse(proposal)
        assert info.value.code == "ENDORSEMENT_FAILED"
        assert "incorrect timestamp" in info.value.message
        assert "peer.authentication.timewindow 48h" in info.value.message
        assert trial_id not in [t["trial_id"] for t in admin.evaluate("list_trials", {})]
    finally:
        admin.close()


def _trial(trial_id: str) -> dict:
    from contract_flow import Flow

    flow = Flow.__new__(Flow)
    flow.trial_id = trial_id
    return Flow.trial_args(flow)


def test_a_stopped_hospital_peer_does_not_stop_the_trial_and_catches_up(
    fabric_network, url: str, consortium_template: Path
) -> None:
    consortium = Consortium.load(consortium_template)
    admin = open_ledger(url, consortium.identity("admin"))
    hospital1 = open_ledger(url, consortium.identity("hospital1"))  # its own peer is its gateway
    try:
        admin.submit("create_trial", _trial("fault"))
        fabric_network.stop_node("peer0.hospital1")
        # the majority (4 of the 6 organisations) still endorses, through other gateways
        admin.submit("open_enrolment", {"trial_id": "fault"})
        assert hospital1.evaluate("get_trial", {"trial_id": "fault"})["trial_id"] == "fault"
        height = admin.height()
        fabric_network.start_node("peer0.hospital1")
        own_peer = open_ledger(
            fabric_network.ledger_url("Hospital1MSP").replace(
                "/bcfl/bcfl?", f"/bcfl/{admin.target.chaincode}?"
            ),
            consortium.identity("hospital1"),
        )
        try:
            deadline = time.monotonic() + 60
            while own_peer.height() < height and time.monotonic() < deadline:
                time.sleep(0.5)
            assert own_peer.height() >= height
            assert own_peer.evaluate("get_trial", {"trial_id": "fault"})["state"] == "ENROLLING"
        finally:
            own_peer.close()
    finally:
        if fabric_network.pid("peer0.hospital1") is None:
            fabric_network.start_node("peer0.hospital1")
        admin.close()
        hospital1.close()


def test_three_raft_orderers(tmp_path: Path) -> None:
    from devnet.fabric_network import FabricNetwork

    network = FabricNetwork(tmp_path / "net", hospitals=1, orderers=3)
    try:
        network.up()
        assert (
            sum(n["kind"] == "orderer" and bool(n["pid"]) for n in network.status()["nodes"]) == 3
        )
    finally:
        network.down()
