"""`bcfl coordinator serve` as a real process: configuration from TOML, the API on a loopback port, a clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from consortium.coordinator_client import CoordinatorClient
from consortium.loopback import free_port


def test_serve_from_a_config_file(
    tmp_path: Path, consortium: Any, embedded_ledger: Any, ledger_url: str, store_url: str
) -> None:
    port = free_port()
    config = tmp_path / "coordinator.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "coordinator": {
                    "consortium": str(consortium.directory),
                    "state_dir": "state",  # relative to the file's folder
                    "ledger_url": ledger_url,
                    "store_url": store_url,
                    "port": port,
                    "poll_interval": 0.2,
                }
            }
        )
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from coordinator.cli import coordinator_group; coordinator_group()",
            "serve",
            "--config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the coordinator did not come up"
            time.sleep(0.1)
        with CoordinatorClient(base_url, consortium.identity("auditor")) as auditor:
            assert auditor.whoami()["msp_id"] == "AuditorMSP"
            status = auditor.scheduler_status()
            assert status["running"] is True and status["poll_interval"] == 0.2
            assert auditor.ledger()["height"] >= 2
        assert (tmp_path / "state" / "coordinator.db").exists()
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"bcfl coordinator on {base_url}" in output
