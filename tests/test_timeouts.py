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


# --- keep-alives without events: server.stream_idle_timeout (issue 10) -------------------

STREAM_IDLE = 0.6
NDJSON_HEAD = [("content-type", "application/x-ndjson")]
ANTHROPIC_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":1,"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}\n\n'
)
OLLAMA_START = b'{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"a"},"done":false}\n'
# Per upstream format: (response head, its first real event, the keep-alive it drips).
DRIPS = {
    "openai": (SSE_HEAD, frame("a"), b": keep-alive\n\n"),
    "anthropic": (SSE_HEAD, ANTHROPIC_START, b'event: ping\ndata: {"type": "ping"}\n\n'),
    "ollama": (NDJSON_HEAD, OLLAMA_START, b" \n\n"),
}


@pytest.fixture
def drippers():
    """One upstream per format, with idle and total limits far beyond the
    event limit: only stream_idle_timeout can end a dripping stream."""
    with FakeUpstream() as openai_up, FakeUpstream() as anthropic_up, FakeUpstream() as ollama_up:
        fakes = {"openai": openai_up, "anthropic": anthropic_up, "ollama": ollama_up}
        text = f"[server]\nport = 0\nstream_idle_timeout = {STREAM_IDLE}\nbreaker_failures = 1000\n"
        for fmt, fake in fakes.items():
            base = fake.url + "/v1" if fmt == "openai" else fake.url
            text += (f'[[providers]]\nname = "{fmt}-up"\nformat = "{fmt}"\nbase_url = "{base}"\n'
                     "first_byte_timeout = 30\nidle_timeout = 30\ntotal_timeout = 60\n")
        for fmt in fakes:
            text += f'[[routers]]\ntype = "prefix"\nmodel_prefix = "{fmt}/"\nprovider = "{fmt}-up"\n'
        with running_router(text) as router:
            yield router, fakes


def keepalives(drip: bytes, seconds: float = 20.0, every: float = 0.05) -> list:
    """Keep-alive bytes every `every` seconds for far longer than any limit in the test."""
    return [a for _ in range(int(seconds / every)) for a in (drip, Delay(every))]


@pytest.mark.parametrize("upstream", list(DRIPS))
def test_keepalives_without_events_end_a_started_stream_in_band(drippers, upstream):
    router, fakes = drippers
    head, first, drip = DRIPS[upstream]
    fakes[upstream].script = lambda r: Reply.raw(200, head, [first, *keepalives(drip)])
    request_id = f"drip-events-{upstream}"
    got = send(router.port, "openai", f"{upstream}/m", True, request_id)
    assert got.status == 200 and not got.complete, got.body
    assert b'"content": "a"' in got.body or b'"content":"a"' in got.body
    assert b'data: {"error":' in got.body and b"[DONE]" not in got.body
    rec = only_record(router, request_id)
    assert rec["error"] == f"provider '{upstream}-up': no stream event for {STREAM_IDLE:g}s, only keep-alives", rec
    assert rec["error_code"] == "upstream_timeout" and rec["response"]["content"] == "a"
    fakes[upstream].wait_peer_closed(1)  # the dripping upstream was hung up on
    record(f"timeouts.stream_idle_{upstream}_s", round(got.seconds, 3), unit="s", configured=STREAM_IDLE)


@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("upstream", list(DRIPS))
def test_keepalives_from_the_start_are_a_504_before_the_first_byte(drippers, upstream, client):
    """Keep-alives alone send the client nothing, translated or relayed as is
    (openai → openai and anthropic → anthropic): its head still waits for a
    first event, so the request may still fall back or get a real status."""
    router, fakes = drippers
    head, _, drip = DRIPS[upstream]
    fakes[upstream].script = lambda r: Reply.raw(200, head, keepalives(drip))
    request_id = f"drip-nothing-{upstream}-{client}"
    got = send(router.port, client, f"{upstream}/m", True, request_id)
    assert got.status == 504, got.body
    assert "no stream event" in json.loads(got.body)["error"]["message"]
    rec = only_record(router, request_id)
    assert rec["status"] == 504 and rec["error"].endswith(f"no stream event for {STREAM_IDLE:g}s, only keep-alives"), rec
    fakes[upstream].wait_peer_closed(1)
