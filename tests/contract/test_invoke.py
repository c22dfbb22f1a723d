"""invoke() itself, over an in-memory Fabric-semantics state: raw bytes, forged certificates, one event per tx, determinism, typed records.

These are the checks a ledger client cannot make (it only sends JSON objects, signed by real
members). The fake host below is deliberately tiny: committed reads, buffered writes applied only
on success, key history, and a transcript of every transaction for replay.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from contract_flow import HOSPITALS, refused
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typing_extensions import get_type_hints, is_typeddict

import chaincode.args
import chaincode.contract
from bcfl_common import records
from bcfl_common.canonical import canonical_json
from bcfl_common.errors import ContractError
from chaincode.contract import CODES, MAX_ARGS_BYTES, READ_ONLY_FUNCTIONS, invoke
from chaincode.contract.store import DEFAULT_CLOCK_TOLERANCE_SECONDS
from chaincode.state import Creator, HistoryEntry, create_composite_key, split_composite_key

ORGANISATIONS = [
    {"msp_id": "CoordinatorMSP", "kind": "operator"},
    {"msp_id": "AuditorMSP", "kind": "auditor"},
    *({"msp_id": f"Hospital{i}MSP", "kind": "hospital"} for i in range(1, 5)),
]
PEOPLE = {
    "admin": ("CoordinatorMSP", ["admin"]),
    "coordinator": ("CoordinatorMSP", ["client", "coordinator"]),
    "auditor": ("AuditorMSP", ["client", "auditor"]),
    **{f"hospital{i}": (f"Hospital{i}MSP", ["client", "silo"]) for i in range(1, 5)},
}


def certificate(name: str, ous: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]
        + [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous]
        + [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class World:
    state: dict[str, bytes] = field(default_factory=dict)
    history: dict[str, list[HistoryEntry]] = field(default_factory=dict)
    transcript: list[tuple[Creator, int, str, bytes]] = field(default_factory=list)
    outcomes: list[Any] = field(default_factory=list)


class FakeState:
    """ChaincodeState with Fabric semantics over a World."""

    def __init__(self, world: World, creator: Creator, tx_id: str, timestamp: int):
        self.world, self.creator, self.tx_id, self.timestamp = world, creator, tx_id, timestamp
        self.writes: dict[str, bytes | None] = {}
        self.events: list[tuple[str, bytes]] = []

    def get_state(self, key: str) -> bytes | None:
        return self.world.state.get(key)

    def put_state(self, key: str, value: bytes) -> None:
        self.writes[key] = value

    def del_state(self, key: str) -> None:
        self.writes[key] = None

    def get_state_by_range(self, start_key: str, end_key: str) -> Iterator[tuple[str, bytes]]:
        return iter(
            [
                (k, v)
                for k, v in sorted(self.world.state.items())
                if k >= start_key and (not end_key or k < end_key)
            ]
        )

    def get_state_by_partial_composite_key(
        self, object_type: str, attributes: list[str]
    ) -> Iterator[tuple[str, bytes]]:
        prefix = create_composite_key(object_type, attributes)
        return iter([(k, v) for k, v in sorted(self.world.state.items()) if k.startswith(prefix)])

    def get_history_for_key(self, key: str) -> Iterator[HistoryEntry]:
        return iter(list(reversed(self.world.history.get(key, []))))

    def get_creator(self) -> Creator:
        return self.creator

    def get_tx_id(self) -> str:
        return self.tx_id

    def get_tx_timestamp(self) -> int:
        return self.timestamp

    def set_event(self, name: str, payload: bytes) -> None:
        self.events.append((name, payload))


class FakeClient:
    def __init__(self, net: FakeNet, creator: Creator):
        self.net, self.creator = net, creator

    def _run(self, function: str, args: bytes, *, commit: bool) -> tuple[bytes, FakeState]:
        net = self.net
        net.counter += 1
        state = FakeState(net.world, self.creator, f"tx{net.counter:06d}", net.now)
        if commit:
            net.world.transcript.append((self.creator, net.now, function, args))
        try:
            result = invoke(state, function, args)
        except ContractError as exc:
            if commit:
                net.world.outcomes.append(("error", exc.code))
            raise
        if commit:
            net.world.outcomes.append(("ok", result, sorted(state.writes.items()), state.events))
            for key, value in state.writes.items():
                assert value is not None, "the contract never deletes"
                net.world.state[key] = value
                entry = HistoryEntry(state.tx_id, state.timestamp, value, False)
                net.world.history.setdefault(key, []).append(entry)
        return result, state

    def submit(self, function: str, args: dict[str, Any]) -> Any:
        result, state = self._run(function, canonical_json(args), commit=True)
        assert len(state.events) == 1, f"{function} emitted {state.events}"
        self.net.events.append(state.events[0][0])
        return json.loads(result)

    def evaluate(self, function: str, args: dict[str, Any]) -> Any:
        result, state = self._run(function, canonical_json(args), commit=False)
        assert function in READ_ONLY_FUNCTIONS
        assert state.writes == {} and state.events == []
        return json.loads(result)


class FakeNet:
    """The same interface as the suite's ``contract_net``: client(name), advance_time(seconds)."""

    def __init__(self, bootstrap: bool = True):
        self.world = World()
        self.now = 1_750_000_000
        self.counter = 0
        self.events: list[str] = []
        self.creators = {
            name: Creator(msp, certificate(name, ous)) for name, (msp, ous) in PEOPLE.items()
        }
        if bootstrap:
            self.client("admin").submit("init_consortium", {"organisations": ORGANISATIONS})

    def client(self, name: str) -> FakeClient:
        return FakeClient(self, self.creators[name])

    def as_(self, msp_id: str, ous: list[str], name: str = "someone") -> FakeClient:
        return FakeClient(self, Creator(msp_id, certificate(name, ous)))

    def advance_time(self, seconds: int) -> None:
        self.now += int(seconds)

    def raw(self, name: str, function: str, args: bytes) -> bytes:
        return invoke(FakeState(self.world, self.creators[name], "raw", self.now), function, args)


@pytest.fixture
def net() -> FakeNet:
    return FakeNet()


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",  # not UTF-8
        b"{not json}",
        b"[1, 2]",  # JSON, but not an object
        b'"a string"',
        b'{"trial_id": "a", "trial_id": "b"}',  # repeated key: two parsers could disagree
        b'{"x": NaN}',
        b'{"x": 1e999}',
        b'{"x": "\\ud800"}',  # lone surrogate: not encodable as UTF-8
        b'{"x": ' + b"[" * 100 + b"]" * 100 + b"}",
        b"",
    ],
)
def test_malformed_args(net, raw):
    with pytest.raises(ContractError) as info:
        net.raw("admin", "get_trial", raw)
    assert info.value.code == "MALFORMED_ARGS"


def test_args_size_limit_is_exact(net):
    padding = MAX_ARGS_BYTES - len(b'{"p":""}')
    at_limit = b'{"p":"' + b"x" * padding + b'"}'
    assert len(at_limit) == MAX_ARGS_BYTES
    with pytest.raises(ContractError) as info:
        net.raw("admin", "whoami", at_limit)
    assert (
        info.value.code == "INVALID_ARGUMENT"
    )  # parsed: the field is unknown, but the size is fine
    with pytest.raises(ContractError) as info:
        net.raw("admin", "whoami", at_limit[:-2] + b'x"}')
    assert info.value.code == "ARGS_TOO_LARGE"


def test_unknown_function_is_refused_before_parsing(net):
    with pytest.raises(ContractError) as info:
        net.raw("admin", "nope", b"\xff")
    assert info.value.code == "UNKNOWN_FUNCTION"


def test_a_hospital_claiming_the_admin_role_is_refused(net):
    rogue = net.as_("Hospital1MSP", ["admin"], "rogue")
    assert rogue.evaluate("whoami", {})["member"] is False
    error = refused("FORBIDDEN_ROLE", rogue.submit, "create_trial", {"trial_id": "t"})
    assert "hospital" in error.message
    refused("FORBIDDEN_ROLE", rogue.evaluate, "list_trials", {})
    # Roles an operator or auditor CA mints are bounded the same way.
    refused(
        "FORBIDDEN_ROLE", net.as_("CoordinatorMSP", ["client", "silo"]).submit, "commit_update", {}
    )
    refused(
        "FORBIDDEN_ROLE", net.as_("AuditorMSP", ["client", "coordinator"]).submit, "open_round", {}
    )
    refused(
        "FORBIDDEN_ROLE", net.as_("Hospital2MSP", ["client", "auditor"]).evaluate, "list_trials", {}
    )


def test_fabric_admin_node_ou_next_to_a_bcfl_role_counts_as_that_role(net):
    me = net.as_("Hospital1MSP", ["admin", "silo"]).evaluate("whoami", {})
    assert me["role"] == "silo" and me["member"] is True


@pytest.mark.parametrize("ous", [[], ["client"], ["client", "silo", "coordinator"]])
def test_certificates_without_exactly_one_role_are_refused(net, ous):
    refused("INVALID_IDENTITY", net.as_("Hospital1MSP", ous).evaluate, "list_trials", {})


def test_garbage_certificate_and_unknown_msp(net):
    garbage = FakeClient(
        net,
        Creator("Hospital1MSP", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    )
    refused("INVALID_IDENTITY", garbage.evaluate, "list_trials", {})
    refused("NOT_MEMBER", net.as_("Hospital9MSP", ["client", "silo"]).evaluate, "list_trials", {})


def test_bootstrap_rules():
    net = FakeNet(bootstrap=False)
    refused("NOT_INITIALISED", net.client("admin").evaluate, "get_consortium", {})
    refused("NOT_INITIALISED", net.client("admin").submit, "create_trial", {})
    assert net.client("hospital1").evaluate("whoami", {})["organisation_kind"] is None
    # A hospital's CA minting an admin cannot bootstrap the consortium, listed as a hospital or not at all.
    rogue = net.as_("Hospital1MSP", ["admin"])
    refused("FORBIDDEN_ROLE", rogue.submit, "init_consortium", {"organisations": ORGANISATIONS})
    refused("FORBIDDEN_ROLE", rogue.submit, "init_consortium", {"organisations": ORGANISATIONS[:1]})
    refused(
        "FORBIDDEN_ROLE",
        net.client("coordinator").submit,
        "init_consortium",
        {"organisations": ORGANISATIONS},
    )
    duplicate = [*ORGANISATIONS, {"msp_id": "AuditorMSP", "kind": "operator"}]
    refused(
        "INVALID_ARGUMENT",
        net.client("admin").submit,
        "init_consortium",
        {"organisations": duplicate},
    )
    bad_kind = [{"msp_id": "CoordinatorMSP", "kind": "overlord"}]
    refused(
        "INVALID_ARGUMENT",
        net.client("admin").submit,
        "init_consortium",
        {"organisations": bad_kind},
    )
    record = net.client("admin").submit("init_consortium", {"organisations": ORGANISATIONS})
    assert sorted(record["organisations"]) == sorted(o["msp_id"] for o in ORGANISATIONS)
    refused(
        "ALREADY_EXISTS",
        net.client("admin").submit,
        "init_consortium",
        {"organisations": ORGANISATIONS},
    )


def run_protocol(net: FakeNet, make_flow: Any) -> Any:
    """Every function once or more: two rounds with a halted attempt, a rollback, settlement and
    completion (DP off: re-run rounds need more reveals than a schedule allows), then a trial
    with DP on whose round has an update copied and excluded."""
    flow = make_flow(net)
    flow.running(hospitals=HOSPITALS, rounds=2, dp={"enabled": False, "reason": "re-runs"})
    flow.full_round()
    flow.coordinator.submit(
        "record_settlement",
        {"trial_id": flow.trial_id, "round": 1, "chain_id": 1, "tx_hash": "0x" + "ab" * 32},
    )
    flow.to_attest()
    flow.attest("hospital1")
    flow.attest("hospital2", "0" * 64)  # a dissent: the round goes on
    flow.attest("hospital3", "1" * 64)  # no hash can reach 3 of 4 any more: halts round 2
    flow.full_round()
    flow.admin.submit("rollback", {"trial_id": flow.trial_id, "to_round": 1})
    flow.open_round()
    flow.admin.submit("abort_round", flow.at(reason="test"))
    flow.full_round()
    flow.admin.submit(
        "remove_hospital", {"trial_id": flow.trial_id, "msp_id": flow.msp["hospital4"]}
    )
    flow.admin.submit("complete_trial", {"trial_id": flow.trial_id})
    paused = make_flow(net, "trial-paused")
    paused.running(rounds=1, dp={"enabled": False, "reason": "halted and resumed"})
    paused.admin.submit("halt_trial", {"trial_id": paused.trial_id, "reason": "ethics review"})
    paused.admin.submit("resume_trial", {"trial_id": paused.trial_id, "reason": "approved"})
    # an attempt aborted after the commitments: hospital3's bytes went out, it discloses them
    paused.open_round()
    late = {n: paused.commit_update(n) for n in paused.members}
    paused.close("close_update_commits")
    paused.admin.submit("abort_round", paused.at(reason="store outage"))
    u3 = late["hospital3"]
    paused.client("hospital3").submit(
        "disclose_update",
        paused.at(
            attempt=1,
            content_id=u3.content_id,
            sha256=u3.sha256,
            sample_weight=u3.sample_weight,
            salt=u3.salt,
        ),
    )
    paused.full_round()
    dp = make_flow(net, "trial-dp")
    dp.running(hospitals=HOSPITALS, rounds=1)
    copied_round(dp)
    dp.vote(dp.scores(dp.members, ["hospital1", "hospital2", "hospital3"]))
    dp.aggregate()
    for name in HOSPITALS[:3]:
        dp.attest(name)
    for function in sorted(READ_ONLY_FUNCTIONS):
        args: dict[str, Any] = (
            {}
            if function in ("whoami", "get_consortium", "list_trials", "get_datasets")
            else {"trial_id": dp.trial_id if function == "get_dp_schedule" else flow.trial_id}
        )
        if function in ("get_submissions", "get_votes", "get_attestations", "get_acceptance"):
            args["round"] = 1
        if function == "get_dataset_budget":
            args = {"msp_id": flow.msp["hospital1"], "dataset_id": dp.dataset_id()}
        flow.client("auditor").evaluate(function, args)
    return flow


def copied_round(flow: Any, *, gap: int = DEFAULT_CLOCK_TOLERANCE_SECONDS + 1) -> dict[str, Any]:
    """Open a round in which hospital4 reveals hospital1's update, committed ``gap`` seconds later
    (by default just past the trial's clock tolerance); returns the round after
    close_update_reveals."""
    flow.open_round()
    victim = flow.commit_update("hospital1")
    if gap:
        flow.net.advance_time(gap)
    copied = replace(victim, content_id="cid-copy", salt="ee" * 32)
    flow.commit_update("hospital4", copied)
    others = {n: flow.commit_update(n) for n in ("hospital2", "hospital3")}
    flow.close("close_update_commits")
    flow.reveal_update("hospital4", copied)
    flow.reveal_update("hospital1", victim)
    for name, u in others.items():
        flow.reveal_update(name, u)
    return flow.close("close_update_reveals")


def test_every_transaction_emits_one_event_and_queries_write_nothing(make_flow):
    net = FakeNet()
    run_protocol(net, make_flow)  # FakeClient asserts one event per submit and no writes per query
    assert set(net.events) >= {
        "ConsortiumInitialised",
        "TrialCreated",
        "EnrolmentOpened",
        "HospitalEnrolled",
        "TrialStarted",
        "TrialKeysRecorded",
        "RoundOpened",
        "UpdateCommitted",
        "UpdateCommitsClosed",
        "UpdateRevealed",
        "UpdateDisclosed",
        "UpdateRevealsClosed",
        "VotesCommitted",
        "VoteCommitsClosed",
        "VotesRevealed",
        "VotingClosed",
        "AggregateRecorded",
        "ModelAttested",
        "RoundFinalized",
        "AttestationMismatch",
        "RoundHalted",
        "RolledBack",
        "SettlementRecorded",
        "HospitalRemoved",
        "TrialCompleted",
        "TrialHalted",
        "TrialResumed",
    }
    submitted = {function for _, _, function, _ in net.world.transcript}
    assert submitted | READ_ONLY_FUNCTIONS == chaincode.contract.FUNCTIONS


def test_replaying_the_transcript_gives_the_same_bytes(make_flow):
    """Deterministic: the same transactions on a fresh state give identical results, writes and events."""
    first = FakeNet()
    run_protocol(first, make_flow)
    replay = World()
    for creator, timestamp, function, args in first.world.transcript:
        state = FakeState(replay, creator, "replay", timestamp)
        try:
            outcome: Any = (
                "ok",
                invoke(state, function, args),
                sorted(state.writes.items()),
                state.events,
            )
        except ContractError as exc:
            outcome = ("error", exc.code)
        replay.outcomes.append(outcome)
        if outcome[0] == "ok":
            replay.state.update({k: v for k, v in state.writes.items() if v is not None})
    assert replay.outcomes == first.world.outcomes
    assert replay.state == first.world.state
    # Everything stored is canonical JSON.
    for value in first.world.state.values():
        assert canonical_json(json.loads(value)) == value


def test_every_raised_code_is_documented():
    package = Path(chaincode.contract.__file__).parent
    sources = [path.read_text() for path in sorted(package.glob("*.py"))]
    sources.append(Path(chaincode.args.__file__).read_text())
    raised = set()
    for source in sources:
        raised |= set(re.findall(r'(?<![\w.])_?fail\(\s*"([A-Z_]+)"', source))
        raised |= set(re.findall(r'code="([A-Z_]+)"', source))
    assert raised and raised <= set(CODES), raised - set(CODES)


# ---------------------------------------------------------------------------------------------
# The typed records of bcfl_common.records are the shapes the contract really stores: every
# record a whole protocol run leaves in the state must have exactly the keys of its TypedDict
# and values of the declared types (the contract stores plain dicts, whose bytes are hashed).
# ---------------------------------------------------------------------------------------------

RECORD_TYPES: dict[str, Any] = {
    "consortium": records.ConsortiumRecord,
    "trial": records.Trial,
    "encryption_key": records.KeyRegistration,
    "enrolment": records.Enrolment,
    "trial_keys": records.TrialKeys,
    "round": records.Round,
    "update": records.Update,
    "vote": records.Vote,
    "acceptance": records.Acceptance,
    "attestation": records.Attestation,
    "round_rewards": records.RoundRewards,
    "reward_account": records.RewardAccount,
    "privacy": records.PrivacyAccount,
    "content": records.ContentOwner,
    "dataset": records.Dataset,
    "dp_schedule": records.DpSchedule,
}


def mismatches(value: Any, expected: Any, path: str) -> list[str]:
    """Where ``value`` does not have type ``expected`` (empty if it does)."""
    origin, args = get_origin(expected), get_args(expected)
    if expected is Any:
        return []
    if is_typeddict(expected):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        hints = get_type_hints(expected)
        problems = [f"{path}.{k}: missing" for k in sorted(expected.__required_keys__ - set(value))]
        problems += [
            f"{path}.{k}: not in {expected.__name__}" for k in sorted(set(value) - set(hints))
        ]
        for key in sorted(set(value) & set(hints)):
            problems += mismatches(value[key], hints[key], f"{path}.{key}")
        return problems
    if origin in (Union, types.UnionType):
        options = [mismatches(value, option, path) for option in args]
        return [] if any(not o for o in options) else min(options, key=len)
    if origin is Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {list(args)}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [
            p for i, item in enumerate(value) for p in mismatches(item, args[0], f"{path}[{i}]")
        ]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        return [p for k, item in value.items() for p in mismatches(item, args[1], f"{path}.{k}")]
    if expected is type(None):
        return [] if value is None else [f"{path}: {value!r} is not null"]
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not an int"]
    if expected in (str, bool):
        return [] if isinstance(value, expected) else [f"{path}: {value!r} is not a {expected}"]
    raise AssertionError(f"{path}: no check for type {expected!r}")


def test_the_checker_sees_missing_extra_and_mistyped_fields():
    good = {"msp_id": "Hospital1MSP", "sha256": "ab" * 32, "at": 5, "against": "cd" * 32}
    assert mismatches(good, records.Dispute, "d") == []
    assert mismatches({**good, "extra": 1}, records.Dispute, "d") == ["d.extra: not in Dispute"]
    assert mismatches({"msp_id": "x", "sha256": "y", "against": "z"}, records.Dispute, "d") == [
        "d.at: missing"
    ]
    assert mismatches({**good, "at": True}, records.Dispute, "d") == ["d.at: True is not an int"]
    off = {"enabled": False, "reason": None}
    assert mismatches(off, records.DpPolicy, "dp") == []
    assert mismatches({**off, "enabled": "no"}, records.DpPolicy, "dp")


def stored_record_problems(net: FakeNet) -> tuple[set[str], list[str]]:
    """(the record kinds stored, where a stored record differs from its TypedDict)."""
    seen: set[str] = set()
    problems: list[str] = []
    for key, raw in sorted(net.world.state.items()):
        kind, attributes = split_composite_key(key)
        assert kind in RECORD_TYPES, f"a stored record type without a TypedDict: {kind}"
        seen.add(kind)
        problems += mismatches(json.loads(raw), RECORD_TYPES[kind], f"{kind}{attributes}")
    return seen, problems


def test_every_stored_record_has_the_shape_of_its_typed_record(make_flow):
    net = FakeNet()
    flow = run_protocol(net, make_flow)
    seen, problems = stored_record_problems(net)
    assert problems == []
    assert seen == set(RECORD_TYPES)  # the run leaves every kind of record
    # The round with the copied update recorded a (typed) exclusion.
    dp = make_flow(net, "trial-dp")
    rnd = dp.admin.evaluate("get_round", {"trial_id": dp.trial_id, "round": 1})
    assert list(rnd["excluded"]) == [flow.msp["hospital4"]]
    # Query results that are not stored records have their TypedDicts too.
    auditor = flow.client("auditor")
    budget = auditor.evaluate(
        "get_dataset_budget", {"msp_id": flow.msp["hospital1"], "dataset_id": dp.dataset_id()}
    )
    assert mismatches(budget, records.DatasetBudget, "budget") == []
    assert budget["trials"][dp.trial_id]["counted_micro"] == 3_000_000  # still RUNNING


# ---------------------------------------------------------------------------------------------
# Duplicate content at a fixed transaction clock (the FakeNet's time moves only when told), and
# the reveal-time schedule check behind the commit-time one.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [0, DEFAULT_CLOCK_TOLERANCE_SECONDS])
def test_a_copy_committed_within_the_clock_tolerance_leaves_the_content_to_nobody(make_flow, gap):
    """On Fabric the copier sets its commitment's time (within the peers' window): inside the
    trial's tolerance the two commitments are a tie, so backdating cannot take the bytes."""
    net = FakeNet()
    flow = make_flow(net)
    flow.running(hospitals=HOSPITALS)
    rnd = copied_round(flow, gap=gap)
    h1, h4 = flow.msp["hospital1"], flow.msp["hospital4"]
    victim_sha = rnd["excluded"][h1]["sha256"]
    assert rnd["excluded"] == {
        h1: {"reason": "duplicate_content", "sha256": victim_sha, "owner": None},
        h4: {"reason": "duplicate_content", "sha256": victim_sha, "owner": None},
    }
    assert rnd["candidates"] == sorted(flow.msp[n] for n in ("hospital2", "hospital3"))
    content = json.loads(
        net.world.state[create_composite_key("content", [flow.trial_id, victim_sha])]
    )
    assert content["revealed_by"] == sorted([h1, h4]) and content["msp_id"] is None
    assert stored_record_problems(net)[1] == []


def test_a_copy_committed_later_is_excluded_and_the_owner_recorded(make_flow):
    net = FakeNet()
    flow = make_flow(net)
    flow.running(hospitals=HOSPITALS)
    rnd = copied_round(flow)
    h1, h4 = flow.msp["hospital1"], flow.msp["hospital4"]
    assert list(rnd["excluded"]) == [h4] and rnd["excluded"][h4]["owner"] == h1
    sha = rnd["excluded"][h4]["sha256"]
    content = json.loads(net.world.state[create_composite_key("content", [flow.trial_id, sha])])
    assert (content["msp_id"], content["round"], content["attempt"]) == (h1, 1, 1)
    assert content["decided_at"] == net.now


def test_only_copies_revealed_halts_the_round_no_candidates(make_flow):
    net = FakeNet()
    flow = make_flow(net)
    flow.running(hospitals=HOSPITALS[:2])
    flow.open_round()
    u = flow.commit_update("hospital1")
    copy = replace(u, salt="ee" * 32)
    flow.commit_update("hospital2", copy)  # the same second: nobody owns the bytes
    flow.close("close_update_commits")
    flow.reveal_update("hospital1", u)
    flow.reveal_update("hospital2", copy)
    rnd = flow.close("close_update_reveals")
    assert rnd["phase"] == "HALTED" and rnd["halt"]["code"] == "NO_CANDIDATES"
    assert sorted(rnd["excluded"]) == sorted(flow.msp[n] for n in HOSPITALS[:2])


def test_a_reveal_past_the_schedule_is_refused_even_if_its_commitment_got_through(make_flow):
    """The commit check stops a hospital without a reveal left; the reveal checks again (its
    commitment may predate a reveal that exhausted the schedule)."""
    net = FakeNet()
    flow = make_flow(net)
    flow.running(rounds=1)
    flow.open_round()
    u = flow.commit_update("hospital1")
    flow.commit_update("hospital2")
    flow.net.advance_time(3601)
    flow.close("close_update_commits")
    # The ledger as it would be had hospital1 already made its one reveal.
    key = create_composite_key("privacy", [flow.trial_id, flow.msp["hospital1"]])
    entry = {"round": 1, "attempt": 1, "epsilon_micro": 3_000_000, "at": net.now}
    account = {
        "trial_id": flow.trial_id,
        "msp_id": flow.msp["hospital1"],
        "budget_micro": 3_000_000,
        "epsilon_spent_micro": 3_000_000,
        "entries": [entry],
    }
    net.world.state[key] = canonical_json(account)
    error = refused("BUDGET_EXCEEDED", flow.reveal_update, "hospital1", u)
    assert error.detail == {"reveals": 1, "spent_micro": 3_000_000, "budget_micro": 3_000_000}


def test_a_trial_record_from_before_the_liveness_fields_reads_with_their_defaults(make_flow):
    net = FakeNet()
    flow = make_flow(net)
    flow.running(dp={"enabled": False, "reason": "re-runs"})
    key = create_composite_key("trial", [flow.trial_id])
    record = json.loads(net.world.state[key])
    for name in ("final_round", "max_retries", "failed_attempts", "resumes"):
        del record[name]
    net.world.state[key] = canonical_json(record)
    trial = flow.trial()
    assert (trial["final_round"], trial["max_retries"], trial["resumes"]) == (2, 2, [])
    flow.full_round()
    assert flow.trial()["head"]["round"] == 1 and flow.trial()["final_round"] == 2
