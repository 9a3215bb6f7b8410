"""Circuit breaker (issue 6, item 6): the pure state machine with an injected
clock, its wiring in the pipeline, and the router end to end — skipped
providers fall to the next decision in < 20 ms, state in /health?verbose and
as `breaker` events on the feed."""

from __future__ import annotations

import json
import socket
import time

import httpcore

from fakes import FakeUpstream, Reply
from harness import make_config, running_router
from llmrouter import breaker, errors, events
from llmrouter.breaker import CLOSED, HALF_OPEN, OPEN, Breakers
from llmrouter.commands import EndResponse, OpenUpstream, Publish, ReadUpstreamBody, SendBody, StartResponse, UpstreamHead
from llmrouter.pipeline import Context, Exchange, handle
from reliability_report import percentile, record
from tiers import within_bound
from test_chaos import send
from test_timeouts import only_record

# --- the state machine ------------------------------------------------------------


def test_opens_after_n_consecutive_failures_and_probes_once_after_the_cooldown():
    b = Breakers(failures=3, cooldown=30)
    assert b.failure("a", 0) is None and b.failure("a", 1) is None
    assert b.success("a") is None  # a success in between resets the count
    assert [b.failure("a", t) for t in (2, 3)] == [None, None]
    change = b.failure("a", 4)
    assert change == breaker.Change("a", OPEN, 3, 30)
    assert b.allow("a", 4) == (False, None) and b.allow("a", 33.9) == (False, None)
    allowed, change = b.allow("a", 34)
    assert allowed and change.state == HALF_OPEN
    assert b.allow("a", 35) == (False, None)  # one probe at a time
    assert b.allow("b", 35) == (True, None)  # other providers are independent
    assert b.success("a") == breaker.Change("a", CLOSED, 0, 30)
    assert b.allow("a", 36) == (True, None)


def test_cooldown_doubles_on_each_failed_probe_up_to_the_cap_and_resets_on_success():
    b = Breakers(failures=1, cooldown=30)
    now, seen = 0.0, []
    b.failure("a", now)
    for _ in range(6):
        now += 1000
        assert b.allow("a", now)[0]
        seen.append(b.failure("a", now).cooldown)
    assert seen == [60, 120, 240, 300, 300, 300]
    assert b.allow("a", now + 299.9) == (False, None)
    assert b.allow("a", now + 300)[0]
    b.success("a")
    assert b.failure("a", now + 301).cooldown == 30  # back to the base


def test_an_abandoned_probe_frees_the_slot():
    b = Breakers(failures=1, cooldown=1)
    b.failure("a", 0)
    assert b.allow("a", 1)[0]
    b.abandon("a")  # the probing client went away: no outcome
    assert b.allow("a", 1.1) == (True, None)


def test_snapshot_and_retry_in():
    b = Breakers(failures=1, cooldown=10)
    b.failure("a", 100)
    assert b.snapshot(["a", "b"], 104) == {
        "a": {"state": OPEN, "failures": 1, "cooldown_s": 10, "retry_in_s": 6.0},
        "b": {"state": CLOSED, "failures": 0},
    }
    assert b.retry_in(["a"], 104) == 6.0


# --- the pipeline, driven by hand ---------------------------------------------------

CONFIG = """
[server]
breaker_failures = 2
breaker_cooldown = 10
[[providers]]
name = "a"
format = "openai"
base_url = "http://a.invalid/v1"
[[providers]]
name = "b"
format = "openai"
base_url = "http://b.invalid/v1"
[[routers]]
type = "fallback"
"""
REPLY = json.dumps({"id": "x", "object": "chat.completion", "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}).encode()


def run(ctx: Context, answers: dict[str, object]) -> tuple[list, events.Record]:
    """One request; `answers` maps provider → UpstreamError to raise or a status to answer."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    ex = Exchange(0, "r", "openai", {}, body, events.Record(0, "r", "openai"))
    gen, seen, reply, throw = handle(ctx, ex), [], None, None
    while True:
        try:
            cmd = gen.throw(throw) if throw else gen.send(reply)
        except StopIteration:
            return seen, ex.record
        seen.append(cmd)
        reply, throw = None, None
        if isinstance(cmd, OpenUpstream):
            answer = answers[cmd.provider.name]
            if isinstance(answer, Exception):
                throw = answer
            else:
                reply = UpstreamHead(answer, [], b'{"error": {"message": "nope"}}')
        elif isinstance(cmd, ReadUpstreamBody):
            reply = REPLY


def opened(seen: list) -> list[str]:
    return [c.provider.name for c in seen if isinstance(c, OpenUpstream)]


def breaker_events(seen: list) -> list[tuple[str, str]]:
    return [(c.event["provider"], c.event["state"]) for c in seen if isinstance(c, Publish) and c.event["type"] == "breaker"]


def test_pipeline_skips_an_open_provider_and_feeds_every_outcome():
    clock = [0.0]
    cfg = make_config(CONFIG)
    ctx = Context(config=cfg, monotonic=lambda: clock[0],
                  breakers=Breakers(cfg.server.breaker_failures, cfg.server.breaker_cooldown))
    down = errors.UpstreamConnectError("refused")
    seen, _ = run(ctx, {"a": down, "b": 200})
    assert opened(seen) == ["a", "b"] and breaker_events(seen) == []
    seen, _ = run(ctx, {"a": down, "b": 200})
    assert opened(seen) == ["a", "b"] and breaker_events(seen) == [("a", OPEN)]
    seen, rec = run(ctx, {"a": down, "b": 200})
    assert opened(seen) == ["b"]  # skipped: no attempt, no routed event for a
    assert [a.provider for a in rec.attempts] == ["b"] and rec.status == 200
    seen, _ = run(ctx, {"a": 400, "b": 200})  # still open: a 4xx cannot even arrive
    assert opened(seen) == ["b"]
    clock[0] = 10.0
    seen, rec = run(ctx, {"a": 200, "b": 200})
    assert opened(seen) == ["a"] and breaker_events(seen) == [("a", HALF_OPEN), ("a", CLOSED)]
    for _ in range(5):  # 4xx answers show the provider is up: they never open it
        assert opened(run(ctx, {"a": 404, "b": 200})[0]) == ["a"]
    assert ctx.breakers.snapshot(["a"], 10)["a"]["state"] == CLOSED


def test_every_provider_open_is_a_503_with_retry_after():
    clock = [0.0]
    ctx = Context(config=make_config(CONFIG), monotonic=lambda: clock[0], breakers=Breakers(1, 10))
    ctx.breakers.failure("a", 0)
    ctx.breakers.failure("b", 0)
    clock[0] = 2.5
    seen, rec = run(ctx, {})
    assert opened(seen) == []
    start = next(c for c in seen if isinstance(c, StartResponse))
    assert start.status == 503 and ("retry-after", "8") in start.headers
    body = json.loads(next(c for c in seen if isinstance(c, SendBody)).data)
    assert body["error"]["code"] == "circuit_open" and "a, b" in body["error"]["message"]
    assert isinstance(seen[-1], EndResponse) and rec.error_code == "circuit_open"


# --- end to end ---------------------------------------------------------------------


def config_for(flaky_url: str, backup_url: str) -> str:
    return (
        "[server]\nport = 0\nbreaker_failures = 3\nbreaker_cooldown = 1\n"
        f'[[providers]]\nname = "flaky"\nformat = "openai"\nbase_url = "{flaky_url}/v1"\n'
        f'[[providers]]\nname = "backup"\nformat = "anthropic"\nbase_url = "{backup_url}"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "flaky"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = "fb/"\nprovider = "backup"\n'
    )


def health(router) -> dict:
    with httpcore.ConnectionPool() as pool:
        return json.loads(pool.request("GET", router.url + "/health?verbose").content)["breakers"]


def wait_cooldown(router, provider: str = "flaky", timeout: float = 10.0) -> None:
    """Polls /health until the open circuit's cool-down has run out."""
    deadline = time.monotonic() + timeout
    while health(router)[provider]["retry_in_s"] > 0:
        assert time.monotonic() < deadline, f"{provider}'s cool-down did not run out in {timeout}s"
        time.sleep(0.02)


def feed_until(sock: socket.socket, needle: bytes, seen: bytearray) -> None:
    sock.settimeout(5)
    while needle not in seen:
        chunk = sock.recv(65536)
        assert chunk, "the feed closed"
        seen += chunk


def test_router_skips_a_failing_provider_and_reports_its_circuit():
    with FakeUpstream() as flaky, FakeUpstream() as backup:
        flaky.script = lambda r: Reply.error(503, "down for maintenance")
        with running_router(config_for(flaky.url, backup.url)) as router:
            feed = socket.create_connection(("127.0.0.1", router.port))
            feed.sendall(b"GET /dashboard/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            seen = bytearray()
            feed_until(feed, b": connected", seen)
            for i in range(3):  # each fails over to the backup; the third opens the circuit
                assert send(router.port, "openai", "fb/m", False, f"warm-{i}").headers["x-router-provider"] == "backup"
            assert len(flaky.requests) == 3
            feed_until(feed, b"event: breaker", seen)
            frame = bytes(seen).split(b"event: breaker\ndata: ", 1)[1].split(b"\n", 1)[0]
            assert events.parse(frame.decode()) | {"ts_ms": 0} == {
                "type": "breaker", "v": 1, "ts_ms": 0, "provider": "flaky", "state": "open", "failures": 3, "cooldown_s": 1.0}
            assert health(router)["flaky"]["state"] == "open"

            # While open: no request reaches the flaky provider, and skipping costs nothing.
            skips, latencies = [], []
            for i in range(10):
                got = send(router.port, "openai", "fb/m", False, f"skip-{i}")
                assert got.status == 200 and got.headers["x-router-provider"] == "backup"
                rec = only_record(router, f"skip-{i}")
                assert [a["provider"] for a in rec["attempts"]] == ["backup"]
                mine = [e for e in router.events if e.get("id") == rec["id"]]
                started = next(e["ts_ms"] for e in mine if e["type"] == "start")
                routed = next(e["ts_ms"] for e in mine if e["type"] == "routed")
                skips.append(routed - started)
                latencies.append(got.seconds * 1000)
            assert len(flaky.requests) == 3
            # Without a fallback the client learns why, and when to come back.
            alone = send(router.port, "anthropic", "m", False, "alone")
            assert alone.status == 503 and alone.headers["retry-after"] == "1"
            assert json.loads(alone.body)["error"]["type"] == "api_error"

            wait_cooldown(router)
            # Cool-down over: one probe, which fails → open again, twice as long.
            send(router.port, "openai", "fb/m", False, "probe-1")
            assert len(flaky.requests) == 4
            assert health(router)["flaky"] | {"retry_in_s": 0} == {
                "state": "open", "failures": 4, "cooldown_s": 2.0, "retry_in_s": 0}
            wait_cooldown(router)
            flaky.script = None  # healthy again: the next probe closes the circuit
            probe = send(router.port, "openai", "fb/m", False, "probe-2")
            assert probe.headers["x-router-provider"] == "flaky"
            assert health(router)["flaky"] == {"state": "closed", "failures": 0}
            states = [(e["state"], e["cooldown_s"]) for e in router.events if e["type"] == "breaker"]
            assert states == [("open", 1.0), ("half_open", 1.0), ("open", 2.0), ("half_open", 2.0), ("closed", 2.0)]
            feed.close()
    record("breaker.skip_ms", max(skips), unit="ms", bound="< 20", n=len(skips), p50_ms=percentile(skips, 50),
           measured_as="routed event minus start event (ms clock) of a request whose first choice is open",
           whole_request_p50_ms=round(percentile(latencies, 50), 1), whole_request_max_ms=round(max(latencies), 1))
    within_bound(max(skips), 20, "ms to skip an open circuit")
