"""Upstream fault matrix (RELIABILITY D): every chaos mode × {OpenAI, Anthropic client}
× {stream, non-stream} × {OpenAI, Anthropic upstream} × {with a fallback provider, alone}.

Each case checks the contract of docs/reliability.md: the status and the error
shape in the client's format, fallback only while nothing reached the client,
never a fabricated `[DONE]` / `message_stop` after a failure, and exactly one
`complete` record carrying the error.

The chaos fake picks its misbehaviour from the model name it receives, so the
cases run concurrently against one router.
"""

from __future__ import annotations

import collections
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpcore
import pytest

from fakes import Close, Delay, Fault, FakeUpstream, Hang, RecordedRequest, Reply
from harness import running_router
from llmrouter import errors, pipeline, sse
from reliability_report import record

JSON_HEAD = [("content-type", "application/json")]
SSE_HEAD = [("content-type", "text/event-stream")]
HUGE_LIMIT = 1 << 20  # reply and line caps, shrunk so a "huge" reply costs 2 MB, not 64

# How each mode ends, per (stream?) — see docs/reliability.md, "Upstream faults".
#   ("fallback", status, code): retryable before any byte reached the client: with a
#       fallback provider the client gets its 200; alone, `status` with `code`.
#   ("status", status, code): the same status with or without a fallback provider.
#   ("inband", code): a 200 stream that ends with the client format's error event
#       and no terminal event (after the first byte there is no fallback).
MODES: dict[str, dict[bool, tuple]] = {
    "refused": {False: ("fallback", 502, "upstream_connect_error"), True: ("fallback", 502, "upstream_connect_error")},
    "reset_before_head": {False: ("fallback", 502, "upstream_connect_error"), True: ("fallback", 502, "upstream_connect_error")},
    "close_before_head": {False: ("fallback", 502, "upstream_connect_error"), True: ("fallback", 502, "upstream_connect_error")},
    "timeout_before_head": {False: ("fallback", 504, "upstream_timeout"), True: ("fallback", 504, "upstream_timeout")},
    "s401": {False: ("status", 401, "upstream_status_error"), True: ("status", 401, "upstream_status_error")},
    "s403": {False: ("status", 403, "upstream_status_error"), True: ("status", 403, "upstream_status_error")},
    "s404": {False: ("status", 404, "upstream_status_error"), True: ("status", 404, "upstream_status_error")},
    "s429": {False: ("fallback", 429, "upstream_status_error"), True: ("fallback", 429, "upstream_status_error")},
    "s500": {False: ("fallback", 500, "upstream_status_error"), True: ("fallback", 500, "upstream_status_error")},
    "s502": {False: ("fallback", 502, "upstream_status_error"), True: ("fallback", 502, "upstream_status_error")},
    "s503": {False: ("fallback", 503, "upstream_status_error"), True: ("fallback", 503, "upstream_status_error")},
    "redirect": {False: ("status", 502, "upstream_protocol_error"), True: ("status", 502, "upstream_protocol_error")},
    "reset_after_head": {False: ("status", 502, "upstream_protocol_error"), True: ("status", 502, "upstream_protocol_error")},
    "hang_after_head": {False: ("fallback", 504, "upstream_timeout"), True: ("fallback", 504, "upstream_timeout")},
    "invalid_json": {False: ("status", 502, "upstream_protocol_error"), True: ("status", 502, "upstream_protocol_error")},
    "truncated_json": {False: ("status", 502, "upstream_protocol_error"), True: ("inband", "upstream_protocol_error")},
    "wrong_shape": {False: ("status", 502, "upstream_protocol_error"), True: ("status", 502, "upstream_protocol_error")},
    "broken_framing": {True: ("status", 502, "upstream_protocol_error")},
    "cut_mid_event": {True: ("inband", "upstream_protocol_error")},
    "close_mid_stream": {True: ("inband", "upstream_protocol_error")},
    "reset_mid_stream": {True: ("inband", "upstream_protocol_error")},
    "no_terminal": {True: ("inband", "upstream_protocol_error")},
    "error_mid_stream": {True: ("inband", "upstream_error")},
    # The first-chunk gate turns an error as the first event into a real status:
    # the error frame's own (502 for OpenAI's, 529 for Anthropic's overloaded_error).
    "error_first_event": {True: ("fallback", {"oa": 502, "an": 529}, "upstream_status_error")},
    "huge": {False: ("status", 502, "upstream_protocol_error"), True: ("status", 502, "upstream_protocol_error")},
}

# first_byte_timeout has a wide margin over the faults scripted after the
# head (a reset 50 ms later): in the full suite the router, both fakes and 8
# client threads share one process, and a late reset must not pass for a
# stall (that once turned 3 of 344 cases into timeouts).
CHAOS_TIMEOUTS = "connect_timeout = 1\nfirst_byte_timeout = 1.5\nidle_timeout = 0.5\ntotal_timeout = 3\n"


def _partial_chunk(fmt: str) -> bytes:
    if fmt == "anthropic":
        return b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ab'
    return b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"ab'


def chaos_reply(request: RecordedRequest) -> Reply:
    """The misbehaviour named by the model the router sent."""
    mode = request.json["model"]
    fmt = request.format or "openai"
    if mode == "reset_before_head":
        return Reply.raw(None, [], [Close(reset=True)])
    if mode == "close_before_head":
        return Reply.raw(None, [], [Close()])
    if mode == "timeout_before_head":
        return Reply.raw(None, [], [Hang()])
    if mode.startswith("s") and mode[1:].isdigit():
        status = int(mode[1:])
        return Reply.error(status, f"chaos status {status}", retry_after=7 if status == 429 else None)
    if mode == "redirect":  # never followed, never passed on
        return Reply.raw(302, [("location", "http://127.0.0.2:9/steal"), ("content-length", "0")])
    if mode == "reset_after_head":
        # The pause lets the head arrive whole before the reset.
        return Reply.raw(200, SSE_HEAD if request.stream else JSON_HEAD, [Delay(0.05), Close(reset=True)])
    if mode == "hang_after_head":
        return Reply.raw(200, SSE_HEAD if request.stream else JSON_HEAD, [Hang()])
    if mode == "invalid_json":
        if request.stream:
            event = b"event: message_start\n" if fmt == "anthropic" else b""
            return Reply.raw(200, SSE_HEAD, [event + b"data: {not json\n\n", Hang()])
        return Reply.raw(200, [*JSON_HEAD, ("content-length", "9")], [b"{not json"])
    if mode == "truncated_json":
        if request.stream:
            # A complete SSE frame whose JSON is cut, after a good first frame.
            return Reply.text("one two three", chunks=3, fault=Fault(after=2, kind="partial"))
        return Reply.text("one two three", fault=Fault(kind="partial"))
    if mode == "wrong_shape":
        if request.stream:
            event = b"event: message_start\n" if fmt == "anthropic" else b""
            return Reply.raw(200, SSE_HEAD, [event + b"data: [1, 2]\n\n", Hang()])
        return Reply.raw(200, [*JSON_HEAD, ("content-length", "6")], [b"[1, 2]"])
    if mode == "broken_framing":
        return Reply.raw(200, SSE_HEAD, [b"\x00garbage\rmore\x7f garbage", Close()])
    if mode == "cut_mid_event":
        return Reply.text("one two three four", chunks=4, fault=Fault(after=3, kind="partial"))
    if mode == "close_mid_stream":
        return Reply.text("one two three four", chunks=4, fault=Fault(after=3, kind="close"))
    if mode == "reset_mid_stream":
        return Reply.text("one two three four", chunks=4, fault=Fault(after=3, kind="reset"))
    if mode == "no_terminal":
        return Reply.text("one two three four", chunks=4, fault=Fault(after=3, kind="end"))
    if mode == "error_mid_stream":
        return Reply.text("one two three four", chunks=4, fault=Fault(after=3, kind="error"))
    if mode == "error_first_event":
        return Reply.text("one two three four", chunks=4, fault=Fault(after=0, kind="error"))
    if mode == "huge":
        if request.stream:  # one endless SSE line
            return Reply.raw(200, SSE_HEAD, [b"data: " + b"a" * (2 * HUGE_LIMIT), Hang()])
        body = b'{"x":"' + b"a" * (2 * HUGE_LIMIT) + b'"}'
        return Reply.raw(200, [*JSON_HEAD, ("content-length", str(len(body)))], [body])
    return Reply.text()


def chaos_config(chaos_url: str, backup_url: str, dead_url: str, server: str = "") -> str:
    text = f"[server]\nport = 0\nbreaker_failures = 1000000\n{server}\n"
    for up, fmt in (("oa", "openai"), ("an", "anthropic")):
        for name, url in ((f"chaos_{up}", chaos_url), (f"dead_{up}", dead_url)):
            base = url + "/v1" if fmt == "openai" else url
            text += f'[[providers]]\nname = "{name}"\nformat = "{fmt}"\nbase_url = "{base}"\n{CHAOS_TIMEOUTS}'
    text += f'[[providers]]\nname = "backup"\nformat = "openai"\nbase_url = "{backup_url}/v1"\n'
    for up in ("oa", "an"):
        for fb in ("fb", "solo"):
            for target, suffix in ((f"dead_{up}", "-dead/"), (f"chaos_{up}", "/")):
                text += f'[[routers]]\ntype = "prefix"\nmodel_prefix = "{up}-{fb}{suffix}"\nprovider = "{target}"\nstrip_prefix = true\n'
    for up in ("oa", "an"):  # the fallback: only the "-fb" routes have one
        text += f'[[routers]]\ntype = "prefix"\nmodel_prefix = "{up}-fb"\nprovider = "backup"\n'
    return text


def dead_port() -> int:
    """A port nothing listens on (bound, never listening: connections are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead_port.keep.append(sock)  # type: ignore[attr-defined]
    return sock.getsockname()[1]


dead_port.keep = []  # type: ignore[attr-defined]


@dataclass
class Outcome:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # the response body ended properly (not cut by the router)
    seconds: float


def send(port: int, client: str, model: str, stream: bool, request_id: str, content: str = "hello") -> Outcome:
    path = "/v1/chat/completions" if client == "openai" else "/v1/messages"
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    if client == "anthropic":
        body["max_tokens"] = 64
    headers = {"content-type": "application/json", "x-request-id": request_id}
    started = time.monotonic()
    data = b""
    complete = True
    with httpcore.ConnectionPool() as pool:
        with pool.stream("POST", f"http://127.0.0.1:{port}{path}", headers=headers, content=json.dumps(body).encode()) as response:
            try:
                for chunk in response.iter_stream():
                    data += chunk
            except httpcore.RemoteProtocolError:
                complete = False  # closed without the terminating chunk
            status = response.status
            got = {k.decode().lower(): v.decode() for k, v in response.headers}
    return Outcome(status, got, data, complete, time.monotonic() - started)


def assert_error_shape(client: str, outcome: Outcome, status: int) -> dict:
    assert outcome.headers.get("content-type") == "application/json", outcome.headers
    body = json.loads(outcome.body)
    if client == "openai":
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
        return error
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    expected_type = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}
    assert body["error"]["type"] == expected_type.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return body["error"]


TERMINAL = {"openai": b"data: [DONE]", "anthropic": b"event: message_stop"}
INBAND = {"openai": b'data: {"error":', "anthropic": b"event: error"}


def check_case(router, chaos, backup, client: str, up: str, fb: str, mode: str, stream: bool) -> tuple[str, float]:
    expected = MODES[mode][stream]
    request_id = f"chaos-{client}-{up}-{fb}-{mode}-{int(stream)}"
    route = f"{up}-{fb}-dead/" if mode == "refused" else f"{up}-{fb}/"
    outcome = send(router.port, client, route + mode, stream, request_id, content=request_id)
    where = f"{request_id}: {outcome.status} {outcome.body[:300]!r}"
    fell_back = any(request_id in r.body.decode("utf-8", "replace") for r in backup.requests)
    kind = expected[0]
    if kind == "fallback" and fb == "fb":
        assert outcome.status == 200 and outcome.complete, where
        assert outcome.headers["x-router-provider"] == "backup", where
        assert fell_back, where
        assert TERMINAL["openai" if client == "openai" else "anthropic"] in outcome.body or not stream, where
    elif kind in ("fallback", "status"):
        status, code = expected[1], expected[2]
        status = status[up] if isinstance(status, dict) else status
        assert outcome.status == status, where
        assert outcome.complete, where
        assert not fell_back, where
        assert_error_shape(client, outcome, status)
        if status == 429:
            assert outcome.headers.get("retry-after") == "7", where
    else:  # in-band: the stream started, then failed
        assert outcome.status == 200, where
        assert not fell_back, where
        assert INBAND[client] in outcome.body, where
        assert TERMINAL[client] not in outcome.body, where
        assert not outcome.complete, where  # no terminating chunk either
    records = router.wait_records_for(request_id)
    assert len(records) == 1, (where, records)
    rec = records[0]
    if kind == "fallback" and fb == "fb":
        assert rec["status"] == 200 and rec["error"] is None, (where, rec)
        assert [a["outcome"] for a in rec["attempts"]] == ["error", "ok"], (where, rec)
    else:
        code = expected[-1]
        assert rec["error"] and rec["error_code"] == code, (where, rec)
        status = 200 if kind == "inband" else expected[1]
        assert rec["status"] == (status[up] if isinstance(status, dict) else status), (where, rec)
    return kind, outcome.seconds


@pytest.fixture(scope="module")
def world():
    with FakeUpstream() as chaos, FakeUpstream() as backup:
        chaos.script = chaos_reply
        dead = f"http://127.0.0.1:{dead_port()}"
        with running_router(chaos_config(chaos.url, backup.url, dead)) as router:
            yield router, chaos, backup


def _records_for(router, request_id: str, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in router.records if r["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            return found  # a second record for it is looked for once all cases are done
        time.sleep(0.005)


CASES = [
    (client, up, fb, mode, stream)
    for mode, by_stream in MODES.items()
    for stream in by_stream
    for client in ("openai", "anthropic")
    for up in ("oa", "an")
    for fb in ("fb", "solo")
]


def test_fault_matrix(world, monkeypatch):
    router, chaos, backup = world
    monkeypatch.setattr(pipeline, "MAX_REPLY_BYTES", HUGE_LIMIT)
    monkeypatch.setattr(sse, "MAX_LINE_BYTES", HUGE_LIMIT)
    checked: list[str] = []  # request ids whose one record was checked
    router.wait_records_for = lambda request_id: checked.append(request_id) or _records_for(router, request_id)
    failures: list[str] = []
    results: list[tuple[str, float]] = []

    def run(case) -> None:
        try:
            results.append(check_case(router, chaos, backup, *case))
        except AssertionError as exc:
            text = str(exc)
            failures.append(f"{case}: {text[:200]} ... {text[-300:]}")

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, CASES))
    assert not failures, "\n".join(failures[:400]) + f"\n({len(failures)} of {len(CASES)} cases failed)"
    # The cases ran 8 at a time, so "nothing in flight" comes only now: any
    # second record of a request would be out by then.
    router.wait_idle(timeout=30)
    per_request = collections.Counter(r["request_id"] for r in router.records)
    assert [rid for rid in checked if per_request[rid] != 1] == []
    assert chaos.errors == [] and backup.errors == []
    kinds = [k for k, _ in results]
    record("chaos.cases", len(CASES), unit="cases", modes=len(MODES), failed=0,
           fallback=kinds.count("fallback"), status=kinds.count("status"), inband=kinds.count("inband"),
           seconds=round(time.monotonic() - started, 1))
    # Every in-band case was checked for a missing [DONE]/message_stop, every
    # case for exactly one complete record.
    record("chaos.inband_streams_without_terminal_event", kinds.count("inband"), bound="all", of=kinds.count("inband"))
    record("chaos.requests_with_exactly_one_complete", len(results), bound="all", of=len(CASES))


@pytest.mark.parametrize("splitter, prefix", [(sse.SSESplitter, b"data: "), (sse.NDJSONSplitter, b"")])
def test_an_endless_line_is_refused_at_the_cap(splitter, prefix):
    """A line over MAX_LINE_BYTES is a broken upstream (502), found in linear
    time: buffering appends without rescanning, so 64 MiB costs ~0.1 s, not minutes."""
    s = splitter()
    s.feed(prefix)
    piece = b"a" * 65536
    with pytest.raises(errors.UpstreamProtocolError, match="line longer than"):
        for _ in range(sse.MAX_LINE_BYTES // len(piece) + 1):
            s.feed(piece)
