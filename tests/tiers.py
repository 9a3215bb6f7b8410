"""What a test may do about a missing tool and about wall-clock time.

Missing tools: a test that needs a program (chromium, npm, tmux, nginx, …) or
an optional package calls `need_tool` / `skip_or_fail`. Locally it is skipped;
with `CI=true` (set by .ci/run, which installs every tool the suite needs) it
fails, so a CI host never skips the end-to-end tests silently.

Wall-clock limits: the default tier runs on loaded 2-core machines, where a
millisecond bound measures the machine, not the router. `within_bound` records
the measured figure (reports/) in every tier and asserts the bound only in the
`--soak` tier (conftest.py sets RELIABILITY_TIER). Deadlines that only keep a
test from hanging stay in every tier.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def soak() -> bool:
    return os.environ.get("RELIABILITY_TIER") == "soak"


def skip_or_fail(reason: str) -> NoReturn:
    """Skips the test, or fails it under CI=true (where the tool should have been installed)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs this, so a skip would hide a broken set-up)", pytrace=False)
    pytest.skip(reason)


def need_tool(*names: str, hint: str = "") -> str:
    """The path of the first of `names` on PATH; skips (or fails in CI) when there is none."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail(f"{' / '.join(names)} is not installed" + (f": {hint}" if hint else ""))


def within_bound(measured: float, bound: float, what: str) -> None:
    """A hard wall-clock limit: asserted with --soak only. Call it after `record`ing the figure."""
    if soak():
        assert measured < bound, f"{what}: {measured} (bound < {bound})"
