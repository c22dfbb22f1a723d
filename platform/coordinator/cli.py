"""`bcfl coordinator ...`: run the coordinator service, migrate its database, and drive trials through its API."""

from __future__ import annotations

import contextlib
import json
import logging
import tomllib
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from bcfl_common.errors import ConfigError
from consortium.ledger.cli import identity_options, resolve_identity
from coordinator.config import DEFAULT_PORT, load_config

log = logging.getLogger(__name__)

config_option = click.option(
    "--config",
    "config_path",
    envvar="BCFL_COORDINATOR_CONFIG",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="coordinator.toml (every key may also come from BCFL_COORDINATOR_<KEY>).",
)


@click.group("coordinator")
def coordinator_group() -> None:
    """The coordinator service: admin, silo and auditor API, round scheduler, encrypted aggregation."""


@coordinator_group.command("serve")
@config_option
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help=f"Port (default {DEFAULT_PORT}).")
@click.option(
    "--no-scheduler", is_flag=True, help="Serve the API only; do not run the round scheduler."
)
def serve_command(
    config_path: Path | None, host: str | None, port: int | None, no_scheduler: bool
) -> None:
    """Run the coordinator API (and its round scheduler) until interrupted."""
    import uvicorn

    from coordinator.app import create_app
    from coordinator.service import CoordinatorService

    config = load_config(
        config_path,
        overrides={"host": host, "port": port, "scheduler": False if no_scheduler else None},
    )
    service = CoordinatorService(config)
    app = create_app(service)
    click.echo(
        f"bcfl coordinator on {config.base_url} (API docs {config.base_url}/docs; "
        f"ledger {config.ledger_url.split(':', 1)[0]}, database {service.database.redacted_url}, "
        f"scheduler {'on' if config.scheduler else 'off'})"
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", lifespan="on")


@coordinator_group.group("db")
def db_group() -> None:
    """The coordinator's database (SQLite by default, PostgreSQL with postgresql://)."""


@db_group.command("upgrade")
@config_option
@click.option("--database-url", default=None, help="Overrides the configured database URL.")
@click.option("--revision", default="head", show_default=True)
def db_upgrade_command(config_path: Path | None, database_url: str | None, revision: str) -> None:
    """Apply the database migrations (the service also does this at every start)."""
    from coordinator.db import Database

    if database_url is None:
        database_url = load_config(config_path).database_url
    database = Database(database_url)
    try:
        database.upgrade(revision)
        click.echo(f"database {database.redacted_url} at revision {database.current_revision()}")
    finally:
        database.close()


# ---------------------------------------------------------------------------------------------
# Admin convenience commands over the API
# ---------------------------------------------------------------------------------------------


def api_options(func):  # type: ignore[no-untyped-def]
    func = identity_options(func)
    func = click.option(
        "--url",
        envvar="BCFL_COORDINATOR_URL",
        default=f"http://127.0.0.1:{DEFAULT_PORT}",
        show_default=True,
        help="The coordinator's base URL.",
    )(func)
    return func


def _client(
    url: str, identity_dir: Path | None, consortium_dir: Path | None, member: str | None
) -> Any:
    from consortium.coordinator_client import CoordinatorClient

    return CoordinatorClient(
        url, resolve_identity(identity_dir, consortium_dir, member, default="admin")
    )


def _emit(data: Any, as_json: bool, render: Any = None) -> None:
    if as_json or render is None:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(data)


def _show_trial(trial: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"trial {trial['trial_id']}", show_header=False)
    current = trial.get("current")
    head = trial["head"]
    rows = [
        ("state", trial["state"]),
        ("task", trial["task"]),
        ("model", f"{trial['model']['name']} {json.dumps(trial['model']['hyperparameters'])}"),
        ("rounds", f"{head['round']} of {trial.get('final_round', trial['rounds'])} finalized"),
        (
            "current round",
            "none" if current is None else f"{current['round']} (attempt {current['attempt']})",
        ),
        ("head model", head["model"]["sha256"][:16] + "…"),
        ("min silos", str(trial["min_silos"])),
        (
            "failed attempts",
            f"{trial.get('failed_attempts', 0)} in a row (at most {trial.get('max_retries', 0)} retries)",
        ),
        ("DP", "on" if trial["dp"]["enabled"] else "off"),
        ("HE", trial["he"].get("preset", "off") if trial["he"]["enabled"] else "off"),
    ]
    if trial.get("halt"):
        halt = trial["halt"]
        rows.append(("halted", f"{halt.get('code', 'HALTED_BY_ADMIN')}: {halt['reason']}"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@coordinator_group.group("trial")
def trial_group() -> None:
    """Create, enrol, start, halt, roll back and inspect trials through the coordinator API."""


@trial_group.command("create")
@api_options
@click.option(
    "--spec",
    "spec_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trial spec, TOML (or JSON): trial_id, task, data_schema, model, rounds, min_silos, dp, he, evaluation, phase_seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the trial record as JSON.")
def trial_create(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    spec_path: Path,
    as_json: bool,
) -> None:
    """Create a trial from a spec file and open its enrolment."""
    text = spec_path.read_text()
    try:
        spec = json.loads(text) if spec_path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{spec_path}: cannot be parsed ({exc})") from exc
    with _client(url, identity_dir, consortium_dir, member) as client:
        _emit(client.create_trial(spec), as_json, _show_trial)


@trial_group.command("requests")
@api_options
@click.argument("trial_id")
@click.option(
    "--status", type=click.Choice(["pending", "approved", "rejected", "removed"]), default=None
)
@click.option("--json", "as_json", is_flag=True)
def trial_requests(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    status: str | None,
    as_json: bool,
) -> None:
    """List the hospitals' enrolment requests."""

    def render(rows: list[dict[str, Any]]) -> None:
        table = Table(title=f"enrolment requests of {trial_id}")
        for column in ("msp_id", "status", "requested_by", "decided_by"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                row["msp_id"], row["status"], row["requested_by"], row["decided_by"] or ""
            )
        Console().print(table)

    with _client(url, identity_dir, consortium_dir, member) as client:
        _emit(client.enrolment_requests(trial_id, status), as_json, render)


@trial_group.command("enrol")
@api_options
@click.argument("trial_id")
@click.argument("msp_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
def trial_enrol(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    msp_ids: tuple[str, ...],
    as_json: bool,
) -> None:
    """Approve the pending enrolment requests of MSP_IDS (enrol them on the ledger)."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        records = [client.enrol(trial_id, msp_id) for msp_id in msp_ids]
    _emit(
        records,
        as_json,
        lambda rows: [click.echo(f"enrolled {r['msp_id']} in {trial_id}") for r in rows],
    )


@trial_group.command("remove")
@api_options
@click.argument("trial_id")
@click.argument("msp_id")
@click.option("--reason", default=None)
@click.option("--json", "as_json", is_flag=True)
def trial_remove(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    msp_id: str,
    reason: str | None,
    as_json: bool,
) -> None:
    """Remove an enrolled hospital from a trial."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        _emit(
            client.remove_hospital(trial_id, msp_id, reason),
            as_json,
            lambda r: click.echo(f"removed {r['msp_id']} from {trial_id}"),
        )


@trial_group.command("start")
@api_options
@click.argument("trial_id")
@click.option("--json", "as_json", is_flag=True)
def trial_start(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    as_json: bool,
) -> None:
    """Start a trial (ENROLLING -> RUNNING); the scheduler then runs its rounds.

    With DP on, the coordinator first computes every enrolled hospital's public DP schedule with
    Opacus (about a second per distinct dataset size) and records it with the start."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        console = Console(stderr=True)
        with (
            console.status(
                f"starting {trial_id}: the coordinator computes each hospital's DP schedule (Opacus)",
                spinner="dots",
            )
            if not as_json
            else contextlib.nullcontext()
        ):
            trial = client.start_trial(trial_id)
        if as_json or not trial["dp"]["enabled"]:
            _emit(trial, as_json, _show_trial)
            return
        _show_trial(trial)
        _show_schedule(client.dp_schedule(trial_id))


def _show_schedule(schedule: dict[str, Any]) -> None:
    table = Table(title=f"DP schedule of {schedule['trial_id']} (recorded on the ledger)")
    for column in (
        "hospital",
        "records",
        "noise multiplier",
        "steps / round",
        "cumulative epsilon after each round",
        "update norm bound",
    ):
        table.add_column(column, justify="left" if column == "hospital" else "right")
    for msp_id, entry in sorted(schedule["entries"].items()):
        bound = entry["max_update_norm_milli"]
        table.add_row(
            msp_id,
            str(entry["training_records"]),
            f"{entry['noise_multiplier_micro'] / 1e6:.4f}",
            str(entry["steps_per_round"]),
            " ".join(f"{e / 1e6:.4g}" for e in entry["epsilon_micro"]),
            "none" if bound is None else f"{bound / 1000:.6g}",
        )
    Console().print(table)


@trial_group.command("halt")
@api_options
@click.argument("trial_id")
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
def trial_halt(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    reason: str,
    as_json: bool,
) -> None:
    """Halt a trial (and its open round)."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        _emit(client.halt_trial(trial_id, reason), as_json, _show_trial)


FINAL_ROUND = click.option(
    "--final-round",
    type=click.IntRange(1, 1000),
    default=None,
    help="Shorten the plan: the trial completes after this round (at most its planned rounds).",
)


@trial_group.command("rollback")
@api_options
@click.argument("trial_id")
@click.option(
    "--to-round",
    type=click.IntRange(0, 1000),
    required=True,
    help="The finalized round to reopen training from (0 = initial model).",
)
@click.option("--reason", default=None)
@FINAL_ROUND
@click.option(
    "--abort-current",
    is_flag=True,
    help="Abort the round in progress in the same transaction (else a round in progress refuses).",
)
@click.option("--json", "as_json", is_flag=True)
def trial_rollback(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    to_round: int,
    reason: str | None,
    final_round: int | None,
    abort_current: bool,
    as_json: bool,
) -> None:
    """Roll a trial back to an earlier finalized round.

    Refused up front (INFEASIBLE, naming each hospital's reveals left and the last
    --final-round that would fit) when the hospitals' remaining DP budgets cannot carry the
    rounds after TO_ROUND."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        trial = client.rollback(
            trial_id, to_round, reason, final_round=final_round, abort_current=abort_current
        )
        _emit(trial, as_json, _show_trial)


@trial_group.command("resume")
@api_options
@click.argument("trial_id")
@click.option("--reason", required=True, help="Why the trial may go on (recorded on the ledger).")
@click.option(
    "--to-round",
    type=click.IntRange(0, 1000),
    default=None,
    help="Also roll back to this finalized round (default: go on from the head).",
)
@FINAL_ROUND
@click.option("--json", "as_json", is_flag=True)
def trial_resume(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    reason: str,
    to_round: int | None,
    final_round: int | None,
    as_json: bool,
) -> None:
    """Set a HALTED trial RUNNING again.

    Refused up front when fewer than min_silos hospitals are enrolled, when their remaining
    DP reveals cannot carry the plan (the message says what would fit: pass --final-round to
    shorten it), or when a hospital's dataset gave its epsilon to another trial meanwhile."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        trial = client.resume_trial(trial_id, reason, to_round=to_round, final_round=final_round)
        _emit(trial, as_json, _show_trial)


@trial_group.command("abort")
@api_options
@click.argument("trial_id")
@click.option("--round", "round_number", type=click.IntRange(1, 1000), required=True)
@click.option("--reason", required=True, help="Why (recorded on the ledger).")
@click.option("--json", "as_json", is_flag=True)
def trial_abort(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    round_number: int,
    reason: str,
    as_json: bool,
) -> None:
    """Abort the current round (halt code ABORTED). The scheduler then waits for the admin:
    `trial next`, `trial rollback` or `trial halt`."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        rnd = client.abort_round(trial_id, round_number, reason)

    def render(r: dict[str, Any]) -> None:
        click.echo(
            f"round {r['round']} attempt {r['attempt']} of {trial_id}: {r['phase']} "
            f"({r['halt']['code']}: {r['halt']['reason']})"
        )

    _emit(rnd, as_json, render)


@trial_group.command("next")
@api_options
@click.argument("trial_id")
@click.option("--json", "as_json", is_flag=True)
def trial_next(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    as_json: bool,
) -> None:
    """Open the next round (a new attempt after an aborted one) now."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        rnd = client.open_round(trial_id)

    def render(r: dict[str, Any]) -> None:
        click.echo(
            f"round {r['round']} attempt {r['attempt']} of {trial_id} opened: SUBMIT until "
            f"{r['deadline']}, base model of round {r['base']['round']}"
        )

    _emit(rnd, as_json, render)


@trial_group.command("complete")
@api_options
@click.argument("trial_id")
@click.option("--json", "as_json", is_flag=True)
def trial_complete(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str,
    as_json: bool,
) -> None:
    """Mark a trial COMPLETED (every round finalized; the scheduler also does this)."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        _emit(client.complete_trial(trial_id), as_json, _show_trial)


@trial_group.command("status")
@api_options
@click.argument("trial_id", required=False)
@click.option("--json", "as_json", is_flag=True)
def trial_status(
    url: str,
    identity_dir: Path | None,
    consortium_dir: Path | None,
    member: str | None,
    trial_id: str | None,
    as_json: bool,
) -> None:
    """One trial with its rounds, or every trial when TRIAL_ID is omitted."""
    with _client(url, identity_dir, consortium_dir, member) as client:
        if trial_id is None:
            trials = client.list_trials()

            def render_all(rows: list[dict[str, Any]]) -> None:
                table = Table(title="trials")
                for column in ("trial", "state", "task", "rounds", "current"):
                    table.add_column(column)
                for t in rows:
                    current = t.get("current")
                    halt = t.get("halt")
                    table.add_row(
                        t["trial_id"],
                        t["state"] + (f" ({halt.get('code', 'HALTED_BY_ADMIN')})" if halt else ""),
                        t["task"],
                        f"{t['head']['round']}/{t.get('final_round', t['rounds'])}",
                        "" if current is None else f"{current['round']}.{current['attempt']}",
                    )
                Console().print(table)

            _emit(trials, as_json, render_all)
            return
        data = {
            "trial": client.trial(trial_id),
            "progress": client.progress(trial_id),
            "rounds": client.rounds(trial_id),
            "enrolments": client.enrolments(trial_id),
        }

    def render(d: dict[str, Any]) -> None:
        _show_trial(d["trial"])
        progress = d["progress"]
        who = ", ".join(progress["waiting_for"]) or "nobody"
        click.echo(f"now: {progress['reason']}")
        if progress["state"] == "RUNNING":
            click.echo(f"waiting for: {who}")
        table = Table(title="rounds")
        for column in ("round", "attempt", "phase", "accepted", "model", "halt"):
            table.add_column(column)
        for r in d["rounds"]:
            model = (r.get("model") or {}).get("sha256") or ""
            halt = r.get("halt")
            table.add_row(
                str(r["round"]),
                str(r["attempt"]),
                r["phase"],
                ", ".join(r["accepted"]),
                model[:16],
                "" if not halt else f"{halt['code']}{' (retried)' if halt.get('retry') else ''}",
            )
        Console().print(table)
        enrolled = [e["msp_id"] for e in d["enrolments"] if e["status"] == "enrolled"]
        click.echo(f"enrolled: {', '.join(enrolled) or 'none'}")

    _emit(data, as_json, render)
