"""Free riders: hospitals that want the model (and rewards) without contributing an update of
their own: zero updates, inflated sample weights, copies of peers' updates or of aggregates, and
outright theft of a peer's update in the round it is sent."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from bcfl_common.errors import BcflError, ContractError
from chaincode.commitments import new_salt
from devnet.red_team.base import AttackingSilo, log, option_error
from privacy.he import Kind, peek_header
from silo_agent.data import EncodedData
from silo_agent.steps import Step, TrialContext


class ZeroUpdateSilo(AttackingSilo):
    """Encrypts a zero update (it still trains, so its timing looks honest): nothing to learn
    from, so it must earn no update reward."""

    ATTACK = "zero"

    def seal_update(
        self, ctx: TrialContext, rnd: dict[str, Any], delta: np.ndarray, weight: int
    ) -> bytes:
        return super().seal_update(ctx, rnd, np.zeros_like(delta), weight)


class InflatedWeightSilo(ZeroUpdateSilo):
    """A zero update with a claimed sample weight (and registered training split and dataset) of
    ``claimed_records`` rows: tries to dilute the aggregate and take the update pool. Its
    training data is its own rows repeated to that count, so the agent's own check of the
    registered count (and, with DP, the schedule computed for it) passes."""

    ATTACK = "inflated_weight"
    OPTIONS = {"claimed_records": 100_000}

    @classmethod
    def claimed_training_records(cls, options: Mapping[str, Any], honest: int) -> int | None:
        return int(options.get("claimed_records") or cls.OPTIONS["claimed_records"])

    def training_data(self, ctx: TrialContext) -> EncodedData:
        own = super().training_data(ctx)
        index = np.resize(np.arange(len(own)), int(self.attack_options["claimed_records"]))
        return own.subset(index)

    def check_options(self, values: dict[str, Any]) -> None:
        claimed = values["claimed_records"]
        if isinstance(claimed, bool) or not isinstance(claimed, int) or claimed < 1:
            raise option_error(self.ATTACK, "claimed_records", claimed, "a positive integer")

    def claimed_sample_weight(self, ctx: TrialContext, training_records: int) -> int:
        return int(self.attack_options["claimed_records"])


class ReencryptedCopySilo(AttackingSilo):
    """From round 2 on, decrypts a peer's update of an earlier round and re-encrypts it as its
    own (fresh ciphertext, so a new sha256); honest in round 1, where nothing can be copied."""

    ATTACK = "reencrypted_copy"

    def seal_update(
        self, ctx: TrialContext, rnd: dict[str, Any], delta: np.ndarray, weight: int
    ) -> bytes:
        peers = [
            r
            for r in self.earlier_revealed_updates(rnd["trial_id"], rnd)
            if r["msp_id"] != self.msp_id
        ]
        if peers:
            source = peers[0]
            # an update container holds the plain parameter delta (weights are applied later)
            delta = self.decrypted(ctx, source["content_id"], source["sha256"], 1.0)
            ctx.extras.setdefault("copied", {})[(rnd["round"], rnd["attempt"])] = source["sha256"]
            log.warning(
                "%s copies %s's update of round %s", self.msp_id, source["msp_id"], source["round"]
            )
        return super().seal_update(ctx, rnd, delta, weight)


class AggregateCopySilo(AttackingSilo):
    """From round 2 on, sends the previous round's aggregate container, byte for byte, as its
    update (the aggregate is public in the store); honest in round 1."""

    ATTACK = "aggregate_copy"

    def seal_update(
        self, ctx: TrialContext, rnd: dict[str, Any], delta: np.ndarray, weight: int
    ) -> bytes:
        aggregate = self.previous_aggregate(rnd)
        if aggregate is None:
            return super().seal_update(ctx, rnd, delta, weight)
        ctx.extras.setdefault("copied", {})[(rnd["round"], rnd["attempt"])] = aggregate["sha256"]
        return self._fetch(aggregate["content_id"], aggregate["sha256"])


class AggregateReencryptedSilo(AttackingSilo):
    """The variant that passes the container-kind check: decrypts the previous round's aggregate
    delta and encrypts it again as an ordinary update of its own; honest in round 1."""

    ATTACK = "aggregate_reencrypted"

    def seal_update(
        self, ctx: TrialContext, rnd: dict[str, Any], delta: np.ndarray, weight: int
    ) -> bytes:
        aggregate = self.previous_aggregate(rnd)
        if aggregate is not None:
            delta = self.decrypted(
                ctx, aggregate["content_id"], aggregate["sha256"], float(aggregate["total_weight"])
            )
            ctx.extras.setdefault("copied", {})[(rnd["round"], rnd["attempt"])] = aggregate[
                "sha256"
            ]
        return super().seal_update(ctx, rnd, delta, weight)


class ThiefSilo(AttackingSilo):
    """Tries to pass a peer's update of THIS round off as its own.

    SUBMIT: it waits until every other enrolled hospital has committed, then searches the store
    for update containers it did not write and commits to the victim's bytes. An honest agent
    stores its update only in REVEAL, so there is nothing to find: it falls back to committing a
    zero update. REVEAL: it waits for the victim's reveal and reveals the victim's content id
    and sha256 under its own commitment (refused: the commitment fixes other bytes), then
    reveals its own zero update. Every attempt is kept in ``ctx.extras["theft"]``.
    """

    ATTACK = "thief"
    OPTIONS = {"victim": ""}  # default: the first other enrolled hospital by MSP id

    def victim(self, rnd: dict[str, Any]) -> str | None:
        chosen = self.attack_options["victim"]
        if chosen:
            return str(chosen)
        others = sorted(m for m in rnd["enrolled"] if m != self.msp_id)
        return others[0] if others else None

    def _theft(self, ctx: TrialContext, rnd: dict[str, Any]) -> dict[str, Any]:
        return ctx.extras.setdefault("theft", {}).setdefault((rnd["round"], rnd["attempt"]), {})

    def seal_update(
        self, ctx: TrialContext, rnd: dict[str, Any], delta: np.ndarray, weight: int
    ) -> bytes:
        others = set(rnd["enrolled"]) - {self.msp_id}

        def peers_committed() -> bool:
            return others <= set(self._submissions(rnd))

        self.wait_until(peers_committed, rnd, what="the peers' commitments")
        found = self.unseen_update_bytes(ctx, rnd)
        record = self._theft(ctx, rnd)
        record["store_candidates"] = len(found)
        if found:
            record["committed_to"] = hashlib.sha256(found[0]).hexdigest()
            log.warning("%s commits to a peer's update found in the store", self.msp_id)
            return found[0]
        record["committed_to"] = "zero update"
        return super().seal_update(ctx, rnd, np.zeros_like(delta), weight)

    def unseen_update_bytes(self, ctx: TrialContext, rnd: dict[str, Any]) -> list[bytes]:
        """Update containers in the store that no revealed update of the trial names yet (only a
        store that can list its content, such as ``file://``, can be watched)."""
        listing = getattr(self.store, "list", None)
        if listing is None:
            return []
        known = {r["content_id"] for r in self.earlier_revealed_updates(rnd["trial_id"], rnd)}
        found = []
        for cid in listing():
            if cid in known:
                continue
            try:
                data = self.store.get(cid)
                header = peek_header(data)
            except BcflError:
                continue
            if header["kind"] == Kind.UPDATE and header["n_params"] == self._n_params(ctx):
                found.append(data)
        return found

    def _reveal_update(self, ctx: TrialContext, rnd: dict[str, Any], steps: list[Step]) -> None:
        # The theft is tried before its own reveal, in the same step: were it a separate check
        # in tick(), the phase could turn REVEAL between that check and the agent's own reveal,
        # which would then go first and leave no commitment to steal under.
        self._try_victims_reveal(ctx, rnd, steps)
        super()._reveal_update(ctx, rnd, steps)

    def _try_victims_reveal(
        self, ctx: TrialContext, rnd: dict[str, Any], steps: list[Step]
    ) -> None:
        mine = self._submissions(rnd).get(self.msp_id)
        victim = self.victim(rnd)
        record = self._theft(ctx, rnd)
        if mine is None or mine["revealed"] or victim is None or "reveal_refused" in record:
            return

        def victim_revealed() -> dict[str, Any] | None:
            other = self._submissions(rnd).get(victim)
            return other if other is not None and other["revealed"] else None

        if not self.wait_until(victim_revealed, rnd, what=f"{victim}'s reveal"):
            record["reveal_refused"] = "the victim did not reveal"
            return
        stolen = victim_revealed()
        assert stolen is not None
        # Its own salt and weight: only the content differs from what it committed to.
        own = self.state.journal_entry(rnd["trial_id"], rnd["round"], rnd["attempt"]).get("update")
        salt = (own or {}).get("salt") or new_salt()
        weight = (own or {}).get("sample_weight") or stolen["sample_weight"]
        try:
            self._submit(
                "reveal_update",
                trial_id=rnd["trial_id"],
                round=rnd["round"],
                content_id=stolen["content_id"],
                sha256=stolen["sha256"],
                sample_weight=weight,
                salt=salt,
            )
        except ContractError as exc:
            record["reveal_refused"] = exc.code
            self._emit(
                steps,
                Step(
                    rnd["trial_id"],
                    "theft refused",
                    f"{victim}'s update: {exc.code}",
                    rnd["round"],
                    rnd["attempt"],
                    "warning",
                ),
            )
        else:  # the defence failed: say so loudly (the live test asserts it never happens)
            record["reveal_refused"] = None
            self._emit(
                steps,
                Step(
                    rnd["trial_id"],
                    "REVEALED A STOLEN UPDATE",
                    victim,
                    rnd["round"],
                    rnd["attempt"],
                    "error",
                ),
            )
