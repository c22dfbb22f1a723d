"""The silo agent: one state machine over the ledger's trial and round records.

Each ``tick`` reads the trials this hospital is enrolled in and, for the current round's phase,
does its own step at most once (the protocol is ``chaincode.contract``'s docstring):

key set-up   the designated key holder (first enrolled hospital by MSP id) creates the trial's
             CKKS secret context, seals it to every enrolled hospital's X25519 key, stores the
             public context and the envelopes, and records them (record_trial_keys)
SUBMIT       check the enrolment's training_records and (DP on) this hospital's entry of the
             trial's DP schedule, budget check, DP training from the round's base model, the
             parameter delta encrypted, kept in the state directory, committed
             (commit_update) WITHOUT uploading (silo_agent.submission)
REVEAL       upload the kept update to the store, reveal_update with the journal's salt
VOTE_COMMIT  a Finding on each peer candidate (problem, score on the local validation split,
             norm, similarity with earlier updates and aggregates), commit_votes
             (silo_agent.voting, silo_agent.findings)
VOTE_REVEAL  reveal_votes
ATTEST       decrypt the aggregate (the weighted sum), divide by total_weight, apply to the base, release-round,
             encode, attest_model with its sha256
FINALIZED    keep the model and its local metrics

Everything a submission discloses (salts, content ids, findings, hashes) is written to the journal
in the state directory BEFORE it is submitted, so a silo killed at any point resumes with the
same values; the ledger's own records decide whether a step is already done, and the contract's
DUPLICATE refusal is only the last guard.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from bcfl_common.errors import (
    BcflError,
    ConfigError,
    ContractError,
    PrivacyError,
    SchemaError,
    StoreError,
)
from consortium.identity import Identity, load_identity
from consortium.ledger import Ledger, open_ledger
from consortium.storage import ArtifactStore, open_store
from model_registry.artifact import decode_model, encode_model
from model_registry.data_schema import schema_sha256
from model_registry.registry import build_from_spec, parameter_count
from privacy.he import keyholder
from silo_agent.config import SiloConfig
from silo_agent.data import LocalSplit, load_data, load_split
from silo_agent.findings import MAX_SCORE_MICRO, REJECT_SCORE_MICRO
from silo_agent.state import SiloState
from silo_agent.steps import Step, TrialContext, all_done, he_preset_name, release_rng
from silo_agent.submission import UpdateSubmission
from silo_agent.training import evaluate
from silo_agent.voting import PeerVoting

__all__ = [
    "MAX_SCORE_MICRO",
    "REJECT_SCORE_MICRO",
    "SiloAgent",
    "Step",
    "TrialContext",
    "all_done",
    "he_preset_name",
    "release_rng",
]

log = logging.getLogger(__name__)


class SiloAgent(UpdateSubmission, PeerVoting):
    """One hospital's agent. Pass ``ledger``/``store``/``identity`` to reuse open ones (tests).

    The seams other behaviours (``devnet.red_team``'s attackers) override, all used by the honest
    path: :meth:`training_data`, :meth:`compute_delta`, :meth:`claimed_sample_weight`,
    :meth:`seal_update` (silo_agent.submission), :meth:`findings` (silo_agent.voting) and
    :meth:`attested_sha256`.
    """

    def __init__(
        self,
        config: SiloConfig,
        *,
        identity: Identity | None = None,
        ledger: Ledger | None = None,
        store: ArtifactStore | None = None,
        ledger_options: dict[str, Any] | None = None,
        report: Callable[[Step], None] | None = None,
    ):
        self.config = config
        self.identity = identity or load_identity(config.identity)
        self.msp_id = self.identity.msp_id
        self.ledger = ledger or open_ledger(
            config.ledger_url, self.identity, **(ledger_options or {})
        )
        self.store = store or open_store(config.store_url)
        self.state = SiloState(config.state_dir)
        self.report = report
        # trial id -> the SchemaError its local data raised on the last tick
        self.data_errors: dict[str, SchemaError] = {}
        self._contexts: dict[str, TrialContext] = {}

    # -- ledger helpers ------------------------------------------------------------------------
    def _q(self, function: str, **args: Any) -> Any:
        return self.ledger.evaluate(function, args)

    def _submit(self, function: str, **args: Any) -> Any:
        return self.ledger.submit(function, args).result

    def _emit(self, steps: list[Step], step: Step) -> None:
        steps.append(step)
        (log.warning if step.level != "info" else log.info)("%s", step)
        if self.report is not None:
            self.report(step)

    # -- trials --------------------------------------------------------------------------------
    def my_trials(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Trials this hospital is (or was) enrolled in, optionally only in ``states``."""
        out = []
        for trial in self._q("list_trials"):
            if self.config.trials and trial["trial_id"] not in self.config.trials:
                continue
            if states is not None and trial["state"] not in states:
                continue
            if self.enrolment(trial["trial_id"]) is not None:
                out.append(trial)
        return out

    def check_followed_trials(self) -> None:
        """ConfigError when a trial named in the configuration (``trials``, ``--trial``) does not
        exist on the ledger, or this hospital is not enrolled in it and can no longer be (the
        trial left ENROLLING): waiting would be waiting forever. A trial still in DRAFT or
        ENROLLING may yet enrol it, so that is waited for."""
        if not self.config.trials:
            return
        trials = {t["trial_id"]: t for t in self._q("list_trials")}
        for trial_id in self.config.trials:
            trial = trials.get(trial_id)
            if trial is None:
                raise ConfigError(
                    f"trial {trial_id!r}: no such trial on the ledger {self.config.ledger_url}; "
                    f"its trials are {sorted(trials) or 'none yet'}",
                    code="TRIAL_NOT_FOUND",
                    detail={"field": "trials", "value": trial_id},
                )
            if trial["state"] not in ("DRAFT", "ENROLLING") and self.enrolment(trial_id) is None:
                raise ConfigError(
                    f"trial {trial_id!r} is {trial['state']} and {self.msp_id} is not enrolled in "
                    "it; enrolment is closed (ask the consortium admin about the next trial)",
                    code="NOT_ENROLLED",
                    detail={"field": "trials", "value": trial_id},
                )

    def enrolment(self, trial_id: str) -> dict[str, Any] | None:
        for record in self._q("get_enrolments", trial_id=trial_id):
            if record["msp_id"] == self.msp_id:
                return record
        return None

    def tick(self) -> list[Step]:
        """Do every step that is due now, once. Safe to call any number of times."""
        steps: list[Step] = []
        with self.state.lock():
            for trial in self.my_trials(("RUNNING", "COMPLETED")):
                try:
                    self._step_trial(trial, steps)
                except BcflError as exc:
                    # This trial's step failed (bad local data, a refused policy, an unreachable
                    # store, ...); nothing was sent for it, other trials continue, and the next
                    # tick retries from the journal.
                    self._problem(steps, trial["trial_id"], exc)
                    if isinstance(exc, SchemaError):
                        # Local data that does not match the trial's schema will not fix itself:
                        # `bcfl silo run` stops with this error (nothing was sent).
                        self.data_errors[trial["trial_id"]] = exc
                else:
                    if self.state.journal(trial["trial_id"]).get("problem"):
                        self.state.trial_record(trial["trial_id"], "problem", None)
                    self.data_errors.pop(trial["trial_id"], None)
        return steps

    def _problem(self, steps: list[Step], trial_id: str, exc: BcflError) -> None:
        journal = self.state.journal(trial_id)
        text = f"{exc.code}: {exc.message}"
        if journal.get("problem") != text:  # say it once, not on every tick
            self.state.trial_record(trial_id, "problem", text)
            self._emit(steps, Step(trial_id, "problem", text, level="error"))

    def _step_trial(self, trial: dict[str, Any], steps: list[Step]) -> None:
        trial_id = trial["trial_id"]
        ctx = self._context(trial)
        if ctx.secret is None and not self._open_keys(ctx, steps):
            return
        self._local_data(ctx)
        self._record_lineage_metrics(ctx, steps)
        if trial["state"] != "RUNNING" or trial["current"] is None:
            return
        cur = trial["current"]
        rnd = self._q("get_round", trial_id=trial_id, round=cur["round"], attempt=cur["attempt"])
        enrolment = self.enrolment(trial_id)
        if enrolment is None or enrolment["status"] != "enrolled":
            return
        self._disclose_pending(rnd, steps)
        handler = {
            "SUBMIT": self._submit_update,
            "REVEAL": self._reveal_update,
            "VOTE_COMMIT": self._commit_votes,
            "VOTE_REVEAL": self._reveal_votes,
            "ATTEST": self._attest,
            # A silo that missed the quorum still attests: a later equal hash is recorded, a
            # different one becomes a dispute for the admin (the contract decides which).
            "FINALIZED": self._attest,
        }.get(rnd["phase"])
        if handler is not None:
            handler(ctx, rnd, steps)

    def _context(self, trial: dict[str, Any]) -> TrialContext:
        ctx = self._contexts.get(trial["trial_id"])
        if ctx is None:
            ctx = TrialContext(trial=trial, preset=he_preset_name(trial))
            self._contexts[trial["trial_id"]] = ctx
        ctx.trial = trial
        return ctx

    # -- keys ----------------------------------------------------------------------------------
    def _open_keys(self, ctx: TrialContext, steps: list[Step]) -> bool:
        trial_id = ctx.trial["trial_id"]
        try:
            keys = self._q("get_trial_keys", trial_id=trial_id)
        except ContractError as exc:
            if exc.code != "NOT_FOUND":
                raise
            if ctx.trial["state"] == "RUNNING":
                self._setup_keys(ctx, steps)
            return False
        envelope_ref = keys["envelopes"].get(self.msp_id)
        if envelope_ref is None:
            self._emit(
                steps,
                Step(
                    trial_id,
                    "waiting",
                    f"no key envelope for {self.msp_id} (enrolled after key set-up)",
                    level="warning",
                ),
            )
            return False
        envelope = self._fetch(envelope_ref["content_id"], envelope_ref["sha256"])
        secret = keyholder.open_envelope(
            envelope,
            self.identity.encryption_private_key(),
            trial_id=trial_id,
            recipient=self.msp_id,
        )
        ctx.secret = keyholder.load_secret_context(secret, ctx.preset)
        ctx.secret_bytes = secret
        return True

    def _setup_keys(self, ctx: TrialContext, steps: list[Step]) -> None:
        trial_id = ctx.trial["trial_id"]
        enrolled = [
            r for r in self._q("get_enrolments", trial_id=trial_id) if r["status"] == "enrolled"
        ]
        holder = min(r["msp_id"] for r in enrolled) if enrolled else None
        if holder != self.msp_id:
            return
        secret_ctx = keyholder.generate_context(ctx.preset)
        secret = secret_ctx.secret_bytes()
        public = self.store.put(secret_ctx.public_bytes())
        envelopes = {}
        for record in enrolled:
            key = X25519PublicKey.from_public_bytes(
                base64.b64decode(record["encryption_public_key"])
            )
            sealed = keyholder.seal_envelope(
                secret, key, trial_id=trial_id, recipient=record["msp_id"]
            )
            stored = self.store.put(sealed)
            envelopes[record["msp_id"]] = {"content_id": stored.content_id, "sha256": stored.sha256}
        try:
            self._submit(
                "record_trial_keys",
                trial_id=trial_id,
                public_context={"content_id": public.content_id, "sha256": public.sha256},
                envelopes=envelopes,
            )
        except ContractError as exc:
            if exc.code != "ALREADY_EXISTS":
                raise
        self._emit(
            steps,
            Step(
                trial_id, "keys recorded", f"CKKS preset {ctx.preset}, {len(envelopes)} envelopes"
            ),
        )

    # -- data and models -----------------------------------------------------------------------
    def _local_data(self, ctx: TrialContext) -> LocalSplit:
        if ctx.split is None:
            if self.config.data_path is None:
                raise ConfigError(
                    "[data] path is not set; expected the hospital's CSV or Parquet file"
                )
            schema = ctx.trial["data_schema"]
            ctx.split = load_split(
                self.config.data_path,
                schema,
                trial_id=ctx.trial["trial_id"],
                msp_id=self.msp_id,
                validation_fraction=self.config.validation_fraction,
                columns=self.config.columns,
                format=self.config.data_format,
            )
            if self.config.test_path is not None:
                ctx.test = load_data(
                    self.config.test_path,
                    schema,
                    columns=self.config.columns,
                    format=self.config.data_format,
                )
        return ctx.split

    def _fetch(self, content_id: str | None, sha256: str) -> bytes:
        if content_id is None:
            raise StoreError(f"artifact {sha256} has no content id to fetch")
        data = self.store.get(content_id)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(
                f"artifact {content_id}: sha256 {hashlib.sha256(data).hexdigest()}, expected {sha256} (the ledger's)"
            )
        return data

    def _n_params(self, ctx: TrialContext) -> int:
        if "n_params" not in ctx.extras:
            ctx.extras["n_params"] = parameter_count(
                build_from_spec(ctx.trial["model"], ctx.trial["data_schema"])
            )
        return int(ctx.extras["n_params"])

    def model_bytes(self, ctx: TrialContext, head: dict[str, Any]) -> bytes:
        """The model of a lineage point ``{round, attempt, model: {content_id, sha256}}``: the local
        copy, else the store, else rebuilt from its base and the round's aggregate (recursively)."""
        trial_id = ctx.trial["trial_id"]
        ref = head["model"]
        data = self.state.load_model(trial_id, ref["sha256"])
        if data is not None:
            return data
        if ref.get("content_id"):
            try:
                data = self._fetch(ref["content_id"], ref["sha256"])
            except StoreError:
                if head["round"] == 0:
                    raise
                data = None
            if data is not None:
                decode_model(
                    data, model_spec=ctx.trial["model"], data_schema=ctx.trial["data_schema"]
                )
                self.state.save_model(trial_id, data)
                return data
        if head["round"] == 0:
            raise StoreError(f"the initial model of trial {trial_id!r} has no content id to fetch")
        rnd = self._q("get_round", trial_id=trial_id, round=head["round"], attempt=head["attempt"])
        data = self._apply_aggregate(ctx, rnd)
        got = hashlib.sha256(data).hexdigest()
        if got != ref["sha256"]:
            raise StoreError(
                f"rebuilt model of round {head['round']} (attempt {head['attempt']}) of trial {trial_id!r} "
                f"hashes to {got}, expected {ref['sha256']} (the ledger's)",
                code="MODEL_MISMATCH",
            )
        return data

    def _params(self, ctx: TrialContext, head: dict[str, Any]) -> np.ndarray:
        data = self.model_bytes(ctx, head)
        return decode_model(
            data, model_spec=ctx.trial["model"], data_schema=ctx.trial["data_schema"]
        ).params

    def _apply_aggregate(self, ctx: TrialContext, rnd: dict[str, Any]) -> bytes:
        """base + aggregate / total_weight, release-rounded: identical bytes on every silo."""
        aggregate = rnd["aggregate"]
        if aggregate is None:
            raise StoreError(
                f"round {rnd['round']} of trial {rnd['trial_id']!r} has no aggregate recorded"
            )
        base = self._params(ctx, rnd["base"]).astype(np.float64)
        blob = self._fetch(aggregate["content_id"], aggregate["sha256"])
        delta = keyholder.decrypt(
            ctx.secret,
            blob,
            expected_params=base.size,
            total_weight=float(aggregate["total_weight"]),
        )
        assert ctx.secret_bytes is not None
        released = keyholder.release(
            base + delta, rng=release_rng(ctx.secret_bytes, rnd["trial_id"], aggregate["sha256"])
        )
        spec = ctx.trial["model"]
        data = encode_model(
            spec["name"],
            spec.get("hyperparameters") or {},
            schema_sha256(ctx.trial["data_schema"]),
            released.astype(np.float32),
        )
        self.state.save_model(rnd["trial_id"], data)
        return data

    # -- ATTEST / FINALIZED --------------------------------------------------------------------
    def _attest(self, ctx: TrialContext, rnd: dict[str, Any], steps: list[Step]) -> None:
        trial_id, r, a = rnd["trial_id"], rnd["round"], rnd["attempt"]
        attestations = self._q("get_attestations", trial_id=trial_id, round=r, attempt=a)
        if any(x["msp_id"] == self.msp_id for x in attestations):
            return
        sha = self.attested_sha256(ctx, rnd, self._apply_aggregate(ctx, rnd))
        self.state.record(trial_id, r, a, "attestation", {"sha256": sha})  # before attest_model
        try:
            self._submit("attest_model", trial_id=trial_id, round=r, sha256=sha)
        except ContractError as exc:
            if exc.code == "DUPLICATE":
                return
            if exc.code in ("LATE", "WRONG_STATE", "NOT_ENROLLED"):
                self._emit(
                    steps,
                    Step(
                        trial_id,
                        "attestation refused",
                        f"{exc.code}: {exc.message}",
                        r,
                        a,
                        "warning",
                    ),
                )
                return
            raise
        self._emit(steps, Step(trial_id, "attested model", sha[:16], r, a))

    def attested_sha256(self, ctx: TrialContext, rnd: dict[str, Any], model_bytes: bytes) -> str:
        """The hash this silo attests for a round: the sha256 of the model it rebuilt."""
        return hashlib.sha256(model_bytes).hexdigest()

    def _record_lineage_metrics(self, ctx: TrialContext, steps: list[Step]) -> None:
        """Local metrics of round 0 and every finalized round not measured yet."""
        trial = ctx.trial
        trial_id = trial["trial_id"]
        known = self.state.metrics(trial_id)
        points = [{"round": 0, "attempt": 0, "model": trial["initial_model"]}] + [
            {"round": e["round"], "attempt": e["attempt"], "model": e["model"]}
            for e in trial["lineage"]
        ]
        for head in points:
            key = str(head["round"])
            if key in known and known[key].get("model_sha256") == head["model"]["sha256"]:
                continue
            params = self._params(ctx, head)
            metrics = self._metrics(ctx, params)
            self.state.record_metrics(
                trial_id,
                key,
                {
                    "round": head["round"],
                    "attempt": head["attempt"],
                    "model_sha256": head["model"]["sha256"],
                    **metrics,
                },
            )
            if head["round"] > 0:
                val = metrics["validation"]
                test = metrics.get("test")
                detail = f"validation accuracy {val['accuracy']:.3f}" + (
                    f", test accuracy {test['accuracy']:.3f}" if test else ""
                )
                self._emit(
                    steps, Step(trial_id, "model finalized", detail, head["round"], head["attempt"])
                )

    def _metrics(self, ctx: TrialContext, params: np.ndarray) -> dict[str, Any]:
        local = self._local_data(ctx)
        spec, schema = ctx.trial["model"], ctx.trial["data_schema"]

        def clean(m: dict[str, float]) -> dict[str, Any]:
            return {
                k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                for k, v in m.items()
            }

        out: dict[str, Any] = {
            "validation": clean(evaluate(spec, schema, params, local.validation))
        }
        if ctx.test is not None:
            out["test"] = clean(evaluate(spec, schema, params, ctx.test))
        return out

    def final_model(self, trial_id: str, round: int | None = None) -> bytes:
        """The model artifact of a finalized round (default: the trial's head), rebuilt if needed."""
        trial = self._q("get_trial", trial_id=trial_id)
        ctx = self._context(trial)
        if ctx.secret is None and not self._open_keys(ctx, []):
            raise PrivacyError(f"trial {trial_id!r}: no trial key available to this silo yet")
        if round is None:
            return self.model_bytes(ctx, trial["head"])
        if round == 0:
            return self.model_bytes(
                ctx, {"round": 0, "attempt": 0, "model": trial["initial_model"]}
            )
        for entry in trial["lineage"]:
            if entry["round"] == round:
                return self.model_bytes(ctx, entry)
        raise ConfigError(
            f"round: {round} is not a finalized round of trial {trial_id!r} (head is round {trial['head']['round']})"
        )

    def close(self) -> None:
        self.ledger.close()
