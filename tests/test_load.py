"""Load and fan-out (issue 6, item 7).

Fast tier: 64 concurrent clients for 10 s (60 s with --soak) against a fake
upstream with a mixed fault profile, with 50 event-feed subscribers of which
10 never read. The router runs as a child process, so its RSS and file
descriptors are its own. Asserted: every request gets the outcome its fault
calls for; one valid JSON log line per request (joined by x-request-id); the
stalled subscribers are cut off while the others miss nothing; RSS growth
< 20 MB after warm-up; descriptors back to baseline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import time
from collections.abc import Callable

import httpcore

from aclient import exchange
from fakes import FakeUpstream, Fault, RecordedRequest, Reply
from harness import provider_config, running_router
from llmrouter import app as app_module
from reliability_report import percentile, record
from subproc import RouterProcess

# mode: (share, stream, expected status seen by the client, expected record status, error expected)
PROFILE = {
    "ok": (50, True, 200, 200, False),
    "json": (10, False, 200, 200, False),
    "s500": (10, False, 500, 500, True),
    "s429": (5, False, 429, 429, True),
    "cut": (10, True, 200, 200, True),
    "stall": (5, True, 200, 200, True),
    "leave": (10, True, 200, 499, True),
}
PROMPT = "word " * 200  # ~1 KB records


def load_reply(request: RecordedRequest) -> Reply:
    mode = request.json["model"]
    if mode == "s500":
        return Reply.error(500, "upstream broke")
    if mode == "s429":
        return Reply.error(429, "slow down", retry_after=1)
    if mode == "cut":
        return Reply.text("a b c d e f", chunks=6, delay=0.02, fault=Fault(after=3, kind="close"))
    if mode == "stall":
        return Reply.text("a b c d e f", chunks=6, delay=0.02, fault=Fault(after=3, kind="hang"))
    if mode == "json":
        return Reply.text("fine")
    if mode == "leave":  # never ends by itself: only the client's hang-up ends it (a 499), however loaded the machine
        return Reply.text("a b c d e f g h", chunks=8, delay=0.02, fault=Fault(after=4, kind="hang"))
    return Reply.text("a b c d e f g h", chunks=8, delay=0.02)


def load_config(url: str, log: str) -> str:
    return (
        # The breaker is tested on its own (test_breaker.py); here its opening
        # after 5 failures in a row would change the expected outcomes.
        "[server]\nport = 0\nbreaker_failures = 100000\n"
        f'[logging]\nenabled = true\npath = "{log}"\n'
        # 2 s: long enough that a starved fake (it shares the test process with
        # the clients and readers) is not taken for a stalled upstream.
        + provider_config(url, name="up", extra="idle_timeout = 2\n")
        + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "up"\n'
    )


def check(mode: str, reply) -> str | None:
    _, stream, status, _, _ = PROFILE[mode]
    if mode == "leave":
        return None if reply.aborted else f"leave: not aborted ({reply.status})"
    if reply.status != status:
        return f"{mode}: status {reply.status} {reply.body[:200]!r}"
    if mode in ("ok", "json") and not reply.complete:
        return f"{mode}: incomplete: {reply.body[-300:]!r}"
    if mode == "ok" and not reply.body.rstrip().endswith(b"data: [DONE]"):
        return f"ok: no [DONE]: {reply.body[-200:]!r}"
    if mode in ("cut", "stall"):
        if reply.complete or b"[DONE]" in reply.body or b'data: {"error":' not in reply.body:
            return f"{mode}: not an in-band failure: {reply.body[-200:]!r}"
    if mode == "s429" and reply.headers.get("retry-after") != "1":
        return "s429: no retry-after"
    return None


async def feed_reader(port: int, counts: dict, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /dashboard/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    buffer = b""
    try:
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.2)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                counts["closed"] = True
                break
            buffer += chunk
            counts["complete"] += buffer.count(b"event: complete\n")
            counts["dropped"] += buffer.count(b"event: dropped\n")
            buffer = buffer[buffer.rfind(b"\n") + 1 :]
    finally:
        writer.transport.abort()


def stalled_subscriber(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /dashboard/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    return sock


def router_cpu(router: RouterProcess) -> float:
    """User + system CPU seconds the router process has used."""
    fields = open(f"/proc/{router.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.02)


def subscribers(router: RouterProcess) -> int:
    with httpcore.ConnectionPool() as pool:
        return json.loads(pool.request("GET", router.url + "/health?verbose").content)["events"]["subscribers"]


def test_load_with_faults_and_stalled_subscribers(tmp_path, soak):
    duration = 60.0 if soak else 10.0
    modes = [m for m, spec in PROFILE.items() for _ in range(spec[0])]
    rng = random.Random(7)
    with FakeUpstream() as fake:
        fake.script = load_reply
        log_path = tmp_path / "log.jsonl"
        with RouterProcess(load_config(fake.url, str(log_path)), tmp_path) as router:
            port = router.port
            # Warm-up: the log file is opened by the first record.
            warm = asyncio.run(exchange(port, "/v1/chat/completions", {"model": "json", "messages": [{"role": "user", "content": "hi"}]}))
            assert warm.status == 200
            wait_for(lambda: log_path.exists() and log_path.read_bytes().endswith(b"\n"), "the warm-up's log line")
            base_fds = router.fds() - fake.connections_open
            stalled = [stalled_subscriber(port) for _ in range(10)]
            sent: dict[str, str] = {}  # request id -> mode
            problems: list[str] = []
            rss: list[tuple[float, int]] = []
            cut_off_at: list[float] = []
            ttfb: list[float] = []

            async def client(n: int, end: float) -> None:
                i = 0
                while time.monotonic() < end:
                    mode = rng.choice(modes)
                    request_id = f"load-{n}-{i}"
                    i += 1
                    sent[request_id] = mode
                    body = {"model": mode, "stream": PROFILE[mode][1], "messages": [{"role": "user", "content": PROMPT}]}
                    reply = await exchange(port, "/v1/chat/completions", body, headers={"x-request-id": request_id},
                                           abort_after=300 if mode == "leave" else None)
                    if mode == "ok" and reply.first_byte is not None:
                        ttfb.append(reply.first_byte)
                    problem = check(mode, reply)
                    if problem:
                        problems.append(f"{request_id} {problem}")

            async def sampler(started: float, end: float) -> None:
                while time.monotonic() < end:
                    rss.append((time.monotonic() - started, router.rss_kb()))
                    if not cut_off_at and await asyncio.to_thread(subscribers, router) <= 40:
                        cut_off_at.append(time.monotonic() - started)
                    await asyncio.sleep(0.5)

            async def main() -> list[dict]:
                stop = asyncio.Event()
                counts = [{"complete": 0, "dropped": 0} for _ in range(40)]
                readers = [asyncio.create_task(feed_reader(port, c, stop)) for c in counts]
                await asyncio.to_thread(wait_for, lambda: subscribers(router) >= 50, "50 feed subscribers")
                started = time.monotonic()
                end = started + duration
                await asyncio.gather(sampler(started, end), *(client(n, end) for n in range(64)))
                # Every complete record reaches the 40 readers, nothing is dropped for them.
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and (min(c["complete"] for c in counts) < len(sent) or not cut_off_at):
                    if not cut_off_at and await asyncio.to_thread(subscribers, router) <= 40:
                        cut_off_at.append(time.monotonic() - started)
                    await asyncio.sleep(0.2)
                stop.set()
                await asyncio.gather(*readers)
                return counts

            cpu_before = router_cpu(router)
            counts = asyncio.run(main())
            cpu_seconds = router_cpu(router) - cpu_before
            assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} of {len(sent)})"
            assert cut_off_at, f"the stalled subscribers were never cut off ({len(sent)} requests, {subscribers(router)} subscribers)"
            assert all(c["complete"] == len(sent) and c["dropped"] == 0 and not c.get("closed") for c in counts), counts[:3]
            for sock in stalled:  # each was disconnected: after its unread bytes, EOF or a reset
                sock.settimeout(5)
                try:
                    while sock.recv(1 << 20):
                        pass
                except ConnectionResetError:
                    pass
                sock.close()
            # Descriptors back to baseline (idle pooled upstream connections aside).
            deadline = time.monotonic() + 10
            while router.fds() - fake.connections_open != base_fds and time.monotonic() < deadline:
                time.sleep(0.1)
            end_fds = router.fds() - fake.connections_open
            final_rss = router.rss_kb()
            assert router.stop() == 0
    assert end_fds == base_fds
    warm = next(kb for t, kb in rss if t >= duration * 0.25)
    growth_mb = (final_rss - warm) / 1024
    assert growth_mb < 20, rss
    # One valid JSON line per request, joined by x-request-id.
    lines = (tmp_path / "log.jsonl").read_text().split("\n")[1:-1]  # after the warm-up's line
    records = [json.loads(line) for line in lines]
    by_id = {r["request_id"]: r for r in records}
    assert len(lines) == len(records) == len(by_id) == len(sent)
    wrong = []
    for request_id, mode in sent.items():
        rec = by_id[request_id]
        _, _, _, status, failed = PROFILE[mode]
        if rec["status"] != status or (rec["error"] is not None) != failed:
            wrong.append((request_id, mode, rec["status"], rec["error"]))
    assert not wrong, wrong[:10]
    record("load.requests", len(sent), unit="requests", clients=64, seconds=duration,
           rps=round(len(sent) / duration, 1), wrong_outcomes=0, log_lines=len(lines), invalid_log_lines=0,
           modes={m: list(sent.values()).count(m) for m in PROFILE},
           ttfb_ok_p50_ms=round(percentile(ttfb, 50) * 1000, 1), ttfb_ok_p99_ms=round(percentile(ttfb, 99) * 1000, 1),
           router_cpu_s=round(cpu_seconds, 1), router_cpu_ms_per_request=round(cpu_seconds * 1000 / len(sent), 1))
    record("load.rss_growth_mb", round(growth_mb, 1), unit="MB", bound="< 20", after_warmup_mb=round(warm / 1024, 1),
           peak_mb=round(max(kb for _, kb in rss) / 1024, 1))
    record("load.fds_after", end_fds - base_fds, bound="0", baseline=base_fds)
    record("load.subscribers", 50, stalled=10, stalled_cut_off_after_s=round(cut_off_at[0], 1),
           healthy_missed_events=0, healthy_dropped=0, events_per_healthy_subscriber=len(sent))


def test_stalled_subscriber_is_cut_off_and_the_others_keep_up(monkeypatch):
    """In-process and quick: a subscriber that never reads is disconnected once
    a write to it has blocked for FEED_SEND_TIMEOUT (here 1 s), while a reading
    subscriber sees every event."""
    monkeypatch.setattr(app_module, "FEED_SEND_TIMEOUT", 1.0)
    with FakeUpstream() as fake:
        with running_router("[server]\nport = 0\n" + provider_config(fake.url)
                            + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n') as router:
            stalled = stalled_subscriber(router.port)
            healthy = socket.create_connection(("127.0.0.1", router.port))
            healthy.sendall(b"GET /dashboard/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            healthy.settimeout(5)
            got = b""
            while router.app.bus.statistics()["subscribers"] < 2:
                time.sleep(0.01)
            started = time.monotonic()
            sent = 0
            with httpcore.ConnectionPool() as pool:
                while router.app.bus.statistics()["subscribers"] == 2:
                    assert time.monotonic() - started < 30, "never cut off"
                    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": PROMPT}]}).encode()
                    assert pool.request("POST", router.url + "/v1/chat/completions",
                                        headers={"content-type": "application/json"}, content=body).status == 200
                    sent += 1
                    got += healthy.recv(1 << 20)
            cut_after = time.monotonic() - started
            router.wait_records(sent)
            while got.count(b"event: complete\n") < sent:
                got += healthy.recv(1 << 20)
            assert b"event: dropped" not in got
            healthy.close()
            stalled.close()
    record("feed.stalled_cut_off_s", round(cut_after, 2), unit="s", send_timeout_s=1.0, requests_meanwhile=sent)
