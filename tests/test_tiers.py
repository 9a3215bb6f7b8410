"""tests/tiers.py and the conftest hooks: a missing tool skips locally and
fails under CI=true, skips are summed up in one line, and wall-clock bounds
hold only in the --soak tier."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiers

HERE = Path(__file__).resolve().parent


def test_a_missing_tool_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-x1 is not installed: a hint"):
        tiers.need_tool("no-such-tool-x1", hint="a hint")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-tool-x1 is not installed.*CI=true"):
        tiers.need_tool("no-such-tool-x1")
    assert tiers.need_tool("no-such-tool-x1", "sh") == shutil.which("sh")  # the first one found


def test_wall_clock_bounds_hold_only_with_soak(monkeypatch):
    monkeypatch.delenv("RELIABILITY_TIER", raising=False)
    tiers.within_bound(900.0, 20, "ms to skip")  # measured and recorded, not asserted
    monkeypatch.setenv("RELIABILITY_TIER", "soak")
    with pytest.raises(AssertionError, match=r"ms to skip: 900.0 \(bound < 20\)"):
        tiers.within_bound(900.0, 20, "ms to skip")
    tiers.within_bound(3.0, 20, "ms to skip")


def test_the_run_ends_with_a_one_line_summary_of_its_skips(tmp_path):
    for name in ("conftest.py", "tiers.py"):
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_some.py").write_text(
        "import pytest\nfrom tiers import need_tool\n\n"
        "def test_a(): need_tool('no-such-tool-x1')\n"
        "def test_b(): need_tool('no-such-tool-x1')\n"
        "def test_c(): pytest.skip('no IPv6 loopback here')\n"
        "def test_d(): pass\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "skipped 3: 2 × no-such-tool-x1 is not installed; 1 × no IPv6 loopback here\n" in run.stdout
    env["CI"] = "true"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "2 failed, 1 passed, 1 skipped" in run.stdout, run.stdout
