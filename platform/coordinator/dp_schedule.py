"""Every enrolled hospital's public DP schedule, computed when a trial starts (and by the auditor).

The contract charges epsilon from a schedule instead of trusting a hospital's word (spec D). The
schedule follows from the ledger alone: the trial's DP policy and hyperparameters (its record)
and each hospital's registered ``training_records`` (its enrolment). The coordinator computes it
with :func:`privacy.dp.schedule_entry` (Opacus), the function every silo plans its own training
with and refuses to train under a different entry, and passes it to ``start_trial``; ``bcfl audit
verify`` recomputes every entry with the same function.

Hospitals that registered the same number of records get the same entry, so each distinct count
is computed once (the noise search takes about a second).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bcfl_common.errors import ContractError

log = logging.getLogger(__name__)

# progress(msp_ids, done, total): called before each distinct training-record count and at the end.
Progress = Callable[[list[str], int, int], None]


def enrolled_training_records(enrolments: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{msp_id: registered training_records} of the hospitals enrolled now (removed ones left out)."""
    counts: dict[str, int] = {}
    for e in enrolments:
        if e["status"] != "enrolled":
            continue
        count = e.get("training_records")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ContractError(
                f"enrolment of {e['msp_id']}: training_records is {count!r}, expected an integer >= 1 "
                "(the count registered with the hospital's encryption key)",
                code="INVALID_ARGUMENT",
                detail={"msp_id": e["msp_id"], "field": "training_records", "value": count},
            )
        counts[e["msp_id"]] = count
    return counts


def schedule_for(
    trial: Mapping[str, Any],
    training_records: Mapping[str, int],
    *,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """{msp_id: ScheduleEntry}, equal to ``privacy.dp.dp_schedule(trial, training_records,
    training_inputs(trial))``; one Opacus computation per distinct count."""
    from model_registry.training_settings import training_inputs
    from privacy.dp import schedule_entry

    training = training_inputs(trial)
    by_count: dict[int, list[str]] = {}
    for msp_id, count in sorted(training_records.items()):
        by_count.setdefault(count, []).append(msp_id)
    entries: dict[str, dict[str, Any]] = {}
    for done, (count, members) in enumerate(sorted(by_count.items())):
        if progress is not None:
            progress(members, done, len(by_count))
        entry = schedule_entry(trial, training_records=count, **training)
        for msp_id in members:
            entries[msp_id] = dict(entry, epsilon_micro=list(entry["epsilon_micro"]))
    if progress is not None:
        progress([], len(by_count), len(by_count))
    return dict(sorted(entries.items()))


def start_trial_schedule(
    trial: Mapping[str, Any],
    enrolments: Iterable[Mapping[str, Any]],
    *,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]] | None:
    """The ``dp_schedule`` argument of ``start_trial``: None when the trial has DP off (the
    contract refuses a schedule then), else every enrolled hospital's entry."""
    if not trial["dp"]["enabled"]:
        log.info("trial %s has DP off: no DP schedule", trial["trial_id"])
        return None
    counts = enrolled_training_records(enrolments)
    started = time.monotonic()
    log.info(
        "trial %s: computing the DP schedule of %d hospitals (%d distinct training-record counts) with Opacus",
        trial["trial_id"],
        len(counts),
        len(set(counts.values())),
    )
    schedule = schedule_for(trial, counts, progress=progress)
    for msp_id, entry in schedule.items():
        log.info(
            "trial %s DP schedule of %s: %d records, noise multiplier %.6f, steps per round %d, "
            "cumulative epsilon %s, update norm bound %s",
            trial["trial_id"],
            msp_id,
            entry["training_records"],
            entry["noise_multiplier_micro"] / 1_000_000,
            entry["steps_per_round"],
            [e / 1_000_000 for e in entry["epsilon_micro"]],
            "none"
            if entry["max_update_norm_milli"] is None
            else entry["max_update_norm_milli"] / 1000,
        )
    log.info(
        "trial %s: DP schedule computed in %.1f s", trial["trial_id"], time.monotonic() - started
    )
    return schedule
