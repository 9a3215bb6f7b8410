"""The llmrouter benchmark: the same load sent directly to a fake upstream and
through the router, in one run, so the difference is what the router adds.

    python3 bench/run.py                 # about 2 minutes
    python3 bench/run.py --quick         # about 40 s
    python3 bench/run.py --floors --peers /work/peers   # with the minimal relays and the peers

Scenarios (all closed loop, keep-alive):

- requests: small non-streaming chat completions at concurrency 1, 16, 64;
- paced: 50-event streams, 20 ms to the first event, then one every 5 ms
  (added time to first token, at concurrency 1, 16, 64);
- fast: 50-event streams that the upstream writes whole, in one write (CPU
  per streamed event; fairness: the median first byte against the median
  stream's duration, under saturation at concurrency 16);
- cross: the fast stream for an Anthropic client from the openai upstream
  (the translating path; router and --compare only);
- gap (not run by default): the fake's own pacing, --first-ms and --gap-ms.

The router runs as a subprocess pinned to core 0 (`taskset -c 0`); the fake
upstream and this load generator share core 1. Rounds alternate the servers
under test, so noise from anything else on the machine hits all alike.
--peers DIR also measures LiteLLM's proxy and Portkey's gateway, installed
under DIR as docs/performance.md describes, each pinned to core 0 in turn.
Prints tables and writes bench/results/latest.json (--json to change).
Loopback only; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from loadgen import Run, build_request  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
# Issue 12's targets, checked on each run (those needing a peer or a floor only when it was measured).
TARGETS = {
    "rps_vs_portkey": 3.0,  # small requests/s at every concurrency, as a multiple of Portkey's
    "rps_vs_wire_relay": 0.75,  # ... as a share of the minimal relay's
    "p99_over_p50": 3.0,
    "fairness": 0.25,  # fast streams at c=16: median first byte / median stream duration
    "streams_per_cpu_vs_portkey": 1.7,
    "paced_ttft_p50_ms": {1: 0.5, 16: 1.0},  # added time to first token, p50
    "paced_ttft_p99_ms": {64: 3.0},  # ... p99
}
STREAM_TARGETS = ("direct", "router", "uvloop", "compare", "wire relay", "litellm", "portkey")


@dataclass(frozen=True)
class Scenario:
    model: str
    client: str = "openai"
    path: str = "/v1/chat/completions"
    targets: tuple[str, ...] = STREAM_TARGETS
    about: str = ""


SCENARIOS = {
    "paced": Scenario("mock-paced", about="the fake sends its head, waits 20 ms, then one event every 5 ms"),
    "fast": Scenario("mock-fast", about="the fake writes head, 50 events and the end in one write"),
    "cross": Scenario("mock-fast", "anthropic", "/v1/messages", ("router", "uvloop", "compare"), "an Anthropic client, the openai fake writing the whole stream at once"),
    "gap": Scenario("bench-model", targets=("direct", "router", "compare"), about="the fake's --first-ms and --gap-ms"),
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants, from /proc (10 ms resolution)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [child for child, (parent, _) in stats.items() if parent == p]
    return total


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROUTER_CORE = 0  # --router-core 1 puts everything on one core (shows what cross-core wakeups cost)
NICE = 0  # set from --nice: a negative value puts the benchmark ahead of other work


def pinned(core: int, argv: list[str]) -> list[str]:
    if NICE and shutil.which("nice"):
        argv = ["nice", "-n", str(NICE), *argv]
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        return ["taskset", "-c", str(core), *argv]
    return argv


@dataclass
class Target:
    """A server under test: where it listens and what its requests need."""

    port: int
    proc: subprocess.Popen | None = None  # None: the fake itself (direct)
    auth: str = "Bearer bench"
    headers: bytes = b""  # extra request header lines

    def request(self, stream: bool, scenario: Scenario | None = None) -> bytes:
        s = scenario or Scenario("mock-fast")
        return build_request(self.port, stream, s.path, model=s.model, client=s.client, auth=self.auth, headers=self.headers)


def start_fake(args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    argv = [sys.executable, str(HERE / "fake_upstream.py"), "--chunks", str(args.chunks), "--gap-ms", str(args.gap_ms), "--first-ms", str(args.first_ms)]
    proc = subprocess.Popen(pinned(1, argv), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        raise SystemExit("the fake upstream did not start")
    return proc, int(line[1])


def wait_ready(proc: subprocess.Popen, port: int, errfile: Path, what: str, path: str = "/health", timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at startup:\n" + errfile.read_text())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n" % path.encode())
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.05)
        time.sleep(0.05)
    raise SystemExit(f"{what} did not answer within {timeout:g} s")


def start_floor(mode: str, fake_port: int, workdir: str) -> Target:
    """bench/bare_server.py: the canned-reply server or a minimal relay."""
    port = free_port()
    argv = [sys.executable, str(HERE / "bare_server.py"), "--port", str(port)]
    if mode in ("relay", "wire relay"):
        argv += ["--relay", str(fake_port)] + (["--wire"] if mode == "wire relay" else [])
    err = Path(workdir) / f"{mode}.err"
    proc = subprocess.Popen(pinned(ROUTER_CORE, argv), stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_ready(proc, port, err, f"the {mode} floor server")
    return Target(port, proc)


def start_router(fake_port: int, workdir: str, log_requests: bool, src: Path = ROOT, name: str = "router", uvloop: str | None = None) -> Target:
    """The router from `src`; on asyncio's loop, or on uvloop imported from the folder `uvloop`."""
    port = free_port()
    config = Path(workdir) / f"{name}.toml"
    config.write_text(
        f"""[server]
port = {port}
dashboard = true

[logging]
enabled = {str(log_requests).lower()}
path = "{workdir}/{name}-requests.jsonl"

[[providers]]
name = "fake"
format = "openai"
base_url = "http://127.0.0.1:{fake_port}/v1"

[[routers]]
type = "prefix"
model_prefix = ""
provider = "fake"
"""
    )
    paths = [str(src), *([uvloop] if uvloop else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("OPENAI_API_KEY", None)
    if not uvloop:
        env["LLMROUTER_LOOP"] = "asyncio"  # the default install's loop, even where uvloop is installed
    argv = [sys.executable, "-m", "llmrouter", "serve", str(config), "--port", str(port)]
    err = Path(workdir) / f"{name}.err"
    proc = subprocess.Popen(pinned(ROUTER_CORE, argv), cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_ready(proc, port, err, f"the {name}")
    return Target(port, proc)


def start_litellm(peers: Path, fake_port: int, workdir: str) -> Target | None:
    """LiteLLM's proxy from PEERS/litellm/venv: one worker, no database, no callbacks, no retries."""
    exe = peers / "litellm" / "venv" / "bin" / "litellm"
    if not exe.exists():
        print(f"  peers: no LiteLLM at {exe}; skipped", file=sys.stderr)
        return None
    key = "sk-bench-" + secrets.token_hex(16)  # LiteLLM refuses to start without a master key
    models = "".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n      api_base: http://127.0.0.1:{fake_port}/v1\n      api_key: sk-fake\n"
        for m in ("mock-fast", "mock-paced")
    )
    config = Path(workdir) / "litellm.yaml"
    config.write_text(
        f"model_list:\n{models}litellm_settings:\n  callbacks: []\n  num_retries: 0\n  request_timeout: 30\n  drop_params: true\n"
        f"  set_verbose: false\ngeneral_settings:\n  master_key: {key}\n"
    )
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    err = Path(workdir) / "litellm.err"
    proc = subprocess.Popen(pinned(ROUTER_CORE, argv), cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_ready(proc, port, err, "LiteLLM", "/health/liveliness", timeout=120)
    return Target(port, proc, auth=f"Bearer {key}")


def start_portkey(peers: Path, fake_port: int, workdir: str) -> Target | None:
    """Portkey's gateway from PEERS/portkey (npm), bound to 127.0.0.1 by bench/peers/bind_loopback.cjs."""
    script = peers / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    node = shutil.which("node")
    if not script.exists() or node is None:
        print(f"  peers: no Portkey gateway at {script} (or no node); skipped", file=sys.stderr)
        return None
    port = free_port()
    argv = [node, "--require", str(HERE / "peers" / "bind_loopback.cjs"), str(script), f"--port={port}", "--headless"]
    err = Path(workdir) / "portkey.err"
    env = {**os.environ, "NODE_ENV": "production"}
    proc = subprocess.Popen(pinned(ROUTER_CORE, argv), cwd=peers / "portkey", env=env, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_ready(proc, port, err, "Portkey", "/", timeout=60)
    headers = b"x-portkey-provider: openai\r\nx-portkey-custom-host: http://127.0.0.1:%d/v1\r\n" % fake_port
    return Target(port, proc, auth="Bearer sk-fake", headers=headers)


class Bench:
    """`targets` maps every server under test, "direct" (the fake) included, to its Target."""

    def __init__(self, args: argparse.Namespace, fake: subprocess.Popen, targets: dict[str, Target]) -> None:
        self.args = args
        self.fake = fake
        self.targets = targets

    async def measure(self, name: str, concurrency: int, request: bytes, *, stream: bool, duration: float) -> dict[str, Any]:
        proc = self.targets[name].proc
        server0 = cpu_seconds(proc.pid) if proc else 0.0
        fake0, self0 = cpu_seconds(self.fake.pid), time.process_time()
        run = await Run(self.targets[name].port, concurrency, stream=stream, duration=duration, request=request).go()
        return {
            "run": run,
            "n": len(run.latencies) + len(run.streams),
            "n_cpu": len(run.latencies) + len(run.streams) + len(run.first_requests),  # CPU covers the warm-up requests too
            "elapsed": run.elapsed,
            "server_cpu": cpu_seconds(proc.pid) - server0 if proc else 0.0,
            "fake_cpu": cpu_seconds(self.fake.pid) - fake0,
            "loadgen_cpu": time.process_time() - self0,
        }

    async def rounds(self, names: list[str], concurrency: int, stream: bool, scenario: Scenario | None, duration: float) -> dict[str, dict[str, Any]]:
        """Every target measured once per round, in turn; the samples added up."""
        out = {n: {"lat": [], "first": [], "streams": [], "n": 0, "n_cpu": 0, "elapsed": 0.0, "server_cpu": 0.0, "fake_cpu": 0.0, "loadgen_cpu": 0.0, "errors": 0} for n in names}
        for _ in range(self.args.rounds):
            for name in names:
                m = await self.measure(name, concurrency, self.targets[name].request(stream, scenario), stream=stream, duration=duration)
                acc = out[name]
                acc["lat"] += m["run"].latencies
                acc["streams"] += m["run"].streams
                acc["first"] += m["run"].first_requests
                acc["errors"] += m["run"].errors + m["run"].dropped
                for key in ("n", "n_cpu", "elapsed", "server_cpu", "fake_cpu", "loadgen_cpu"):
                    acc[key] += m[key]
        return out

    async def requests(self, concurrency: int) -> dict[str, Any]:
        result: dict[str, Any] = {"concurrency": concurrency}
        for name, acc in (await self.rounds(list(self.targets), concurrency, False, None, self.args.duration)).items():
            lat = [x * 1000 for x in acc["lat"]]
            result[name] = {
                "requests": acc["n"],
                "errors": acc["errors"],
                "rps": acc["n"] / acc["elapsed"],
                "p50_ms": pct(lat, 50),
                "p99_ms": pct(lat, 99),
                "cpu_us_per_req": acc["server_cpu"] / acc["n_cpu"] * 1e6,  # the measured server's CPU (0 for direct)
                "core1_cpu_us_per_req": (acc["fake_cpu"] + acc["loadgen_cpu"]) / acc["n_cpu"] * 1e6,
                # each connection's first request (not in p50/p99): with many new
                # connections at once this shows how fast the server takes them on
                "first_request_max_ms": max(acc["first"]) * 1000 if acc["first"] else float("nan"),
            }
        d, r = result["direct"], result["router"]
        result["added_p50_ms"] = r["p50_ms"] - d["p50_ms"]
        result["added_p99_ms"] = r["p99_ms"] - d["p99_ms"]
        return result

    async def streams(self, name: str, concurrency: int) -> dict[str, Any]:
        scenario = SCENARIOS[name]
        names = [t for t in scenario.targets if t in self.targets]
        result: dict[str, Any] = {"scenario": name, "concurrency": concurrency, "chunks": self.args.chunks}
        for target, acc in (await self.rounds(names, concurrency, True, scenario, self.args.stream_duration)).items():
            ss = acc["streams"]
            lags = [lag for s in ss for lag in s.lags_us]
            cpu = acc["server_cpu"]
            head, total = pct([s.head * 1000 for s in ss], 50), pct([s.total * 1000 for s in ss], 50)
            result[target] = {
                "streams": len(ss),
                "errors": acc["errors"],
                "streams_per_s": len(ss) / acc["elapsed"] if acc["elapsed"] else 0.0,
                "cpu_us_per_stream": cpu / acc["n_cpu"] * 1e6 if acc["n_cpu"] else float("nan"),
                "cpu_us_per_event": cpu / acc["n_cpu"] / self.args.chunks * 1e6 if acc["n_cpu"] else float("nan"),
                "streams_per_cpu_s": acc["n_cpu"] / cpu if cpu else float("nan"),
                "head_ms": head,
                "ttft_ms": pct([s.first_event * 1000 for s in ss], 50),
                "ttft_p99_ms": pct([s.first_event * 1000 for s in ss], 99),
                "total_ms": total,
                "first_byte_share": head / total if total else float("nan"),
                "events_min": min((s.events for s in ss), default=0),
                "events_max": max((s.events for s in ss), default=0),
                "reads_with_events_p50": pct([s.reads_with_events for s in ss], 50),
                "event_lag_p50_us": pct(lags, 50),
                "event_lag_p99_us": pct(lags, 99),
            }
        if "direct" in result:
            d, r = result["direct"], result["router"]
            result["added_ttft_ms"] = r["ttft_ms"] - d["ttft_ms"]
            result["added_ttft_p99_ms"] = r["ttft_p99_ms"] - d["ttft_p99_ms"]
            result["added_event_lag_p50_us"] = r["event_lag_p50_us"] - d["event_lag_p50_us"]
        return result


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    req = results["requests"]
    if req and "portkey" in req[0]:
        ratios = [r["router"]["rps"] / r["portkey"]["rps"] for r in req]
        out.append((f"small requests/s >= {TARGETS['rps_vs_portkey']:g}x Portkey's at every concurrency", f"min {min(ratios):.2f}x", min(ratios) >= TARGETS["rps_vs_portkey"]))
    if req and "wire relay" in req[0]:
        shares = [r["router"]["rps"] / r["wire relay"]["rps"] for r in req]
        out.append((f"small requests/s >= {TARGETS['rps_vs_wire_relay']:.0%} of the minimal relay's", f"min {min(shares):.0%}", min(shares) >= TARGETS["rps_vs_wire_relay"]))
    if req:
        ratios = [r["router"]["p99_ms"] / r["router"]["p50_ms"] for r in req]
        out.append((f"small requests: p99 <= {TARGETS['p99_over_p50']:g}x p50 at every concurrency", f"max {max(ratios):.2f}x", max(ratios) <= TARGETS["p99_over_p50"]))
    for s in results["streams"]:
        name, c, r = s["scenario"], s["concurrency"], s["router"]
        if name in ("fast", "cross") and c == 16:
            out.append((f"{name} streams c=16: median first byte within {TARGETS['fairness']:.0%} of the median stream", f"{r['first_byte_share']:.0%}", r["first_byte_share"] <= TARGETS["fairness"]))
        if name == "fast" and "portkey" in s:
            ratio = r["streams_per_cpu_s"] / s["portkey"]["streams_per_cpu_s"]
            out.append((f"fast streams c={c}: streams per CPU-second >= {TARGETS['streams_per_cpu_vs_portkey']:g}x Portkey's", f"{ratio:.2f}x", ratio >= TARGETS["streams_per_cpu_vs_portkey"]))
        if name == "paced" and c in TARGETS["paced_ttft_p50_ms"]:
            limit = TARGETS["paced_ttft_p50_ms"][c]
            out.append((f"paced streams c={c}: added time to first token p50 <= {limit:g} ms", f"{s['added_ttft_ms']:.3f} ms", s["added_ttft_ms"] <= limit))
        if name == "paced" and c in TARGETS["paced_ttft_p99_ms"]:
            limit = TARGETS["paced_ttft_p99_ms"][c]
            out.append((f"paced streams c={c}: added time to first token p99 <= {limit:g} ms", f"{s['added_ttft_p99_ms']:.3f} ms", s["added_ttft_p99_ms"] <= limit))
        every = r["events_min"] == r["events_max"] == s["chunks"]
        out.append((f"{name} streams c={c}: every event forwarded", f"{r['events_min']}..{r['events_max']} of {s['chunks']}", every))
        if name in ("paced", "gap"):
            apart = r["reads_with_events_p50"] >= s["direct"]["reads_with_events_p50"] - 1
            out.append((f"{name} streams c={c}: events apart as sent (reads carrying events)", f"{r['reads_with_events_p50']:.0f} vs direct {s['direct']['reads_with_events_p50']:.0f}", apart))
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "Small non-streaming requests (closed loop, keep-alive; latency in ms)",
        "",
        "| conc | direct req/s | router req/s | direct p50 | direct p99 | router p50 | router p99 | added p50 | added p99 | router p99/p50 | router CPU µs/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ] if results["requests"] else []
    for r in results["requests"]:
        d, t = r["direct"], r["router"]
        lines.append(
            f"| {r['concurrency']} | {d['rps']:,.0f} | {t['rps']:,.0f} | {d['p50_ms']:.3f} | {d['p99_ms']:.3f} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} "
            f"| {r['added_p50_ms']:.3f} | {r['added_p99_ms']:.3f} | {t['p99_ms'] / t['p50_ms']:.2f} | {t['cpu_us_per_req']:.0f} |"
        )
    others = [t for t in (results["requests"] or [{}])[0] if t not in ("concurrency", "direct", "router", "added_p50_ms", "added_p99_ms")]
    if others:
        lines += [
            "",
            "Other servers measured in the same rounds (uvloop: the router on uvloop; compare: the router from --compare; wire relay / relay: the "
            "minimal h11-in, httpcore-out relay on llmrouter's wires / on anyio streams; bare: a canned-reply h11 server; "
            "litellm, portkey: the peers)",
            "",
            "| conc | server | req/s | p50 ms | p99 ms | p99/p50 | CPU µs/req | router's req/s as a multiple of it |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["requests"]:
            for target in ("router", *others):
                x = r[target]
                ratio = "" if target == "router" else f"{r['router']['rps'] / x['rps']:.2f}x"
                lines.append(
                    f"| {r['concurrency']} | {target} | {x['rps']:,.0f} | {x['p50_ms']:.3f} | {x['p99_ms']:.3f} | {x['p99_ms'] / x['p50_ms']:.2f} "
                    f"| {x['cpu_us_per_req']:.0f} | {ratio} |"
                )
    for name in dict.fromkeys(s["scenario"] for s in results["streams"]):
        rows = [s for s in results["streams"] if s["scenario"] == name]
        lines += [
            "",
            f"{name}: {rows[0]['chunks']}-event SSE streams; {SCENARIOS[name].about} (times in ms; first byte: of the response)",
            "",
            "| conc | server | streams/s | CPU µs/stream | CPU µs/event | streams/CPU-s | first byte p50 | first event p50 | first event p99 "
            "| total p50 | first byte / total | events | reads w/ events | event lag p50 µs | event lag p99 µs |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in rows:
            for target in [t for t in STREAM_TARGETS if t in s]:
                x = s[target]
                ev = f"{x['events_min']}" if x["events_min"] == x["events_max"] else f"{x['events_min']}..{x['events_max']}"
                cpu = "" if target == "direct" else f"{x['cpu_us_per_stream']:,.0f} | {x['cpu_us_per_event']:.0f} | {x['streams_per_cpu_s']:,.0f}"
                lines.append(
                    f"| {s['concurrency']} | {target} | {x['streams_per_s']:,.0f} | {cpu or ' | | '} | {x['head_ms']:.3f} | {x['ttft_ms']:.3f} | {x['ttft_p99_ms']:.3f} "
                    f"| {x['total_ms']:.3f} | {x['first_byte_share']:.0%} | {ev} | {x['reads_with_events_p50']:.0f} | {x['event_lag_p50_us']:.0f} | {x['event_lag_p99_us']:.0f} |"
                )
            if "added_ttft_ms" in s:
                lines.append(
                    f"| {s['concurrency']} | **router added** | | | | | | {s['added_ttft_ms']:.3f} | {s['added_ttft_p99_ms']:.3f} | | | | "
                    f"| {s['added_event_lag_p50_us']:.0f} | |"
                )
    lines += ["", "| target (issue 12) | measured | met |", "|---|---:|:---:|"]
    for name, value, ok in verdicts(results):
        lines.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
    if results["requests"]:
        ceiling = max(r["direct"]["rps"] for r in results["requests"])
        core1 = max(r["router"]["core1_cpu_us_per_req"] * r["router"]["rps"] / 1e6 for r in results["requests"])
        lines += [
            "",
            f"Load generator ceiling: {ceiling:,.0f} req/s straight to the fake (load generator + fake on one core). "
            f"During routed runs core 1 was at most {core1 * 100:.0f}% busy with them, so the router is what limits the routed numbers.",
            "",
            "Each connection's first request is a warm-up kept out of p50/p99. Slowest first request through the router "
            "(all connections opened at once): "
            + ", ".join(f"c={r['concurrency']}: {r['router']['first_request_max_ms']:.0f} ms" for r in results["requests"])
            + "; straight to the fake: "
            + ", ".join(f"c={r['concurrency']}: {r['direct']['first_request_max_ms']:.0f} ms" for r in results["requests"])
            + ".",
        ]
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmrouter-bench-") as workdir:
        fake, fake_port = start_fake(args)
        targets: dict[str, Target] = {"direct": Target(fake_port)}
        try:
            targets["router"] = start_router(fake_port, workdir, args.log_requests)
            if args.uvloop:
                targets["uvloop"] = start_router(fake_port, workdir, args.log_requests, name="uvloop", uvloop=args.uvloop)
            if args.compare:
                targets["compare"] = start_router(fake_port, workdir, args.log_requests, Path(args.compare).resolve(), "compare")
            if args.floors:
                for mode in ("wire relay", "relay", "bare"):
                    targets[mode] = start_floor(mode, fake_port, workdir)
            if args.peers:
                for name, start in (("litellm", start_litellm), ("portkey", start_portkey)):
                    peer = start(Path(args.peers), fake_port, workdir)
                    if peer is not None:
                        targets[name] = peer
            b = Bench(args, fake, targets)
            # Warm every path: connections, pools, first-call imports.
            for name, target in targets.items():
                await b.measure(name, 16, target.request(False), stream=False, duration=0.3)
                for scenario in args.scenarios:
                    if scenario != "requests" and name in SCENARIOS[scenario].targets:
                        await b.measure(name, 4, target.request(True, SCENARIOS[scenario]), stream=True, duration=0.2)
            results: dict[str, Any] = {"requests": [], "streams": []}
            for scenario in args.scenarios:
                for c in args.concurrency if scenario == "requests" else getattr(args, f"{scenario}_concurrency"):
                    if scenario == "requests":
                        results["requests"].append(await b.requests(c))
                    else:
                        results["streams"].append(await b.streams(scenario, c))
                    print(f"  {scenario} c={c} done", file=sys.stderr, flush=True)
        finally:
            for proc in [t.proc for t in targets.values() if t.proc is not None] + [fake]:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter rounds, for a quick look")
    ap.add_argument("--rounds", type=int, help="rounds per scenario, each measuring every server in turn (default 3, quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per non-streaming run (default 1.5, quick 0.6)")
    ap.add_argument("--stream-duration", type=float, help="seconds per streaming run (default 2, quick 0.8)")
    ap.add_argument("--scenarios", nargs="+", default=["requests", "paced", "fast", "cross"], choices=["requests", *SCENARIOS])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="for small requests")
    ap.add_argument("--paced-concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--fast-concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--cross-concurrency", type=int, nargs="+", default=[16])
    ap.add_argument("--gap-concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--chunks", type=int, default=50)
    ap.add_argument("--gap-ms", type=float, default=1.0, help="gap scenario: pause between streamed events at the fake")
    ap.add_argument("--first-ms", type=float, default=5.0, help="gap scenario: pause between the head and the first event at the fake")
    ap.add_argument("--no-log", dest="log_requests", action="store_false", help="turn the router's JSONL request log off")
    ap.add_argument("--floors", action="store_true", help="also measure bench/bare_server.py as a canned-reply server and as minimal relays (on anyio streams and on wires)")
    ap.add_argument("--compare", metavar="SRC", help="also measure the router from this directory (one holding an llmrouter package), for A/B comparisons")
    ap.add_argument("--uvloop", metavar="DIR", help="also measure the router on uvloop, imported from DIR (e.g. pip install --target DIR uvloop)")
    ap.add_argument("--peers", metavar="DIR", help="also measure LiteLLM's proxy and Portkey's gateway installed under DIR (see docs/performance.md)")
    ap.add_argument("--router-core", type=int, default=0, help="core for the servers under test (default 0; the fake and load generator use core 1)")
    ap.add_argument("--nice", type=int, default=0, help="run all processes at this nice level (e.g. -10, needs root) so that other work on a shared machine disturbs them less")
    ap.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.duration = args.duration or (0.6 if args.quick else 1.5)
    args.stream_duration = args.stream_duration or (0.8 if args.quick else 2.0)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the load generator shares core 1 with the fake
    global ROUTER_CORE
    ROUTER_CORE = args.router_core
    if args.nice:
        global NICE
        NICE = args.nice
        os.nice(args.nice - os.nice(0))
    results = asyncio.run(bench(args))
    results["meta"] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "loadavg_at_end": os.getloadavg(),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "targets": {k: v if not isinstance(v, dict) else {str(c): x for c, x in v.items()} for k, v in TARGETS.items()},
    }
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        results["meta"]["commit"] = rev
    except OSError:
        pass
    text = table(results)
    results["verdicts"] = [{"target": n, "measured": v, "met": ok} for n, v, ok in verdicts(results)]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    print(text)
    print(f"\nload average {os.getloadavg()[0]:.2f}; JSON in {args.json}")


if __name__ == "__main__":
    main()
