"""The silo's state directory: journal, models, metrics and cursor, written atomically.

Layout::

    <state_dir>/agent.lock                  one agent at a time per state directory
    <state_dir>/cursor.json                 the ledger block the agent has followed up to
    <state_dir>/datasets/<dataset_id>.salt  the salt of a registered dataset's commitment (0600)
    <state_dir>/trials/<trial_id>/journal.json      per round attempt "r.a": what this silo
                                                    prepared and submitted (salts, content ids,
                                                    scores, attested hash) BEFORE submitting
    <state_dir>/trials/<trial_id>/accountant.json   privacy.dp accountant (epsilon spent)
    <state_dir>/trials/<trial_id>/models/<sha256>.bcfm   every finalized model (and round 0)
    <state_dir>/trials/<trial_id>/metrics.json      local validation/test metrics per round
    <state_dir>/trials/<trial_id>/updates/<sha256>.bcfu   this silo's encrypted updates, kept
                                                    here from SUBMIT until REVEAL uploads them
    <state_dir>/trials/<trial_id>/deltas/<sha256>.npy     decrypted deltas of earlier updates and
                                                    aggregates (the similarity history's cache)

Every file is written atomically with mode 0600.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bcfl_common.canonical import canonical_json
from bcfl_common.errors import ConfigError
from bcfl_common.files import write_atomic


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return default
    except ValueError as exc:
        raise ConfigError(
            f"state file {path}: not valid JSON ({exc}); expected a file written by the silo agent"
        ) from exc


def _hex(sha256: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ConfigError(f"sha256: got {sha256!r}, expected 64 lowercase hex digits")
    return sha256


class SiloState:
    """Files of one silo's state directory (no secrets: the trial key is reopened from its envelope)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / "trials" / trial_id

    # lock ------------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "agent.lock", "a+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"state directory {self.root} is in use by another silo agent; expected one agent per state directory",
                    code="STATE_LOCKED",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # cursor ----------------------------------------------------------------------------------
    def cursor(self) -> int:
        return int(read_json(self.root / "cursor.json", {"block": 0})["block"])

    def set_cursor(self, block: int) -> None:
        write_atomic(self.root / "cursor.json", canonical_json({"block": int(block)}))

    # journal ---------------------------------------------------------------------------------
    def journal(self, trial_id: str) -> dict[str, Any]:
        return read_json(
            self.trial_dir(trial_id) / "journal.json", {"trial_id": trial_id, "rounds": {}}
        )

    def journal_entry(self, trial_id: str, round: int, attempt: int) -> dict[str, Any]:
        return dict(self.journal(trial_id)["rounds"].get(f"{round}.{attempt}", {}))

    def record(self, trial_id: str, round: int, attempt: int, part: str, value: Any) -> None:
        """Set ``part`` of the round attempt's journal entry (durably, before any submission)."""
        journal = self.journal(trial_id)
        entry = journal["rounds"].setdefault(
            f"{round}.{attempt}", {"round": round, "attempt": attempt}
        )
        entry[part] = value
        write_atomic(self.trial_dir(trial_id) / "journal.json", canonical_json(journal))

    def trial_record(self, trial_id: str, part: str, value: Any) -> None:
        journal = self.journal(trial_id)
        journal[part] = value
        write_atomic(self.trial_dir(trial_id) / "journal.json", canonical_json(journal))

    # models ----------------------------------------------------------------------------------
    def model_path(self, trial_id: str, sha256: str) -> Path:
        return self.trial_dir(trial_id) / "models" / f"{sha256}.bcfm"

    def load_model(self, trial_id: str, sha256: str) -> bytes | None:
        path = self.model_path(trial_id, sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            path.unlink(missing_ok=True)  # a corrupted copy is rebuilt from the lineage
            return None
        return data

    def save_model(self, trial_id: str, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.model_path(trial_id, sha)
        if not path.exists():
            write_atomic(path, data)
        return sha

    # metrics ---------------------------------------------------------------------------------
    def metrics(self, trial_id: str) -> dict[str, Any]:
        return read_json(self.trial_dir(trial_id) / "metrics.json", {})

    def record_metrics(self, trial_id: str, key: str, value: dict[str, Any]) -> None:
        metrics = self.metrics(trial_id)
        metrics[key] = value
        write_atomic(self.trial_dir(trial_id) / "metrics.json", canonical_json(metrics))

    # encrypted updates (kept until REVEAL) ------------------------------------------------------
    def update_path(self, trial_id: str, sha256: str) -> Path:
        return self.trial_dir(trial_id) / "updates" / f"{_hex(sha256)}.bcfu"

    def save_update(self, trial_id: str, data: bytes) -> str:
        """Keep an encrypted update (atomically, 0600) before its commitment is sent."""
        sha = hashlib.sha256(data).hexdigest()
        write_atomic(self.update_path(trial_id, sha), data)
        return sha

    def delete_update(self, trial_id: str, sha256: str) -> None:
        """Destroy a kept update that will never be revealed (its charge is then withdrawn)."""
        self.update_path(trial_id, sha256).unlink(missing_ok=True)

    def load_update(self, trial_id: str, sha256: str) -> bytes | None:
        """The kept update with this sha256; None when it is missing or its bytes changed."""
        try:
            data = self.update_path(trial_id, sha256).read_bytes()
        except FileNotFoundError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    # decrypted history deltas -------------------------------------------------------------------
    def delta_path(self, trial_id: str, sha256: str) -> Path:
        return self.trial_dir(trial_id) / "deltas" / f"{_hex(sha256)}.npy"

    def load_delta(self, trial_id: str, sha256: str) -> np.ndarray | None:
        try:
            raw = self.delta_path(trial_id, sha256).read_bytes()
        except FileNotFoundError:
            return None
        try:
            value = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError:
            return None  # a damaged cache entry is decrypted again
        return np.asarray(value, dtype=np.float64)

    def save_delta(self, trial_id: str, sha256: str, delta: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(delta, dtype=np.float64), allow_pickle=False)
        write_atomic(self.delta_path(trial_id, sha256), buffer.getvalue(), durable=False)

    # dataset salts ------------------------------------------------------------------------------
    def dataset_salt(self, dataset_id: str) -> str:
        """The dataset commitment's salt (64 hex digits), drawn once and kept 0600."""
        path = self.root / "datasets" / f"{dataset_id}.salt"
        try:
            salt = path.read_text().strip()
        except FileNotFoundError:
            salt = secrets.token_hex(32)
            write_atomic(path, salt.encode())
            return salt
        if not re.fullmatch(r"[0-9a-f]{64}", salt):
            raise ConfigError(
                f"dataset salt {path}: not 64 lowercase hex digits; expected the file the silo "
                "agent wrote when it registered the dataset (it cannot be re-created)"
            )
        return salt

    def accountant_path(self, trial_id: str) -> Path:
        return self.trial_dir(trial_id) / "accountant.json"

    def trial_ids(self) -> list[str]:
        folder = self.root / "trials"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
