"""A whole consortium on one machine: identities, ledger, store, a coordinator server and silo agent processes.

``bcfl demo`` and the integration tests both build on this: every party is a real process on
loopback (the coordinator is ``bcfl coordinator serve``, each hospital is ``bcfl silo run``, a
malicious one ``python -m devnet.red_team`` with the same arguments), they meet only through the
ledger, the artifact store and the coordinator's signed HTTP API, exactly as they would across
hospitals. Every process runs under ``devnet.supervisor``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from bcfl_common.errors import BcflError, ConfigError
from bcfl_common.files import write_atomic
from consortium.coordinator_client import CoordinatorClient
from consortium.identity import Consortium, init_consortium
from consortium.ledger.embedded import create_embedded_ledger
from consortium.loopback import free_port
from devnet.fabric_network import FabricNetwork
from devnet.supervisor import ProcessError, Supervised

MARKER = ".bcfl-local-network"


def bcfl_command(*args: str) -> list[str]:
    """The `bcfl` CLI of this interpreter (works whether or not the venv's bin is on PATH)."""
    return [sys.executable, "-m", "bcfl_cli", *args]


def red_team_command(
    attack: str, scale: float | None, *silo_run_args: str, options: Sequence[str] = ()
) -> list[str]:
    """A malicious hospital: ``devnet.red_team`` runs the silo agent (the arguments of
    `bcfl silo run`) with an attacking agent (``attack``; ``scale`` for the attacks that scale
    their update, None for the attack's default; ``options``: more of the harness's options)."""
    scaled = [] if scale is None else ["--scale", f"{scale:g}"]
    return [
        sys.executable,
        "-m",
        "devnet.red_team",
        "--attack",
        attack,
        *scaled,
        *options,
        *silo_run_args,
    ]


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML file: the keys under "" at the top level, one table per other section.

    Keys whose value is None are left out (TOML has no null), and so are tables left empty.
    """
    document: dict[str, Any] = {k: v for k, v in sections.get("", {}).items() if v is not None}
    for section, values in sections.items():
        table = {k: v for k, v in values.items() if v is not None}
        if section and table:
            document[section] = table
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, tomli_w.dumps(document).encode(), durable=False)
    return path


@dataclass
class LocalNetwork:
    """A consortium with an embedded ledger and a file store under one directory."""

    root: Path
    hospitals: int
    consortium: Consortium
    ledger_url: str
    store_url: str
    port: int = 0
    processes: dict[str, Supervised] = field(default_factory=dict)
    poll_interval: float = 0.3
    fabric: FabricNetwork | None = None  # when the ledger is a real Fabric network
    # the hospitals that run devnet.red_team instead of the honest agent:
    # name -> (attack, scale or None, more red-team options)
    attacks: dict[str, tuple[str, float | None, tuple[str, ...]]] = field(default_factory=dict)

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: Path,
        hospitals: int,
        *,
        fresh: bool = False,
        ledger: str = "embedded",
        store_url: str | None = None,
        report: Any = None,
    ) -> LocalNetwork:
        """Make the consortium, the ledger (``embedded``, or ``fabric``: a native Fabric network
        under ROOT/fabric with one peer per organisation) and the store."""
        root = root.resolve()
        if root.exists() and any(root.iterdir()):
            if not (root / MARKER).exists():
                raise ConfigError(
                    f"{root} is not empty and was not made by bcfl; expected a new or empty directory "
                    "(or one a previous demo made)"
                )
            if not fresh:
                raise ConfigError(f"{root} holds a previous run; pass --fresh to replace it")
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).write_text("made by bcfl; safe to delete\n")
        consortium = init_consortium(
            root / "consortium", hospitals=hospitals, name="demo-consortium"
        )
        fabric = None
        if ledger == "embedded":
            ledger_url = f"embedded://{root / 'ledger' / 'ledger.db'}"
            create_embedded_ledger(ledger_url, consortium, consortium.identity("admin")).close()
        elif ledger == "fabric":
            fabric = FabricNetwork(root / "fabric", consortium_dir=consortium.directory)
            fabric.up(report=report)
            ledger_url = fabric.ledger_url()
        else:
            raise ConfigError(f"ledger: got {ledger!r}, expected 'embedded' or 'fabric'")
        store_url = store_url or f"file://{root / 'store'}"
        return cls(
            root=root,
            hospitals=hospitals,
            consortium=consortium,
            ledger_url=ledger_url,
            store_url=store_url,
            fabric=fabric,
        )

    def hospital_names(self) -> list[str]:
        return [f"hospital{i}" for i in range(1, self.hospitals + 1)]

    def msp_id(self, hospital: str) -> str:
        return self.consortium.members[hospital].msp_id

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, member: str = "admin") -> CoordinatorClient:
        return CoordinatorClient(self.base_url, self.consortium.identity(member))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # One BLAS/torch thread per process: several agents share two cores.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        return env

    # -- the coordinator ---------------------------------------------------------------------
    def write_coordinator_config(self, extra: dict[str, dict[str, Any]] | None = None) -> Path:
        if not self.port:
            self.port = free_port()
        sections: dict[str, dict[str, Any]] = {
            "coordinator": {
                "consortium": str(self.consortium.directory),
                "state_dir": str(self.root / "coordinator"),
                "ledger_url": self.ledger_url,
                "store_url": self.store_url,
                "host": "127.0.0.1",
                "port": self.port,
                "poll_interval": self.poll_interval,
            }
        }
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        return write_toml(self.root / "coordinator" / "coordinator.toml", sections)

    def start_coordinator(self, timeout: float = 60.0) -> Supervised:
        config = self.root / "coordinator" / "coordinator.toml"
        if not config.exists():
            self.write_coordinator_config()
        proc = Supervised(
            "the coordinator",
            bcfl_command("coordinator", "serve", "--config", str(config)),
            self.root / "logs" / "coordinator.log",
            env=self._env(),
        ).start()
        self.processes["coordinator"] = proc
        with self.client("auditor") as client:

            def answers() -> bool:
                try:
                    client.health()
                    return True
                except BcflError:
                    return False

            try:
                proc.wait_ready(
                    answers, timeout=timeout, what=f"answering on {self.base_url}", interval=0.2
                )
            except ProcessError:
                proc.stop()
                raise
        return proc

    # -- silos ------------------------------------------------------------------------------
    def write_silo_config(
        self,
        hospital: str,
        data: dict[str, Any],
        *,
        attack: str = "none",
        attack_scale: float | None = None,
        attack_options: Sequence[str] = (),
        epsilon_budget: float | None = None,
        poll_seconds: float = 0.3,
    ) -> Path:
        """The hospital's silo.toml. With an ``attack`` other than "none" the hospital is
        malicious: its configuration is an honest one, and ``start_silo`` runs it under
        ``devnet.red_team`` (production agents know nothing of attacks)."""
        if attack == "none":
            self.attacks.pop(hospital, None)
        else:
            self.attacks[hospital] = (attack, attack_scale, tuple(attack_options))
        folder = self.root / "silos" / hospital
        sections: dict[str, dict[str, Any]] = {
            "": {
                "identity": str(self.consortium.member_dir(hospital)),
                "state_dir": str(folder / "state"),
            },
            "ledger": {"url": self.ledger_url},
            "store": {"url": self.store_url},
            "coordinator": {"url": self.base_url},
            "data": {k: str(v) if isinstance(v, Path) else v for k, v in data.items()},
            "privacy": {"epsilon_budget": epsilon_budget},
            "run": {"poll_seconds": poll_seconds},
        }
        return write_toml(folder / "silo.toml", sections)

    def silo_config_path(self, hospital: str) -> Path:
        return self.root / "silos" / hospital / "silo.toml"

    def start_silo(self, hospital: str, *, trial_id: str | None = None) -> Supervised:
        args = ["--config", str(self.silo_config_path(hospital)), "--until-complete"]
        if trial_id:
            args += ["--trial", trial_id]
        if hospital in self.attacks:
            attack, scale, options = self.attacks[hospital]
            command = red_team_command(attack, scale, *args, options=options)
        else:
            command = bcfl_command("silo", "run", *args)
        proc = Supervised(
            hospital, command, self.root / "logs" / f"{hospital}.log", env=self._env()
        ).start()
        self.processes[hospital] = proc
        return proc

    def request_enrolment(self, hospital: str, trial_id: str) -> dict[str, Any]:
        """What `bcfl silo enroll` does with the hospital's silo.toml (written first): register its
        dataset (once) and its key with its training split's size, then ask the coordinator."""
        from consortium.ledger import open_ledger
        from silo_agent.config import load_config
        from silo_agent.enrolment import request_enrolment

        identity = self.consortium.identity(hospital)
        config = load_config(self.silo_config_path(hospital), environ={})
        ledger = open_ledger(self.ledger_url, identity)
        try:
            with CoordinatorClient(self.base_url, identity) as client:
                if hospital in self.attacks:  # a malicious hospital claims what its attack needs
                    from devnet.red_team.enrolment import enrol_attacker

                    attack, _, flags = self.attacks[hospital]
                    enrol_attacker(ledger, identity, config, trial_id, attack, flags)
                    return client.request_enrolment(trial_id, identity.encryption_public_key_pem())
                return request_enrolment(ledger, client, identity, config, trial_id)
        finally:
            ledger.close()

    def stop_all(self) -> None:
        for name in list(self.processes):
            if name != "coordinator":
                self.processes[name].stop()
        if "coordinator" in self.processes:
            self.processes["coordinator"].stop()
        if self.fabric is not None:
            self.fabric.down(purge=False)
