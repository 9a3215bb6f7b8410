"""How small the router stays: startup time and memory, measured from outside.

    python3 bench/footprint.py                                        # this tree, about 30 s
    python3 bench/footprint.py --command "python3 -I -S llmrouter.pyz"  # the single file
    python3 bench/footprint.py --command ~/.local/bin/llmrouter         # a pipx install

- ready: from starting the process (COMMAND serve config.toml) to the first
  200 on /health: interpreter start, imports, config, bind. The median and
  best of --starts runs, and the CPU time the process used until then (a
  loaded machine stretches the wall-clock figure much more than the CPU one).
- RSS (VmRSS from /proc) idle after startup, after 1,000 and 10,000 small
  requests (non-streaming, 4 keep-alive connections) and after 1,000 streams
  of 20 events, against bench/fake_upstream.py; the request log is on.

Budgets (issue 14): ready < 0.3 s, RSS < 35 MB, growth from 1,000 to 10,000
requests < 3 MB. Loopback only; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from loadgen import Run  # noqa: E402

BUDGET = {"ready_s": 0.3, "rss_mb": 35.0, "growth_mb": 3.0}
CONFIG = """\
[server]
port = {port}
[logging]
enabled = true
path = "requests.jsonl"
[[providers]]
name = "fake"
format = "openai"
base_url = "http://127.0.0.1:{upstream}/v1"
[[routers]]
type = "prefix"
model_prefix = ""
provider = "fake"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def health_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_router(command: list[str], workdir: Path, port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree, not an installed llmrouter (-I ignores it)
    started = time.perf_counter()
    proc = subprocess.Popen([*command, "serve", "config.toml"], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = started + 20
    while not health_ok(port):
        if proc.poll() is not None or time.perf_counter() > deadline:
            proc.kill()
            raise RuntimeError(f"the router did not start (exit {proc.poll()})")
        time.sleep(0.002)
    return proc, time.perf_counter() - started


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def load(port: int, requests: int, stream: bool) -> Run:
    run = asyncio.run(Run(port, 4, stream=stream, requests=requests).go())
    if run.errors or run.dropped:
        raise RuntimeError(f"{run.errors} errors, {run.dropped} dropped")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--command", help='how to start llmrouter (default: "python3 -m llmrouter" on this tree)')
    ap.add_argument("--starts", type=int, default=10, help="startups to time (default 10)")
    args = ap.parse_args()
    command = shlex.split(args.command) if args.command else [sys.executable, "-m", "llmrouter"]
    fake = subprocess.Popen([sys.executable, str(HERE / "fake_upstream.py"), "--chunks", "20", "--gap-ms", "0", "--first-ms", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        upstream = int(fake.stdout.readline().split()[1])
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            port = free_port()
            (workdir / "config.toml").write_text(CONFIG.format(port=port, upstream=upstream))
            times, cpu = [], []
            for _ in range(args.starts):
                proc, ready = start_router(command, workdir, port)
                times.append(ready)
                cpu.append(cpu_s(proc.pid))
                stop(proc)
            proc, _ = start_router(command, workdir, port)
            try:
                time.sleep(0.5)
                figures = {"idle": rss_mb(proc.pid)}
                load(port, 1_000, stream=False)
                figures["1,000 requests"] = rss_mb(proc.pid)
                load(port, 9_000, stream=False)
                figures["10,000 requests"] = rss_mb(proc.pid)
                load(port, 1_000, stream=True)
                figures["+ 1,000 streams"] = rss_mb(proc.pid)
            finally:
                stop(proc)
    finally:
        fake.terminate()
        fake.wait(10)

    growth = figures["10,000 requests"] - figures["1,000 requests"]
    peak = max(figures.values())
    print(f"llmrouter footprint: {' '.join(command)} serve")
    print(f"  ready (start to first 200 on /health): median {statistics.median(times) * 1000:.0f} ms, "
          f"best {min(times) * 1000:.0f} ms over {len(times)} starts   budget < {BUDGET['ready_s'] * 1000:.0f} ms")
    print(f"  CPU used until ready: median {statistics.median(cpu) * 1000:.0f} ms (what a busy machine stretches)")
    for label, value in figures.items():
        print(f"  RSS {label:<16} {value:6.1f} MB")
    print(f"  growth 1,000 -> 10,000 requests: {growth:+.1f} MB   budget < {BUDGET['growth_mb']:g} MB")
    ok = statistics.median(times) < BUDGET["ready_s"] and peak < BUDGET["rss_mb"] and growth < BUDGET["growth_mb"]
    print(f"  peak RSS {peak:.1f} MB   budget < {BUDGET['rss_mb']:g} MB   -> {'within budget' if ok else 'OVER BUDGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
