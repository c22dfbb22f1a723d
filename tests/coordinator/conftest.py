"""Fixtures of the coordinator suite: a service over a real embedded ledger and file store, a live uvicorn server, a throwaway PostgreSQL."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from consortium.coordinator_client import CoordinatorClient
from consortium.identity import Consortium
from consortium.loopback import free_port
from coordinator.app import create_app
from coordinator.config import CoordinatorConfig, load_config
from coordinator.service import CoordinatorService

REPO = Path(__file__).resolve().parents[2]
PREPARE_POSTGRES = REPO / "deploy" / "postgres" / "prepare-tests"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


@pytest.fixture
def coordinator_config(
    consortium: Consortium, embedded_ledger: Any, ledger_url: str, store_url: str, tmp_path: Path
) -> CoordinatorConfig:
    """A coordinator over the test's ledger and store, with its SQLite database in tmp_path and
    the background scheduler off (tests run passes themselves)."""
    return load_config(
        env={},
        overrides={
            "consortium": consortium.directory,
            "state_dir": tmp_path / "coordinator-state",
            "ledger_url": ledger_url,
            "store_url": store_url,
            "scheduler": False,
            "poll_interval": 0.1,
        },
    )


@pytest.fixture
def make_service(
    coordinator_config: CoordinatorConfig, clock: Any
) -> Iterator[Callable[..., CoordinatorService]]:
    made: list[CoordinatorService] = []

    def make(**changes: Any) -> CoordinatorService:
        service = CoordinatorService(coordinator_config.with_overrides(**changes), clock=clock)
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


@pytest.fixture
def service(make_service: Callable[..., CoordinatorService]) -> CoordinatorService:
    return make_service()


@dataclass
class LiveServer:
    app: FastAPI
    service: CoordinatorService
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_server(service: CoordinatorService) -> LiveServer:
    """uvicorn on a free loopback port in a thread; the app's lifespan closes the service on stop."""
    app = create_app(service)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the coordinator test server did not start")
        time.sleep(0.01)
    return LiveServer(app, service, f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture
def live(make_service: Callable[..., CoordinatorService]) -> Iterator[Callable[..., LiveServer]]:
    """Start a live coordinator (a new service over the same ledger, store and database each time)."""
    servers: list[LiveServer] = []

    def launch(service: CoordinatorService | None = None) -> LiveServer:
        live_server = start_server(service or make_service())
        servers.append(live_server)
        return live_server

    yield launch
    for live_server in servers:
        live_server.stop()


@pytest.fixture
def server(live: Callable[..., LiveServer]) -> LiveServer:
    return live()


@pytest.fixture
def client_as(
    server: LiveServer, consortium: Consortium
) -> Iterator[Callable[[str], CoordinatorClient]]:
    clients: list[CoordinatorClient] = []

    def make(name: str) -> CoordinatorClient:
        client = CoordinatorClient(server.base_url, consortium.identity(name))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# ---------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway cluster from Debian's packages, started once per session
# ---------------------------------------------------------------------------------------------


def _postgres_binaries() -> tuple[str, str] | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        return None
    bindir = Path(found[-1]).parent
    return str(bindir / "initdb"), str(bindir / "pg_ctl")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT`` of a cluster in a temporary directory (stopped at the end)."""
    binaries = _postgres_binaries()
    if binaries is None:
        subprocess.run([str(PREPARE_POSTGRES)], check=True)
        binaries = _postgres_binaries()
    if binaries is None:
        pytest.fail(f"PostgreSQL is not installed and {PREPARE_POSTGRES} did not install it")
    initdb, pg_ctl = binaries
    root = Path(tempfile.mkdtemp(prefix="bcfl-pg-"))
    as_root = os.geteuid() == 0
    if as_root:  # initdb refuses to run as root: the cluster belongs to the postgres OS user
        shutil.chown(root, "postgres", "postgres")

    def run(*command: str) -> None:
        argv = (["runuser", "-u", "postgres", "--"] if as_root else []) + list(command)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    data = root / "data"
    run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    port = free_port()
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    )
    try:
        run(
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        try:
            run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's cluster."""
    import psycopg

    name = "bcfl_" + secrets.token_hex(6)
    with psycopg.connect(postgres_server + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    with psycopg.connect(postgres_server + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'coordinator.db'}"
    return request.getfixturevalue("postgres_url")
