"""Atomic file writes: a crash leaves the old bytes or the new ones, never a mix; secrets 0600."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Temporary file in the same folder, fsync, rename; with ``durable`` also fsync the folder
    so the rename itself survives a power loss. The file is mode 0600 from its first byte
    (mkstemp creates it so, and the rename keeps the mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret (a private key, a settler key) atomically with mode 0600 from the first
    byte: never world-readable, not even briefly, and never half-written."""
    write_atomic(path, data)
