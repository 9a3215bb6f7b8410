"""Config errors through the real CLI (issue 6, item 11): `llmrouter serve
CONFIG --port P` with a broken config exits 2 (in < 1.5 s: asserted with
--soak, recorded always), names the file and
the key path, prints no traceback, binds no port (P is held by the test: a
bind attempt would fail differently) and never echoes a secret.

The cases are test_config.py's parse-level table (every other one; all with
--soak) plus what only the CLI can meet: unreadable files, bad TOML, log
paths that cannot be written.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


from reliability_report import record
from tiers import within_bound
from subproc import environ
from test_config import BROKEN, LOCAL

CANARY = "sk-cfgcanary-8e7d6c5b4a39"  # set as every provider key variable, and pasted in places


def extra_cases(tmp: Path) -> list[tuple[str, str | bytes, str, str]]:
    """(id, file content, key path named in the message, fragment)"""
    keyed = LOCAL + 'api_key_env = "PROVIDER_KEY"\n'
    return [
        ("toml-syntax", "[server\nport = 1\n" + LOCAL, "line 1", "invalid TOML"),
        ("toml-duplicate-key", "[server]\nport = 1\nport = 2\n" + LOCAL, "line", "invalid TOML"),
        ("invalid-utf8", b"[server]\nport = 1\n# \xff\xfe\n" + LOCAL.encode(), "", "UTF-8"),
        ("pasted-key-as-env", LOCAL + f'api_key_env = "{CANARY}"\n', "providers[0].api_key_env", "not the key itself"),
        ("pasted-key-as-key", keyed + f'api_key = "{CANARY}"\n', "providers[0].api_key", "environment variable"),
        ("pasted-key-in-header", LOCAL + f'headers = {{ Authorization = "Bearer {CANARY}\\n" }}\n', "providers[0].headers.Authorization", "line breaks"),
        ("log-dir", f'[logging]\nenabled = true\npath = "{tmp}"\n' + LOCAL, "logging.path", "Is a directory"),
        ("log-under-file", f'[logging]\nenabled = true\npath = "{tmp / "afile" / "log.jsonl"}"\n' + LOCAL, "logging.path", "cannot open"),
        ("log-in-proc", '[logging]\nenabled = true\npath = "/proc/llmrouter-test/log.jsonl"\n' + LOCAL, "logging.path", "cannot open"),
    ]


def run_cli(config: Path, port: int) -> tuple[subprocess.CompletedProcess, float]:
    env = environ({"PROVIDER_KEY": CANARY, "K1": "", "ROUTER_KEY": ""})
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "llmrouter", "serve", str(config), "--port", str(port)],
                            env=env, capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


def test_broken_configs_exit_2_fast_naming_file_and_key(tmp_path, soak):
    (tmp_path / "afile").write_text("")
    cases = [(c[0], c[1], c[2], c[3]) for c in (BROKEN if soak else BROKEN[::2])] + extra_cases(tmp_path)
    # Not broken on their own, only together: where the file itself is the problem.
    special = [("config-is-a-directory", tmp_path, "", "Is a directory"), ("config-missing", tmp_path / "nope.toml", "", "No such file")]
    assert len(cases) + len(special) >= 40
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)  # the port every run is told to use: a bind attempt would fail with "cannot listen"
    port = holder.getsockname()[1]
    times, problems = [], []
    try:
        runs = []
        for name, text, path, fragment in cases:
            config = tmp_path / f"{name}.toml"
            config.write_bytes(text if isinstance(text, bytes) else text.encode())
            runs.append((name, config, path, fragment))
        runs += special
        for name, config, path, fragment in runs:
            result, seconds = run_cli(config, port)
            times.append(seconds)
            out = result.stdout + result.stderr
            expected = f"{config}: {path}" if path else str(config)
            checks = {
                "exit 2": result.returncode == 2,
                "names file and key": expected in result.stderr,
                "says what": fragment in result.stderr,
                "no traceback": "Traceback" not in out,
                "no bind": "cannot listen" not in out and "listening" not in out,
                "no secret": not any(CANARY[i : i + 8] in out for i in range(len(CANARY) - 7)),
            }
            failed = [k for k, ok in checks.items() if not ok]
            if failed:
                problems.append(f"{name}: {failed} (exit {result.returncode}, {seconds:.2f}s): {result.stderr[-400:]}")
    finally:
        holder.close()
    assert not problems, "\n".join(problems)
    times.sort()
    record("config.cli_broken_configs", len(times), unit="configs", bound="exit 2 in < 1.5 s each", failures=0,
           p50_s=round(times[len(times) // 2], 3), max_s=round(times[-1], 3), tracebacks=0, ports_bound=0, secrets_echoed=0)
    within_bound(times[-1], 1.5, "seconds for the slowest broken config to exit 2")
