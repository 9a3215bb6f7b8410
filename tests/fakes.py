"""Fake LLM upstreams on loopback that speak the providers' real wire formats.

One `FakeUpstream` answers all three upstream dialects, chosen by the path:

    POST .../chat/completions   OpenAI chat completions (JSON, or SSE chunks + [DONE])
    POST .../messages           Anthropic messages (JSON, or the named SSE event sequence)
    POST /api/chat              Ollama (JSON, or NDJSON lines ending with done: true)
    POST .../completions        OpenAI legacy text completions (JSON, or SSE + [DONE])
    POST /api/generate          Ollama text generation, `suffix` included (JSON or NDJSON)
    POST .../embeddings         OpenAI embeddings (float or base64, as asked)
    POST /api/embed             Ollama embeddings
    GET  /api/tags, .../models  model lists (Ollama, OpenAI, or Anthropic by header)
    POST /api/show              Ollama model details (404 for a model it does not list)

It is an anyio listener with one h11 server connection per TCP connection
(keep-alive, so a client's connection pool can reuse it). Every request is
recorded; what to answer is scripted per request:

    with FakeUpstream() as fake:                       # own background loop
        fake.enqueue(Reply.error(429, "slow down", retry_after=1), Reply.text("hi", chunks=2))
        fake.script = lambda request: Reply.tool_calls([("get_weather", '{"city":"Paris"}')])

or inside an async test: `port = await tg.start(fake.serve)`.

By default a chat request gets "echo: <last user text>", a completion
"echo: <prompt>", an embedding request `vector_for(text)` per input. `Reply.raw` and the
actions `Delay`, `Hang`, `Close` (and `Fault` on the high-level builders) script
broken upstreams for the chaos tests. Each body piece is a separate write, so
a test can observe chunk-by-chunk forwarding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import ssl
import struct
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import anyio
import h11
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.tls import TLSListener

from background import BackgroundLoop

__all__ = [
    "Close", "ConnectionInfo", "Delay", "FakeUpstream", "Fault", "Hang",
    "RecordedRequest", "Reply", "ToolCall", "drip", "vector_for", "wire_format",
]

CREATED = 1735689600  # fixed timestamps keep the output deterministic
CREATED_AT = "2025-01-01T00:00:00.000000Z"


# --------------------------------------------------------------------------
# What was received


@dataclass
class RecordedRequest:
    method: str
    path: str  # includes the query string
    headers: dict[str, str]  # lowercase names; repeated headers joined by ", "
    body: bytes
    connection_id: int = 0
    index: int = 0  # position in fake.requests; ids in replies derive from it
    received_at: float = 0.0  # time.monotonic()

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def format(self) -> str | None:
        return wire_format(self.route)

    @property
    def stream(self) -> bool:
        body = _json_object(self.body)
        if self.format == "ollama":
            return body.get("stream", True) is not False  # Ollama streams by default
        return body.get("stream") is True


@dataclass
class ConnectionInfo:
    id: int
    requests: int = 0
    closed: bool = False
    closed_by_peer: bool = False  # the peer closed (or reset) before we did
    peer_closed_at: float | None = None  # time.monotonic() when that was noticed

    def mark_peer_closed(self) -> None:
        if not self.closed_by_peer:
            self.closed_by_peer, self.peer_closed_at = True, time.monotonic()


def wire_format(route: str) -> str | None:
    if route.endswith(("/chat/completions", "/completions", "/embeddings")) and not route.startswith("/api/"):
        return "openai"
    if route.endswith("/messages"):
        return "anthropic"
    if route.startswith("/api/"):
        return "ollama"
    return None


def _json_object(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------
# How to answer: actions, faults and replies


@dataclass(frozen=True)
class Delay:
    seconds: float


@dataclass(frozen=True)
class Hang:
    """Stop sending and wait until the peer goes away (or the fake stops)."""


@dataclass(frozen=True)
class Close:
    """Drop the connection here: a FIN, or a TCP RST when `reset`."""

    reset: bool = False


Action = Union[bytes, Delay, Hang, Close]


@dataclass(frozen=True)
class Fault:
    """A failure injected into a high-level reply after `after` complete frames
    (SSE events or NDJSON lines, counted from the first one the format sends).

    kind: "close" / "reset" (drop the connection), "hang", "partial" (half of
    the next frame, then close), "error" (the format's in-band error frame, then
    a clean end), "end" (a clean end of the body without the terminal frames).
    Non-streaming bodies count as one frame and allow close/reset/hang/partial.
    """

    after: int = 0
    kind: str = "close"
    message: str = "fault injected by the test"

    def __post_init__(self) -> None:
        if self.kind not in ("close", "reset", "hang", "partial", "error", "end"):
            raise ValueError(f"unknown fault kind {self.kind!r}")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, streamed in pieces
    id: str | None = None  # default: call_<request>_<i> / toolu_<request>_<i>


@dataclass
class Reply:
    """A scripted response. `status=None` sends no response head: the byte
    actions go to the socket unframed and the connection is closed after them.
    Without a content-length header the body is sent chunked."""

    status: int | None = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    actions: Iterable[Action] = ()
    head_delay: float = 0.0
    build: Callable[[RecordedRequest], Reply] | None = None  # format-aware replies

    def render(self, request: RecordedRequest) -> Reply:
        if self.build is None:
            return self
        built = self.build(request)
        return replace(
            built,
            headers=built.headers + self.headers,
            head_delay=self.head_delay or built.head_delay,
        )

    def delayed(self, seconds: float) -> Reply:
        """The same reply, with its response head held back for `seconds`."""
        return replace(self, head_delay=seconds)

    # -- builders ----------------------------------------------------------

    @classmethod
    def raw(cls, status: int | None, headers: Sequence[tuple[str, str]] = (),
            actions: Iterable[Action] = ()) -> Reply:
        return cls(status, list(headers), actions)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        body = json.dumps(obj).encode()
        head = [("content-type", "application/json"), ("content-length", str(len(body)))]
        return cls(status, head + list((headers or {}).items()), [body])

    @classmethod
    def text(cls, text: str | None = None, *, chunks: int | None = None, delay: float = 0.0,
             stop: str | None = None, usage: tuple[int, int] | None = None,
             fault: Fault | None = None, headers: dict[str, str] | None = None) -> Reply:
        """An assistant text answer in the request's format; `text=None` echoes
        the last user text. Streams split it into `chunks` pieces (default: one
        per word) with `delay` seconds between frames."""
        answer = _Answer(text, (), chunks, delay, stop, usage, fault)
        return cls(headers=list((headers or {}).items()), build=lambda r: _render(r, answer))

    @classmethod
    def tool_calls(cls, calls: Sequence[ToolCall | tuple], *, text: str = "",
                   chunks: int | None = None, delay: float = 0.0, stop: str | None = None,
                   usage: tuple[int, int] | None = None, fault: Fault | None = None,
                   headers: dict[str, str] | None = None) -> Reply:
        """Tool calls given as (name, arguments_json[, id]); streams split each
        call's arguments into `chunks` pieces (default 3)."""
        parsed = tuple(c if isinstance(c, ToolCall) else ToolCall(*c) for c in calls)
        answer = _Answer(text, parsed, chunks, delay, stop, usage, fault)
        return cls(headers=list((headers or {}).items()), build=lambda r: _render(r, answer))

    @classmethod
    def embeddings(cls, *, encoding: str | None = None, usage: int | None = None) -> Reply:
        """`vector_for(input)` per input, in the request's format. `encoding`
        ("float" or "base64") overrides what the request asked for, as servers
        that ignore `encoding_format` do; `usage` sets the prompt tokens."""
        return cls(build=lambda r: _embeddings(r, encoding, usage))

    @classmethod
    def error(cls, status: int, message: str, *, retry_after: float | None = None,
              type: str | None = None, headers: dict[str, str] | None = None) -> Reply:
        """An error in the request's format (OpenAI shape for unknown paths)."""
        extra = list((headers or {}).items())
        if retry_after is not None:
            extra.append(("retry-after", f"{retry_after:g}"))

        def build(request: RecordedRequest) -> Reply:
            wire = WIRES.get(request.format or "openai", OPENAI)
            body = wire.error_body(status, message, type, request.index)
            return _fixed(status, wire.json_headers(request.index), body)

        return cls(headers=extra, build=build)


STOP_REASONS = ("end_turn", "max_tokens", "tool_use", "stop_sequence")  # Anthropic's names


@dataclass(frozen=True)
class _Answer:
    text: str | None
    calls: tuple[ToolCall, ...]
    chunks: int | None
    delay: float
    stop: str | None  # one of STOP_REASONS; each format maps it to its own word
    usage: tuple[int, int] | None
    fault: Fault | None

    def __post_init__(self) -> None:
        if self.stop is not None and self.stop not in STOP_REASONS:
            raise ValueError(f"stop must be one of {STOP_REASONS}, not {self.stop!r}")


def drip(data: bytes, size: int = 1, interval: float = 0.5) -> list[Action]:
    """`data` in `size`-byte writes with `interval` seconds between them."""
    out: list[Action] = []
    for start in range(0, len(data), size):
        if start:
            out.append(Delay(interval))
        out.append(data[start:start + size])
    return out


def _fixed(status: int, headers: list[tuple[str, str]], body: bytes) -> Reply:
    return Reply(status, headers + [("content-length", str(len(body)))], [body])


# --------------------------------------------------------------------------
# From an answer to the bytes of one format


@dataclass
class _Plan:
    """Everything a format needs to write one answer."""

    model: str
    seq: int
    text: str
    pieces: list[str]
    calls: list[ToolCall]
    arg_pieces: int
    stop: str  # end_turn | max_tokens | tool_use | stop_sequence
    input_tokens: int
    output_tokens: int
    include_usage: bool
    stop_sequence: str | None


def _text_wire(request: RecordedRequest) -> Any:
    route = request.route
    if route == "/api/generate":
        return OLLAMA_GENERATE
    if request.format == "ollama":
        return OLLAMA if route == "/api/chat" else None
    if request.format == "openai" and not route.endswith("/chat/completions"):
        return OPENAI_TEXT if route.endswith("/completions") else None
    return WIRES.get(request.format or "")


def _render(request: RecordedRequest, answer: _Answer) -> Reply:
    wire = _text_wire(request)
    if wire is None:
        raise ValueError(f"no chat format for {request.method} {request.path}")
    plan = _plan(request, answer, wire)
    headers = wire.stream_headers(plan.seq) if request.stream else wire.json_headers(plan.seq)
    if not request.stream:
        body = wire.body(plan)
        actions = _fault_body(body, answer.fault)
        return Reply(200, headers + [("content-length", str(len(body)))], actions)
    frames: list[Action] = list(wire.frames(plan))
    if answer.fault is not None:
        frames = _fault_frames(frames, answer.fault, wire.error_frame(answer.fault.message, plan.seq))
    return Reply(200, headers, _spaced(frames, answer.delay))


def _plan(request: RecordedRequest, answer: _Answer, wire: Any) -> _Plan:
    body = _json_object(request.body)
    text = f"echo: {_last_user_text(body)}" if answer.text is None else answer.text
    calls = [
        call if call.id else replace(call, id=f"{wire.call_prefix}{request.index}_{i}")
        for i, call in enumerate(answer.calls)
    ]
    output = len(text.split()) + sum(len(c.arguments) // 4 + 1 for c in calls)
    stops = body.get("stop_sequences") or body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    input_tokens, output_tokens = answer.usage or (_count_words(body), max(output, 1))
    return _Plan(
        model=str(body.get("model", "fake-model")),
        seq=request.index,
        text=text,
        pieces=_split_words(text) if answer.chunks is None else _split_even(text, answer.chunks),
        calls=calls,
        arg_pieces=answer.chunks or 3,
        stop=answer.stop or ("tool_use" if calls else "end_turn"),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        stop_sequence=stops[0] if stops and isinstance(stops[0], str) else None,
    )


def _last_user_text(body: dict) -> str:
    if isinstance(body.get("prompt"), str):  # a text completion
        return body["prompt"]
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text")
        )
    return ""


def _count_words(body: dict) -> int:
    texts = [_text_of(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)]
    texts.append(_text_of(body.get("system")))
    texts.append(_text_of(body.get("prompt")))
    return max(1, sum(len(t.split()) for t in texts))


def _split_words(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text)


def _split_even(text: str, n: int) -> list[str]:
    if not text:
        return []
    n = max(1, min(n, len(text)))
    cuts = [len(text) * i // n for i in range(n + 1)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:])]


def _fault_body(body: bytes, fault: Fault | None) -> list[Action]:
    if fault is None:
        return [body]
    tails: dict[str, list[Action]] = {
        "close": [Close()], "reset": [Close(reset=True)], "hang": [Hang()],
        "partial": [body[: len(body) // 2], Close()],
    }
    if fault.kind not in tails:
        raise ValueError(f"fault {fault.kind!r} needs a streaming request")
    return tails[fault.kind]


def _fault_frames(frames: list[Action], fault: Fault, error_frame: bytes) -> list[Action]:
    head = frames[: fault.after]
    rest = frames[fault.after:]
    tails: dict[str, list[Action]] = {
        "close": [Close()], "reset": [Close(reset=True)], "hang": [Hang()],
        "error": [error_frame], "end": [],
        "partial": [rest[0][: len(rest[0]) // 2], Close()] if rest else [Close()],
    }
    return head + tails[fault.kind]


def _spaced(frames: list[Action], delay: float) -> list[Action]:
    if not delay:
        return frames
    out: list[Action] = []
    for frame in frames:
        if out and isinstance(frame, bytes):
            out.append(Delay(delay))
        out.append(frame)
    return out


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# --------------------------------------------------------------------------
# OpenAI chat completions


class _OpenAI:
    call_prefix = "call_"
    finish = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls",
              "stop_sequence": "stop"}
    # status -> (type, code), as api.openai.com answers
    errors = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
              404: ("invalid_request_error", "model_not_found"),
              429: ("requests", "rate_limit_exceeded")}

    def json_headers(self, seq: int) -> list[tuple[str, str]]:
        return [("content-type", "application/json"), ("x-request-id", f"req_fake{seq}"),
                ("openai-processing-ms", "1")]

    def stream_headers(self, seq: int) -> list[tuple[str, str]]:
        return [("content-type", "text/event-stream; charset=utf-8"),
                ("x-request-id", f"req_fake{seq}"), ("openai-processing-ms", "1")]

    def usage(self, plan: _Plan) -> dict:
        return {
            "prompt_tokens": plan.input_tokens,
            "completion_tokens": plan.output_tokens,
            "total_tokens": plan.input_tokens + plan.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0},
        }

    def body(self, plan: _Plan) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": plan.text if plan.text or not plan.calls else None,
            "refusal": None,
            "annotations": [],
        }
        if plan.calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in plan.calls
            ]
        completion = {
            "id": f"chatcmpl-fake{plan.seq}", "object": "chat.completion", "created": CREATED,
            "model": plan.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": self.finish[plan.stop]}],
            "usage": self.usage(plan), "service_tier": "default", "system_fingerprint": "fp_fake",
        }
        return json.dumps(completion, ensure_ascii=False, indent=2).encode()  # pretty, as OpenAI sends

    def frames(self, plan: _Plan) -> Iterator[bytes]:
        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return self._event(plan, [{"index": 0, "delta": delta, "logprobs": None,
                                       "finish_reason": finish}])

        started = bool(plan.text) or not plan.calls
        if started:
            yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in plan.pieces:
            yield chunk({"content": piece})
        for i, call in enumerate(plan.calls):
            opening = {"index": i, "id": call.id, "type": "function",
                       "function": {"name": call.name, "arguments": ""}}
            if started:
                yield chunk({"tool_calls": [opening]})
            else:  # a tools-only answer names the role in the first tool delta
                yield chunk({"role": "assistant", "content": None, "tool_calls": [opening],
                             "refusal": None})
                started = True
            for piece in _split_even(call.arguments, plan.arg_pieces):
                yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
        yield chunk({}, self.finish[plan.stop])
        if plan.include_usage:
            yield self._event(plan, [], self.usage(plan))
        yield b"data: [DONE]\n\n"

    def _event(self, plan: _Plan, choices: list, usage: dict | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": f"chatcmpl-fake{plan.seq}", "object": "chat.completion.chunk",
            "created": CREATED, "model": plan.model, "service_tier": "default",
            "system_fingerprint": "fp_fake", "choices": choices,
        }
        if plan.include_usage:
            obj["usage"] = usage  # null on every chunk but the last one
        return b"data: " + _compact(obj) + b"\n\n"

    def error_object(self, status: int, message: str, type: str | None) -> dict:
        default_type, code = self.errors.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return {"message": message, "type": type or default_type, "param": None, "code": code}

    def error_body(self, status: int, message: str, type: str | None, seq: int) -> bytes:
        return json.dumps({"error": self.error_object(status, message, type)}, indent=2).encode()

    def error_frame(self, message: str, seq: int) -> bytes:
        return b"data: " + _compact({"error": self.error_object(500, message, None)}) + b"\n\n"


# --------------------------------------------------------------------------
# Anthropic messages


class _Anthropic:
    call_prefix = "toolu_"
    errors = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
              500: "api_error", 529: "overloaded_error"}

    def json_headers(self, seq: int) -> list[tuple[str, str]]:
        return [("content-type", "application/json"), ("request-id", f"req_fake{seq}")]

    def stream_headers(self, seq: int) -> list[tuple[str, str]]:
        return [("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"), ("request-id", f"req_fake{seq}")]

    def message(self, plan: _Plan) -> dict:
        content: list[dict] = []
        if plan.text or not plan.calls:
            content.append({"type": "text", "text": plan.text})
        for call in plan.calls:
            content.append({"type": "tool_use", "id": call.id, "name": call.name,
                            "input": json.loads(call.arguments or "{}")})
        return {
            "id": f"msg_fake{plan.seq}", "type": "message", "role": "assistant",
            "model": plan.model, "content": content, "stop_reason": plan.stop,
            "stop_sequence": plan.stop_sequence if plan.stop == "stop_sequence" else None,
            "usage": {"input_tokens": plan.input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": plan.output_tokens,
                      "service_tier": "standard"},
        }

    def body(self, plan: _Plan) -> bytes:
        return _compact(self.message(plan))

    def frames(self, plan: _Plan) -> Iterator[bytes]:
        final = self.message(plan)
        start = dict(final, content=[], stop_reason=None, stop_sequence=None,
                     usage=dict(final["usage"], output_tokens=1))
        yield self._event("message_start", {"type": "message_start", "message": start})
        calls = iter(plan.calls)
        for index, block in enumerate(final["content"]):
            if block["type"] == "text":
                opening = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in plan.pieces]
            else:  # the API opens every tool input with an empty partial_json
                opening = dict(block, input={})
                pieces = [""] + _split_even(next(calls).arguments, plan.arg_pieces)
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
            yield self._event("content_block_start", {"type": "content_block_start",
                                                      "index": index, "content_block": opening})
            if index == 0:
                yield b'event: ping\ndata: {"type": "ping"}\n\n'
            for delta in deltas:
                yield self._event("content_block_delta",
                                  {"type": "content_block_delta", "index": index, "delta": delta})
            yield self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        yield self._event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": final["stop_reason"], "stop_sequence": final["stop_sequence"]},
            "usage": {"output_tokens": plan.output_tokens},
        })
        yield self._event("message_stop", {"type": "message_stop"})

    def _event(self, name: str, data: dict) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _compact(data) + b"\n\n"

    def error_object(self, status: int, message: str, type: str | None, seq: int) -> dict:
        default = self.errors.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": type or default, "message": message},
                "request_id": f"req_fake{seq}"}

    def error_body(self, status: int, message: str, type: str | None, seq: int) -> bytes:
        return _compact(self.error_object(status, message, type, seq))

    def error_frame(self, message: str, seq: int) -> bytes:
        return self._event("error", self.error_object(529, message, None, seq))


# --------------------------------------------------------------------------
# Ollama /api/chat (NDJSON)


class _Ollama:
    call_prefix = "call_"
    done_reason = {"end_turn": "stop", "max_tokens": "length", "tool_use": "stop",
                   "stop_sequence": "stop"}

    def json_headers(self, seq: int) -> list[tuple[str, str]]:
        return [("content-type", "application/json; charset=utf-8")]

    def stream_headers(self, seq: int) -> list[tuple[str, str]]:
        return [("content-type", "application/x-ndjson")]

    def body(self, plan: _Plan) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if plan.calls:
            message["tool_calls"] = [self._call(i, c) for i, c in enumerate(plan.calls)]
        return self._json(self._final(plan, message))

    def frames(self, plan: _Plan) -> Iterator[bytes]:
        for piece in plan.pieces:
            yield self._line({"role": "assistant", "content": piece}, plan)
        for i, call in enumerate(plan.calls):  # each call arrives whole, in its own line
            yield self._line({"role": "assistant", "content": "",
                              "tool_calls": [self._call(i, call)]}, plan)
        yield self._json(self._final(plan, {"role": "assistant", "content": ""})) + b"\n"

    def _line(self, message: dict, plan: _Plan) -> bytes:
        obj = {"model": plan.model, "created_at": CREATED_AT, "message": message, "done": False}
        return self._json(obj) + b"\n"

    def _call(self, index: int, call: ToolCall) -> dict:
        arguments = json.loads(call.arguments or "{}")  # Ollama sends an object, not a string
        return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}}

    def _final(self, plan: _Plan, message: dict) -> dict:
        prompt_ns, eval_ns = plan.input_tokens * 1_000_000, plan.output_tokens * 20_000_000
        return {
            "model": plan.model, "created_at": CREATED_AT, "message": message,
            "done_reason": self.done_reason[plan.stop], "done": True,
            "total_duration": 5_000_000 + prompt_ns + eval_ns, "load_duration": 5_000_000,
            "prompt_eval_count": plan.input_tokens, "prompt_eval_duration": prompt_ns,
            "eval_count": plan.output_tokens, "eval_duration": eval_ns,
        }

    def _json(self, obj: Any) -> bytes:
        # Go's encoding/json escapes these; a relay must cope with both spellings.
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                              ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            text = text.replace(char, escaped)
        return text.encode()

    def error_body(self, status: int, message: str, type: str | None, seq: int) -> bytes:
        return self._json({"error": message})

    def error_frame(self, message: str, seq: int) -> bytes:
        return self._json({"error": message}) + b"\n"


# --------------------------------------------------------------------------
# Text completions: OpenAI /completions and Ollama /api/generate


class _OpenAIText(_OpenAI):
    def _object(self, plan: _Plan, choices: list, usage: dict | None = None) -> dict:
        obj: dict[str, Any] = {"id": f"cmpl-fake{plan.seq}", "object": "text_completion", "created": CREATED,
                               "model": plan.model, "system_fingerprint": "fp_fake", "choices": choices}
        if usage is not None:
            obj["usage"] = usage
        return obj

    def body(self, plan: _Plan) -> bytes:
        choice = {"text": plan.text, "index": 0, "logprobs": None, "finish_reason": self.finish[plan.stop]}
        return json.dumps(self._object(plan, [choice], self.usage(plan)), indent=2).encode()

    def frames(self, plan: _Plan) -> Iterator[bytes]:
        def chunk(text: str, finish: str | None = None) -> bytes:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            return b"data: " + _compact(self._object(plan, [choice])) + b"\n\n"

        for piece in plan.pieces:
            yield chunk(piece)
        yield chunk("", self.finish[plan.stop])
        if plan.include_usage:
            yield b"data: " + _compact(self._object(plan, [], self.usage(plan))) + b"\n\n"
        yield b"data: [DONE]\n\n"


class _OllamaGenerate(_Ollama):
    def body(self, plan: _Plan) -> bytes:
        return self._json(self._final(plan, plan.text))

    def frames(self, plan: _Plan) -> Iterator[bytes]:
        for piece in plan.pieces:
            line = {"model": plan.model, "created_at": CREATED_AT, "response": piece, "done": False}
            yield self._json(line) + b"\n"
        yield self._json(self._final(plan, "")) + b"\n"

    def _final(self, plan: _Plan, text: str) -> dict:  # type: ignore[override]
        final = super()._final(plan, {})
        del final["message"]
        return {"model": plan.model, "created_at": CREATED_AT, "response": text, **final, "context": [1, 2, 3]}


# --------------------------------------------------------------------------
# Embeddings


def vector_for(text: str, dimensions: int = 8) -> list[float]:
    """The fake's embedding of `text`: deterministic, exact as float32."""
    digest = hashlib.sha256(text.encode()).digest() * (dimensions // 32 + 1)
    return [(b - 128) / 128 for b in digest[:dimensions]]


def _embeddings(request: RecordedRequest, encoding: str | None, usage: int | None) -> Reply:
    body = _json_object(request.body)
    inputs = body.get("input", body.get("prompt"))
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    dims = body.get("dimensions")
    dims = min(dims, 4096) if isinstance(dims, int) and dims > 0 else 8  # a fake's bound on huge asks
    vectors = [vector_for(t, dims) for t in texts]
    tokens = usage if usage is not None else sum(len(t.split()) for t in texts)
    model = str(body.get("model", "fake-embed"))
    if request.format == "ollama":
        return Reply.json({"model": model, "embeddings": vectors, "total_duration": 14_000_000,
                           "load_duration": 1_000_000, "prompt_eval_count": tokens})
    encoding = encoding or body.get("encoding_format") or "float"
    data = [{"object": "embedding", "index": i,
             "embedding": v if encoding == "float" else base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()}
            for i, v in enumerate(vectors)]
    return Reply.json({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


OPENAI, ANTHROPIC, OLLAMA = _OpenAI(), _Anthropic(), _Ollama()
OPENAI_TEXT, OLLAMA_GENERATE = _OpenAIText(), _OllamaGenerate()
WIRES: dict[str, Any] = {"openai": OPENAI, "anthropic": ANTHROPIC, "ollama": OLLAMA}


# --------------------------------------------------------------------------
# Default answers


def default_reply(request: RecordedRequest, models: Sequence[str]) -> Reply:
    if request.method == "GET":
        if request.route == "/api/tags":
            return Reply.json({"models": [_ollama_model(name) for name in models]})
        if request.route.endswith("/models"):
            if "anthropic-version" in request.headers:
                return Reply.json(_anthropic_models(models))
            return Reply.json({"object": "list", "data": [
                {"id": name, "object": "model", "created": CREATED, "owned_by": "fake"}
                for name in models]})
    if request.method == "POST" and request.route == "/api/show":
        name = _json_object(request.body).get("model")
        if name in models:
            return Reply.json(_ollama_show(name))
        return Reply.json({"error": f"model '{name}' not found"}, status=404)
    if request.method == "POST" and request.route.endswith("/embeddings") and request.format == "openai":
        return Reply.embeddings()
    if request.method == "POST" and request.route == "/api/embed":
        return Reply.embeddings()
    if request.method == "POST" and _text_wire(request) is not None:
        return Reply.text()
    return Reply.error(404, f"no route for {request.method} {request.path}")


def _ollama_model(name: str) -> dict:
    return {
        "name": name, "model": name, "modified_at": "2025-01-01T00:00:00Z", "size": 1_000_000,
        "digest": f"{abs(hash(name)):064x}"[-64:],
        "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                    "parameter_size": "1B", "quantization_level": "Q4_K_M"},
    }


def _ollama_show(name: str) -> dict:
    """POST /api/show, as Ollama answers for a small tool-calling model."""
    return {
        "license": "", "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {name}\n",
        "parameters": 'stop                           "<|eot_id|>"',
        "template": "{{ .Prompt }}", "details": _ollama_model(name)["details"],
        "model_info": {"general.architecture": "llama", "general.parameter_count": 1_000_000_000,
                       "llama.context_length": 131072},
        "capabilities": ["completion", "tools"], "modified_at": "2025-01-01T00:00:00Z",
    }


def _anthropic_models(models: Sequence[str]) -> dict:
    data = [{"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
            for name in models]
    return {"data": data, "has_more": False,
            "first_id": models[0] if models else None, "last_id": models[-1] if models else None}


# --------------------------------------------------------------------------
# The server


class FakeUpstream:
    """A scripted HTTP/1.1 upstream on 127.0.0.1; see the module docstring."""

    def __init__(self, *, models: Sequence[str] = ("llama3.2:latest", "qwen2.5:0.5b"),
                 port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.models = list(models)
        self.port = port
        self.tls = tls  # a server context: serve https (tests/tlscerts.py makes one)
        self.script: Callable[[RecordedRequest], Reply | None] | None = None
        self.requests: list[RecordedRequest] = []
        self.connections: list[ConnectionInfo] = []
        self.errors: list[str] = []  # tracebacks of failures inside the fake or a script
        self._queue: deque[Reply | Callable[[RecordedRequest], Reply]] = deque()
        self._cond = threading.Condition()
        self._changed: anyio.Event | None = None
        self._loop: BackgroundLoop | None = None

    # -- scripting and inspection -----------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def enqueue(self, *replies: Reply | Callable[[RecordedRequest], Reply]) -> None:
        """Answer the next requests with these, in order, before `script`."""
        self._queue.extend(replies)

    @property
    def connections_opened(self) -> int:
        return len(self.connections)

    @property
    def connections_open(self) -> int:
        return sum(not c.closed for c in self.connections)

    @property
    def peer_closed(self) -> int:
        return sum(c.closed_by_peer for c in self.connections)

    def wait_until(self, predicate: Callable[[FakeUpstream], bool], timeout: float = 5.0) -> None:
        """Block this (non-loop) thread until `predicate(fake)` holds."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"condition not met within {timeout}s")

    async def wait_until_async(self, predicate: Callable[[FakeUpstream], bool],
                               timeout: float = 5.0) -> None:
        """The same, from a task in the loop the fake serves in."""
        with anyio.fail_after(timeout):
            while not predicate(self):
                assert self._changed is not None, "the fake is not serving"
                await self._changed.wait()

    def wait_peer_closed(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until `count` connections in total were closed by the peer."""
        self.wait_until(lambda f: f.peer_closed >= count, timeout)

    async def wait_peer_closed_async(self, count: int = 1, timeout: float = 5.0) -> None:
        await self.wait_until_async(lambda f: f.peer_closed >= count, timeout)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
        if self._changed is not None:
            event, self._changed = self._changed, anyio.Event()
            event.set()

    # -- running -----------------------------------------------------------

    def __enter__(self) -> FakeUpstream:
        self._loop = BackgroundLoop().__enter__()
        try:
            self._loop.start(self.serve)
        except BaseException:
            self._loop.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        assert self._loop is not None
        self._loop.__exit__(*exc_info)

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        self._changed = anyio.Event()
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        async with listener:
            self.port = listener.extra(SocketAttribute.local_port)
            task_status.started(self.port)
            if self.tls is not None:
                await TLSListener(listener, self.tls, standard_compatible=False).serve(self._connection)
            else:
                await listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        info = ConnectionInfo(id=len(self.connections))
        self.connections.append(info)
        self._notify()
        conn = h11.Connection(h11.SERVER)
        ending = "abort"
        try:
            while True:
                ending = "abort"  # unless a reply completes
                request = await self._receive(stream, conn, info)
                if request is None:
                    break
                ending = await self._respond(stream, conn, request, info)
                if ending != "keep":
                    break
                conn.start_next_cycle()
        except Exception:
            self.errors.append(traceback.format_exc())
        finally:
            with anyio.CancelScope(shield=True):
                if ending == "drain":
                    await _drain(stream)
                await stream.aclose()
            info.closed = True
            self._notify()

    async def _receive(self, stream: SocketStream, conn: h11.Connection,
                       info: ConnectionInfo) -> RecordedRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                await _send_quietly(stream, b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"
                                            b"connection: close\r\n\r\n")
                await _drain(stream)
                return None
            if event is h11.NEED_DATA:
                data = await _receive_or_eof(stream)
                if not data:
                    info.mark_peer_closed()
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return self._record(head, bytes(body), info)
            else:  # ConnectionClosed (or PAUSED, which cannot happen here)
                return None

    def _record(self, head: h11.Request, body: bytes, info: ConnectionInfo) -> RecordedRequest:
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        request = RecordedRequest(
            head.method.decode(), head.target.decode("latin-1"), headers, body,
            connection_id=info.id, index=len(self.requests), received_at=time.monotonic())
        info.requests += 1
        self.requests.append(request)
        self._notify()
        return request

    def _choose(self, request: RecordedRequest) -> Reply:
        try:
            item: Any = self._queue.popleft() if self._queue else None
            if item is None and self.script is not None:
                item = self.script(request)
            if item is None:
                item = default_reply(request, self.models)
            if not isinstance(item, Reply):
                item = item(request)
            return item.render(request)
        except Exception:
            self.errors.append(traceback.format_exc())
            return _fixed(500, [("content-type", "text/plain")], self.errors[-1].encode())

    async def _respond(self, stream: SocketStream, conn: h11.Connection,
                       request: RecordedRequest, info: ConnectionInfo) -> str:
        """Play the scripted reply. Returns how the connection goes on: "keep"
        (reuse it), "drain" (half-close, let the peer read) or "abort"."""
        reply = self._choose(request)
        outcome = "abort"
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch_peer, stream, conn, info, group.cancel_scope)
            try:
                outcome = await _send_reply(stream, conn, reply)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                info.mark_peer_closed()
            group.cancel_scope.cancel()
        if info.closed_by_peer or outcome == "reset":
            return "abort"
        if outcome == "done" and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            return "keep"
        return "drain"

    async def _watch_peer(self, stream: SocketStream, conn: h11.Connection,
                          info: ConnectionInfo, scope: anyio.CancelScope) -> None:
        """While answering, notice at once when the peer goes away (as a real
        upstream would on its next write) and stop the reply."""
        while True:
            data = await _receive_or_eof(stream)
            if not data:
                info.mark_peer_closed()
                scope.cancel()
                return
            conn.receive_data(data)  # a pipelined request, kept for the next cycle


async def _send_reply(stream: SocketStream, conn: h11.Connection, reply: Reply) -> str:
    """Play a reply's actions; returns "done", "raw" (unframed bytes sent),
    "fin" or "reset" (the reply dropped the connection)."""
    if reply.head_delay:
        await anyio.sleep(reply.head_delay)
    raw = reply.status is None
    if not raw:
        await stream.send(conn.send(h11.Response(status_code=reply.status, headers=reply.headers)))
    for action in reply.actions:
        if isinstance(action, (bytes, bytearray)):
            if action:  # one write per piece, so chunk boundaries are observable
                await stream.send(bytes(action) if raw else conn.send(h11.Data(data=bytes(action))))
        elif isinstance(action, Delay):
            await anyio.sleep(action.seconds)
        elif isinstance(action, Hang):
            await anyio.sleep_forever()
        elif isinstance(action, Close):
            if action.reset:  # SO_LINGER 0 turns the close into a TCP RST
                sock = stream.extra(SocketAttribute.raw_socket)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return "reset"
            return "fin"
        else:
            raise TypeError(f"unknown reply action {action!r}")
    if raw:
        return "raw"
    await stream.send(conn.send(h11.EndOfMessage()))
    return "done"


async def _receive_or_eof(stream: SocketStream) -> bytes:
    try:
        return await stream.receive(65536)
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return b""


async def _send_quietly(stream: SocketStream, data: bytes) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


async def _drain(stream: SocketStream) -> None:
    """Half-close, then give the peer a moment to read what we sent and close
    its side, so dropping the socket cannot discard unsent bytes."""
    try:
        await stream.send_eof()
        with anyio.move_on_after(1.0):
            while await _receive_or_eof(stream):
                pass
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
