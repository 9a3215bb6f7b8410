"""The real router as a child process (`python -m llmrouter serve CONFIG`), for
tests that measure it from outside: RSS and file descriptors through /proc,
signals, exit codes, stdout/stderr."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")


def environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


class RouterProcess:
    def __init__(self, config_text: str, workdir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 serve_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.config = workdir / "config.toml"
        self.config.write_text(config_text)
        self.stdout_path = workdir / "router.stdout"
        self.stderr_path = workdir / "router.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmrouter", *args, "serve", *serve_args, str(self.config)],
            cwd=workdir, env=environ(env), stdout=self._out, stderr=self._err,
        )
        self.port = self._wait_listening()

    def _wait_listening(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.stderr_path.read_text(errors="replace"))
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}: {self.stderr}")
            time.sleep(0.02)
        raise RuntimeError(f"router did not start: {self.stderr}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._out.close()
        self._err.close()
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait(5)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def __enter__(self) -> RouterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
