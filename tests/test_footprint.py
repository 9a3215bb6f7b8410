"""What each command loads (bench/footprint.py measures time and memory;
these checks hold on any machine): `serve` imports none of what only the
views, `init` or `check` need, and `check` starts no server machinery."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from llmrouter import cli, tui_state, watch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = (
    '[server]\nport = 0\n[[providers]]\nname = "x"\nformat = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "x"\n'
)
VIEWS_AND_TOOLS = {"llmrouter.watch", "llmrouter.tui", "llmrouter.tui_state", "llmrouter.init", "llmrouter.init_template",
                   "curses", "http.client", "difflib", "importlib.metadata"}


def imported(*args: str, cwd: Path, until: str | None = None) -> set[str]:
    """The modules `python -X importtime -m llmrouter ARGS` imported (by the
    time `until` appears on stderr, then it is stopped)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "llmrouter", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if until and until in line:
                proc.send_signal(signal.SIGTERM)
                break
        assert proc.wait(20) == 0, "".join(lines[-20:])
    finally:
        proc.kill()
    return {m.group(1) for line in lines if (m := re.match(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", line.rstrip()))}


def test_serve_imports_no_view_init_or_check_code(tmp_path):
    (tmp_path / "config.toml").write_text(CONFIG)
    modules = imported("serve", "config.toml", cwd=tmp_path, until="listening on")
    assert {"llmrouter.app", "llmrouter.server", "anyio", "h11", "httpcore"} <= modules
    assert not modules & VIEWS_AND_TOOLS


def test_check_loads_no_server(tmp_path):
    (tmp_path / "config.toml").write_text(CONFIG)
    modules = imported("check", cwd=tmp_path)
    assert "llmrouter.config" in modules
    assert not modules & {"anyio", "h11", "httpcore", "asyncio", "ssl", "llmrouter.app", *VIEWS_AND_TOOLS}


def test_the_parser_knows_the_views_defaults_without_importing_them():
    assert (cli.DEFAULT_URL, cli.API_KEY_ENV, cli.DEFAULT_MODEL) == (watch.DEFAULT_URL, watch.API_KEY_ENV, tui_state.DEFAULT_MODEL)
