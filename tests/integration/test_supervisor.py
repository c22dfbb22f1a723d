"""devnet.supervisor on real processes: a child counts as running until it has an exit status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from devnet.supervisor import Supervised, wait_for

# The main thread leaves (pthread_exit) while another thread still sleeps: the kernel shows the
# process as a zombie, yet it has no exit status until its last thread ends, as when a torch
# process shuts down its thread pools under load.
MAIN_THREAD_LEAVES_FIRST = (
    "import ctypes, threading, time\n"
    "threading.Thread(target=time.sleep, args=(1.5,)).start()\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"
)


def test_a_child_whose_main_thread_left_still_runs_until_it_is_reaped(tmp_path: Path) -> None:
    child = Supervised(
        "lingering", [sys.executable, "-c", MAIN_THREAD_LEAVES_FIRST], tmp_path / "log"
    ).start()
    handle = psutil.Process(child.pid)
    wait_for(
        lambda: handle.status() == psutil.STATUS_ZOMBIE, timeout=10, interval=0.02, what="zombie"
    )
    assert child.running and child.returncode is None
    wait_for(lambda: not child.running, timeout=10, interval=0.05, what="the child to end")
    assert child.returncode == 0


def test_an_exit_status_is_there_as_soon_as_the_child_no_longer_runs(tmp_path: Path) -> None:
    child = Supervised(
        "failing", [sys.executable, "-c", "import sys; sys.exit(7)"], tmp_path / "log"
    ).start()
    deadline = time.monotonic() + 10
    while child.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not child.running
    assert child.returncode == 7


# A supervisor that starts a long child inside exit_on_sigterm, stops it in `finally`, and
# writes the child's pid once it runs.
SUPERVISOR_STOPS_ITS_CHILD = """
import sys, time
from pathlib import Path
from devnet.supervisor import Supervised, exit_on_sigterm

out = Path(sys.argv[1])
with exit_on_sigterm():
    child = Supervised("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"],
                       out / "child.log").start()
    try:
        (out / "child.pid").write_text(str(child.pid))
        time.sleep(600)
    finally:
        child.stop(timeout=30)
"""


def test_a_terminated_supervisor_stops_its_children_first(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", SUPERVISOR_STOPS_ITS_CHILD, str(tmp_path)])
    pid_file = tmp_path / "child.pid"
    try:
        wait_for(pid_file.exists, timeout=120, what="the supervisor to start its child")
        child = psutil.Process(int(pid_file.read_text()))
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=120) == 143  # SystemExit(128 + SIGTERM), after its finally
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()
        parent.wait()


def test_a_node_is_found_again_when_the_boot_time_moved_but_not_a_reused_pid(
    tmp_path: Path,
) -> None:
    """psutil's start times follow the kernel's boot time, which moves by whole seconds when the
    wall clock is adjusted: a pid file written an hour ago may read a second off. That is still
    the node (a suite once lost its running Fabric peers so, and left them running); a start
    time far off, or another program under the pid, is not."""
    child = Supervised(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(120)"],
        tmp_path / "log",
        pid_file=tmp_path / "sleeper.pid",
    ).start()
    try:
        record = json.loads((tmp_path / "sleeper.pid").read_text())

        def found(**changes: object) -> bool:
            (tmp_path / "sleeper.pid").write_text(json.dumps({**record, **changes}))
            return Supervised(
                "sleeper", [], tmp_path / "log", pid_file=tmp_path / "sleeper.pid"
            ).running

        assert found()
        assert found(create_time=record["create_time"] - 1.0)  # the boot time moved a second
        assert not found(create_time=record["create_time"] - 60.0)  # another process's pid
        assert not found(name="not-python")
    finally:
        (tmp_path / "sleeper.pid").write_text(json.dumps(record))
        child.stop(timeout=30)
