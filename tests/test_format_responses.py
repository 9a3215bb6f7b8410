"""The Responses API client format: a real Codex request, replies and the event
stream, each checked against golden files and the official SDK's own models."""

from __future__ import annotations

import json

import httpx2 as httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

import golden
from golden import assert_golden, pretty, tagged
from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import openai as openai_fmt
from llmrouter.formats import responses as fmt

WIRE = golden.WIRE / "responses"
EVENT = TypeAdapter(ResponseStreamEvent)


def codex_body() -> dict:
    return json.loads((WIRE / "codex_request.client.json").read_text())


def fixed(req: c.Request) -> c.Request:
    """The time and id seed the pipeline would give the request, fixed for goldens."""
    req.now, req.id_seed = 1754312345, "5eed"
    return req


def simple(**extra: object) -> c.Request:
    return fmt.parse_request({"model": "gpt-5-codex", "input": "hi", **extra})


# --- requests ------------------------------------------------------------------------

def test_codex_request_golden() -> None:
    req = fmt.parse_request(codex_body())
    assert_golden(pretty(tagged(req, omit=("raw",))), WIRE / "codex_request.canonical.json")
    assert req.system.startswith("You are Codex") and req.system.endswith("Approvals: on-request.</permissions instructions>")
    assert [m.role for m in req.messages] == ["user", "user", "assistant", "user"]
    assert req.messages[1].content[1] == c.Image("image/png", req.messages[1].content[1].data)
    assistant = req.messages[2].content  # the reasoning item is gone; text and both calls are one turn
    assert [type(p).__name__ for p in assistant] == ["Text", "ToolCall", "ToolCall"]
    assert [r.tool_call_id for r in req.messages[3].content] == ["call_kQ3sB2mYv1dJ8rN0", "call_Xw9pL4cT7aZ2eF5h"]
    assert req.messages[3].content[1].text == " M app.py"
    assert [t.name for t in req.tools] == ["shell", "update_plan"]  # web_search and custom dropped
    assert req.stream and req.tool_choice == "auto" and req.response_format is None
    assert req.client_format == "responses" and req.raw["store"] is False


def test_codex_request_to_an_openai_upstream_golden() -> None:
    """The Responses -> chat-completions pair, as an openai provider receives it."""
    req = fmt.parse_request(codex_body())
    provider = Provider(name="local", format="openai", base_url="http://127.0.0.1:8080/v1")
    body = json.loads(openai_fmt.build_request(req, "qwen2.5-coder", provider).body)
    assert_golden(pretty(body), WIRE / "codex_request.openai_upstream.json")
    assert [m["role"] for m in body["messages"]] == ["system", "user", "user", "assistant", "tool", "tool"]
    for dropped in ("reasoning", "include", "store", "prompt_cache_key", "instructions", "input", "text"):
        assert dropped not in body


def test_request_variants() -> None:
    req = fmt.parse_request({
        "model": "m",
        "input": [
            {"role": "user", "content": "plain"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_image", "file_id": "file-123"},
                {"type": "input_file", "file_data": "JVBER"},
                {"type": "input_text", "text": "what?"},
            ]},
            {"type": "function_call", "call_id": "c1", "name": "f"},
            {"type": "function_call_output", "call_id": "c1", "output": None},
            {"type": "item_reference", "id": "msg_1"},
        ],
        "max_output_tokens": 64,
        "temperature": 0.5,
        "top_p": 1,
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True},
                 "verbosity": "low"},
        "plugins": [{"id": "response-healing"}],
    })
    assert req.messages == [
        c.Message("user", [c.Text("plain")]),
        c.Message("user", [c.Text("what?")]),
        c.Message("assistant", [c.ToolCall("c1", "f", "{}")]),
        c.Message("user", [c.ToolResult("c1", [])]),
    ]
    assert (req.max_tokens, req.temperature, req.top_p, req.tool_choice) == (64, 0.5, 1, {"name": "f"})
    assert req.response_format == {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}
    assert req.plugins == [{"id": "response-healing"}] and req.system is None
    assert simple().messages == [c.Message("user", [c.Text("hi")])]
    assert simple(text={"format": {"type": "json_object"}}).response_format == {"type": "json_object"}
    assert simple(text={"format": {"type": "text"}}).response_format is None
    assert simple(tool_choice={"type": "web_search"}).tool_choice is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ("hi", None),
        ({"input": "hi"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [3]}, "input[0]"),
        ({"model": "m", "input": [{"type": "message", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}]},
         "input[0].content[0].image_url"),
        ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
        ({"model": "m", "input": [{"type": 7}]}, "input[0].type"),
        ({"model": "m", "input": "x", "instructions": ["a"]}, "instructions"),
        ({"model": "m", "input": "x", "tools": [{"name": "f"}]}, "tools[0].type"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "m", "input": "x", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"model": "m", "input": "x", "stream": 1}, "stream"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": []}}}, "text.format.schema"),
        ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ],
)
def test_bad_requests_name_the_field(body: object, param: str | None) -> None:
    with pytest.raises(errors.BadRequest) as info:
        fmt.parse_request(body)
    assert info.value.param == param
    if param:
        assert param in info.value.message


KEYS = st.sampled_from(["model", "input", "type", "role", "content", "text", "image_url", "call_id", "name",
                        "arguments", "output", "tools", "parameters", "tool_choice", "instructions", "format",
                        "schema", "max_output_tokens", "stream", "plugins", "id"])
SHAPED = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
        ["message", "user", "assistant", "developer", "input_text", "output_text", "input_image", "function_call",
         "function_call_output", "function", "json_schema", "auto", "data:image/png;base64,AA", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(SHAPED, st.fixed_dictionaries({"model": st.text(max_size=3), "input": SHAPED},
                                                 optional={"tools": SHAPED, "text": SHAPED, "tool_choice": SHAPED})))
def test_arbitrary_json_raises_only_bad_request(body: object) -> None:
    try:
        req = fmt.parse_request(body)
    except errors.BadRequest as exc:
        assert exc.message
        return
    openai_fmt.build_request(req, "m", Provider(name="p", format="openai", base_url="http://x"))


# --- replies -------------------------------------------------------------------------

def test_render_response_golden() -> None:
    req = fixed(fmt.parse_request(codex_body()))
    resp = c.Response(
        "chatcmpl-1", "qwen2.5-coder",
        [c.Text("The assertion expects 5."), c.ToolCall("call_1", "shell", '{"command":["pytest"]}'),
         c.ToolCall("", "update_plan", "")],
        "tool_use", c.Usage(30, 12, cache_read_tokens=100),
    )
    body = fmt.render_response(resp, req)
    Response.model_validate(body)
    assert_golden(pretty(body), WIRE / "reply_tools.client.json")
    assert [item["type"] for item in body["output"]] == ["message", "function_call", "function_call"]
    assert body["output"][2]["arguments"] == "{}" and body["output"][2]["call_id"].startswith("call_")
    assert body["status"] == "completed" and body["incomplete_details"] is None
    assert body["usage"]["input_tokens"] == 130 and body["usage"]["total_tokens"] == 142
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 100


def test_truncated_and_empty_replies() -> None:
    req = simple(max_output_tokens=5)
    body = fmt.render_response(c.Response("", "", [c.Text("Once upon")], "max_tokens", c.Usage(3, 5)), req)
    parsed = Response.model_validate(body)
    assert parsed.status == "incomplete" and parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output[0].status == "incomplete" and parsed.output_text == "Once upon"
    assert parsed.model == "gpt-5-codex" and parsed.max_output_tokens == 5
    empty = Response.model_validate(fmt.render_response(c.Response("", "m", []), req))
    assert empty.output_text == "" and empty.output[0].type == "message"
    text_after_call = fmt.render_response(
        c.Response("", "m", [c.ToolCall("a", "f", "{}"), c.Text("x"), c.Text("y")], "end_turn"), req)
    assert [(i["type"], i.get("content", [{}])[0].get("text")) for i in text_after_call["output"]] == [
        ("function_call", None), ("message", "xy")]


def test_error_body_is_openai_shaped() -> None:
    err = errors.NoRoute("no provider configured for model 'x'", param="model")
    assert fmt.error_body(err) == {"error": {"message": "no provider configured for model 'x'",
                                             "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}


# --- stream encoding ---------------------------------------------------------------------

def parse_stream(data: bytes) -> list[dict]:
    """Each SSE event checked: `event:` names the type, the SDK validates the JSON."""
    events = []
    for block in data.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        name, payload = block.split("\n")
        assert name.startswith("event: ") and payload.startswith("data: ")
        event = json.loads(payload[6:])
        assert event["type"] == name[7:]
        EVENT.validate_python(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def encode(events: list[c.StreamEvent], req: c.Request | None = None) -> bytes:
    encoder = fmt.Encoder(fixed(req or fmt.parse_request(codex_body())), "routed")
    return b"".join(encoder.encode(e) for e in events) + encoder.finish()


TEXT_EVENTS = [
    c.MessageStart("msg_01", "claude-sonnet-4", c.Usage(40, 1)),
    c.TextDelta("The test expects"),
    c.TextDelta(" `add(2, 2) == 5`."),
    c.Stop("end_turn"),
    c.UsageUpdate(c.Usage(40, 9)),
]
TOOL_EVENTS = [
    c.MessageStart("chatcmpl-1", "qwen2.5-coder"),
    c.TextDelta("Running both."),
    c.ToolCallStart(0, "call_A", "shell"),
    c.ToolCallDelta(0, '{"command":'),
    c.ToolCallStart(1, "call_B", "shell"),
    c.ToolCallDelta(1, '{"command":["ls"]}'),
    c.ToolCallDelta(0, '["pytest"]}'),
    c.Stop("tool_use"),
    c.UsageUpdate(c.Usage(50, 20)),
]


@pytest.mark.parametrize(("name", "events"), [("text_stream", TEXT_EVENTS), ("tool_stream", TOOL_EVENTS)])
def test_encoder_golden(name: str, events: list[c.StreamEvent]) -> None:
    out = encode(events)
    assert_golden(out.decode(), WIRE / f"{name}.client.sse")
    parsed = parse_stream(out)
    assert parsed[0]["type"] == "response.created" and parsed[1]["type"] == "response.in_progress"
    assert parsed[-1]["type"] == "response.completed" and parsed[-1]["response"]["status"] == "completed"
    assert parsed[0]["response"]["model"] == events[0].model


def test_text_stream_event_sequence() -> None:
    kinds = [e["type"] for e in parse_stream(encode(TEXT_EVENTS))]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]


def test_interleaved_parallel_calls_each_get_their_deltas() -> None:
    events = parse_stream(encode(TOOL_EVENTS))
    args: dict[str, str] = {}
    for event in events:
        if event["type"] == "response.function_call_arguments.delta":
            args[event["item_id"]] = args.get(event["item_id"], "") + event["delta"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"]
    assert [(d["call_id"], d["arguments"]) for d in done] == [("call_A", '{"command":["pytest"]}'), ("call_B", '{"command":["ls"]}')]
    assert [args[d["id"]] for d in done] == [d["arguments"] for d in done]
    completed = events[-1]["response"]
    assert [i["type"] for i in completed["output"]] == ["message", "function_call", "function_call"]
    assert completed["usage"]["output_tokens"] == 20


def sdk_client(body: bytes) -> openai.OpenAI:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body))
    return openai.OpenAI(api_key="x", base_url="http://router.test/v1", http_client=httpx.Client(transport=transport))


def test_sdk_stream_helper_reads_our_stream() -> None:
    with sdk_client(encode(TOOL_EVENTS)).responses.stream(model="m", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Running both."] and final.output_text == "Running both."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(call.call_id, json.loads(call.arguments)) for call in calls] == [
        ("call_A", {"command": ["pytest"]}), ("call_B", {"command": ["ls"]})]
    assert final.usage.total_tokens == 70


def test_openai_upstream_stream_to_responses_client() -> None:
    """The chat-completions -> Responses pair, from a golden upstream stream."""
    data = (golden.WIRE / "openai" / "tool_stream.upstream.sse").read_bytes()
    decoder = openai_fmt.Decoder(c.Request("m", []))
    events = [e for frame in decoder.feed(data) + decoder.close() for e in frame.events]
    with sdk_client(encode(events)).responses.stream(model="m", input="hi") as stream:
        final = stream.get_final_response()
    assert [json.loads(i.arguments)["location"] for i in final.output] == ["Paris, France", "Bogotá, Colombia"]
    assert final.usage.input_tokens == 82 and final.usage.input_tokens_details.cached_tokens == 64


def test_truncated_stream_completes_as_incomplete() -> None:
    events = parse_stream(encode([c.TextDelta("Once"), c.Stop("max_tokens")]))
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["status"] == "incomplete"
    final = events[-1]
    assert final["type"] == "response.completed"  # Codex needs it; the status tells the truth
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_failure_ends_with_response_failed() -> None:
    encoder = fmt.Encoder(simple(stream=True), "m")
    out = encoder.encode(c.TextDelta("partial"))
    out += encoder.encode(c.StreamError("rate limited upstream", 429, "rate_limit_error"))
    events = parse_stream(out)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": "rate_limit_exceeded", "message": "rate limited upstream",
                                               "type": "rate_limit_error"}
    assert encoder.encode(c.TextDelta("late")) == b"" and encoder.finish() == b""
    assert encoder.ping() == b": ping\n\n"
    failed = fmt.Encoder(simple(stream=True), "m").error(c.StreamError("boom"))
    assert [e["type"] for e in parse_stream(failed)] == ["response.created", "response.in_progress", "response.failed"]
    assert parse_stream(failed)[-1]["response"]["error"]["code"] == "server_error"


def test_empty_stream_still_completes() -> None:
    encoder = fmt.Encoder(simple(stream=True), "m")
    events = parse_stream(encoder.finish())
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    assert events[-1]["response"]["output"] == []
