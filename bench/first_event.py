"""Where a paced stream's time to first token goes inside the router: the
router in this process, the fake upstream and the load generator in
subprocesses on the other core, timestamps and Python calls taken at the
router's wires.

    python3 bench/first_event.py [--streams 40] [--concurrency 1]

Two windows per stream: from the client's request arriving to the upstream
request leaving, and from the upstream's first event arriving to the
response head (with that event) leaving. Both are the router's own share of
the added time to first token; the rest is the wake-ups between processes.
Calls are counted with sys.setprofile inside the windows (the counting
slows them: times come from a first pass without it).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import anyio  # noqa: E402

from hotpath import profile_config  # noqa: E402
from run import free_port, pinned, start_fake  # noqa: E402


class Windows:
    """Opens a window when a request (or the first event) arrives at a wire, closes it when the upstream request (or the head) leaves."""

    def __init__(self) -> None:
        self.open: str | None = None
        self.started = 0.0
        self.times: dict[str, list[float]] = {"request": [], "first event": []}
        self.calls: dict[str, collections.Counter[str]] = {"request": collections.Counter(), "first event": collections.Counter()}
        self.awaiting_event = False
        self.counting = False

    def arrived(self, data: bytes) -> None:
        if data.startswith(b"POST"):
            self.open, self.started = "request", time.perf_counter()
        elif self.awaiting_event and b"data:" in data[:24]:
            self.open, self.started, self.awaiting_event = "first event", time.perf_counter(), False

    def leaving(self, data: bytes) -> None:
        if (self.open == "request" and data.startswith(b"POST")) or (self.open == "first event" and data.startswith(b"HTTP/1.1")):
            self.times[self.open].append(time.perf_counter() - self.started)
            self.awaiting_event = self.open == "request"
            self.open = None

    def profile(self, frame, event, arg) -> None:  # type: ignore[no-untyped-def]
        if self.open and event in ("call", "c_call"):
            self.calls[self.open][owner(frame.f_code.co_filename) if event == "call" else "builtins (C)"] += 1


def owner(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/")[1].split("/")[0]
    if "/llmrouter/" in file:
        return "llmrouter/" + file.split("/llmrouter/", 1)[1]
    return "stdlib " + file.rsplit("/", 1)[-1]


async def run(args: argparse.Namespace, windows: Windows, count_calls: bool) -> None:
    from llmrouter import config
    from llmrouter.app import App

    fake, fake_port = start_fake(argparse.Namespace(chunks=50, gap_ms=5.0, first_ms=20.0))
    port = free_port()
    app = App(config.load(str(profile_config(fake_port, port)), environ=os.environ))
    code = (
        "import asyncio, sys; sys.path.insert(0, %r)\nfrom loadgen import Run, build_request\n"
        "async def m():\n    r = await Run(%d, %d, stream=True, requests=%d, request=build_request(%d, True, model='mock-paced')).go()\n"
        "    print(len(r.streams), r.errors + r.dropped)\nasyncio.run(m())\n"
    ) % (str(HERE), port, args.concurrency, args.streams, port)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(app.run)
            if count_calls:
                sys.setprofile(windows.profile)
            done = await anyio.run_process(pinned(1, [sys.executable, "-c", code]))
            sys.setprofile(None)
            print(f"{'calls' if count_calls else 'times'}: streams, failures: {done.stdout.decode().strip()}")
            app.shutdown()
    finally:
        fake.terminate()
        fake.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--top", type=int, default=8, help="packages listed per window")
    args = ap.parse_args()

    from llmrouter import wire

    timed, counted = Windows(), Windows()
    current = [timed]
    received, write = wire.Wire.data_received, wire.Wire.write

    def data_received(self, data: bytes) -> None:  # type: ignore[no-untyped-def]
        current[0].arrived(data)
        received(self, data)

    async def writing(self, data: bytes, timeout: float | None = None) -> None:  # type: ignore[no-untyped-def]
        current[0].leaving(data)
        await write(self, data, timeout)

    wire.Wire.data_received = data_received  # type: ignore[method-assign]
    wire.Wire.write = writing  # type: ignore[method-assign]
    anyio.run(run, args, timed, False)
    current[0] = counted
    anyio.run(run, args, counted, True)
    for name, times in timed.times.items():
        kept = times[3:] or times  # the first streams warm up connections and caches
        n = max(len(counted.times[name]), 1)
        calls = counted.calls[name]
        print(f"{name} window: p50 {statistics.median(kept) * 1e6:,.0f} µs (min {min(kept) * 1e6:,.0f}), {sum(calls.values()) / n:,.0f} calls")
        for package, c in calls.most_common(args.top):
            print(f"    {c / n:7.1f}  {package}")


if __name__ == "__main__":
    main()
