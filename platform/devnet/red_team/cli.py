"""`python -m devnet.red_team`: a silo agent process that runs an attack.

Run as::

    python -m devnet.red_team --attack NAME [attack options] <the arguments of `bcfl silo run`>

``--attack`` and the attack options are this harness's own; everything else goes unchanged to
the silo ``run`` command, which then drives the attacking subclass instead of
:class:`~silo_agent.agent.SiloAgent`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from bcfl_cli.main import run_click
from bcfl_common.errors import ConfigError
from devnet.red_team.base import AttackingSilo
from devnet.red_team.free_riding import (
    AggregateCopySilo,
    AggregateReencryptedSilo,
    InflatedWeightSilo,
    ReencryptedCopySilo,
    ThiefSilo,
    ZeroUpdateSilo,
)
from devnet.red_team.poisoning import BackdoorSilo, LabelFlipSilo, SignFlipSilo
from devnet.red_team.voting import VoteDownSilo, WrongAttestationSilo
from silo_agent.agent import SiloAgent
from silo_agent.cli import run_command_for

PROG = "python -m devnet.red_team"

ATTACKS: dict[str, type[AttackingSilo]] = {
    cls.ATTACK: cls
    for cls in (
        SignFlipSilo,
        BackdoorSilo,
        LabelFlipSilo,
        ZeroUpdateSilo,
        InflatedWeightSilo,
        ReencryptedCopySilo,
        AggregateCopySilo,
        AggregateReencryptedSilo,
        ThiefSilo,
        VoteDownSilo,
        WrongAttestationSilo,
    )
}

# Command-line spelling of every attack option: (flag, type); each attack takes only its own.
OPTION_FLAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "scale": ("--scale", float),
    "trigger_column": ("--trigger-column", int),
    "trigger_value": ("--trigger-value", float),
    "claimed_records": ("--claimed-records", int),
    "victim": ("--victim", str),
    "colluders": ("--colluders", str),
}


def attack_class(attack: str) -> type[AttackingSilo]:
    if attack not in ATTACKS:
        raise ConfigError(f"--attack: got {attack!r}, expected one of {sorted(ATTACKS)}")
    return ATTACKS[attack]


def attacker(attack: str, **options: Any) -> Callable[..., SiloAgent]:
    """The agent factory for ``attack``: call it like the agent class (``(config, **options)``).
    ``options`` are the attack's own (None means its default); others are refused."""
    cls = attack_class(attack)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(cls.OPTIONS))
    if unknown:
        flags = [OPTION_FLAGS[k][0] if k in OPTION_FLAGS else k for k in unknown]
        raise ConfigError(
            f"attack {attack!r}: got option(s) {flags}, expected only "
            f"{[OPTION_FLAGS[k][0] for k in cls.OPTIONS] or 'none'}"
        )
    return functools.partial(cls, **given)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This harness's options, and the rest (the `bcfl silo run` arguments) untouched."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        add_help=False,  # --help goes on to the run command, which lists its own options
        allow_abbrev=False,
    )
    parser.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    for name, (flag, kind) in OPTION_FLAGS.items():
        parser.add_argument(flag, dest=name, type=kind, default=None)
    return parser.parse_known_args(argv)


def attack_options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}


def main(argv: list[str] | None = None) -> None:
    """Entry point: like `bcfl silo run`, a BcflError is one line on stderr and its exit code."""
    args, rest = parse_args(list(sys.argv[1:] if argv is None else argv))
    label = f"{PROG} --attack {args.attack}"
    try:
        factory = attacker(args.attack, **attack_options(args))
    except ConfigError as exc:  # the same one line as run_click prints for the run's errors
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    run_click(run_command_for(factory), rest, label)
