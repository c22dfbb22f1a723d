"""Red-team silos for demos and tests: hospitals that follow the protocol but poison their updates.

Run as::

    python -m devnet.red_team --attack sign_flip --scale 10 <the arguments of `bcfl silo run`>

``--attack`` and ``--scale`` are this harness's own; everything else goes unchanged to the silo
`run` command, which then drives the attacking subclass instead of
:class:`~silo_agent.agent.SiloAgent`. The update stays encrypted, committed and revealed like an
honest one: only what is encrypted differs, so the defence under test is the peers' votes.

The production agent has no attack switches; attacks live here only, as overrides of the agent's
one seam, :meth:`~silo_agent.agent.SiloAgent.compute_delta`.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from bcfl_cli.main import run_click
from bcfl_common.errors import ConfigError
from silo_agent.agent import SiloAgent
from silo_agent.cli import run_command_for
from silo_agent.config import SiloConfig

PROG = "python -m devnet.red_team"


class SignFlipSilo(SiloAgent):
    """Sends ``-scale`` times its honest update: pushes the model away from the data."""

    def __init__(self, config: SiloConfig, *, scale: float = 10.0, **options: Any):
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"--scale: got {scale!r}, expected a positive number")
        super().__init__(config, **options)
        self.scale = float(scale)

    def compute_delta(self, base: np.ndarray, trained: np.ndarray) -> np.ndarray:
        return -self.scale * super().compute_delta(base, trained)


ATTACKS: dict[str, type[SiloAgent]] = {"sign_flip": SignFlipSilo}


def attacker(attack: str, *, scale: float = 10.0) -> Callable[..., SiloAgent]:
    """The agent factory for ``attack``: call it like the agent class (``(config, **options)``)."""
    if attack not in ATTACKS:
        raise ConfigError(f"--attack: got {attack!r}, expected one of {sorted(ATTACKS)}")
    return functools.partial(ATTACKS[attack], scale=scale)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This harness's options, and the rest (the `bcfl silo run` arguments) untouched."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        add_help=False,  # --help goes on to the run command, which lists its own options
        allow_abbrev=False,
    )
    parser.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    parser.add_argument("--scale", type=float, default=10.0)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point: like `bcfl silo run`, a BcflError is one line on stderr and its exit code."""
    args, rest = parse_args(list(sys.argv[1:] if argv is None else argv))
    command = run_command_for(attacker(args.attack, scale=args.scale))
    run_click(command, rest, f"{PROG} --attack {args.attack}")


if __name__ == "__main__":
    main()
