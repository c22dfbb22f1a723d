"""Helpers shared by the settlement and audit tests (no tests here): trials run through real rounds with real CKKS updates on a real embedded ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from silo_side import Hospitals, finding, register_for_trial

from consortium.storage import ArtifactStore
from coordinator.dp_schedule import start_trial_schedule
from privacy import he

HOSPITALS = ["hospital1", "hospital2", "hospital3"]
PHASE_SECONDS = {"submit": 600, "reveal": 600, "vote_commit": 600, "vote_reveal": 600}


def create_running_trial(
    net: Any,
    store: ArtifactStore,
    secret: he.HEContext,
    trial_id: str,
    *,
    rounds: int = 2,
    reward_per_round: int = 1000,
    dp: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    service: Any | None = None,
) -> Hospitals:
    """A RUNNING trial created by the admin on the ledger, three hospitals enrolled with their
    registered datasets and keys, started with its DP schedule (by ``service`` when given, as
    the admin API does), trial keys recorded."""
    admin = net.client("admin")
    initial = store.put(f"initial model of {trial_id}".encode())
    admin.submit(
        "create_trial",
        {
            "trial_id": trial_id,
            "task": "binary_classification",
            "data_schema": {
                "features": [{"name": "age", "type": "float"}],
                "label": {"name": "y", "positive": [1]},
            },
            "model": {"name": "logistic_regression"},
            "initial_model": {"content_id": initial.content_id, "sha256": initial.sha256},
            "rounds": rounds,
            "min_silos": 2,
            "dp": dp if dp is not None else {"target_epsilon_micro": 1_000_000},
            "evaluation": {"min_voters": 2, "reward_per_round": reward_per_round}
            | (evaluation or {}),
            "phase_seconds": PHASE_SECONDS,
            # the copies of finalize_round commit 2 s after their victims: owned by the victims
            "clock_tolerance_seconds": 1,
        },
    )
    admin.submit("open_enrolment", {"trial_id": trial_id})
    for name in HOSPITALS:
        identity = net.consortium.identity(name)
        key = register_for_trial(net.client(name), identity, trial_id)
        admin.submit(
            "enrol_hospital",
            {"trial_id": trial_id, "msp_id": identity.msp_id, "encryption_public_key": key},
        )
    if service is not None:
        service.start_trial(trial_id)  # the coordinator computes the DP schedule
    else:
        trial = admin.evaluate("get_trial", {"trial_id": trial_id})
        schedule = start_trial_schedule(
            trial, admin.evaluate("get_enrolments", {"trial_id": trial_id})
        )
        args: dict[str, Any] = {"trial_id": trial_id}
        if schedule is not None:
            args["dp_schedule"] = schedule
        admin.submit("start_trial", args)
    hospitals = Hospitals(net, store, trial_id, HOSPITALS, secret)
    hospitals.record_keys("hospital1")
    return hospitals


def _commit_votes(hospitals: Hospitals, name: str, low: set[str]) -> None:
    """Harmless findings for every peer but those in ``low``, which it finds harmful."""
    rnd = hospitals.round()
    me = hospitals.msp[name]
    findings = {
        m: finding(-50_000 if m in low else 20_000 + 1000 * i)
        for i, m in enumerate(rnd["candidates"])
        if m != me
    }
    hospitals.commit_votes(name, findings=findings)


def finalize_round(
    hospitals: Hospitals,
    tick: Callable[[], list[Any]],
    *,
    low_scored: tuple[str, ...] = ("hospital3",),
    seed: int = 0,
    copies: dict[str, str] | None = None,
    dissent: tuple[str, ...] = (),
    clock: Any | None = None,
) -> dict[str, Any]:
    """Run the trial's next round through the coordinator's ticks until it is FINALIZED.

    Every hospital submits; the hospitals in ``low_scored`` are found harmful by their peers (a
    score below the harm threshold: reason ``harmful``). ``copies`` {copier: victim}: the copier
    commits to the victim's very bytes two seconds later (``clock`` moves), so the victim's
    earlier commitment owns them. The hospitals in ``dissent`` attest another model hash first
    (a dispute once the others finalize). Returns the finalized round record. No tick runs after
    the final attestation.
    """
    copies = copies or {}

    def phase() -> str | None:
        current = hospitals.client("auditor").evaluate(
            "get_trial", {"trial_id": hospitals.trial_id}
        )["current"]
        return None if current is None else hospitals.round()["phase"]

    if phase() in (None, "FINALIZED", "HALTED"):
        tick()
    assert hospitals.round()["phase"] == "SUBMIT", hospitals.round()
    for name in [n for n in HOSPITALS if n not in copies]:
        hospitals.commit(name, seed=seed)
    for copier, victim in copies.items():
        assert clock is not None, "copies need the ledger clock to order the commitments"
        clock.advance(2)
        stolen = hospitals.store.get(hospitals.updates[victim].content_id)
        hospitals.commit(copier, payload=stolen)
    tick()
    for name in HOSPITALS:
        hospitals.reveal(name)
    tick()
    low = {hospitals.msp[n] for n in low_scored}
    for name in HOSPITALS:
        _commit_votes(hospitals, name, low)
    tick()
    for name in HOSPITALS:
        hospitals.reveal_votes(name)
    tick()  # close_voting, record_aggregate
    assert hospitals.round()["phase"] == "ATTEST", hospitals.round()
    for name in dissent:
        hospitals.attest(name, sha256="0" * 64)
    result: dict[str, Any] = {}
    for name in [n for n in HOSPITALS if n not in dissent]:
        result = hospitals.attest(name)["round"]
        if result["phase"] == "FINALIZED":
            break
    assert result["phase"] == "FINALIZED", result
    return result
