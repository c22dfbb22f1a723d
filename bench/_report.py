"""Shared benchmark output: machine description, a rich table, and bench/results/NAME.json."""

from __future__ import annotations

import json
import os
import platform as _platform  # the stdlib module (the repo's platform/ is not a package)
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = _platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": _platform.python_version(),
        "system": f"{_platform.system()} {_platform.release()}",
        "machine": _platform.machine(),
    }
    for module in ("numpy", "torch", "tenseal", "opacus"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing library is just not described
            pass
    return info


def timed(fn: Any, *, repeat: int = 3) -> float:
    """Best wall-clock seconds of ``repeat`` calls (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def report(
    name: str,
    *,
    title: str,
    parameters: dict[str, Any],
    columns: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    notes: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Print ``rows`` as a table and write them, with units, to ``bench/results/NAME.json``.

    ``columns`` are ``(key, unit)``; each row maps keys to values; ``extra`` goes to the JSON only
    (e.g. every individual run). Returns the JSON path.
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key, unit in columns:
        table.add_column(f"{key}\n[{unit}]" if unit else key, justify="right")
    for row in rows:
        table.add_row(*(_fmt(row.get(key)) for key, _ in columns))
    console = Console()
    if console.width < 160:  # wide tables stay readable when piped or in narrow terminals
        console = Console(width=160)
    console.print(table)
    for note in notes:
        console.print(f"- {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    tmp = out.with_suffix(".json.tmp")
    document = {
        "benchmark": name,
        "title": title,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "parameters": parameters,
        "units": {key: unit for key, unit in columns},
        "rows": list(rows),
        "notes": list(notes),
        **({"extra": extra} if extra else {}),
    }
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)
    console.print(f"wrote {out}")
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)
