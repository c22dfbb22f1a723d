"""Typed ledger records: the exact shape of every JSON document the contract stores and returns.

The records ARE JSON documents whose canonical bytes are hashed into blocks, so they are typed as
``TypedDict``s: the contract builds and stores plain dicts (no conversion layer that could change
a byte), mypy checks every access against these shapes, and the clients and the API validate what
they read with pydantic (``TypeAdapter(Trial).validate_python(...)``; FastAPI uses them as
``response_model``, so ``/openapi.json`` documents every response).

Units: no float decides anything on the ledger. Scores, thresholds and epsilons are ints in
micro-units (``*_micro``), gradient norms in milli-units (``*_milli``), weights and rewards are
ints, ``delta`` is a reduced fraction ``[num, den]``. Keys are composite keys of the record name
and its attributes; ``r`` and ``a`` (round and attempt) are zero-padded to 6 digits in keys.
"""

from __future__ import annotations

from typing import Any, Literal

from typing_extensions import TypedDict

from bcfl_common.vocabulary import OrganisationKind, Phase, Problem, Role, TrialState

# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------


class Who(TypedDict):
    """Who made a transaction: the creator's organisation, certificate CN and bcfl role."""

    msp_id: str
    name: str
    role: Role


class ModelRef(TypedDict):
    """An artifact reference: content id in the store (null for attested models a silo can rebuild
    from the base model and the round's aggregate) and the sha256 of its bytes."""

    content_id: str | None
    sha256: str


class DpEnabled(TypedDict):
    enabled: Literal[True]
    target_epsilon_micro: int  # for the whole trial, per hospital
    delta: list[int]  # [num, den], reduced
    max_grad_norm_milli: int
    local_epochs: int
    accountant: Literal["rdp", "prv"]
    grad_sample_mode: Literal["ghost", "hooks"]


class Disabled(TypedDict):
    """DP or HE switched off, explicitly and with its reason recorded."""

    enabled: Literal[False]
    reason: str | None


class HeEnabled(TypedDict):
    enabled: Literal[True]
    preset: str


DpPolicy = DpEnabled | Disabled
HePolicy = HeEnabled | Disabled


class Evaluation(TypedDict):
    """How peer votes decide a round (``chaincode.rules.judge_round``)."""

    acceptance_threshold_micro: int  # harmful: a score below minus this
    min_voters: int
    reward_per_round: int  # the pool of each round
    max_weight_share_micro: int  # cap on an accepted update's share of the aggregation weight
    duplicate_similarity_micro: int  # cosine similarity at/above which an update is a duplicate
    max_norm_ratio_milli: int  # outlier: a norm over this multiple of the round's reference norm
    max_update_norm_milli: int | None  # absolute norm bound (null: from the DP schedule, or none)
    voter_reward_share_micro: int  # the part of the pool paid to voters for agreement
    # harmful only beyond this many standard errors of the score (milli), when over the threshold
    harm_se_milli: int
    # "sqrt_sample_weight": outliers judged per square root of sample weight; "none": raw norms
    norm_outlier_scaling: str


class PhaseSeconds(TypedDict):
    submit: int
    reveal: int
    vote_commit: int
    vote_reveal: int


class ModelSpec(TypedDict):
    name: str
    hyperparameters: dict[str, Any]


class RoundPointer(TypedDict):
    round: int
    attempt: int


class Head(TypedDict):
    """The base of the next round (round 0 is the trial's initial model)."""

    round: int
    attempt: int
    model: ModelRef


class LineageEntry(TypedDict):
    round: int
    attempt: int
    model: ModelRef
    finalized_at: int


class Rollback(TypedDict):
    from_round: int
    from_attempt: int
    to_round: int
    to_attempt: int
    reason: str | None
    at: int
    by: Who
    rounds_before: int  # the plan before and after (a rollback may shorten it)
    rounds_after: int


class TrialHalt(TypedDict):
    """Why a trial is HALTED. ``code``: HALTED_BY_ADMIN (halt_trial), TOO_FEW_HOSPITALS (fewer
    than min_silos enrolled, or the last round fell short of min_silos and its retries ran out),
    RETRIES_EXHAUSTED (a round failed more than ``max_retries`` times in a row), BUDGETS_SPENT
    (too few hospitals have a reveal left in their DP schedules for the next round)."""

    code: str
    reason: str
    at: int
    by: Who


class Resume(TypedDict):
    """A HALTED trial set RUNNING again by the admin (``resume_trial``), with the halt it
    ended and the plan it allowed (``rounds`` before and after, when shortened)."""

    reason: str
    at: int
    by: Who
    halt: TrialHalt
    rounds_before: int
    rounds_after: int


# ---------------------------------------------------------------------------------------------
# Records, one per composite-key type
# ---------------------------------------------------------------------------------------------


class OrganisationEntry(TypedDict):
    msp_id: str
    kind: OrganisationKind


class ConsortiumRecord(TypedDict):
    """("consortium", []): the organisations and who initialised the contract."""

    organisations: dict[str, OrganisationEntry]
    initialised_at: int
    initialised_by: Who


class Trial(TypedDict):
    """("trial", [trial_id])."""

    trial_id: str
    task: str
    data_schema: dict[str, Any]
    model: ModelSpec
    initial_model: ModelRef
    rounds: int
    min_silos: int
    dp: DpPolicy
    he: HePolicy
    evaluation: Evaluation
    phase_seconds: PhaseSeconds
    state: TrialState
    created_at: int
    created_by: Who
    state_changed_at: int
    enrolled_at_start: list[str] | None
    halt: TrialHalt | None
    current: RoundPointer | None  # the latest opened round
    attempts: dict[str, int]  # "r" -> how many attempts were opened
    head: Head
    lineage: list[LineageEntry]  # the current chain, round 1..head
    rollbacks: list[Rollback]
    final_round: int  # the plan: the trial completes at this round (<= rounds, the DP horizon)
    max_retries: int  # how many failed attempts in a row a round may have before the trial halts
    failed_attempts: int  # failed attempts since the last finalized round, rollback or resume
    resumes: list[Resume]
    # two commitments to the same bytes closer than this in time are a tie (nobody owns them):
    # on Fabric a transaction's time is its client's, within the peers' time window
    clock_tolerance_seconds: int


class Enrolment(TypedDict):
    """("enrolment", [trial_id, msp_id])."""

    trial_id: str
    msp_id: str
    status: Literal["enrolled", "removed"]
    encryption_public_key: str  # base64 of the raw 32-byte X25519 key
    enrolled_at: int
    enrolled_by: Who
    removed_at: int | None  # null while enrolled
    removed_by: Who | None
    removal_reason: str | None
    dataset_id: str  # the hospital's own registered dataset it trains on (from its KeyRegistration)
    training_records: int  # records it trains on: bounds every sample weight it reveals


class KeyRegistration(TypedDict):
    """("encryption_key", [trial_id, msp_id]): the X25519 key a hospital registered itself (the
    transaction is signed by the hospital, so the record names no one else), with the dataset
    it will train on and how many of its records."""

    trial_id: str
    msp_id: str
    encryption_public_key: str  # base64 of the raw 32-byte X25519 key
    registered_at: int
    dataset_id: str  # one of the hospital's own datasets
    training_records: int  # 1..that dataset's records


class Dataset(TypedDict):
    """("dataset", [msp_id, dataset_id]): a hospital's registered training data, once.

    ``commitment`` is a salted sha256 of the data file (the hospital can later show which file it
    was); ``records`` bounds the training_records of every enrolment on it; the epsilon that all
    trials on it may spend together is ``lifetime_epsilon_micro`` (see DatasetBudget)."""

    msp_id: str
    dataset_id: str
    commitment: str
    records: int
    lifetime_epsilon_micro: int
    registered_at: int
    trials: list[str]  # every trial it was enrolled in, in order of first enrolment


class ScheduleEntry(TypedDict):
    """One hospital's public DP schedule in a trial (``privacy.dp.schedule.schedule_entry``
    computes it with Opacus; the contract checks only its shape and bounds)."""

    training_records: int  # == the enrolment's
    batches_per_epoch: int
    steps_per_round: int
    noise_multiplier_micro: int
    epsilon_micro: list[int]  # cumulative epsilon after 1..rounds reveals, non-decreasing
    max_update_norm_milli: int | None  # null: no bound follows from the policy


class DpSchedule(TypedDict):
    """("dp_schedule", [trial_id]): recorded by start_trial for a trial with DP on; each reveal
    of hospital h is charged ``epsilon_micro[k] - epsilon_micro[k - 1]`` of h's entry."""

    trial_id: str
    entries: dict[str, ScheduleEntry]  # msp_id -> entry, exactly the hospitals enrolled at start
    recorded_at: int
    recorded_by: Who


class TrialKeys(TypedDict):
    """("trial_keys", [trial_id]): the trial's public CKKS context and the sealed secret contexts."""

    trial_id: str
    msp_id: str  # the hospital that made the keys
    public_context: ModelRef
    envelopes: dict[str, ModelRef]  # msp_id -> sealed secret context
    recorded_at: int


class Aggregate(TypedDict):
    content_id: str
    sha256: str
    update_sha256s: list[str]
    total_weight: int
    recorded_at: int
    recorded_by: Who


class _RoundHaltFields(TypedDict):
    code: str
    reason: str
    at: int
    by: Who


# Optional keys by ``total=False`` rather than ``NotRequired``: with postponed annotations the
# runtime (pydantic, __required_keys__) cannot see a ``NotRequired`` and would demand the key.
class RoundHalt(_RoundHaltFields, total=False):
    """Why a round halted: ``code`` is NO_COMMITMENTS, NO_REVEALS, NO_CANDIDATES (every revealed
    update was excluded as duplicate content), TOO_FEW_HOSPITALS (fewer than min_silos committed,
    were candidates or were accepted), NO_VOTES, NONE_ACCEPTED, ATTESTATION_MISMATCH (with the
    attested hashes), ABORTED or TRIAL_HALTED. ``retry``: the coordinator opens the next attempt
    (the failure counted against the trial's max_retries); false when the trial halted with it
    or the admin must decide (ABORTED)."""

    attestations: dict[str, str]  # msp_id -> attested sha256 (ATTESTATION_MISMATCH only)
    phase: Phase  # the phase the round halted in
    retry: bool
    failed_attempts: int  # the trial's failed attempts in a row, this one included
    trial_halted: str  # the code the trial halted with, in the same transaction


class Dispute(TypedDict):
    """An attestation of another hash than the one the round finalized with."""

    msp_id: str
    sha256: str
    at: int
    against: str  # the finalized sha256


class Exclusion(TypedDict):
    """Why a revealed update is not a candidate of its round: the same bytes were revealed by
    another hospital in the same attempt and ``owner`` committed to them first (null: the
    earliest commitment time was shared, so nobody owns them)."""

    reason: Literal["duplicate_content"]
    sha256: str
    owner: str | None


class _RoundFields(TypedDict):
    trial_id: str
    round: int
    attempt: int
    phase: Phase
    base: Head
    enrolled: list[str]
    opened_at: int
    opened_by: Who
    phase_changed_at: int
    deadline: int | None  # of the current phase
    deadlines: dict[str, int]  # PhaseDuration -> deadline, set as each phase starts
    committed: list[str]
    candidates: list[str]
    excluded: dict[str, Exclusion]  # msp_id -> why its revealed update is not a candidate
    vote_committed: list[str]
    accepted: list[str]
    accepted_sha256s: list[str]
    total_weight: int
    participants: list[str]
    attestation_quorum: int | None
    aggregate: Aggregate | None
    model: ModelRef | None
    finalized_at: int | None
    halt: RoundHalt | None
    disputes: list[Dispute]


class Round(_RoundFields, total=False):
    """("round", [trial_id, r, a]). ``sequence``: the attempt's place among the trial's attempts
    in the order they were opened (1, 2, ...; rounds re-run after a rollback come later), which
    round numbers do not give; absent on attempts opened before it was recorded."""

    sequence: int


class _UpdateFields(TypedDict):
    trial_id: str
    round: int
    attempt: int
    msp_id: str
    base_model_sha256: str
    commitment: str
    committed_at: int
    revealed: bool
    content_id: str | None
    sha256: str | None
    sample_weight: int | None  # <= the enrolment's training_records
    epsilon_spent_micro: int | None  # charged by the contract from the DP schedule (0: DP off)
    salt: str | None
    revealed_at: int | None


class Update(_UpdateFields, total=False):
    """("update", [trial_id, r, a, msp_id]): a hospital's commitment, then its reveal; or, when
    its bytes went out but the reveal did not land, its disclosure (``disclosed_at``: still not
    revealed, no candidate, but charged and its content owned; ``chaincode.contract.disclosure``)."""

    disclosed_at: int
    claimed_by: Claim  # its bytes were disclosed under a commitment proven earlier: a copy


class Claim(TypedDict):
    """Who proved, by disclosing under an earlier commitment, that an update's bytes were its
    own (``chaincode.contract.disclosure``): its update's round attempt and the time."""

    msp_id: str
    round: int
    attempt: int
    at: int


class Finding(TypedDict):
    """What one voter found about one peer's update (every field present, null spelled out)."""

    score_micro: int  # decrease of the voter's validation log-loss, micro-units
    # its standard error over the voter's validation rows (sd of the per-row decreases /
    # sqrt(rows)), micro-units; null with a problem, or when the voter does not report one
    score_se_micro: int | None
    norm_milli: (
        int | None
    )  # ceil(1000 * L2 norm of the update's parameter delta); null with a problem
    similarity_micro: int | None  # max cosine similarity with earlier updates/aggregates, 0..1e6
    problem: Problem | None  # what made the update unusable, or null


class Vote(TypedDict):
    """("vote", [trial_id, r, a, msp_id]): a voter's commitment, then its findings."""

    trial_id: str
    round: int
    attempt: int
    msp_id: str
    commitment: str
    committed_at: int
    revealed: bool
    findings: dict[str, Finding] | None  # peer msp_id -> finding
    salt: str | None
    revealed_at: int | None


AcceptanceReason = Literal[
    "accepted",
    "not_enrolled",
    "too_few_votes",
    "invalid",
    "norm_exceeded",
    "norm_outlier",
    "duplicate",
    "harmful",
]


class FindingCounts(TypedDict):
    """How many of a candidate's voters reported each reason to reject it."""

    problem: int
    norm_exceeded: int
    norm_outlier: int
    duplicate: int
    harmful: int


class CandidateDecision(TypedDict):
    sha256: str
    sample_weight: int
    findings: dict[str, Finding]  # voter -> its finding (the counted voters only)
    votes: int
    required_votes: int
    counts: FindingCounts
    problem: Problem | None  # the most reported problem when the reason is "invalid"
    norm_bound_milli: int | None
    norm_milli: int | None  # representative: upper median of the reported norms
    accepted: bool
    reason: AcceptanceReason
    improvement_micro: int | None  # accepted only: upper median of the agreeing voters' scores
    improves: bool
    weight: int  # capped aggregation weight (0 unless accepted)
    reward: int  # the update reward (voter rewards are in Acceptance.voters)


class VoterRecord(TypedDict):
    judged: int  # candidates it gave a finding for whose outcome the votes decided
    agreed: int  # of those, how many its own verdict matched
    reward: int  # its voter reward
    harm_floor_micro: int  # a score under this is harmful in its eyes (rules.harm_floor)


class Acceptance(TypedDict):
    """("acceptance", [trial_id, r, a]): what the votes decided, computed at close_voting."""

    trial_id: str
    round: int
    attempt: int
    threshold_micro: int
    min_voters: int
    computed_at: int
    voters_revealed: list[str]
    voters_missing: list[str]
    policy: Evaluation  # the evaluation policy used
    norm_bounds: dict[str, int | None]  # candidate -> norm bound used (null: none)
    reference_norm_milli: int | None  # the reference candidate's representative norm (>= 3)
    # its sample weight when the policy scales norms (``chaincode.rules.norm_reference``), else
    # null (absent from acceptances recorded before norm_outlier_scaling)
    reference_sample_weight: int | None
    candidates: dict[str, CandidateDecision]
    voters: dict[str, VoterRecord]
    accepted: list[str]
    rejected: list[str]
    accepted_sha256s: list[str]
    total_weight: int  # sum of the capped weights
    reward_pool: int  # the policy's pool
    paid: int  # what the rewards sum to (what nobody earned is not paid)
    rewards: dict[str, int]  # msp_id -> update reward + voter reward


class Attestation(TypedDict):
    """("attestation", [trial_id, r, a, msp_id])."""

    trial_id: str
    round: int
    attempt: int
    msp_id: str
    sha256: str
    content_id: str | None
    attested_at: int


class Settlement(TypedDict):
    chain_id: int
    tx_hash: str
    recorded_at: int
    recorded_by: Who


class RoundRewards(TypedDict):
    """("round_rewards", [trial_id, r, a])."""

    trial_id: str
    round: int
    attempt: int
    pool: int
    rewards: dict[str, int]
    status: Literal["pending", "credited", "void"]
    settlement: Settlement | None


class RewardEntry(TypedDict):
    round: int
    attempt: int
    amount: int


class RewardAccount(TypedDict):
    """("reward_account", [trial_id, msp_id])."""

    trial_id: str
    msp_id: str
    total: int
    entries: list[RewardEntry]


class PrivacyEntry(TypedDict):
    round: int
    attempt: int
    epsilon_micro: int
    at: int


class PrivacyAccount(TypedDict):
    """("privacy", [trial_id, msp_id]): cumulative epsilon on the ledger, one entry per charged
    reveal; budget: the last epsilon of the hospital's DP schedule entry (the trial's target
    before the schedule is recorded), null with DP off."""

    trial_id: str
    msp_id: str
    budget_micro: int | None
    epsilon_spent_micro: int
    entries: list[PrivacyEntry]


class _ContentOwnerFields(TypedDict):
    trial_id: str
    sha256: str
    round: int
    attempt: int
    revealed_by: list[str]  # by MSP id
    msp_id: str | None  # the owner
    decided_at: int | None


class ContentOwner(_ContentOwnerFields, total=False):
    """("content", [trial_id, sha256]): the round attempt in which these bytes were first revealed
    in the trial (no later attempt may reveal them again), who revealed them in it, and who owns
    them: the earliest commitment, decided at close_update_reveals (null until then, or when the
    earliest commitment time was shared). ``disclosed``: revealed by no one, but opened by its
    author after the attempt's reveals (``chaincode.contract.disclosure``)."""

    disclosed: bool
    claimed_from: list[UpdateRef]  # the copies a disclosure's claim marked ``claimed_by``


class UpdateRef(TypedDict):
    """An update record by its key: (msp_id, round, attempt) within the trial."""

    msp_id: str
    round: int
    attempt: int


# ---------------------------------------------------------------------------------------------
# Query results that are not stored records
# ---------------------------------------------------------------------------------------------


class WhoAmI(TypedDict):
    msp_id: str
    name: str
    role: Role
    organisation_kind: OrganisationKind | None
    member: bool


class DatasetTrial(TypedDict):
    """What one trial takes from a dataset's lifetime epsilon: ``planned`` is the most it may
    spend (the hospital's schedule budget, the trial's target before the schedule; 0 with DP off
    or when the enrolment no longer uses the dataset), ``counted`` is planned while the trial is
    DRAFT, ENROLLING or RUNNING with the hospital enrolled, and what it spent otherwise."""

    state: TrialState
    dp_enabled: bool
    planned_micro: int
    spent_micro: int
    counted_micro: int


class DatasetBudget(TypedDict):
    """get_dataset_budget: remaining = lifetime - committed, committed = sum of counted."""

    msp_id: str
    dataset_id: str
    lifetime_epsilon_micro: int
    committed_micro: int
    remaining_micro: int
    trials: dict[str, DatasetTrial]


class Rewards(TypedDict):
    trial_id: str
    accounts: list[RewardAccount]
    rounds: list[RoundRewards]


class HistoryEntry(TypedDict):
    tx_id: str
    timestamp: int
    is_delete: bool
    value: Any


class Lineage(TypedDict):
    trial_id: str
    initial_model: ModelRef
    head: Head
    rounds: list[LineageEntry]
    rollbacks: list[Rollback]
