"""`bcfl silo enroll | run | status`: the hospital's commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from bcfl_common.errors import BcflError, ConfigError
from silo_agent.config import SiloConfig, load_config

if TYPE_CHECKING:
    from silo_agent.agent import SiloAgent

CONFIG_HELP = (
    "Silo TOML file (see silo_agent.config); keys may be overridden by BCFL_SILO_* variables."
)


def _config(path: str | None, trial: str | None = None) -> SiloConfig:
    config = load_config(path)
    if trial:
        config.trials = [trial]
    return config


@click.group("silo")
def silo_group() -> None:
    """Run a hospital's silo agent: enrol in trials, train and vote in rounds, show status."""


@silo_group.command("enroll")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), required=True, help=CONFIG_HELP
)
@click.option("--trial", "trial_id", required=True, help="Trial to ask enrolment in.")
def enroll_command(config_path: str, trial_id: str) -> None:
    """Enrol this hospital in a trial, in transactions it signs itself: register its dataset on
    the ledger if not yet ([data] dataset_id, its row count, a salted hash of the data file and
    [privacy] lifetime_epsilon, the dataset's epsilon over every trial), register its X25519 key
    with the dataset and the size of its training split for the trial, then ask the coordinator
    to enrol it. The admin can only enrol the key registered here, and the contract bounds every
    sample weight the hospital reveals by that training split's size."""
    from consortium.identity import load_identity

    config = _config(config_path)
    identity = load_identity(config.identity)
    try:
        from consortium.coordinator_client import CoordinatorClient
    except ImportError as exc:
        raise ConfigError(
            "consortium.coordinator_client is not available in this installation; expected the "
            "coordinator client (CoordinatorClient) to post enrolment requests",
            code="NOT_AVAILABLE",
        ) from exc
    from consortium.ledger import open_ledger
    from silo_agent.enrolment import enrol

    client = CoordinatorClient(config.coordinator_url, identity)
    ledger = open_ledger(config.ledger_url, identity)
    try:
        registration = enrol(ledger, identity, config, trial_id)
        result = client.request_enrolment(trial_id, identity.encryption_public_key_pem())
    finally:
        ledger.close()
        close = getattr(client, "close", None)
        if close is not None:
            close()
    click.echo(
        f"key registered for {identity.msp_id} in trial {trial_id!r}: dataset "
        f"{registration['dataset_id']!r}, {registration['training_records']} training records"
    )
    click.echo(
        f"enrolment requested for {identity.msp_id} in trial {trial_id!r} at {config.coordinator_url}"
    )
    if result is not None:
        click.echo(
            json.dumps(result, indent=2, default=str) if not isinstance(result, str) else result
        )


def run_silo(
    config: SiloConfig,
    *,
    agent_class: Callable[..., SiloAgent] | None = None,
    once: bool = False,
    until_complete: bool = False,
    poll_seconds: float | None = None,
) -> None:
    """What `bcfl silo run` does: follow the ledger and take part in every round.

    ``agent_class`` builds the agent (``agent_class(config, report=...)``, default
    :class:`~silo_agent.agent.SiloAgent`); ``devnet.red_team`` passes its attacking subclasses.
    """
    from rich.console import Console

    from silo_agent.agent import SiloAgent
    from silo_agent.steps import Step, all_done

    make_agent = agent_class if agent_class is not None else SiloAgent
    console = Console(stderr=False)
    poll = poll_seconds if poll_seconds is not None else config.poll_seconds
    styles = {"info": "", "warning": "yellow", "error": "bold red"}

    def show(step: Step) -> None:
        style = styles.get(step.level, "")
        console.print(
            f"[dim]{time.strftime('%H:%M:%S')}[/dim] "
            + (f"[{style}]{step}[/{style}]" if style else str(step)),
            highlight=False,
        )

    agent = make_agent(config, report=show)
    console.print(
        f"silo agent for [bold]{agent.msp_id}[/bold]: ledger {config.ledger_url}, state {config.state_dir}",
        highlight=False,
    )
    cursor = agent.state.cursor()
    try:
        agent.check_followed_trials()
        with console.status("waiting for the ledger...", spinner="dots") as status:
            while True:
                agent.tick()
                if agent.data_errors:
                    # Nothing was sent for these trials; the hospital must fix its data first.
                    raise next(iter(agent.data_errors.values()))
                height = agent.ledger.height()
                if height > cursor:
                    # The events only wake the loop up; the tick reads the records themselves.
                    for _ in agent.ledger.events(cursor):
                        pass
                    cursor = height
                    agent.state.set_cursor(cursor)
                if once:
                    break
                trials = agent.my_trials()
                if until_complete and all_done(trials):
                    console.print(
                        "every followed trial is "
                        + ", ".join(f"{t['trial_id']}: {t['state']}" for t in trials)
                    )
                    break
                status.update(_progress_line(agent, trials))
                time.sleep(poll)
    except KeyboardInterrupt:
        console.print("stopped; run again to resume (the journal keeps every step)")
    finally:
        agent.close()


def run_command_for(agent_class: Callable[..., SiloAgent] | None = None) -> click.Command:
    """The `run` command (its options are the `bcfl silo run` arguments) driving ``agent_class``."""

    @click.command("run")
    @click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), required=True, help=CONFIG_HELP
    )
    @click.option(
        "--trial",
        "trial_id",
        default=None,
        help="Only this trial (default: every trial this hospital is enrolled in).",
    )
    @click.option("--once", is_flag=True, help="Do every step that is due now, then exit.")
    @click.option(
        "--until-complete",
        is_flag=True,
        help="Exit when every followed trial is COMPLETED or HALTED.",
    )
    @click.option(
        "--poll",
        "poll_seconds",
        type=float,
        default=None,
        help="Seconds between ledger polls (default from config).",
    )
    def run_command(
        config_path: str,
        trial_id: str | None,
        once: bool,
        until_complete: bool,
        poll_seconds: float | None,
    ) -> None:
        """Follow the ledger and take part in every round (resumes safely after a restart)."""
        run_silo(
            _config(config_path, trial_id),
            agent_class=agent_class,
            once=once,
            until_complete=until_complete,
            poll_seconds=poll_seconds,
        )

    return run_command


silo_group.add_command(run_command_for())


def _progress_line(agent: Any, trials: list[dict[str, Any]]) -> str:
    parts = []
    for trial in trials:
        current = trial.get("current")
        phase = ""
        if current is not None and trial["state"] == "RUNNING":
            try:
                rnd = agent.ledger.evaluate("get_round", {"trial_id": trial["trial_id"]})
                phase = f" round {rnd['round']}/{trial['rounds']} {rnd['phase']}"
            except BcflError:
                phase = ""
        parts.append(f"{trial['trial_id']}: {trial['state']}{phase}")
    return "waiting: " + ("; ".join(parts) if parts else "no trial enrolled yet")


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------


def _acceptance(agent: Any, rnd: dict[str, Any]) -> dict[str, Any] | None:
    from bcfl_common.errors import ContractError

    try:
        return agent.ledger.evaluate(
            "get_acceptance",
            {"trial_id": rnd["trial_id"], "round": rnd["round"], "attempt": rnd["attempt"]},
        )
    except ContractError as exc:
        if exc.code == "NOT_FOUND":  # voting not closed yet
            return None
        raise


def _decision(acceptance: dict[str, Any] | None, msp_id: str) -> dict[str, Any] | None:
    """What the contract decided about this silo in a round: its update's outcome and its reward
    (as a candidate and as a voter)."""
    if acceptance is None:
        return None
    candidate = (acceptance.get("candidates") or {}).get(msp_id)
    voter = (acceptance.get("voters") or {}).get(msp_id)
    return {
        "reason": None if candidate is None else candidate.get("reason"),
        "improvement_micro": None if candidate is None else candidate.get("improvement_micro"),
        "update_reward": None if candidate is None else candidate.get("reward"),
        "voter_reward": None if voter is None else voter.get("reward"),
        "agreed": None if voter is None else voter.get("agreed"),
        "judged": None if voter is None else voter.get("judged"),
        "reward": (acceptance.get("rewards") or {}).get(msp_id),
    }


def _dataset_budget(agent: Any, enrolment: dict[str, Any] | None) -> dict[str, Any] | None:
    dataset_id = (enrolment or {}).get("dataset_id")
    if dataset_id is None:
        return None
    budget = agent.ledger.evaluate(
        "get_dataset_budget", {"msp_id": agent.msp_id, "dataset_id": dataset_id}
    )
    return {
        "dataset_id": dataset_id,
        "lifetime_epsilon": budget["lifetime_epsilon_micro"] / 1e6,
        "committed_epsilon": budget["committed_micro"] / 1e6,
        "remaining_epsilon": budget["remaining_micro"] / 1e6,
        "trials": budget["trials"],
    }


def collect_status(agent: Any) -> dict[str, Any]:
    """Everything `status` shows, as JSON-ready data."""
    from privacy.dp import PrivacyAccountant

    out: dict[str, Any] = {"msp_id": agent.msp_id, "trials": []}
    for trial in agent.my_trials():
        trial_id = trial["trial_id"]
        enrolment = agent.enrolment(trial_id)
        privacy = agent.ledger.evaluate(
            "get_privacy_ledger", {"trial_id": trial_id, "msp_id": agent.msp_id}
        )[0]
        rewards = agent.ledger.evaluate(
            "get_rewards", {"trial_id": trial_id, "msp_id": agent.msp_id}
        )
        account = next(
            (a for a in rewards["accounts"] if a["msp_id"] == agent.msp_id),
            {"total": 0, "entries": []},
        )
        local_epsilon = None
        path = agent.state.accountant_path(trial_id)
        if path.exists():
            local_epsilon = PrivacyAccountant.open(path).epsilon()
        budget = privacy["budget_micro"]
        journal = agent.state.journal(trial_id)
        metrics = agent.state.metrics(trial_id)
        charged = {(e["round"], e["attempt"]): e["epsilon_micro"] for e in privacy["entries"]}
        rounds = []
        for rnd in agent.ledger.evaluate("list_rounds", {"trial_id": trial_id}):
            key = f"{rnd['round']}.{rnd['attempt']}"
            entry = journal["rounds"].get(key, {})
            m = metrics.get(str(rnd["round"])) if rnd["phase"] == "FINALIZED" else None
            rounds.append(
                {
                    "round": rnd["round"],
                    "attempt": rnd["attempt"],
                    "phase": rnd["phase"],
                    "submitted": "update" in entry,
                    "accepted": agent.msp_id in rnd["accepted"],
                    "skipped": entry.get("skipped"),
                    # what the contract charged for this round's reveal (from the DP schedule)
                    "epsilon_micro": charged.get((rnd["round"], rnd["attempt"])),
                    "findings": (entry.get("votes") or {}).get("findings"),
                    "decision": _decision(_acceptance(agent, rnd), agent.msp_id),
                    "model_sha256": (rnd.get("model") or {}).get("sha256"),
                    "validation": (m or {}).get("validation"),
                    "test": (m or {}).get("test"),
                    "halt": (rnd.get("halt") or {}).get("reason"),
                }
            )
        out["trials"].append(
            {
                "trial_id": trial_id,
                "state": trial["state"],
                "rounds": trial["rounds"],
                "finalized_rounds": trial["head"]["round"],
                "current": trial["current"],
                "dp_enabled": trial["dp"]["enabled"],
                "training_records": (enrolment or {}).get("training_records"),
                "dataset": _dataset_budget(agent, enrolment),
                "epsilon_spent": privacy["epsilon_spent_micro"] / 1e6,
                "epsilon_budget": None if budget is None else budget / 1e6,
                "epsilon_remaining": None
                if budget is None
                else (budget - privacy["epsilon_spent_micro"]) / 1e6,
                "epsilon_local_accountant": local_epsilon,
                "rewards_total": account["total"],
                "rewards": account["entries"],
                "initial_metrics": metrics.get("0"),
                "problem": journal.get("problem"),
                "round_details": rounds,
            }
        )
    return out


@silo_group.command("status")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), required=True, help=CONFIG_HELP
)
@click.option("--trial", "trial_id", default=None, help="Only this trial.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of tables.")
def status_command(config_path: str, trial_id: str | None, as_json: bool) -> None:
    """Show this hospital's trials, its datasets' lifetime epsilon budgets, and per round: epsilon
    charged, the findings it gave on its peers, what the contract decided about its own update
    (reason, improvement, reward) and the local metrics of each finalized model."""
    from silo_agent.agent import SiloAgent

    config = _config(config_path, trial_id)
    agent = SiloAgent(config)
    try:
        status = collect_status(agent)
    finally:
        agent.close()
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    _print_status(status)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    trials = Table(title=f"Trials of {status['msp_id']}")
    for column in (
        "trial",
        "state",
        "rounds",
        "DP",
        "epsilon spent",
        "epsilon remaining",
        "dataset (lifetime epsilon remaining)",
        "rewards",
        "problem",
    ):
        trials.add_column(column)
    for t in status["trials"]:
        trials.add_row(
            t["trial_id"],
            t["state"],
            f"{t['finalized_rounds']}/{t['rounds']}",
            "on" if t["dp_enabled"] else "off",
            _fmt(t["epsilon_spent"]),
            _fmt(t["epsilon_remaining"]),
            "-"
            if t["dataset"] is None
            else f"{t['dataset']['dataset_id']} ({_fmt(t['dataset']['remaining_epsilon'])} of "
            f"{_fmt(t['dataset']['lifetime_epsilon'])})",
            str(t["rewards_total"]),
            t["problem"] or "",
        )
    console.print(trials)
    for t in status["trials"]:
        table = Table(title=f"Rounds of {t['trial_id']}")
        for column in (
            "round",
            "phase",
            "submitted",
            "accepted",
            "epsilon",
            "decision",
            "improvement",
            "reward",
            "findings given",
            "val acc",
            "val loss",
            "test acc",
            "note",
        ):
            table.add_column(column)
        for r in t["round_details"]:
            val, test = r["validation"] or {}, r["test"] or {}
            decision = r["decision"] or {}
            table.add_row(
                f"{r['round']}.{r['attempt']}",
                r["phase"],
                "yes" if r["submitted"] else "no",
                "yes" if r["accepted"] else "no",
                _fmt(None if r["epsilon_micro"] is None else r["epsilon_micro"] / 1e6, 4),
                _fmt(decision.get("reason")),
                _fmt(
                    None
                    if decision.get("improvement_micro") is None
                    else decision["improvement_micro"] / 1e6,
                    4,
                ),
                _fmt(decision.get("reward")),
                _findings_text(r["findings"]),
                _fmt(val.get("accuracy")),
                _fmt(val.get("loss")),
                _fmt(test.get("accuracy")),
                r["skipped"] or r["halt"] or "",
            )
        console.print(table)


def _findings_text(findings: dict[str, Any] | None) -> str:
    """``peer: problem`` or ``peer: score [+- error] (norm, similarity)`` per peer, for the
    rounds table."""
    if not findings:
        return ""
    parts = []
    for peer, f in sorted(findings.items()):
        if f["problem"]:
            parts.append(f"{peer}: {f['problem']}")
        else:
            se = f.get("score_se_micro")
            error = f" +- {se / 1e6:.4f}" if se is not None else ""
            parts.append(
                f"{peer}: {f['score_micro'] / 1e6:+.4f}{error} (norm {f['norm_milli'] / 1000:.3f}, "
                f"similarity {f['similarity_micro'] / 1e6:.3f})"
            )
    return "; ".join(parts)
