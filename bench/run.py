"""The llmrouter benchmark: the same load sent directly to a fake upstream and
through the router, in one run, so the difference is what the router adds.

    python3 bench/run.py            # about 40 s
    python3 bench/run.py --quick    # about 15 s

The router runs as a subprocess pinned to core 0 (`taskset -c 0`); the fake
upstream and this load generator share core 1. Rounds alternate direct and
routed runs, so noise from anything else on the machine hits both alike.
Prints a table and writes bench/results/latest.json (--json to change).
Loopback only; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from loadgen import Run  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
TARGETS = {
    "added_p50_ms_c1": 0.5,
    "added_p99_ms_c1": 1.0,
    "min_rps": 1500,
    "p99_over_p50": 3.0,
    "added_ttft_ms": 1.0,
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


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


def start_fake(args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    argv = [sys.executable, str(HERE / "fake_upstream.py"), "--chunks", str(args.chunks), "--gap-ms", str(args.gap_ms), "--first-ms", str(args.first_ms)]
    proc = subprocess.Popen(pinned(1, argv), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        raise SystemExit("the fake upstream did not start")
    return proc, int(line[1])


def wait_ready(proc: subprocess.Popen, port: int, errfile: Path, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at startup:\n" + errfile.read_text())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not answer within 15 s")


def start_floor(mode: str, fake_port: int, workdir: str) -> tuple[subprocess.Popen, int]:
    """bench/bare_server.py: the canned-reply server or a minimal relay."""
    port = free_port()
    argv = [sys.executable, str(HERE / "bare_server.py"), "--port", str(port)]
    if mode in ("relay", "wire relay"):
        argv += ["--relay", str(fake_port)] + (["--wire"] if mode == "wire relay" else [])
    err = Path(workdir) / f"{mode}.err"
    proc = subprocess.Popen(pinned(ROUTER_CORE, argv), stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_ready(proc, port, err, f"the {mode} floor server")
    return proc, port


def start_router(fake_port: int, workdir: str, log_requests: bool, src: Path = ROOT, name: str = "router") -> tuple[subprocess.Popen, int]:
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
    env = {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("OPENAI_API_KEY", None)
    argv = [sys.executable, "-m", "llmrouter", "serve", str(config), "--port", str(port)]
    err = Path(workdir) / f"{name}.err"
    proc = subprocess.Popen(pinned(ROUTER_CORE, argv), cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_ready(proc, port, err, f"the {name}")
    return proc, port


class Bench:
    """`servers` maps each measured target but "direct" to its (process, port)."""

    def __init__(self, args: argparse.Namespace, fake: subprocess.Popen, fake_port: int, servers: dict[str, tuple[subprocess.Popen, int]]) -> None:
        self.args = args
        self.fake = fake
        self.procs = {name: proc for name, (proc, _) in servers.items()}
        self.ports = {"direct": fake_port, **{name: port for name, (_, port) in servers.items()}}
        self.stream_targets = [t for t in ("direct", "router", "compare") if t in self.ports]

    async def measure(self, target: str, concurrency: int, *, stream: bool, duration: float = 1.0, requests: int = 0) -> dict[str, Any]:
        proc = self.procs.get(target)
        server0 = cpu_seconds(proc.pid) if proc else 0.0
        fake0, self0 = cpu_seconds(self.fake.pid), time.process_time()
        run = await Run(self.ports[target], concurrency, stream=stream, duration=duration, requests=requests).go()
        n = len(run.latencies) + len(run.streams)
        return {
            "run": run,
            "n": n,
            "n_cpu": n + len(run.first_requests),  # CPU covers the warm-up requests too
            "elapsed": run.elapsed,
            "router_cpu": cpu_seconds(proc.pid) - server0 if proc else 0.0,
            "fake_cpu": cpu_seconds(self.fake.pid) - fake0,
            "loadgen_cpu": time.process_time() - self0,
        }

    async def requests(self, concurrency: int) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {}
        for target in self.ports:
            out[target] = {"lat": [], "first": [], "n": 0, "n_cpu": 0, "elapsed": 0.0, "router_cpu": 0.0, "fake_cpu": 0.0, "loadgen_cpu": 0.0, "errors": 0}
        for _ in range(a.rounds):
            for target in self.ports:
                m = await self.measure(target, concurrency, stream=False, duration=a.duration)
                acc = out[target]
                acc["lat"] += m["run"].latencies
                acc["first"] += m["run"].first_requests
                acc["errors"] += m["run"].errors + m["run"].dropped
                for key in ("n", "n_cpu", "elapsed", "router_cpu", "fake_cpu", "loadgen_cpu"):
                    acc[key] += m[key]
        result: dict[str, Any] = {"concurrency": concurrency}
        for target, acc in out.items():
            lat = [x * 1000 for x in acc["lat"]]
            result[target] = {
                "requests": acc["n"],
                "errors": acc["errors"],
                "rps": acc["n"] / acc["elapsed"],
                "p50_ms": pct(lat, 50),
                "p99_ms": pct(lat, 99),
                "router_cpu_us_per_req": acc["router_cpu"] / acc["n_cpu"] * 1e6,  # the measured server's CPU (0 for direct)
                "core1_cpu_us_per_req": (acc["fake_cpu"] + acc["loadgen_cpu"]) / acc["n_cpu"] * 1e6,
                # each connection's first request (not in p50/p99): with many new
                # connections at once this shows how fast the server takes them on
                "first_request_max_ms": max(acc["first"]) * 1000 if acc["first"] else float("nan"),
            }
        d, r = result["direct"], result["router"]
        result["added_p50_ms"] = r["p50_ms"] - d["p50_ms"]
        result["added_p99_ms"] = r["p99_ms"] - d["p99_ms"]
        return result

    async def streams(self, concurrency: int) -> dict[str, Any]:
        a = self.args
        samples: dict[str, list] = {t: [] for t in self.stream_targets}
        errors = {t: 0 for t in self.stream_targets}
        for _ in range(a.rounds):
            for target in self.stream_targets:
                m = await self.measure(target, concurrency, stream=True, requests=a.streams)
                samples[target] += m["run"].streams
                errors[target] += m["run"].errors + m["run"].dropped
        result: dict[str, Any] = {"concurrency": concurrency, "chunks": a.chunks, "gap_ms": a.gap_ms, "first_event_after_ms": a.first_ms}
        for target, ss in samples.items():
            lags = [lag for s in ss for lag in s.lags_us]
            result[target] = {
                "streams": len(ss),
                "errors": errors[target],
                "head_ms": pct([s.head * 1000 for s in ss], 50),
                "ttft_ms": pct([s.first_event * 1000 for s in ss], 50),
                "total_ms": pct([s.total * 1000 for s in ss], 50),
                "events_min": min((s.events for s in ss), default=0),
                "events_max": max((s.events for s in ss), default=0),
                "reads_with_events_p50": pct([s.reads_with_events for s in ss], 50),
                "event_lag_p50_us": pct(lags, 50),
                "event_lag_p99_us": pct(lags, 99),
            }
        d, r = result["direct"], result["router"]
        result["added_head_ms"] = r["head_ms"] - d["head_ms"]
        result["added_ttft_ms"] = r["ttft_ms"] - d["ttft_ms"]
        result["added_total_ms"] = r["total_ms"] - d["total_ms"]
        result["added_event_lag_p50_us"] = r["event_lag_p50_us"] - d["event_lag_p50_us"]
        result["added_event_lag_p99_us"] = r["event_lag_p99_us"] - d["event_lag_p99_us"]
        return result


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    req = {r["concurrency"]: r for r in results["requests"]}
    out = []
    if 1 in req:
        out.append(("added p50 at c=1 <= 0.5 ms", f"{req[1]['added_p50_ms']:.3f} ms", req[1]["added_p50_ms"] <= TARGETS["added_p50_ms_c1"]))
        out.append(("added p99 at c=1 <= 1 ms", f"{req[1]['added_p99_ms']:.3f} ms", req[1]["added_p99_ms"] <= TARGETS["added_p99_ms_c1"]))
    rps = [r["router"]["rps"] for r in results["requests"]]
    out.append(("router >= 1,500 req/s at every concurrency", f"min {min(rps):,.0f} req/s", min(rps) >= TARGETS["min_rps"]))
    ratios = [r["router"]["p99_ms"] / r["router"]["p50_ms"] for r in results["requests"]]
    out.append(("router p99 <= 3 x p50 at every concurrency", f"max {max(ratios):.2f} x", max(ratios) <= TARGETS["p99_over_p50"]))
    for s in results["streams"]:
        c = s["concurrency"]
        out.append((f"streams c={c}: added time to first event <= 1 ms", f"{s['added_ttft_ms']:.3f} ms", s["added_ttft_ms"] <= TARGETS["added_ttft_ms"]))
        out.append((f"streams c={c}: headers as soon as upstream's (added <= 1 ms)", f"{s['added_head_ms']:.3f} ms", s["added_head_ms"] <= 1.0))
        same = s["router"]["events_min"] == s["direct"]["events_min"] == s["router"]["events_max"] == s["chunks"]
        out.append((f"streams c={c}: every event forwarded", f"{s['router']['events_min']}..{s['router']['events_max']} of {s['chunks']}", same))
        apart = s["router"]["reads_with_events_p50"] >= s["direct"]["reads_with_events_p50"] - 1
        out.append((f"streams c={c}: no coalescing (reads carrying events)", f"{s['router']['reads_with_events_p50']:.0f} vs direct {s['direct']['reads_with_events_p50']:.0f}", apart))
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "Small non-streaming requests (closed loop, keep-alive; latency in ms)",
        "",
        "| conc | direct req/s | router req/s | direct p50 | direct p99 | router p50 | router p99 | added p50 | added p99 | router p99/p50 | router CPU µs/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["requests"]:
        d, t = r["direct"], r["router"]
        lines.append(
            f"| {r['concurrency']} | {d['rps']:,.0f} | {t['rps']:,.0f} | {d['p50_ms']:.3f} | {d['p99_ms']:.3f} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} "
            f"| {r['added_p50_ms']:.3f} | {r['added_p99_ms']:.3f} | {t['p99_ms'] / t['p50_ms']:.2f} | {t['router_cpu_us_per_req']:.0f} |"
        )
    if results["streams"]:
        s0 = results["streams"][0]
        lines += [
            "",
            f"{s0['chunks']}-event SSE streams (the fake sends its head, waits {s0['first_event_after_ms']:g} ms, then one event every {s0['gap_ms']:g} ms; medians in ms)",
            "",
            "| conc | path | head | first event | total | events | reads w/ events | event lag p50 µs | event lag p99 µs |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in results["streams"]:
            for target in [t for t in ("direct", "router", "compare") if t in s]:
                x = s[target]
                ev = f"{x['events_min']}" if x["events_min"] == x["events_max"] else f"{x['events_min']}..{x['events_max']}"
                lines.append(
                    f"| {s['concurrency']} | {target} | {x['head_ms']:.3f} | {x['ttft_ms']:.3f} | {x['total_ms']:.3f} | {ev} "
                    f"| {x['reads_with_events_p50']:.0f} | {x['event_lag_p50_us']:.0f} | {x['event_lag_p99_us']:.0f} |"
                )
            lines.append(
                f"| {s['concurrency']} | **added** | {s['added_head_ms']:.3f} | {s['added_ttft_ms']:.3f} | {s['added_total_ms']:.3f} | | "
                f"| {s['added_event_lag_p50_us']:.0f} | {s['added_event_lag_p99_us']:.0f} |"
            )
    others = [t for t in ("compare", "wire relay", "relay", "bare") if t in results["requests"][0]]
    if others:
        lines += [
            "",
            "Other servers measured in the same rounds (bare: anyio + h11 answering a canned reply; relay: that server "
            "forwarding to the fake over one httpcore AsyncHTTP11Connection per client connection; wire relay: the same "
            "relay with both sockets on llmrouter's wires (asyncio transports); compare: the router from --compare)",
            "",
            "| conc | server | req/s | p50 ms | p99 ms | CPU µs/req | router req/s as % of it |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in results["requests"]:
            for target in ("router", *others):
                x = r[target]
                share = "" if target == "router" else f"{r['router']['rps'] / x['rps'] * 100:.0f}%"
                lines.append(
                    f"| {r['concurrency']} | {target} | {x['rps']:,.0f} | {x['p50_ms']:.3f} | {x['p99_ms']:.3f} | {x['router_cpu_us_per_req']:.0f} | {share} |"
                )
    lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
    for name, value, ok in verdicts(results):
        lines.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
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
        servers: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            servers["router"] = start_router(fake_port, workdir, args.log_requests)
            if args.compare:
                servers["compare"] = start_router(fake_port, workdir, args.log_requests, Path(args.compare).resolve(), "compare")
            if args.floors:
                servers["relay"] = start_floor("relay", fake_port, workdir)
                servers["wire relay"] = start_floor("wire relay", fake_port, workdir)
                servers["bare"] = start_floor("bare", fake_port, workdir)
            b = Bench(args, fake, fake_port, servers)
            # Warm every path: connections, pools, first-call imports.
            for target in b.ports:
                await b.measure(target, 16, stream=False, duration=0.3)
                if target in b.stream_targets:
                    await b.measure(target, 2, stream=True, requests=4)
            results: dict[str, Any] = {"requests": [], "streams": []}
            for c in args.concurrency:
                results["requests"].append(await b.requests(c))
                print(f"  requests c={c} done", file=sys.stderr, flush=True)
            for c in args.stream_concurrency:
                results["streams"].append(await b.streams(c))
                print(f"  streams c={c} done", file=sys.stderr, flush=True)
        finally:
            for proc in [p for p, _ in servers.values()] + [fake]:
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter rounds, for a quick look")
    ap.add_argument("--rounds", type=int, help="alternating direct/router rounds per scenario (default 3, quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per non-streaming run (default 1.5, quick 0.6)")
    ap.add_argument("--streams", type=int, help="streams per run (default 30, quick 12)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--stream-concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--chunks", type=int, default=50)
    ap.add_argument("--gap-ms", type=float, default=1.0, help="pause between streamed events at the fake")
    ap.add_argument("--first-ms", type=float, default=5.0, help="pause between the head and the first event at the fake")
    ap.add_argument("--no-log", dest="log_requests", action="store_false", help="turn the router's JSONL request log off")
    ap.add_argument("--floors", action="store_true", help="also measure bench/bare_server.py as a canned-reply server and as minimal relays (on anyio streams and on wires)")
    ap.add_argument("--compare", metavar="SRC", help="also measure the router from this directory (one holding an llmrouter package), for A/B comparisons")
    ap.add_argument("--router-core", type=int, default=0, help="core for the router (default 0; the fake and load generator use core 1)")
    ap.add_argument("--nice", type=int, default=0, help="run all three processes at this nice level (e.g. -10, needs root) so that other work on a shared machine disturbs them less")
    ap.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.duration = args.duration or (0.6 if args.quick else 1.5)
    args.streams = args.streams or (12 if args.quick else 30)
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
        "targets": TARGETS,
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
