"""The wheelhouse route of docs/install.md, as a user runs it: wheels built
on a connected host, then pipx on the "air-gapped" one with --no-index (and
no pip configuration, so nothing but the wheelhouse can be found)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import assert_installed_router_answers

ROOT = Path(__file__).resolve().parent.parent
INSTALL = 'pipx install --pip-args="--no-index --find-links wheels" llmrouter'
WHEEL = "python3 -m pip wheel --wheel-dir wheels . pip"


def test_the_documented_commands_install_from_the_wheelhouse_alone(tmp_path):
    if subprocess.run([sys.executable, "-m", "pipx", "--version"], capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("pipx is not installed (it is in the test extra)")
        pytest.skip("pipx is not installed")
    for doc in ("README.md", "docs/install.md"):
        text = (ROOT / doc).read_text()
        assert WHEEL in text and INSTALL in text, doc

    # The connected host: the project's wheels and pip's (pipx upgrades its own pip on first use).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp_path / "wheels"), str(ROOT), "pip"],
                   check=True, timeout=600)
    wheels = sorted(p.name for p in (tmp_path / "wheels").iterdir())
    assert all(name.endswith("-py3-none-any.whl") for name in wheels), wheels  # one wheelhouse for every OS
    assert {re.split(r"-\d", name)[0].lower() for name in wheels} >= {"llmrouter", "h11", "anyio", "httpcore", "certifi", "pip"}

    # The air-gapped host: no index, no pip configuration, only ./wheels.
    home = tmp_path / "pipx"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PIPX_", "PYTHON")) and not k.endswith("_API_KEY")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIPX_HOME=str(home), PIPX_BIN_DIR=str(home / "bin"), PIPX_MAN_DIR=str(home / "man"))
    args = ["--pip-args=--no-index --find-links wheels", "llmrouter"]
    installed = subprocess.run([sys.executable, "-m", "pipx", "install", *args], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    llmrouter = str(home / "bin" / "llmrouter")
    version = subprocess.run([llmrouter, "--version"], env=env, capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and f"running from the package {home}/venvs/llmrouter/" in version.stdout, version

    assert_installed_router_answers(llmrouter, tmp_path, env, "from the wheelhouse")
    shutil.rmtree(home, ignore_errors=True)
