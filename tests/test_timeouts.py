"""Upstream timeouts (issue 6, item 4): connect, first byte (time to first token,
fallback still possible), idle between chunks, and the total deadline that
ends a slow drip httpcore's per-read timeout never catches.

Durations are measured and reported to reports/reliability.json; the tests
assert which timeout fired and what the client got, not how long it took.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from fakes import Delay, FakeUpstream, Hang, Reply
from harness import running_router
from reliability_report import record
from test_chaos import JSON_HEAD, SSE_HEAD, send

TIMEOUTS = "connect_timeout = 0.3\nfirst_byte_timeout = 0.4\nidle_timeout = 0.3\ntotal_timeout = 1.2\n"


def config_for(slow_url: str, backup_url: str) -> str:
    """`fb/…` goes to the slow provider and falls back to the backup; `solo/…` has no fallback."""
    return (
        "[server]\nport = 0\nbreaker_failures = 1000\n"
        f'[[providers]]\nname = "slow"\nformat = "openai"\nbase_url = "{slow_url}/v1"\n{TIMEOUTS}'
        f'[[providers]]\nname = "backup"\nformat = "openai"\nbase_url = "{backup_url}/v1"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = "fb/"\nprovider = "slow"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = "solo/"\nprovider = "slow"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = "fb/"\nprovider = "backup"\n'
    )


@pytest.fixture
def world():
    with FakeUpstream() as slow, FakeUpstream() as backup:
        with running_router(config_for(slow.url, backup.url)) as router:
            yield router, slow, backup


def frame(text: str) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def only_record(router, request_id: str) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in router.records if r["request_id"] == request_id]
        if found:
            router.wait_idle()
            found = [r for r in router.records if r["request_id"] == request_id]
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no complete record for {request_id}")


def test_connect_timeout_falls_back_and_is_504_alone():
    # A listener whose backlog is full and that never accepts: SYNs go
    # unanswered, so connecting hangs (a deterministic connect timeout).
    with socket.socket() as blackhole, FakeUpstream() as backup:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(blackhole.getsockname())
            fillers.append(filler)
        url = f"http://127.0.0.1:{blackhole.getsockname()[1]}"
        try:
            with running_router(config_for(url, backup.url)) as router:
                alone = send(router.port, "openai", "solo/m", False, "connect-solo")
                assert alone.status == 504, alone.body
                assert json.loads(alone.body)["error"]["code"] == "upstream_timeout"
                assert "connect timed out" in only_record(router, "connect-solo")["error"]
                rescued = send(router.port, "anthropic", "fb/m", True, "connect-fb")
                assert rescued.status == 200 and rescued.headers["x-router-provider"] == "backup"
                assert b"event: message_stop" in rescued.body
        finally:
            for filler in fillers:
                filler.close()
    record("timeouts.connect_s", round(alone.seconds, 3), unit="s", configured=0.3)


def test_first_byte_timeout_covers_the_first_chunk_and_falls_back(world):
    router, slow, backup = world
    # The head arrives at once, the first frame never: time to first token.
    slow.script = lambda r: Reply.raw(200, SSE_HEAD, [Hang()])
    alone = send(router.port, "openai", "solo/m", True, "ttft-solo")
    assert alone.status == 504 and alone.complete, alone.body  # a real status: nothing was sent yet
    assert "no first chunk within 0.4s" in json.loads(alone.body)["error"]["message"]
    rescued = send(router.port, "openai", "fb/m", True, "ttft-fb")
    assert rescued.status == 200 and b"data: [DONE]" in rescued.body
    rec = only_record(router, "ttft-fb")
    assert [(a["provider"], a["outcome"]) for a in rec["attempts"]] == [("slow", "error"), ("backup", "ok")]
    slow.wait_until(lambda f: f.peer_closed >= 2)  # both timed-out upstream connections were closed
    record("timeouts.first_byte_s", round(alone.seconds, 3), unit="s", configured=0.4)


def test_idle_timeout_ends_a_stalled_stream_in_band(world):
    router, slow, backup = world
    slow.script = lambda r: Reply.raw(200, SSE_HEAD, [frame("a"), Delay(0.1), frame("b"), Hang()])
    started = time.monotonic()
    got = send(router.port, "openai", "fb/m", True, "idle")
    assert got.status == 200 and not got.complete
    assert b'"content": "b"' in got.body and b'data: {"error":' in got.body and b"[DONE]" not in got.body
    rec = only_record(router, "idle")
    assert rec["error"] == "provider 'slow': no data for 0.3s" and rec["response"]["content"] == "ab"
    assert len(backup.requests) == 0  # bytes had reached the client: no fallback
    slow.wait_peer_closed(1)
    record("timeouts.idle_s", round(time.monotonic() - started - 0.1, 3), unit="s", configured=0.3)


def test_slow_drip_stream_is_ended_by_the_total_deadline(world):
    router, slow, backup = world
    # One byte every 2 ms: every read is quick, so neither httpcore's read
    # timeout nor idle_timeout ever fires; whole frames keep arriving.
    drip: list = []
    for i in range(200):
        for byte in frame(f"{i} "):
            drip += [bytes([byte]), Delay(0.002)]
    slow.script = lambda r: Reply.raw(200, SSE_HEAD, drip)
    got = send(router.port, "anthropic", "solo/m", True, "drip-stream")
    assert got.status == 200 and not got.complete
    assert b"event: content_block_delta" in got.body and b"event: error" in got.body
    assert b"event: message_stop" not in got.body
    rec = only_record(router, "drip-stream")
    assert rec["error"] == "provider 'slow': reply not finished within 1.2s"
    slow.wait_peer_closed(1)
    record("timeouts.drip_stream_total_s", round(got.seconds, 3), unit="s", configured=1.2)


def test_slow_drip_before_the_first_frame_is_a_504_with_fallback(world):
    router, slow, backup = world
    slow.script = lambda r: Reply.raw(200, SSE_HEAD, [b"d", *[a for _ in range(100) for a in (Delay(0.05), b"a")]])
    alone = send(router.port, "openai", "solo/m", True, "drip-first")
    assert alone.status == 504, alone.body  # no frame ever completed: nothing went out
    rescued = send(router.port, "openai", "fb/m", True, "drip-first-fb")
    assert rescued.status == 200 and rescued.headers["x-router-provider"] == "backup"


def test_slow_drip_non_stream_is_ended_by_the_total_deadline(world):
    router, slow, backup = world
    body = json.dumps({"id": "x", "object": "chat.completion", "choices": [], "pad": "x" * 500}).encode()
    actions: list = []
    for byte in body:
        actions += [bytes([byte]), Delay(0.05)]
    slow.script = lambda r: Reply.raw(200, [*JSON_HEAD, ("content-length", str(len(body)))], actions)
    alone = send(router.port, "openai", "solo/m", False, "drip-json")
    assert alone.status == 504
    assert only_record(router, "drip-json")["error"] == "provider 'slow': reply not finished within 1.2s"
    rescued = send(router.port, "openai", "fb/m", False, "drip-json-fb")
    assert rescued.status == 200 and rescued.headers["x-router-provider"] == "backup"
    slow.wait_peer_closed(2)
    record("timeouts.drip_non_stream_total_s", round(alone.seconds, 3), unit="s", configured=1.2)


def test_quiet_upstream_gets_keepalives_and_the_stream_goes_on(world, monkeypatch):
    """While a started stream's upstream is quiet, the client gets keep-alive
    comments every PING_AFTER seconds; the wait for them does not disturb the
    upstream read: the stream completes, and its connection is reused."""
    import llmrouter.pipeline

    monkeypatch.setattr(llmrouter.pipeline, "PING_AFTER", 0.05)
    router, slow, backup = world
    slow.script = lambda r: Reply.raw(200, SSE_HEAD, [frame("a"), Delay(0.22), frame("b"), b"data: [DONE]\n\n"])
    got = send(router.port, "openai", "solo/m", True, "keepalive")
    assert got.status == 200 and got.complete, got.body
    assert got.body.count(b": ping") >= 2  # about 4 in 0.22 s of silence (idle_timeout is 0.3)
    assert got.body.index(b'"content": "a"') < got.body.index(b": ping") < got.body.index(b'"content": "b"')
    assert got.body.endswith(b"data: [DONE]\n\n")
    assert only_record(router, "keepalive")["response"]["content"] == "ab"
    slow.script = lambda r: Reply.raw(200, SSE_HEAD, [frame("c"), b"data: [DONE]\n\n"])
    assert send(router.port, "openai", "solo/m", True, "keepalive-2").complete
    assert slow.connections_opened == 1  # the first stream left its connection reusable
