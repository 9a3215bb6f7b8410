"""The translation matrix, stream specifics: failures in the middle of a
stream, OpenAI chunk framing on the wire, a slow upstream (incremental relay
and keep-alives), interleaved tool-call deltas; plus Claude Code's
`/v1/messages?beta=true` with `anthropic-beta`, and GET /v1/models.

Shares the router, fakes and client adapters of tests/test_matrix.py (one
router and three fakes for this module too).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import anthropic
import httpcore
import openai
import pytest

from fakes import Fault, Reply
from test_matrix import (  # noqa: F401  (world and _fresh_queues are fixtures)
    CALLS,
    MODEL,
    TOOLS,
    UPSTREAMS,
    USAGE,
    _fresh_queues,
    ask,
    check_anthropic_events,
    grid,
    next_record,
    requests_so_far,
    world,
)


def interleaved_openai_stream() -> Reply:
    """Parallel calls whose argument deltas alternate (the chat-completions
    stream is keyed by index, so nothing forbids it)."""
    def chunk(delta: dict, finish: str | None = None) -> bytes:
        obj = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    def call(index: int, **fields: Any) -> bytes:
        return chunk({"tool_calls": [{"index": index, **fields}]})

    frames = [
        chunk({"role": "assistant", "content": None}),
        call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""}),
        call(1, id="call_b", type="function", function={"name": "get_time", "arguments": ""}),
        call(0, function={"arguments": '{"city": "Paris", '}),
        call(1, function={"arguments": '{"tz": '}),
        call(0, function={"arguments": '"unit": "c"}'}),
        call(1, function={"arguments": '"Europe/Paris"}'}),
        chunk({}, "tool_calls"),
        b"data: " + json.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
                                "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                                                         "total_tokens": 18}}).encode() + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    return Reply.raw(200, [("content-type", "text/event-stream")], frames)


def test_interleaved_parallel_call_deltas_reach_a_responses_client(world):
    # Only the Responses encoder keeps calls open side by side. The openai SDK's
    # own stream helper assumes one call at a time (it closes and parses a call
    # when the next index appears), and so does Anthropic's one-open-block
    # stream: for those clients interleaving is a known limitation.
    world.fake("openai").enqueue(interleaved_openai_stream())
    result = ask(world, "responses", "openai", [("user", "weather and time?")], stream=True, tools=TOOLS)
    assert result.stop == "tool_use" and result.usage == USAGE
    assert result.calls == [("call_a", "get_weather", {"city": "Paris", "unit": "c"}),
                            ("call_b", "get_time", {"tz": "Europe/Paris"})]


# --------------------------------------------------------------------------
# Upstream failures in the middle of a stream


FAIL_TEXT = "alpha beta gamma delta epsilon"
# Frames the fake sends before failing, so that "alpha beta" got through first.
FRAMES_BEFORE = {"openai": 3, "anthropic": 5, "ollama": 2}
CLIENT_PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


def stream_body(client: str, model: str) -> dict:
    if client == "chat":
        return {"model": model, "messages": [{"role": "user", "content": "count"}], "stream": True}
    if client == "messages":
        return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "count"}], "stream": True}
    return {"model": model, "input": "count", "stream": True}


@dataclass
class RawStream:
    pieces: list[tuple[float, bytes]]  # (arrival time, bytes)
    complete: bool  # the body ended with its terminating chunk

    @property
    def body(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)


def raw_stream(port: int, path: str, payload: dict) -> RawStream:
    """The router's streamed response, read with httpcore."""
    out = RawStream([], complete=False)
    with httpcore.ConnectionPool() as pool:
        with pool.stream("POST", f"http://127.0.0.1:{port}{path}", headers={"content-type": "application/json"},
                         content=json.dumps(payload).encode()) as response:
            assert response.status == 200
            try:
                for chunk in response.iter_stream():
                    out.pieces.append((time.monotonic(), chunk))
                out.complete = True
            except httpcore.RemoteProtocolError:
                pass  # closed without the terminating chunk
    return out


def sse_frames(body: bytes) -> list[tuple[str, str]]:
    """(event name, data) of every SSE frame with data; comments are skipped."""
    frames = []
    for block in body.decode().split("\n\n"):
        event, data = "", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            frames.append((event, "\n".join(data)))
    return frames


def raw_sse(port: int, path: str, payload: dict) -> list[tuple[str, str]]:
    return sse_frames(raw_stream(port, path, payload).body)


def streamed_text(client: str, frames: list[tuple[str, str]]) -> str:
    out = []
    for event, data in frames:
        if data == "[DONE]":
            continue
        obj = json.loads(data)
        if client == "chat":
            for choice in obj.get("choices") or []:
                out.append(choice["delta"].get("content") or "")
        elif client == "messages" and event == "content_block_delta":
            out.append(obj["delta"].get("text", ""))
        elif client == "responses" and event == "response.output_text.delta":
            out.append(obj["delta"])
    return "".join(out)


@pytest.mark.parametrize("kind", ["error", "close", "end"])
@grid(stream=(True,))
def test_midstream_failure_is_reported_in_band(world, client, upstream, stream, kind):
    """An in-band upstream error, a dropped connection, or a body that ends
    without its terminal frame: the client gets its format's error event last,
    and no fake terminator."""
    before = requests_so_far(world)
    fault = Fault(after=FRAMES_BEFORE[upstream], kind=kind, message="the GPU caught fire")
    world.fake(upstream).enqueue(Reply.text(FAIL_TEXT, fault=fault))
    raw = raw_stream(world.router.port, CLIENT_PATHS[client], stream_body(client, MODEL[upstream]))
    frames = sse_frames(raw.body)
    assert streamed_text(client, frames) == "alpha beta"
    # response.failed is a terminal event of its own, so that body ends normally;
    # the others are cut short, so no client can mistake them for complete.
    assert raw.complete is (client == "responses")
    event, data = frames[-1]
    last = json.loads(data)
    if client == "chat":
        assert set(last) == {"error"} and last["error"]["message"]
        assert all(d != "[DONE]" for _, d in frames)
        assert all(c.get("finish_reason") is None for _, d in frames[:-1] for c in json.loads(d).get("choices") or [])
    elif client == "messages":
        assert event == "error" and last["type"] == "error"
        assert last["error"]["type"] and last["error"]["message"]
        assert not {"message_stop", "message_delta"} & {e for e, _ in frames}
    else:
        assert event == "response.failed" and last["response"]["status"] == "failed"
        assert last["response"]["error"]["message"]
        assert "response.completed" not in {e for e, _ in frames}
    if kind == "error":
        assert "the GPU caught fire" in data
    record = next_record(world, before)
    assert record["error"] and record["response"]["content"] == "alpha beta"


@grid(stream=(True,))
def test_midstream_failure_reaches_the_sdk(world, client, upstream, stream):
    """The SDKs see the failure: the OpenAI and Anthropic streams raise, the
    Responses stream ends with response.failed."""
    fault = Fault(after=FRAMES_BEFORE[upstream], kind="error", message="the GPU caught fire")
    world.fake(upstream).enqueue(Reply.text(FAIL_TEXT, fault=fault))
    sdk = world.clients[client].sdk
    text = []
    if client == "chat":
        with pytest.raises(openai.APIError, match="GPU caught fire"):
            for chunk in sdk.chat.completions.create(model=MODEL[upstream], messages=[{"role": "user", "content": "x"}],
                                                     stream=True):
                text.extend(c.delta.content or "" for c in chunk.choices)
    elif client == "messages":
        with pytest.raises(anthropic.APIStatusError, match="GPU caught fire"):
            with sdk.messages.stream(model=MODEL[upstream], max_tokens=64,
                                     messages=[{"role": "user", "content": "x"}]) as s:
                text.extend(s.text_stream)
    else:
        events = list(sdk.responses.create(model=MODEL[upstream], input="x", stream=True))
        assert events[-1].type == "response.failed"
        assert "GPU caught fire" in events[-1].response.error.message
        text = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(text) == "alpha beta"


# --------------------------------------------------------------------------
# Claude Code's beta endpoint, forwarded headers, the model list


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_beta_messages_endpoint_and_beta_header(world, upstream, stream):
    """POST /v1/messages?beta=true works; `anthropic-beta` reaches Anthropic upstreams only."""
    sdk = world.clients["messages"].sdk
    kwargs: dict[str, Any] = dict(model=MODEL[upstream], max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                                  betas=["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"],
                                  extra_query={"beta": "true"})
    world.fake(upstream).enqueue(Reply.text(usage=USAGE))
    if stream:
        with sdk.beta.messages.stream(**kwargs) as s:
            final = s.get_final_message()
            assert "beta=true" in str(s.response.url)
    else:
        raw = sdk.beta.messages.with_raw_response.create(**kwargs)
        assert "beta=true" in str(raw.http_request.url)
        final = raw.parse()
    assert final.content[0].text == "echo: hi" and final.stop_reason == "end_turn"
    headers = world.fake(upstream).requests[-1].headers
    if upstream == "anthropic":
        assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    else:
        assert "anthropic-beta" not in headers


def test_models_lists_declared_rewrite_targets_and_discovered(world):
    models = world.clients["chat"].sdk.models.list()
    assert [(m.id, m.owned_by) for m in models.data] == [
        ("claude-declared", "an"),  # a provider's `models = [...]`
        ("gpt-rewritten", "oa"),  # a rule's rewrite target
        ("llama3.2:latest", "ol"),  # discovered from the Ollama upstream's /api/tags
        ("qwen2.5:0.5b", "ol"),
    ]
    assert all(m.object == "model" for m in models.data)


# --------------------------------------------------------------------------
# OpenAI chunk framing on the wire


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_chat_stream_framing(world, upstream, include_usage):
    """Role in the first delta only; index-keyed tool-call deltas whose first
    piece names the call; one finish_reason after all deltas; a usage chunk
    only when asked; `data: [DONE]` last."""
    world.fake(upstream).enqueue(Reply.tool_calls(CALLS, text="Checking both.", chunks=3, usage=USAGE))
    payload = {"model": MODEL[upstream], "messages": [{"role": "user", "content": "x"}], "stream": True,
               "tools": [{"type": "function", "function": {"name": n, "parameters": p}} for n, _, p in TOOLS]}
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    frames = raw_sse(world.router.port, "/v1/chat/completions", payload)
    assert frames[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in frames[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    usage_chunks = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert [c["choices"] for c in usage_chunks] == [[]] and usage_chunks[0] is chunks[-1]
        assert usage_chunks[0]["usage"]["prompt_tokens"] == USAGE[0]
        assert usage_chunks[0]["usage"]["completion_tokens"] == USAGE[1]
        chunks = chunks[:-1]
    else:
        assert usage_chunks == []
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    seen: dict[int, str] = {}
    for delta in deltas:
        for call in delta.get("tool_calls") or []:
            if call["index"] not in seen:
                assert call["index"] == len(seen) and call["type"] == "function"
                assert call["id"] and call["function"]["name"]
                seen[call["index"]] = call["function"].get("arguments", "")
            else:
                assert "id" not in call and "name" not in call["function"]
                seen[call["index"]] += call["function"]["arguments"]
    assert [json.loads(a) for a in seen.values()] == [json.loads(a) for _, a in CALLS]
    assert "".join(d.get("content") or "" for d in deltas) == "Checking both."


# --------------------------------------------------------------------------
# A slow upstream: translated frame by frame, with keep-alives in between


PINGS = {"chat": b": ping", "messages": b"event: ping", "responses": b": ping"}


@pytest.mark.parametrize("client, upstream", [("chat", "anthropic"), ("messages", "ollama"), ("responses", "openai")])
def test_slow_upstream_is_relayed_incrementally_with_pings(world, monkeypatch, client, upstream):
    from llmrouter import pipeline

    monkeypatch.setattr(pipeline, "PING_AFTER", 0.05)  # the production 10 s would make this test slow
    world.fake(upstream).enqueue(Reply.text("one two three four", chunks=4, delay=0.2))
    raw = raw_stream(world.router.port, CLIENT_PATHS[client], stream_body(client, MODEL[upstream]))
    pieces, body = raw.pieces, raw.body
    assert raw.complete
    assert streamed_text(client, sse_frames(body)) == "one two three four"
    # The first words reached the client while the upstream was still writing
    # (≥ 0.6 s of scripted pauses followed them), not in one piece at the end.
    first = next(t for t, piece in pieces if b"one" in piece)
    assert pieces[-1][0] - first > 0.3
    # Silence longer than PING_AFTER became the client format's keep-alive.
    assert body.count(PINGS[client]) >= 2
    frames = sse_frames(body)
    if client == "messages":
        check_anthropic_events([e for e, _ in frames], [json.loads(d).get("index") for _, d in frames])
