"""A whole consortium on one machine: identities, ledger, store, a coordinator server and silo agent processes.

``bcfl demo`` and the integration tests both build on this: every party is a real process on
loopback (the coordinator is ``bcfl coordinator serve``, each hospital is ``bcfl silo run``), they
meet only through the ledger, the artifact store and the coordinator's signed HTTP API, exactly
as they would across hospitals.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcfl_common.errors import BcflError, ConfigError
from consortium.coordinator_client import CoordinatorClient
from consortium.identity import Consortium, init_consortium
from consortium.ledger.embedded import create_embedded_ledger
from consortium.loopback import free_port

MARKER = ".bcfl-local-network"


def bcfl_command(*args: str) -> list[str]:
    """The `bcfl` CLI of this interpreter (works whether or not the venv's bin is on PATH)."""
    return [sys.executable, "-m", "bcfl_cli", *args]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a small TOML file: top-level keys under "" and one table per other section."""
    lines: list[str] = []
    for key, value in sections.get("", {}).items():
        lines.append(f"{key} = {_toml(value)}")
    for section, values in sections.items():
        if section == "" or not values:
            continue
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class ManagedProcess:
    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL, as a crash would (no clean-up runs)."""
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 15.0) -> None:
        if not self.running:
            return
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class LocalNetwork:
    """A consortium with an embedded ledger and a file store under one directory."""

    root: Path
    hospitals: int
    consortium: Consortium
    ledger_url: str
    store_url: str
    port: int = 0
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    poll_interval: float = 0.3
    fabric: Any = None  # the FabricNetwork when the ledger is a real Fabric network

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
            from consortium.network_cli import FabricNetwork

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

    def start_coordinator(self, timeout: float = 60.0) -> ManagedProcess:
        config = self.root / "coordinator" / "coordinator.toml"
        if not config.exists():
            self.write_coordinator_config()
        proc = ManagedProcess(
            "coordinator",
            bcfl_command("coordinator", "serve", "--config", str(config)),
            self.root / "logs" / "coordinator.log",
            self._env(),
        )
        proc.start()
        self.processes["coordinator"] = proc
        deadline = time.monotonic() + timeout
        with self.client("auditor") as client:
            while time.monotonic() < deadline:
                if not proc.running:
                    raise BcflError(
                        f"the coordinator exited ({proc.returncode}); its log:\n{proc.log_tail()}"
                    )
                try:
                    client.health()
                    return proc
                except BcflError:
                    time.sleep(0.2)
        proc.stop()
        raise BcflError(
            f"the coordinator did not answer on {self.base_url} within {timeout:.0f} s:\n{proc.log_tail()}"
        )

    # -- silos ------------------------------------------------------------------------------
    def write_silo_config(
        self,
        hospital: str,
        data: dict[str, Any],
        *,
        attack: str = "none",
        attack_scale: float = 10.0,
        epsilon_budget: float | None = None,
        poll_seconds: float = 0.3,
    ) -> Path:
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
            "attack": {"kind": attack, "scale": attack_scale},
        }
        return write_toml(folder / "silo.toml", sections)

    def silo_config_path(self, hospital: str) -> Path:
        return self.root / "silos" / hospital / "silo.toml"

    def start_silo(self, hospital: str, *, trial_id: str | None = None) -> ManagedProcess:
        args = ["silo", "run", "--config", str(self.silo_config_path(hospital)), "--until-complete"]
        if trial_id:
            args += ["--trial", trial_id]
        proc = ManagedProcess(
            hospital, bcfl_command(*args), self.root / "logs" / f"{hospital}.log", self._env()
        )
        proc.start()
        self.processes[hospital] = proc
        return proc

    def request_enrolment(self, hospital: str, trial_id: str) -> dict[str, Any]:
        """What `bcfl silo enroll` does: register the hospital's key on the ledger, then ask the coordinator."""
        from consortium.ledger import open_ledger
        from silo_agent.enrolment import request_enrolment

        identity = self.consortium.identity(hospital)
        ledger = open_ledger(self.ledger_url, identity)
        try:
            with CoordinatorClient(self.base_url, identity) as client:
                return request_enrolment(ledger, client, identity, trial_id)
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


def wait_for(
    predicate: Any, *, timeout: float, interval: float = 0.3, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
