"""The translation matrix end to end: every client format, through the real
router, to every upstream format, streaming and not.

    {OpenAI chat, Anthropic messages, Responses} clients (the official SDKs)
  × {openai, anthropic, ollama} upstreams (FakeUpstream, one each)
  × {stream, non-stream}

Each scenario is one test function over that grid. A scenario states its
conversation once in a neutral form; the client adapters below write it in
their SDK's own shape and read the SDK's typed reply back, and the test checks
what the upstream received in *its* format. Streams are read with the SDKs'
own accumulators (the chat-completions stream helper, Anthropic's
`messages.stream(...).get_final_message()`) or, for Responses, reassembled
from the deltas and cross-checked with `response.completed`.

One router and three fakes serve the whole module; routing is by model prefix
(`oa/…`, `an/…`, `ol/…`, prefix stripped). Stream specifics (mid-stream
failures, chunk framing, keep-alives), the beta endpoint and /v1/models are
in tests/test_matrix_streams.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
import pytest

from fakes import FakeUpstream, Reply
from harness import MODEL, PNG, SENT, UPSTREAMS, three_upstreams

CLIENTS = ("chat", "messages", "responses")
USAGE = (11, 7)  # what every scripted reply reports: (input, output) tokens

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_SCHEMA = {
    "type": "object",
    "properties": {"tz": {"type": "string"}},
    "required": ["tz"],
    "additionalProperties": False,
}
TOOLS = [
    ("get_weather", "Current weather for a city", WEATHER_SCHEMA),
    ("get_time", "Local time in a timezone", TIME_SCHEMA),
]
CALLS = [("get_weather", '{"city": "Paris", "unit": "c"}'), ("get_time", '{"tz": "Europe/Paris"}')]

# A rule that rewrites the model (test_matrix_streams lists its target in /v1/models).
ALIAS_ROUTER = """
[[routers]]
type = "prefix"
model_prefix = "alias-"
provider = "oa"
rewrite_model = "gpt-rewritten"
"""


# --------------------------------------------------------------------------
# The shared router and fakes


@dataclass
class World:
    router: Any
    fakes: dict[str, FakeUpstream]
    clients: dict[str, Any] = field(default_factory=dict)

    def fake(self, upstream: str) -> FakeUpstream:
        return self.fakes[upstream]

    def sent(self, upstream: str) -> dict:
        """The body of the last request the upstream received."""
        request = self.fakes[upstream].requests[-1]
        return request.json


def requests_so_far(world: World) -> int:
    """How many chat requests the router has started (sequential tests: all earlier ones)."""
    return sum(e["type"] == "start" for e in world.router.events)


def next_record(world: World, before: int, timeout: float = 5.0) -> dict:
    """The `complete` record of the first request started after `requests_so_far`
    was `before`, matched by id: a record published late by an earlier test's
    request cannot be mistaken for it."""
    deadline = time.monotonic() + timeout
    while True:
        starts = [e for e in world.router.events if e["type"] == "start"]
        if len(starts) > before:
            wanted = starts[before]["id"]
            for event in world.router.events:
                if event["type"] == "complete" and event["id"] == wanted:
                    return event
        assert time.monotonic() < deadline, f"no complete record for request #{before}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def world():
    with three_upstreams(ALIAS_ROUTER) as (router, fakes):
        w = World(router, fakes)
        w.clients = {
            "chat": ChatClient(router.url),
            "messages": MessagesClient(router.url),
            "responses": ResponsesClient(router.url),
        }
        yield w


@pytest.fixture(autouse=True)
def _fresh_queues(world):
    # A failed test may leave scripted replies behind; they must not answer the next test.
    for fake in world.fakes.values():
        fake._queue.clear()
    yield
    for fake in world.fakes.values():
        assert not fake.errors, fake.errors[-1]


def grid(*, stream: tuple[bool, ...] = (False, True), clients: tuple[str, ...] = CLIENTS):
    """client × upstream × stream, with ids like `chat-anthropic-stream`."""
    return pytest.mark.parametrize(
        "client, upstream, stream",
        [
            pytest.param(c, u, s, id=f"{c}-{u}-{'stream' if s else 'json'}")
            for c in clients
            for u in UPSTREAMS
            for s in stream
        ],
    )


# --------------------------------------------------------------------------
# Matching what an upstream received


class JSONText:
    """Matches a string holding this JSON value (tool-call arguments)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and json.loads(other) == self.value

    def __repr__(self) -> str:
        return f"JSONText({self.value!r})"


def assert_shape(actual: Any, expected: Any, where: str = "body") -> None:
    """`expected`'s keys must be in `actual` with equal values (recursively);
    lists match element by element; extra keys in `actual` are allowed, since
    passthrough keeps fields the client sent (such as `strict`)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}: missing {key!r} in {actual!r}"
            assert_shape(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_shape(a, e, f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: {actual!r} != {expected!r}"


# --------------------------------------------------------------------------
# Client adapters: the neutral conversation in, a normalized reply out
#
# A conversation is a list of turns:
#   ("user", text)  ("user_image", text, base64_png)  ("assistant", text)
#   ("calls", [(id, name, arguments_json), ...][, text said before the calls])
#   ("results", [(id, text or [text, ...]), ...])   a list is sent as text parts / blocks


@dataclass
class Result:
    text: str
    calls: list[tuple[str, str, Any]]  # (id, name, parsed arguments)
    stop: str  # canonical: end_turn | max_tokens | tool_use | stop_sequence
    usage: tuple[int, int]  # (input, output) as the client reports them
    stop_sequence: str | None = None  # Anthropic clients only


def parts(content: str | list[str], kind: str) -> str | list[dict]:
    return content if isinstance(content, str) else [{"type": kind, "text": t} for t in content]


PASSTHROUGH = {("chat", "openai"), ("messages", "anthropic")}  # same format: the client's body is forwarded


class ChatClient:
    FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

    def __init__(self, url: str) -> None:
        self.sdk = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)

    @staticmethod
    def messages(convo: list, system: str | None) -> list[dict]:
        out: list[dict] = [{"role": "system", "content": system}] if system else []
        for turn in convo:
            kind = turn[0]
            if kind == "user":
                out.append({"role": "user", "content": turn[1]})
            elif kind == "user_image":
                out.append({"role": "user", "content": [
                    {"type": "text", "text": turn[1]},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{turn[2]}"}},
                ]})
            elif kind == "assistant":
                out.append({"role": "assistant", "content": turn[1]})
            elif kind == "calls":
                out.append({"role": "assistant", "content": turn[2] if len(turn) > 2 else None, "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in turn[1]
                ]})
            elif kind == "results":
                out.extend({"role": "tool", "tool_call_id": i, "content": parts(t, "text")} for i, t in turn[1])
        return out

    def ask(self, model: str, convo: list, *, stream: bool, system: str | None = None,
            tools: list | None = None, max_tokens: int | None = None, tool_choice: str | None = None,
            stop: list[str] | None = None) -> Result:
        kwargs: dict[str, Any] = {"model": model, "messages": self.messages(convo, system)}
        if tools:
            # strict: the stream helper accumulates (and parses) only strict tools
            kwargs["tools"] = [
                {"type": "function", "function": {"name": n, "description": d, "parameters": p, "strict": True}}
                for n, d, p in tools
            ]
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        if tool_choice:
            kwargs["tool_choice"] = tool_choice
        if stop:
            kwargs["stop"] = stop
        if stream:
            with self.sdk.chat.completions.stream(**kwargs, stream_options={"include_usage": True}) as s:
                try:
                    final = s.get_final_completion()
                except openai.LengthFinishReasonError as exc:  # the helper refuses to parse a cut reply
                    final = exc.completion
        else:
            final = self.sdk.chat.completions.create(**kwargs)
        choice = final.choices[0]
        calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []]
        assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
        return Result(choice.message.content or "", calls, self.FINISH[choice.finish_reason],
                      (final.usage.prompt_tokens, final.usage.completion_tokens))


class MessagesClient:
    def __init__(self, url: str) -> None:
        self.sdk = anthropic.Anthropic(base_url=url, api_key="client-key", max_retries=0)

    @staticmethod
    def messages(convo: list) -> list[dict]:
        out: list[dict] = []
        for turn in convo:
            kind = turn[0]
            if kind == "user" and out and out[-1]["role"] == "user":  # after tool results: one user turn
                out[-1]["content"].append({"type": "text", "text": turn[1]})
            elif kind == "user":
                out.append({"role": "user", "content": turn[1]})
            elif kind == "user_image":
                out.append({"role": "user", "content": [
                    {"type": "text", "text": turn[1]},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": turn[2]}},
                ]})
            elif kind == "assistant":
                out.append({"role": "assistant", "content": turn[1]})
            elif kind == "calls":
                said = [{"type": "text", "text": turn[2]}] if len(turn) > 2 else []
                out.append({"role": "assistant", "content": said + [
                    {"type": "tool_use", "id": i, "name": n, "input": json.loads(a)} for i, n, a in turn[1]
                ]})
            elif kind == "results":
                out.append({"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": i, "content": parts(t, "text")} for i, t in turn[1]
                ]})
        return out

    def ask(self, model: str, convo: list, *, stream: bool, system: str | None = None,
            tools: list | None = None, max_tokens: int | None = None, tool_choice: str | None = None,
            stop: list[str] | None = None) -> Result:
        kwargs: dict[str, Any] = {"model": model, "messages": self.messages(convo), "max_tokens": max_tokens or 256}
        if system:  # a block array with cache_control, as Claude Code sends it
            kwargs["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        if tools:
            kwargs["tools"] = [{"name": n, "description": d, "input_schema": p} for n, d, p in tools]
        if tool_choice:
            kwargs["tool_choice"] = {"type": {"required": "any"}.get(tool_choice, tool_choice)}
        if stop:
            kwargs["stop_sequences"] = stop
        if stream:
            with self.sdk.messages.stream(**kwargs) as s:
                events = list(s)
                final = s.get_final_message()
            check_anthropic_events([e.type for e in events], [getattr(e, "index", None) for e in events])
        else:
            final = self.sdk.messages.create(**kwargs)
        text = "".join(b.text for b in final.content if b.type == "text")
        calls = [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"]
        return Result(text, calls, final.stop_reason, (final.usage.input_tokens, final.usage.output_tokens),
                      final.stop_sequence)


ANTHROPIC_WIRE_EVENTS = {
    "message_start", "content_block_start", "content_block_delta", "content_block_stop",
    "message_delta", "message_stop",
}


def check_anthropic_events(types: list[str], indexes: list[int | None]) -> None:
    """message_start first; content blocks numbered 0, 1, … with exactly one
    open at a time and every delta aimed at the open one; message_delta after
    the last block closed; message_stop last."""
    wire = [(t, i) for t, i in zip(types, indexes) if t in ANTHROPIC_WIRE_EVENTS]
    assert wire and wire[0][0] == "message_start", wire
    assert wire[-1][0] == "message_stop", wire
    assert [t for t, _ in wire].count("message_stop") == 1
    open_block, next_index, saw_delta = None, 0, False
    for kind, index in wire[1:-1]:
        assert not saw_delta, f"{kind} after message_delta: {wire}"
        if kind == "content_block_start":
            assert open_block is None, f"block {index} opened while {open_block} is open: {wire}"
            assert index == next_index, wire
            open_block, next_index = index, next_index + 1
        elif kind == "content_block_delta":
            assert index == open_block, f"delta for {index} while {open_block} is open: {wire}"
        elif kind == "content_block_stop":
            assert index == open_block, wire
            open_block = None
        elif kind == "message_delta":
            assert open_block is None, f"message_delta with block {open_block} open: {wire}"
            saw_delta = True
        else:
            raise AssertionError(f"unexpected {kind}: {wire}")
    assert saw_delta, wire


class ResponsesClient:
    def __init__(self, url: str) -> None:
        self.sdk = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)

    @staticmethod
    def items(convo: list) -> list[dict]:
        out: list[dict] = []
        for turn in convo:
            kind = turn[0]
            if kind == "user":
                out.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": turn[1]}]})
            elif kind == "user_image":
                out.append({"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": turn[1]},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{turn[2]}", "detail": "auto"},
                ]})
            elif kind == "assistant":
                out.append({"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": turn[1], "annotations": []}]})
            elif kind == "calls":
                if len(turn) > 2:
                    out.extend(ResponsesClient.items([("assistant", turn[2])]))
                out.extend({"type": "function_call", "call_id": i, "name": n, "arguments": a} for i, n, a in turn[1])
            elif kind == "results":
                out.extend({"type": "function_call_output", "call_id": i, "output": parts(t, "input_text")}
                           for i, t in turn[1])
        return out

    def ask(self, model: str, convo: list, *, stream: bool, system: str | None = None,
            tools: list | None = None, max_tokens: int | None = None, tool_choice: str | None = None,
            stop: list[str] | None = None) -> Result:
        kwargs: dict[str, Any] = {"model": model, "input": self.items(convo)}
        if system:
            kwargs["instructions"] = system
        if tools:
            kwargs["tools"] = [
                {"type": "function", "name": n, "description": d, "parameters": p, "strict": True} for n, d, p in tools
            ]
        if max_tokens:
            kwargs["max_output_tokens"] = max_tokens
        if tool_choice:
            kwargs["tool_choice"] = tool_choice
        assert not stop, "the Responses API has no stop sequences"
        if not stream:
            return self.result(self.sdk.responses.create(**kwargs))
        events = list(self.sdk.responses.create(stream=True, **kwargs))
        return self.reassemble(events)

    @staticmethod
    def result(final: Any) -> Result:
        calls = [(i.call_id, i.name, json.loads(i.arguments)) for i in final.output if i.type == "function_call"]
        if final.status == "incomplete":
            assert final.incomplete_details.reason == "max_output_tokens"
            stop = "max_tokens"
        else:
            assert final.status == "completed", final.status
            stop = "tool_use" if calls else "end_turn"
        usage = final.usage
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
        return Result(final.output_text, calls, stop, (usage.input_tokens, usage.output_tokens))

    @staticmethod
    def reassemble(events: list) -> Result:
        """The reply as the deltas carried it, checked against response.completed."""
        types = [e.type for e in events]
        assert types[:2] == ["response.created", "response.in_progress"], types
        assert types[-1] == "response.completed" and types.count("response.completed") == 1, types
        assert [e.sequence_number for e in events] == list(range(len(events)))
        text, args, added, done = [], {}, {}, {}
        for e in events:
            if e.type == "response.output_text.delta":
                text.append(e.delta)
            elif e.type == "response.output_item.added":
                added[e.item.id] = e.item
                if e.item.type == "function_call":
                    args[e.item.id] = ""
            elif e.type == "response.function_call_arguments.delta":
                args[e.item_id] += e.delta
            elif e.type == "response.output_item.done":
                done[e.item.id] = e.item
        final = events[-1].response
        result = ResponsesClient.result(final)
        assert "".join(text) == result.text
        assert set(added) == set(done) == {item.id for item in final.output}
        streamed = [(added[i].call_id, added[i].name, json.loads(a)) for i, a in args.items()]
        assert streamed == result.calls
        for item in final.output:  # the call id never changes between added, done and completed
            if item.type == "function_call":
                assert added[item.id].call_id == done[item.id].call_id == item.call_id
        return result


def ask(world: World, client: str, upstream: str, convo: list, **kwargs: Any) -> Result:
    return world.clients[client].ask(MODEL[upstream], convo, **kwargs)


# --------------------------------------------------------------------------
# Scenarios over the whole grid


TRICKY = 'héllo <router> & "friends" ✓ 日本語 😀\n\\ end'


@grid()
def test_plain_text(world, client, upstream, stream):
    before = requests_so_far(world)
    world.fake(upstream).enqueue(Reply.text(chunks=3, usage=USAGE))
    result = ask(world, client, upstream, [("user", TRICKY)], stream=stream)
    assert result.text == f"echo: {TRICKY}"
    assert result.stop == "end_turn"
    assert result.calls == []
    assert result.usage == USAGE  # exactly what the fake reported
    request = world.fake(upstream).requests[-1]
    body = request.json
    assert body["model"] == SENT[upstream]
    assert request.stream is stream
    assert "client-key" not in json.dumps(request.headers)  # the client's own key stays with the router
    record = next_record(world, before)
    assert record["status"] == 200 and record["response"]["content"] == f"echo: {TRICKY}"
    assert_shape(record["usage"], {"input_tokens": USAGE[0], "output_tokens": USAGE[1]})


HISTORY = [("user", "hi"), ("assistant", "hello there"), ("user", "what is two plus two")]
SYSTEM = "You are terse."


@grid()
def test_system_prompt_and_history(world, client, upstream, stream):
    world.fake(upstream).enqueue(Reply.text(usage=USAGE))
    result = ask(world, client, upstream, HISTORY, stream=stream, system=SYSTEM)
    assert result.text == "echo: what is two plus two"
    body = world.sent(upstream)
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "what is two plus two"},
    ]
    if upstream == "anthropic":
        if client == "messages":  # forwarded as sent
            assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
            assert_shape(body["messages"], turns)
        else:  # translated: plain strings, alternating roles
            assert body["system"] == SYSTEM
            assert body["messages"] == turns
    else:
        assert_shape(body["messages"], [{"role": "system", "content": SYSTEM}, *turns])


@grid()
def test_max_tokens_stop(world, client, upstream, stream):
    world.fake(upstream).enqueue(Reply.text("it was the best of", stop="max_tokens", usage=USAGE))
    result = ask(world, client, upstream, [("user", "tell me a story")], stream=stream, max_tokens=5)
    assert result.stop == "max_tokens"
    assert result.text == "it was the best of"
    assert result.usage == USAGE
    body = world.sent(upstream)
    if upstream == "ollama":
        assert body["options"]["num_predict"] == 5
    elif upstream == "anthropic":
        assert body["max_tokens"] == 5
    else:
        assert body.get("max_tokens", body.get("max_completion_tokens")) == 5


@grid(clients=("chat", "messages"))  # the Responses API has no stop sequences
def test_stop_sequence(world, client, upstream, stream):
    world.fake(upstream).enqueue(Reply.text("one two", stop="stop_sequence", usage=USAGE))
    result = ask(world, client, upstream, [("user", "count")], stream=stream, stop=["three"])
    assert result.text == "one two"
    body = world.sent(upstream)
    if upstream == "ollama":
        assert body["options"]["stop"] == ["three"]
    elif upstream == "anthropic":
        assert body["stop_sequences"] == ["three"]
    else:
        assert body["stop"] == ["three"]
    if client == "messages" and upstream == "anthropic":
        assert (result.stop, result.stop_sequence) == ("stop_sequence", "three")
    else:  # OpenAI and Ollama do not say which stop sequence ended the reply
        assert result.stop == "end_turn"


def expected_tools(upstream: str) -> list[dict]:
    if upstream == "anthropic":
        return [{"name": n, "description": d, "input_schema": p} for n, d, p in TOOLS]
    return [{"type": "function", "function": {"name": n, "description": d, "parameters": p}} for n, d, p in TOOLS]


def scripted_ids(world: World, upstream: str) -> list[str]:
    """The ids the fake gave its tool calls (derived from the request's index)."""
    prefix = "toolu_" if upstream == "anthropic" else "call_"
    index = world.fake(upstream).requests[-1].index
    return [f"{prefix}{index}_{i}" for i in range(len(CALLS))]


@grid()
def test_parallel_tool_calls(world, client, upstream, stream):
    """Two calls after some text: arguments reassembled in order, ids preserved,
    the tool definitions arrive in the upstream's own shape."""
    world.fake(upstream).enqueue(Reply.tool_calls(CALLS, text="Checking both.", chunks=4, usage=USAGE))
    result = ask(world, client, upstream, [("user", "weather and time in Paris?")], stream=stream, tools=TOOLS,
                 tool_choice="required")
    assert result.stop == "tool_use"
    assert result.text == "Checking both."
    assert result.usage == USAGE
    ids = scripted_ids(world, upstream)
    assert result.calls == [(ids[0], "get_weather", {"city": "Paris", "unit": "c"}),
                            (ids[1], "get_time", {"tz": "Europe/Paris"})]
    body = world.sent(upstream)
    assert_shape(body["tools"], expected_tools(upstream))
    # "must call a tool", in each client's spelling, in the upstream's (Ollama has none)
    expected_choice = {"openai": "required", "anthropic": {"type": "any"}, "ollama": None}[upstream]
    assert body.get("tool_choice") == expected_choice


@grid()
def test_tools_only_reply(world, client, upstream, stream):
    """A reply that is nothing but a tool call (no text block before it)."""
    world.fake(upstream).enqueue(Reply.tool_calls([CALLS[0]], chunks=5, usage=USAGE))
    result = ask(world, client, upstream, [("user", "weather in Paris?")], stream=stream, tools=TOOLS)
    assert result.stop == "tool_use"
    assert result.text == ""
    assert result.calls == [(scripted_ids(world, upstream)[0], "get_weather", {"city": "Paris", "unit": "c"})]


CLIENT_IDS = {"chat": ("call_w1", "call_t2"), "messages": ("toolu_w1", "toolu_t2"), "responses": ("call_w1", "call_t2")}


@grid()
def test_tool_results_next_turn(world, client, upstream, stream):
    """The assistant's calls and the client's results reach the upstream in its format."""
    w, t = CLIENT_IDS[client]
    convo = [
        ("user", "weather and time in Paris?"),
        ("calls", [(w, CALLS[0][0], CALLS[0][1]), (t, CALLS[1][0], CALLS[1][1])]),
        ("results", [(w, "18C and sunny"), (t, ["14:05"])]),  # the second as content parts
    ]
    world.fake(upstream).enqueue(Reply.text("It is 18C at 14:05.", usage=USAGE))
    # translated to plain text, unless forwarded as the client sent it
    second = [{"type": "text", "text": "14:05"}] if (client, upstream) in PASSTHROUGH else "14:05"
    result = ask(world, client, upstream, convo, stream=stream, tools=TOOLS)
    assert result.text == "It is 18C at 14:05."
    assert result.stop == "end_turn"
    messages = world.sent(upstream)["messages"]
    weather, time_args = json.loads(CALLS[0][1]), json.loads(CALLS[1][1])
    if upstream == "openai":
        assert_shape(messages[-3:], [
            {"role": "assistant", "tool_calls": [
                {"id": w, "type": "function", "function": {"name": "get_weather", "arguments": JSONText(weather)}},
                {"id": t, "type": "function", "function": {"name": "get_time", "arguments": JSONText(time_args)}},
            ]},
            {"role": "tool", "tool_call_id": w, "content": "18C and sunny"},
            {"role": "tool", "tool_call_id": t, "content": second},
        ])
        assert not messages[-3].get("content")
    elif upstream == "anthropic":
        assert_shape(messages[-2:], [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": w, "name": "get_weather", "input": weather},
                {"type": "tool_use", "id": t, "name": "get_time", "input": time_args},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": w, "content": "18C and sunny"},
                {"type": "tool_result", "tool_use_id": t, "content": second},
            ]},
        ])
    else:  # Ollama names the tool instead of an id
        assert_shape(messages[-3:], [
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": weather}},
                {"function": {"name": "get_time", "arguments": time_args}},
            ]},
            {"role": "tool", "content": "18C and sunny", "tool_name": "get_weather"},
            {"role": "tool", "content": "14:05", "tool_name": "get_time"},
        ])
    assert_shape(messages[0], {"role": "user", "content": "weather and time in Paris?"})


@grid()
def test_tool_turn_with_text_around_it(world, client, upstream, stream):
    """Text before the calls in the assistant turn, and a question after the
    results in the user turn (as Claude Code sends them): order and roles kept."""
    w, t = CLIENT_IDS[client]
    convo = [
        ("user", "weather and time in Paris?"),
        ("calls", [(w, CALLS[0][0], CALLS[0][1]), (t, CALLS[1][0], CALLS[1][1])], "Let me check."),
        ("results", [(w, "18C and sunny"), (t, "14:05")]),
        ("user", "and in Tokyo?"),
    ]
    world.fake(upstream).enqueue(Reply.text(usage=USAGE))
    result = ask(world, client, upstream, convo, stream=stream, tools=TOOLS)
    assert result.text == "echo: and in Tokyo?"
    messages = world.sent(upstream)["messages"]
    if upstream == "anthropic":
        assert_shape(messages[1:], [
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": w, "name": "get_weather"},
                {"type": "tool_use", "id": t, "name": "get_time"},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": w, "content": "18C and sunny"},
                {"type": "tool_result", "tool_use_id": t, "content": "14:05"},
                {"type": "text", "text": "and in Tokyo?"},
            ]},
        ])
        return
    if upstream == "openai":
        assistant = {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": w}, {"id": t}]}
        results = [{"role": "tool", "tool_call_id": w, "content": "18C and sunny"},
                   {"role": "tool", "tool_call_id": t, "content": "14:05"}]
    else:
        assistant = {"role": "assistant", "content": "Let me check.",
                     "tool_calls": [{"function": {"name": "get_weather"}}, {"function": {"name": "get_time"}}]}
        results = [{"role": "tool", "content": "18C and sunny", "tool_name": "get_weather"},
                   {"role": "tool", "content": "14:05", "tool_name": "get_time"}]
    assert_shape(messages[1:], [assistant, *results, {"role": "user", "content": "and in Tokyo?"}])


@grid()
def test_base64_image(world, client, upstream, stream):
    world.fake(upstream).enqueue(Reply.text("A single pixel.", usage=USAGE))
    result = ask(world, client, upstream, [("user_image", "What is in this image?", PNG)], stream=stream)
    assert result.text == "A single pixel."
    (message,) = world.sent(upstream)["messages"]
    if upstream == "openai":
        assert_shape(message, {"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]})
    elif upstream == "anthropic":
        assert_shape(message, {"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        ]})
    else:
        assert message == {"role": "user", "content": "What is in this image?", "images": [PNG]}


# --------------------------------------------------------------------------
# Tool-call ids an upstream does not send: synthesized once, used consistently


def ollama_calls_without_ids(stream: bool) -> Reply:
    """What older Ollama versions send: tool calls with no `id`."""
    calls = [{"function": {"name": n, "arguments": json.loads(a)}} for n, a in CALLS]
    final = {"model": "llama3.2:latest", "created_at": "2025-01-01T00:00:00Z", "done": True, "done_reason": "stop",
             "prompt_eval_count": USAGE[0], "eval_count": USAGE[1]}
    if not stream:
        return Reply.json({**final, "message": {"role": "assistant", "content": "", "tool_calls": calls}})
    lines = [
        {"model": "llama3.2:latest", "created_at": "2025-01-01T00:00:00Z", "done": False,
         "message": {"role": "assistant", "content": "", "tool_calls": [call]}}
        for call in calls
    ]
    lines.append({**final, "message": {"role": "assistant", "content": ""}})
    body = [json.dumps(line).encode() + b"\n" for line in lines]
    return Reply.raw(200, [("content-type", "application/x-ndjson")], body)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", CLIENTS)
def test_synthesized_call_ids_are_used_consistently(world, client, stream):
    before = requests_so_far(world)
    world.fake("ollama").enqueue(ollama_calls_without_ids(stream))
    result = ask(world, client, "ollama", [("user", "weather and time in Paris?")], stream=stream, tools=TOOLS)
    ids = [call[0] for call in result.calls]
    assert [call[1] for call in result.calls] == ["get_weather", "get_time"]
    assert all(ids) and len(set(ids)) == 2
    logged = next_record(world, before)["response"]["tool_calls"]
    assert [c["id"] for c in logged] == ids  # the log names the calls as the client saw them

    # The next turn answers them by those ids; Ollama gets each result under its tool's name.
    convo = [
        ("user", "weather and time in Paris?"),
        ("calls", [(i, n, json.dumps(a)) for i, n, a in result.calls]),
        ("results", [(ids[0], "18C"), (ids[1], "14:05")]),
    ]
    world.fake("ollama").enqueue(Reply.text("Done.", usage=USAGE))
    assert ask(world, client, "ollama", convo, stream=stream, tools=TOOLS).text == "Done."
    tool_messages = [m for m in world.sent("ollama")["messages"] if m["role"] == "tool"]
    assert tool_messages == [
        {"role": "tool", "content": "18C", "tool_name": "get_weather"},
        {"role": "tool", "content": "14:05", "tool_name": "get_time"},
    ]


# --------------------------------------------------------------------------
# Upstream errors before the reply started: the client's own error shape


@grid()
def test_upstream_error_in_client_shape(world, client, upstream, stream):
    world.fake(upstream).enqueue(Reply.error(429, "slow down, please", retry_after=3))
    expected = anthropic.RateLimitError if client == "messages" else openai.RateLimitError
    with pytest.raises(expected) as info:
        ask(world, client, upstream, [("user", "hi")], stream=stream)
    error = info.value
    assert "slow down, please" in error.message
    assert error.response.headers["retry-after"] == "3"
    if client == "messages":
        assert error.body["type"] == "error" and error.body["error"]["type"] == "rate_limit_error"
        assert "slow down, please" in error.body["error"]["message"]
    else:  # the SDK hands over the inner `error` object
        assert set(error.body) >= {"message", "type", "param", "code"}
        assert "slow down, please" in error.body["message"]
