"""Figures measured by the reliability tests, merged into reports/reliability.json.

Each test that asserts a reliability goal also records what it measured:

    from reliability_report import record
    record("cancel.p99_ms", 212.4, unit="ms", bound="< 500", n=200)

Records are merged into the file by key as they are made (a partial run
updates only its own figures), so docs/reliability.md can quote the latest
run of every figure. A `--soak` run writes reports/reliability-soak.json
instead (tests/conftest.py sets RELIABILITY_TIER). The files are gitignored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REPORTS = Path(__file__).resolve().parent.parent / "reports"
PATH = REPORTS / "reliability.json"
SOAK_PATH = REPORTS / "reliability-soak.json"


def _path() -> Path:
    return SOAK_PATH if os.environ.get("RELIABILITY_TIER") == "soak" else PATH


def record(key: str, value: Any, *, unit: str = "", bound: str | None = None, **extra: Any) -> None:
    """Stores one figure under `key` (e.g. "chaos.cases"), with the test that made it."""
    entry: dict[str, Any] = {"value": value}
    if unit:
        entry["unit"] = unit
    if bound is not None:
        entry["bound"] = bound
    entry.update(extra)
    entry["test"] = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    entry["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figures = json.loads(path.read_text())
    except (OSError, ValueError):
        figures = {}
    figures[key] = entry
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(sorted(figures.items())), indent=2) + "\n")
    tmp.replace(path)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100), nearest-rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def markdown(path: Path = PATH) -> str:
    """The figures as a markdown table (for docs/reliability.md):
    `python tests/reliability_report.py [reports/reliability-soak.json]`."""
    figures = json.loads(path.read_text())
    rows = ["| figure | value | bound | details |", "|---|---|---|---|"]
    for key, entry in figures.items():
        value = f"{entry['value']} {entry.get('unit', '')}".strip()
        details = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("value", "unit", "bound", "test", "measured_at"))
        rows.append(f"| `{key}` | {value} | {entry.get('bound', '')} | {details} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    print(markdown(Path(sys.argv[1]) if len(sys.argv) > 1 else PATH))
