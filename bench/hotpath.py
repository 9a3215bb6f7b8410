"""Where the router's time goes: the router in this process under cProfile,
the fake upstream and the load generator in subprocesses on the other core.

    python3 bench/hotpath.py                     # counts for every scenario
    python3 bench/hotpath.py --scenarios stream --details [--top 30]
    python3 bench/hotpath.py --relay             # and the same for the minimal relay

Scenarios: `small` (non-streaming chat completions), `stream` (50-event
streams, same format both sides, that the upstream writes whole in one
write), `cross` (that stream for an Anthropic client from the openai
upstream), `paced` (20 ms to the first event, 5 ms between events; slow).

It prints numbers that do not depend on how busy the machine is, so changes
can be compared on a shared, noisy machine: Python function calls per request
(a coroutine's every resumption counts as a call, as cProfile counts it) and
event-loop iterations per request (each iteration is an epoll_wait; each
`await` that really suspends costs one), and for streams the calls per
forwarded event after the request's own share: (stream − small) / 50.
CPU time per request is printed too, but it moves with the machine's load.
--details adds the cProfile tables. --listen keeps a subscriber on the event
feed (as an open dashboard would) for the whole run; without it nobody
listens, and requests build no events but their `complete` record.
--owners adds a second pass that counts each call for its owner: the
package of the nearest frame outside the generic helpers (typing,
contextlib, abc, functools), so that httpcore's typing checks count as
httpcore's; a C call counts for its caller. --relay measures the minimal
wire relay of bench/bare_server.py (h11 in, httpcore's connection out, on
the router's wires; no routing, pool, timeouts or logging) the same way, in
this process after the router, for `small`, `stream` and `paced`: the floor
under the router's counts, from the same run.
For a sampling view of a running router use py-spy instead:
`py-spy record -p <router pid> -d 10 -o profile.svg`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# --src DIR profiles another copy of the package (say, an older commit's), for before/after numbers.
_src = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else str(ROOT)
sys.path.insert(0, _src)
sys.path.insert(0, str(HERE))

import anyio  # noqa: E402
import anyio.abc  # noqa: E402

from run import SCENARIOS, free_port, pinned, start_fake  # noqa: E402

CHUNKS = 50


def group(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/")[1].split("/")[0]
    if "/llmrouter/" in file:
        return "llmrouter/" + file.split("/llmrouter/", 1)[1]
    if file == "~":
        return "builtins (C)"
    return "stdlib " + file.rsplit("/", 1)[-1]


async def serve_relay(fake_port: int, *, task_status: anyio.abc.TaskStatus[int]) -> None:
    """bench/bare_server.py's wire relay, in this process, until cancelled."""
    import bare_server

    from llmrouter.wire import Wire

    bare_server.RELAY_PORT = fake_port
    async with anyio.create_task_group() as tg:
        server = await asyncio.get_running_loop().create_server(lambda: Wire(lambda w: tg.start_soon(bare_server.handle_wire, w)), "127.0.0.1", 0)
        try:
            task_status.started(server.sockets[0].getsockname()[1])
            await anyio.sleep_forever()
        finally:
            server.close()


def profile_config(fake_port: int, port: int) -> Path:
    """The config the in-process profilers run the router on: one openai
    provider (the fake upstream), a prefix rule, the request log on."""
    workdir = tempfile.mkdtemp(prefix="llmrouter-profile-")
    path = Path(workdir) / "profile.toml"
    path.write_text(
        f'[server]\nport = {port}\n[logging]\nenabled = true\npath = "{workdir}/requests.jsonl"\n'
        f'[[providers]]\nname = "fake"\nformat = "openai"\nbase_url = "http://127.0.0.1:{fake_port}/v1"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'
    )
    return path


async def profile(args: argparse.Namespace) -> None:
    from llmrouter import config
    from llmrouter.app import App

    fake, fake_port = start_fake(argparse.Namespace(chunks=CHUNKS, gap_ms=1.0, first_ms=5.0))
    port = free_port()
    cfg = config.load(str(profile_config(fake_port, port)), environ=os.environ)
    app = App(cfg)
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]  # counting iterations only
    iterations = 0
    real_select = selector.select

    def counting_select(timeout=None):
        nonlocal iterations
        iterations += 1
        return real_select(timeout)

    selector.select = counting_select

    def load(port: int, scenario: str, n: int) -> list[str]:
        s = SCENARIOS["fast" if scenario in ("small", "stream") else scenario]
        stream = scenario != "small"
        code = (
            "import asyncio, sys; sys.path.insert(0, %r)\n"
            "from loadgen import Run, build_request\n"
            "async def m():\n"
            "    request = build_request(%d, %r, %r, model=%r, client=%r)\n"
            "    r = await Run(%d, %d, stream=%r, requests=%d, request=request).go()\n"
            "    print(len(r.latencies) + len(r.streams), r.errors + r.dropped)\n"
            "asyncio.run(m())\n"
        ) % (str(HERE), port, stream, s.path, s.model, s.client, port, args.concurrency, stream, n)
        return pinned(1, [sys.executable, "-c", code])

    async def measure(target: str, port: int, scenarios: list[str]) -> None:
        nonlocal iterations
        for scenario in scenarios:
            n = args.requests if scenario == "small" else args.streams
            await anyio.run_process(load(port, scenario, max(n // 10, 20)))  # warm up
            prof = cProfile.Profile()
            iterations = 0
            cpu = time.process_time()
            proc = await anyio.open_process(load(port, scenario, n))
            prof.enable()
            await proc.wait()
            prof.disable()
            cpu = time.process_time() - cpu
            out = (await proc.stdout.receive()).decode().split() if proc.stdout else ["0", "0"]
            results[target, scenario] = (int(out[0]), int(out[1]), iterations, cpu, pstats.Stats(prof))
            if args.dump:
                prof.dump_stats(f"{args.dump}.{scenario}" if target == "router" else f"{args.dump}.{target}.{scenario}")
            if args.owners:
                counter = Owners()
                proc = await anyio.open_process(load(port, scenario, n))
                counter.enable()
                await proc.wait()
                counter.disable()
                done = int((await proc.stdout.receive()).decode().split()[0]) if proc.stdout else 0
                owners[target, scenario] = {name: c / max(done, 1) for name, c in counter.counts.items()}

    results: dict[tuple[str, str], tuple[int, int, float, float, pstats.Stats]] = {}
    owners: dict[tuple[str, str], dict[str, float]] = {}
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(app.run)
            if args.listen:  # a feed subscriber on the other core, reading every event
                code = ("import socket; s = socket.create_connection(('127.0.0.1', %d))\n"
                        "s.sendall(b'GET /dashboard/events HTTP/1.1\\r\\nhost: 127.0.0.1\\r\\n\\r\\n')\n"
                        "while s.recv(65536): pass\n") % port
                tg.start_soon(anyio.run_process, pinned(1, [sys.executable, "-c", code]))
                while not app.bus.listeners:
                    await anyio.sleep(0.01)
            await measure("router", port, args.scenarios)
            app.shutdown()
            if args.relay:
                async with anyio.create_task_group() as relay:
                    await measure("relay", await relay.start(serve_relay, fake_port), [s for s in args.scenarios if s != "cross"])
                    relay.cancel_scope.cancel()
    finally:
        fake.terminate()
        fake.wait()

    calls: dict[tuple[str, str], float] = {}
    for (target, scenario), (done, failed, loops, cpu, stats) in results.items():
        n = max(done, 1)
        calls[target, scenario] = sum(nc for (_, _, _), (_, nc, _, _, _) in stats.stats.items()) / n  # type: ignore[attr-defined]
        label = scenario if target == "router" else f"{scenario}, minimal wire relay"
        print(f"{label}: {done} {KINDS[scenario]} at concurrency {args.concurrency}, {failed} failed")
        print(f"  Python function calls per request: {calls[target, scenario]:,.0f}")
        if scenario != "small" and (target, "small") in calls:
            print(f"  ... per forwarded event, after the request's own share: {(calls[target, scenario] - calls[target, 'small']) / CHUNKS:,.0f}")
        print(f"  event-loop iterations per request: {loops / n:.1f}")
        print(f"  {target + ' CPU per request:':<35}{cpu / n * 1e6:,.0f} µs (varies with machine load)")
        if (target, scenario) in owners:
            print("  calls per request by owner (--owners; a separate pass):")
            for name, c in sorted(owners[target, scenario].items(), key=lambda item: -item[1])[: args.top]:
                print(f"    {c:8.1f}  {name}")
        if args.details:
            details(stats, n, args)


HELPERS = ("typing.py", "contextlib.py", "<frozen abc>", "<frozen _collections_abc>", "functools.py")


class Owners:
    """Counts calls per owner (see the module's doc) with a sys.setprofile
    hook: the same events cProfile counts, several times slower."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def hook(self, frame, event, arg) -> None:  # type: ignore[no-untyped-def]
        if event != "call" and event != "c_call":
            return
        while frame is not None and frame.f_code.co_filename.endswith(HELPERS):
            frame = frame.f_back
        self.counts[group(frame.f_code.co_filename) if frame is not None else "?"] += 1

    def enable(self) -> None:
        sys.setprofile(self.hook)

    def disable(self) -> None:
        sys.setprofile(None)


KINDS = {
    "small": "small non-streaming requests",
    "stream": f"{CHUNKS}-event streams written whole",
    "cross": f"{CHUNKS}-event streams, Anthropic client from an openai upstream",
    "paced": f"{CHUNKS}-event paced streams",
}


def details(stats: pstats.Stats, n: int, args: argparse.Namespace) -> None:
    by_group: collections.Counter[str] = collections.Counter()
    calls_group: collections.Counter[str] = collections.Counter()
    for (file, _, _), (_, nc, tt, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_group[group(file)] += tt
        calls_group[group(file)] += nc
    total = sum(by_group.values()) or 1
    print("\nown time by package (cProfile; C calls include syscalls and waits):")
    for name, tt in by_group.most_common(args.top):
        print(f"  {tt / total * 100:5.1f}%  {calls_group[name] / n:8.1f} calls/req  {name}")
    print()
    stats.sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=["small", "stream", "cross"], choices=list(KINDS))
    ap.add_argument("--requests", type=int, default=2000, help="small requests to profile")
    ap.add_argument("--streams", type=int, default=200, help="streams to profile, per stream scenario")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--listen", action="store_true", help="with a subscriber to the event feed (the dashboard open)")
    ap.add_argument("--details", action="store_true", help="also print the cProfile tables")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--src", help="directory holding the llmrouter package to profile (default: this checkout)")
    ap.add_argument("--dump", help="also write the raw cProfile stats to this file (.<scenario> appended; .relay.<scenario> for the relay)")
    ap.add_argument("--owners", action="store_true", help="also count each call for its owner, helpers counted for their caller (a second, slower pass)")
    ap.add_argument("--relay", action="store_true", help="also measure the minimal wire relay (bench/bare_server.py), the floor under the router")
    args = ap.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})  # the router's core, as in bench/run.py
    anyio.run(profile, args)


if __name__ == "__main__":
    main()
