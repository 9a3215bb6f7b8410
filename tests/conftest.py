import os
from collections import Counter

import pytest

from tiers import in_ci


@pytest.fixture
def anyio_backend() -> str:
    # anyio's default fixture is parametrized over installed backends; trio
    # happens to be installed here but is no dependency of ours.
    return "asyncio"


# --soak: the long reliability tier (docs/reliability.md, "Test tiers"). It
# scales the size-aware tests up (the `soak` fixture) and turns the recorded
# wall-clock figures into hard limits (tiers.within_bound); no test is
# soak-only, so the default tier runs every test, smaller.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="the long reliability tier: bigger runs, hard wall-clock limits")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--soak"):
        os.environ["RELIABILITY_TIER"] = "soak"  # its figures go to reports/reliability-soak.json


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line naming every skip reason, so a skip is never silent (`-ra` lists them one by one)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(_skip_reason(report) for report in skipped)
    listed = "; ".join(f"{count} × {reason}" for reason, count in reasons.most_common())
    ci = " (CI=true: tests whose tool is missing fail instead)" if in_ci() else ""
    terminalreporter.write_line(f"skipped {len(skipped)}{ci}: {listed}", yellow=True, bold=True)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")
