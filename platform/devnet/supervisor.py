"""The one process supervisor of the local networks: start a node in its own session with its own
log, wait until it is ready while watching that it lives, stop it (and only it) cleanly or kill it
as a crash would, and find it again from a pid file after the launcher has exited.

Fabric nodes, Kubo daemons, anvil, the coordinator and the silo agents of a demo all run under
it. Processes are identified by pid *and* start time (psutil), so a pid reused by the kernel is
never mistaken for the node and never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bcfl_common.errors import BcflError
from bcfl_common.files import write_atomic


class ProcessError(BcflError):
    """A supervised process failed to start, exited while starting, or did not become ready."""

    code = "PROCESS"
    exit_code = 15


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when there is none yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Supervised:
    """One process: its command, environment, log and (optionally) a pid file that lets a later
    invocation find it again. Each runs in its own session, so stopping it signals its process
    group only: the node and the children it started, never the launcher."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    pid_file: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _handle: psutil.Process | None = field(default=None, repr=False)

    # -- starting ------------------------------------------------------------------------------
    def start(self) -> Supervised:
        """Start the process (it must not be running already). Its output goes to ``log_path``."""
        if self.running:
            raise ProcessError(
                f"{self.name} is already running (pid {self.pid})", code="PROCESS_RUNNING"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=None if self.env is None else dict(self.env),
                cwd=self.cwd,
                start_new_session=True,
            )
        self._handle = psutil.Process(self._process.pid)
        if self.pid_file is not None:
            record = {
                "pid": self._handle.pid,
                "create_time": self._handle.create_time(),
                "name": self._handle.name(),
            }
            write_atomic(self.pid_file, (json.dumps(record) + "\n").encode(), durable=False)
        return self

    def wait_ready(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        what: str = "ready",
        interval: float = 0.1,
    ) -> None:
        """Wait until ``ready()`` is true. Raises ProcessError naming the process and its log when
        it exits first or when ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running:
                raise ProcessError(
                    f"{self.name} exited (code {self.returncode}) before it was {what}; "
                    f"see {self.log_path}:\n{log_tail(self.log_path, 15)}",
                    code="PROCESS_EXITED",
                )
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{self.name} was not {what} within {timeout:.0f} s; see {self.log_path}",
                    code="PROCESS_TIMEOUT",
                )
            time.sleep(interval)

    def wait_port(self, port: int, *, host: str = "127.0.0.1", timeout: float = 60.0) -> None:
        self.wait_ready(
            lambda: port_open(port, host), timeout=timeout, what=f"listening on {host}:{port}"
        )

    # -- finding ---------------------------------------------------------------------------------
    def _current(self) -> psutil.Process | None:
        if self._process is not None and self._handle is not None:
            # Our own child: it runs until it is reaped (its pid cannot be reused before). A
            # multi-threaded process whose main thread has exited shows as a zombie while its
            # other threads finish; it has no exit status yet, so it still counts as running.
            return self._handle if self._process.poll() is None else None
        if self._handle is None and self.pid_file is not None:
            self._handle = _from_pid_file(self.pid_file)
        if self._handle is None:
            return None
        try:
            if self._handle.is_running() and self._handle.status() != psutil.STATUS_ZOMBIE:
                return self._handle
        except psutil.NoSuchProcess:
            pass
        if self._process is not None:
            self._process.poll()  # reap it
        return None

    @property
    def running(self) -> bool:
        return self._current() is not None

    @property
    def pid(self) -> int | None:
        current = self._current()
        return None if current is None else current.pid

    @property
    def returncode(self) -> int | None:
        """The exit code of a process this object started (None while it runs or if unknown)."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    # -- stopping --------------------------------------------------------------------------------
    def _signal_group(self, process: psutil.Process, sig: signal.Signals) -> None:
        try:
            os.killpg(process.pid, sig)  # its own session: the node and its children only
        except ProcessLookupError:
            pass
        except PermissionError:
            process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout`` s. Returns whether anything was running."""
        current = self._current()
        if current is not None:
            self._signal_group(current, signal.SIGTERM)
            try:
                current.wait(timeout=timeout)
            except psutil.TimeoutExpired:
                self._signal_group(current, signal.SIGKILL)
                current.wait(timeout=30)
            except psutil.NoSuchProcess:
                pass
        self._forget()
        return current is not None

    def kill(self) -> None:
        """SIGKILL, as a crash would (no clean-up runs in the process)."""
        current = self._current()
        if current is not None:
            self._signal_group(current, signal.SIGKILL)
            try:
                current.wait(timeout=30)
            except psutil.NoSuchProcess:
                pass
        self._forget()

    def _forget(self) -> None:
        if self._process is not None:
            self._process.poll()
        self._handle = None
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


START_TIME_SLACK = 2.0  # seconds


def _from_pid_file(path: Path) -> psutil.Process | None:
    """The process a pid file names, if it is still that process (same start time)."""
    try:
        record = json.loads(path.read_text())
        process = psutil.Process(int(record["pid"]))
        # psutil derives a start time from the kernel's boot time, which moves when the wall
        # clock is slewed or stepped (/proc/stat's btime is whole seconds): a node up for an hour
        # can read a second off what was written. Another process reusing the pid within
        # START_TIME_SLACK seconds, under the same name, is what this still tells apart.
        if abs(process.create_time() - float(record["create_time"])) > START_TIME_SLACK:
            return None  # the pid was reused by another process
        if record.get("name") not in (None, process.name()):
            return None
        return process
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """While inside, SIGTERM raises SystemExit(143) in the main thread, so the ``finally`` blocks
    that stop a supervisor's children run (Python's default is to die at once and leave them
    running, each in its own session). Only the first SIGTERM raises: one arriving while those
    blocks stop the children is ignored rather than cutting them short. Outside the main thread
    (where signals cannot be handled) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def terminate(signum: int, _frame: object) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for(
    predicate: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.3,
    processes: Sequence[Supervised] = (),
) -> object:
    """Wait until ``predicate()`` returns something truthy and return it. ``what`` names whom we
    wait for; if one of ``processes`` exits meanwhile, or ``timeout`` passes, ProcessError says so."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for process in processes:
            if not process.running:
                raise ProcessError(
                    f"{process.name} exited (code {process.returncode}) while waiting for {what}; "
                    f"see {process.log_path}:\n{process.log_tail(15)}",
                    code="PROCESS_EXITED",
                )
        if time.monotonic() > deadline:
            raise ProcessError(
                f"timed out after {timeout:.0f} s waiting for {what}", code="PROCESS_TIMEOUT"
            )
        time.sleep(interval)
