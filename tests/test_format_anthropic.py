"""The Anthropic Messages format: parsing, rendering, SSE encoding, upstream
requests, replies and stream decoding, checked against golden fixtures in
tests/wire/anthropic/ and against the official anthropic SDK's own types.

Set LLMROUTER_UPDATE_GOLDENS=1 to rewrite the derived golden files.
"""

from __future__ import annotations

import copy
import json

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

import golden
from golden import assert_golden, tagged
from llmrouter import canonical as c
from llmrouter import errors, sse
from llmrouter.config import Provider
from llmrouter.formats import anthropic

WIRE = golden.WIRE / "anthropic"
STREAMS = ["text_stream", "tool_use_stream", "thinking_stream", "error_stream"]
STREAM_EVENT = TypeAdapter(RawMessageStreamEvent)


def events_jsonl(events) -> str:
    return "".join(json.dumps(tagged(e), ensure_ascii=False) + "\n" for e in events)


def provider(**kw) -> Provider:
    return Provider(name="claude", format="anthropic", base_url=kw.pop("base_url", "https://api.anthropic.com"), **kw)


def claude_code_body() -> dict:
    return json.loads((WIRE / "claude_code.request.json").read_text())


def upstream_req() -> c.Request:
    return c.Request("m", [])  # the request an upstream reply belongs to


def decode(data: bytes, chunks) -> tuple[list, bytes]:
    decoder = anthropic.Decoder(upstream_req())
    frames = [f for chunk in chunks for f in decoder.feed(chunk)]
    frames += decoder.close()
    return [e for f in frames for e in f.events], b"".join(f.raw for f in frames)


# --- parse_request ----------------------------------------------------------------


def test_claude_code_request_matches_golden():
    """A realistic Claude Code body parses into the canonical request on file."""
    req = anthropic.parse_request(claude_code_body())
    out = tagged(req)
    out.pop("raw")
    assert_golden(json.dumps(out, indent=1, ensure_ascii=False) + "\n", WIRE / "claude_code.canonical.json")


def test_claude_code_request_details():
    """System blocks and system-role messages join the system prompt; nothing is lost."""
    body = claude_code_body()
    req = anthropic.parse_request(body)
    assert req.raw is body and req.client_format == "anthropic" and req.stream is True
    assert req.system == (
        "You are Claude Code, Anthropic's official CLI for Claude.\n\n"
        "Use the tools available to you to assist the user.\n\nThe user switched to plan mode."
    )
    assert [m.role for m in req.messages] == ["user", "assistant", "user", "user"]
    assert req.max_tokens == 64000 and req.temperature == 1 and req.tool_choice == "auto"
    assert [t.name for t in req.tools] == ["Read", "Bash"]
    assert req.extras["anthropic_tools"] == [body["tools"][2]]
    assert req.extras["anthropic"] == {
        "metadata": body["metadata"],
        "thinking": {"type": "adaptive"},
        "context_management": body["context_management"],
        "output_config": {"effort": "high"},
    }
    first, assistant, results, last = req.messages
    assert first.content[2] == c.Image(media_type="image/png", data=body["messages"][0]["content"][2]["source"]["data"])
    assert first.content[3] == c.Image(url="https://example.com/diagram.png")
    assert assistant.content[0] == c.Opaque("anthropic", body["messages"][1]["content"][0])
    assert assistant.content[2] == c.ToolCall("toolu_01D7FLrfh4GYq7yT1ULFeyMV", "Read", '{"file_path":"/repo/setup.py"}')
    assert results.content[1] == c.ToolResult(
        "toolu_01Hk2pSnvoCZ1S4Zr2mrrt3q", [c.Text("ls: cannot access '/repo': No such file")], is_error=True
    )
    assert isinstance(last.content[0], c.Opaque) and last.content[0].data["type"] == "document"


@pytest.mark.parametrize(
    "choice, expected",
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"name": "Read"}),
    ],
)
def test_tool_choice_maps_to_canonical(choice, expected):
    body = {"model": "m", "max_tokens": 5, "messages": [], "tool_choice": choice}
    assert anthropic.parse_request(body).tool_choice == expected


def test_disable_parallel_tool_use_is_kept_in_extras():
    body = {"model": "m", "max_tokens": 5, "messages": [], "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
    assert anthropic.parse_request(body).extras["parallel_tool_calls"] is False


def test_structured_output_becomes_response_format():
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": schema}},
        "top_k": 5,
    }
    req = anthropic.parse_request(body)
    assert req.response_format == {"type": "json_schema", "name": "response", "schema": schema, "strict": True}
    assert req.extras["anthropic"] == {"output_config": {"effort": "low"}, "top_k": 5}


def test_tool_result_content_forms():
    """tool_result content may be absent, a string, or text and image blocks."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "a"},
                    {"type": "tool_result", "tool_use_id": "b", "content": "ok"},
                    {"type": "tool_result", "tool_use_id": "c", "content": [{"type": "text", "text": "see"}, image]},
                ],
            }
        ],
    }
    a, b, r = anthropic.parse_request(body).messages[0].content
    assert a == c.ToolResult("a", [])
    assert b == c.ToolResult("b", [c.Text("ok")])
    assert r == c.ToolResult("c", [c.Text("see"), c.Image(media_type="image/jpeg", data="AAAA")])


def test_plugins_are_parsed_and_not_forwarded():
    body = {"model": "m", "max_tokens": 5, "messages": [], "plugins": [{"id": "response-healing"}]}
    req = anthropic.parse_request(body)
    assert req.plugins == [{"id": "response-healing"}]
    assert "plugins" not in json.loads(anthropic.build_request(req, "m", provider()).body)


BASE = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def with_(path, value):
    body = copy.deepcopy(BASE)
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    "body, param",
    [
        (with_(["model"], KeyError), "model"),
        (with_(["model"], 3), "model"),
        (with_(["max_tokens"], KeyError), "max_tokens"),
        (with_(["max_tokens"], True), "max_tokens"),
        (with_(["max_tokens"], "16"), "max_tokens"),
        (with_(["max_tokens"], 0), "max_tokens"),
        (with_(["messages"], {}), "messages"),
        (with_(["messages", 0], "hi"), "messages[0]"),
        (with_(["messages", 0, "role"], "tool"), "messages[0].role"),
        (with_(["messages", 0, "content"], 7), "messages[0].content"),
        (with_(["messages", 0, "content"], KeyError), "messages[0].content"),
        (with_(["messages", 0, "content", 0], "hi"), "messages[0].content[0]"),
        (with_(["messages", 0, "content", 0, "type"], None), "messages[0].content[0].type"),
        (with_(["messages", 0, "content", 0, "text"], ["hi"]), "messages[0].content[0].text"),
        (with_(["messages", 0, "content", 0], {"type": "image", "source": "x"}), "messages[0].content[0].source"),
        (
            with_(["messages", 0, "content", 0], {"type": "image", "source": {"type": "base64", "data": "x"}}),
            "messages[0].content[0].source.media_type",
        ),
        (with_(["messages", 0, "content", 0], {"type": "tool_use", "id": "t", "name": "f", "input": []}), "messages[0].content[0].input"),
        (with_(["messages", 0, "content", 0], {"type": "tool_use", "name": "f"}), "messages[0].content[0].id"),
        (with_(["messages", 0, "content", 0], {"type": "tool_result", "tool_use_id": "t", "content": 1}), "messages[0].content[0].content"),
        (
            with_(["messages", 0, "content", 0], {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}),
            "messages[0].content[0].content[0].text",
        ),
        (with_(["messages", 0, "content", 0], {"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}), "messages[0].content[0].is_error"),
        (with_(["system"], 5), "system"),
        (with_(["system"], [{"type": "text", "text": 5}]), "system[0].text"),
        (with_(["tools"], {"name": "f"}), "tools"),
        (with_(["tools"], [{"description": "no name"}]), "tools[0].name"),
        (with_(["tools"], [{"name": "f", "input_schema": "x"}]), "tools[0].input_schema"),
        (with_(["tools"], [{"name": "f", "description": 1}]), "tools[0].description"),
        (with_(["tool_choice"], "auto"), "tool_choice"),
        (with_(["tool_choice"], {"type": "sometimes"}), "tool_choice.type"),
        (with_(["tool_choice"], {"type": ["auto"]}), "tool_choice.type"),
        (with_(["tool_choice"], {"type": "tool"}), "tool_choice.name"),
        (with_(["temperature"], "hot"), "temperature"),
        (with_(["top_p"], False), "top_p"),
        (with_(["top_k"], 1.5), "top_k"),
        (with_(["stop_sequences"], ["a", 1]), "stop_sequences"),
        (with_(["stream"], "yes"), "stream"),
        (with_(["metadata"], []), "metadata"),
        (with_(["thinking"], "on"), "thinking"),
        (with_(["output_config"], "json"), "output_config"),
        (with_(["output_config"], {"format": {"type": "json_object"}}), "output_config.format"),
        (with_(["output_config"], {"format": {"type": "json_schema"}}), "output_config.format.schema"),
        (with_(["plugins"], [{"name": "x"}]), "plugins[0].id"),
        (with_(["tools"], [{"name": "", "input_schema": {"type": "object"}}]), "tools[0].name"),
    ],
)
def test_wrong_types_name_the_field(body, param):
    with pytest.raises(errors.BadRequest) as info:
        anthropic.parse_request(body)
    assert info.value.param == param
    # One message style for every client format (formats/validate.py).
    assert info.value.message.startswith(f"{param} must be ") or info.value.message == f"{param} is required"


def test_non_object_body_is_a_bad_request():
    with pytest.raises(errors.BadRequest):
        anthropic.parse_request(["not", "a", "body"])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _parse_or_bad_request(body) -> None:
    try:
        req = anthropic.parse_request(body)
    except errors.BadRequest:
        return
    # Whatever parses must also rebuild into a JSON body for an Anthropic upstream.
    req.modified = True
    json.loads(anthropic.build_request(req, "m", provider()).body)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_fuzz_any_json_value_is_parsed_or_a_bad_request(body):
    _parse_or_bad_request(body)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_claude_code_bodies(data):
    """Replace one random node of a realistic body with any JSON value."""
    body = claude_code_body()
    parent, key = None, None
    node = body
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    if parent is None:
        body = data.draw(JSON)
    else:
        parent[key] = data.draw(JSON)
    _parse_or_bad_request(body)


# --- render_response / error_body ---------------------------------------------------


def test_render_response_from_upstream_reply_matches_golden():
    """An Anthropic reply parsed and rendered again is valid for the SDK and unchanged."""
    data = (WIRE / "message_tool_use.upstream.json").read_bytes()
    resp = anthropic.parse_response(data, upstream_req())
    assert_golden(json.dumps(tagged(resp), indent=1, ensure_ascii=False) + "\n", WIRE / "message_tool_use.canonical.json")
    rendered = anthropic.render_response(resp, anthropic.parse_request(BASE))
    Message.model_validate(rendered)
    assert rendered == json.loads(data)


def test_render_response_shapes_translated_replies():
    """Ids get msg_, bad tool arguments become {}, empty text is dropped, other stop -> end_turn."""
    resp = c.Response(
        id="chatcmpl-9",
        model="gpt-4o",
        content=[c.Text(""), c.ToolCall("call_1", "f", "{not json"), c.ToolCall("call_2", "g", "[1]"), c.Opaque("openai", {"x": 1})],
        stop_reason="other",
        usage=c.Usage(10, 2, cache_read_tokens=4),
    )
    out = anthropic.render_response(resp, anthropic.parse_request(BASE))
    Message.model_validate(out)
    assert out["id"] == "msg_chatcmpl-9"
    assert out["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {}},
        {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
    ]
    assert out["stop_reason"] == "end_turn" and out["stop_sequence"] is None
    assert out["usage"] == {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 4}


def test_render_empty_reply_keeps_one_empty_text_block():
    req = anthropic.parse_request(BASE)
    req.id_seed = "5eed"  # what the pipeline sets: ids derive from it
    out = anthropic.render_response(c.Response("", "", [c.Text("")]), req)
    Message.model_validate(out)
    assert out["content"] == [{"type": "text", "text": ""}] and out["model"] == "m"
    assert out["id"] == "msg_5eed1"


@pytest.mark.parametrize(
    "err, kind",
    [
        (errors.BadRequest("bad"), "invalid_request_error"),
        (errors.Unauthorized("who"), "authentication_error"),
        (errors.Forbidden("no"), "permission_error"),
        (errors.NoRoute("no model"), "not_found_error"),
        (errors.PayloadTooLarge("big"), "request_too_large"),
        (errors.UpstreamStatusError("slow down", status=429), "rate_limit_error"),
        (errors.PluginError("boom"), "api_error"),
        (errors.UpstreamConnectError("refused"), "api_error"),
        (errors.UpstreamTimeout("late"), "api_error"),
        (errors.UpstreamStatusError("busy", status=529), "overloaded_error"),
        (errors.UpstreamStatusError("teapot", status=418), "invalid_request_error"),
        (errors.UpstreamStatusError("bad gateway", status=503), "api_error"),
    ],
)
def test_error_body_type_follows_status(err, kind):
    body = anthropic.error_body(err)
    assert body == {"type": "error", "error": {"type": kind, "message": err.message}}
    if kind != "request_too_large":  # documented by Anthropic, absent from the SDK's union
        ErrorResponse.model_validate(body)


# --- Encoder --------------------------------------------------------------------------


def sse_events(data: bytes) -> list[tuple[str, dict]]:
    return [(e.event, json.loads(e.data)) for e in sse.SSESplitter().feed(data)]


def check_client_stream(data: bytes):
    """Validate every event with the SDK, check block discipline, return the final message."""
    snapshot, bufs, open_block = None, {}, None
    for name, payload in sse_events(data):
        assert payload["type"] == name
        if name == "ping":
            continue
        event = STREAM_EVENT.validate_python(payload)
        if name == "content_block_start":
            assert open_block is None, "a block started while another was open"
            open_block = payload["index"]
        elif name == "content_block_delta":
            assert payload["index"] == open_block
        elif name == "content_block_stop":
            assert payload["index"] == open_block
            open_block = None
        elif name in ("message_delta", "message_stop"):
            assert open_block is None
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


@pytest.mark.parametrize("name", ["text_stream", "tool_use_stream", "thinking_stream"])
def test_encoder_rebuilds_each_upstream_stream(name):
    """Decoded upstream events re-encoded give an SDK-valid stream and the same final message."""
    upstream = (WIRE / f"{name}.upstream.sse").read_bytes()
    events, _ = decode(upstream, [upstream])
    encoder = anthropic.Encoder(anthropic.parse_request(BASE), "routed-model")
    out = b"".join(encoder.encode(e) for e in events) + encoder.finish()
    assert_golden(out.decode(), WIRE / f"{name}.client.sse")
    assert check_client_stream(out).to_dict() == check_client_stream(upstream).to_dict()


def test_encoder_error_event_ends_the_stream():
    upstream = (WIRE / "error_stream.upstream.sse").read_bytes()
    events, _ = decode(upstream, [upstream])
    encoder = anthropic.Encoder(anthropic.parse_request(BASE), "m")
    out = b"".join(encoder.encode(e) for e in events)
    assert out.endswith(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n')
    assert encoder.finish() == b"" and encoder.encode(c.TextDelta("more")) == b"" and encoder.ping() == b""
    names = [n for n, _ in sse_events(out)]
    assert names == ["message_start", "content_block_start", "content_block_delta", "error"]


def test_encoder_error_type_from_status_when_kind_is_foreign():
    encoder = anthropic.Encoder(anthropic.parse_request(BASE), "m")
    out = encoder.error(c.StreamError("upstream went away", 502, "server_error"))
    assert sse_events(out) == [("error", {"type": "error", "error": {"type": "api_error", "message": "upstream went away"}})]


def test_encoder_openai_like_sequence():
    """No MessageStart, interleaved text and tools, Stop before usage: still a valid stream."""
    encoder = anthropic.Encoder(anthropic.parse_request(BASE), "gpt-4o")
    events = [
        c.TextDelta("Let me check."),
        c.ToolCallStart(0, "call_a", "get_weather"),
        c.ToolCallDelta(0, '{"city":'),
        c.ToolCallDelta(0, '"Paris"}'),
        c.ToolCallStart(1, "call_b", "get_time"),
        c.ToolCallDelta(1, "{}"),
        c.TextDelta(""),
        c.TextDelta("Done."),
        c.OpaqueBlock(c.Opaque("openai", {"type": "reasoning"})),
        c.Stop("tool_use"),
        c.UsageUpdate(c.Usage(31, 12)),
    ]
    out = b"".join(encoder.encode(e) for e in events) + encoder.finish()
    message = check_client_stream(out)
    assert message.model == "gpt-4o" and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use", "text"]
    assert message.content[1].input == {"city": "Paris"} and message.content[2].input == {}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (31, 12)


def test_encoder_finish_without_stop_closes_the_open_block():
    encoder = anthropic.Encoder(anthropic.parse_request(BASE), "m")
    out = encoder.encode(c.MessageStart("msg_x", "m")) + encoder.encode(c.TextDelta("cut")) + encoder.finish()
    names = [n for n, _ in sse_events(out)]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert check_client_stream(out).stop_reason == "end_turn"
    assert encoder.finish() == b""


def test_encoder_empty_stream_is_still_complete():
    encoder = anthropic.Encoder(anthropic.parse_request(BASE), "m")
    out = encoder.finish()
    assert [n for n, _ in sse_events(out)] == ["message_start", "message_delta", "message_stop"]
    check_client_stream(out)


def test_ping_bytes():
    encoder = anthropic.Encoder(anthropic.parse_request(BASE), "m")
    assert encoder.ping() == b'event: ping\ndata: {"type": "ping"}\n\n'


# --- build_request --------------------------------------------------------------------


def translated_request() -> c.Request:
    """A request as an OpenAI client would produce it, with tools, images and results."""
    return c.Request(
        model="gpt-4o",
        system="Be brief.",
        messages=[
            c.Message("user", [c.Text("Weather in Paris? See photo."), c.Image(media_type="image/jpeg", data="/9j/4AAQ"), c.Image(url="https://x.test/a.png")]),
            c.Message("user", [c.Text("")]),
            c.Message("assistant", [c.Text(""), c.ToolCall("call_1", "get_weather", '{"city":"Paris"}'), c.ToolCall("call_2", "broken", "{oops")]),
            c.Message("user", [c.Text("also this")]),
            c.Message("user", [c.ToolResult("call_1", [c.Text("18C")]), c.ToolResult("call_2", [c.Text("bad args")], is_error=True)]),
            c.Message("user", [c.ToolResult("call_3", [c.Text("chart:"), c.Image(media_type="image/png", data="iVBO")])]),
            c.Message("assistant", [c.Opaque("openai", {"type": "reasoning"}), c.Text("It is 18C.")]),
        ],
        tools=[c.Tool("get_weather", "Current weather", {"type": "object", "properties": {"city": {"type": "string"}}}), c.Tool("broken")],
        tool_choice={"name": "get_weather"},
        max_tokens=None,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        stream=True,
        response_format={"type": "json_schema", "name": "weather", "schema": {"type": "object"}, "strict": True},
        extras={"parallel_tool_calls": False, "headers": {"anthropic-beta": "tools-2024-04-04", "x-other": "no"}},
        client_format="openai",
        raw={"model": "gpt-4o"},
    )


def test_translated_request_matches_golden():
    call = anthropic.build_request(translated_request(), "claude-sonnet-4-5", provider(api_key="sk-ant-test"))
    assert call.path == "/v1/messages"
    assert dict(call.headers) == {
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-ant-test",
        "anthropic-beta": "tools-2024-04-04",
    }
    body = json.loads(call.body)
    assert_golden(json.dumps(body, indent=1, ensure_ascii=False) + "\n", WIRE / "translated.request.json")
    assert body["max_tokens"] == 4096
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "tool_result", "tool_result", "text"]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}


def test_path_when_base_url_ends_with_v1_and_provider_headers_win():
    p = provider(base_url="http://127.0.0.1:9000/v1", headers=(("Anthropic-Version", "2099-01-01"), ("x-team", "a")))
    call = anthropic.build_request(anthropic.parse_request(BASE), "m", p)
    assert call.path == "/messages"
    assert dict(call.headers) == {"content-type": "application/json", "anthropic-version": "2099-01-01", "x-team": "a"}


def test_passthrough_forwards_the_client_body():
    """Same format and untouched: the client's body goes out as sent, model swapped, plugins removed."""
    body = claude_code_body()
    body["plugins"] = [{"id": "pareto-router"}]
    req = anthropic.parse_request(body)
    req.extras["headers"] = {"anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27"}
    call = anthropic.build_request(req, "claude-opus-4-1", provider())
    sent = json.loads(call.body)
    expected = {k: v for k, v in body.items() if k != "plugins"}
    expected["model"] = "claude-opus-4-1"
    assert sent == expected
    assert ("anthropic-beta", "interleaved-thinking-2025-05-14,context-management-2025-06-27") in call.headers
    assert all(name != "x-api-key" for name, _ in call.headers)


def test_modified_anthropic_request_is_rebuilt_with_its_extras():
    """A plugin-modified request loses nothing Anthropic-only: thinking, metadata, server tools, effort."""
    body = claude_code_body()
    body["output_config"]["format"] = {"type": "json_schema", "schema": {"type": "object"}}
    req = anthropic.parse_request(body)
    req.modified = True
    sent = json.loads(anthropic.build_request(req, "claude-opus-4-1", provider()).body)
    for key in ("metadata", "thinking", "context_management"):
        assert sent[key] == body[key]
    assert sent["output_config"] == {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert sent["tools"][-1] == body["tools"][2] and sent["tool_choice"] == {"type": "auto"}
    assert sent["system"].endswith("The user switched to plan mode.")
    assert sent["messages"][1]["content"][0] == body["messages"][1]["content"][0]  # thinking block kept
    assert sent["messages"][2]["content"][1]["is_error"] is True
    # the two trailing user turns are merged; the document block survives
    assert [b["type"] for b in sent["messages"][2]["content"]] == ["tool_result", "tool_result", "document", "text"]


def test_tool_choice_out_and_no_choice_without_tools():
    req = anthropic.parse_request(BASE)
    for choice, expected in [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})]:
        req.tool_choice, req.tools, req.modified = choice, [c.Tool("f")], True
        assert json.loads(anthropic.build_request(req, "m", provider()).body)["tool_choice"] == expected
    req.tools = []
    assert "tool_choice" not in json.loads(anthropic.build_request(req, "m", provider()).body)


def test_single_text_collapses_to_string_but_cache_control_survives():
    req = anthropic.parse_request(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    )
    req.modified = True
    assert json.loads(anthropic.build_request(req, "m", provider()).body)["messages"] == [{"role": "user", "content": "hi"}]


# --- parse_response / error_message ---------------------------------------------------


@pytest.mark.parametrize(
    "reason, expected",
    [("end_turn", "end_turn"), ("max_tokens", "max_tokens"), ("stop_sequence", "stop_sequence"), ("tool_use", "tool_use"),
     ("model_context_window_exceeded", "max_tokens"), ("refusal", "other"), ("pause_turn", "other")],
)
def test_stop_reasons_in(reason, expected):
    data = json.dumps({"id": "msg_1", "model": "m", "content": [], "stop_reason": reason, "stop_sequence": "X" if reason == "stop_sequence" else None})
    resp = anthropic.parse_response(data.encode(), upstream_req())
    assert resp.stop_reason == expected
    assert resp.stop_sequence == ("X" if reason == "stop_sequence" else None)


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"id": "x"}', b'{"content": [1]}'])
def test_malformed_replies_are_protocol_errors(data):
    with pytest.raises(errors.UpstreamProtocolError):
        anthropic.parse_response(data, upstream_req())


def test_error_message():
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}'
    assert anthropic.error_message(429, body) == "Number of request tokens has exceeded your per-minute rate limit"
    assert anthropic.error_message(502, b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert anthropic.error_message(500, b"") == "upstream returned HTTP 500"


# --- Decoder --------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_decoder_matches_golden_events(name):
    data = (WIRE / f"{name}.upstream.sse").read_bytes()
    events, raw = decode(data, [data])
    assert raw == data
    assert_golden(events_jsonl(events), WIRE / f"{name}.events.jsonl")


@pytest.mark.parametrize("name", STREAMS)
def test_decoder_at_every_byte_split(name):
    """Each golden stream gives the same events and raw bytes however it is cut."""
    data = (WIRE / f"{name}.upstream.sse").read_bytes()
    expected = decode(data, [data])
    for cut in range(1, len(data)):
        assert decode(data, [data[:cut], data[cut:]]) == expected, cut
    assert decode(data, [data[i : i + 1] for i in range(len(data))]) == expected


def test_decoder_frames_are_one_per_sse_event():
    data = (WIRE / "text_stream.upstream.sse").read_bytes()
    frames = anthropic.Decoder(upstream_req()).feed(data)
    assert len(frames) == data.count(b"\n\n")
    assert frames[2].raw == b'event: ping\ndata: {"type": "ping"}\n\n' and frames[2].events == []


def test_decoded_tool_stream_reassembles_arguments_in_order():
    data = (WIRE / "tool_use_stream.upstream.sse").read_bytes()
    collector = c.ResponseCollector()
    for event in decode(data, [data])[0]:
        collector.add(event)
    resp = collector.response()
    assert [json.loads(call.arguments) for call in resp.tool_calls] == [
        {"location": "San Francisco, CA", "unit": "fahrenheit"},
        {"location": "Zürich"},
    ]
    assert resp.stop_reason == "tool_use" and resp.usage == c.Usage(472, 89)


def test_decoder_thinking_block_is_reassembled():
    data = (WIRE / "thinking_stream.upstream.sse").read_bytes()
    opaque = [e.part.data for e in decode(data, [data])[0] if isinstance(e, c.OpaqueBlock)]
    assert opaque == [
        {
            "type": "thinking",
            "thinking": "Let me work out 27 * 453 step by step.\n\n27 * 400 = 10800, 27 * 53 = 1431, total 12231.",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
        },
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"},
    ]


def test_decoder_server_tool_block_input_is_reassembled():
    stream = (
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}\n\n'
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"query\\": \\"llm"}}\n\n'
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":" routers\\"}"}}\n\n'
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    ).encode()
    frames = anthropic.Decoder(upstream_req()).feed(stream)
    assert frames[-1].events == [
        c.OpaqueBlock(c.Opaque("anthropic", {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "llm routers"}}))
    ]


def test_decoder_error_event():
    data = (WIRE / "error_stream.upstream.sse").read_bytes()
    events, _ = decode(data, [data])
    assert events[-1] == c.StreamError("Overloaded", 529, "overloaded_error")


def test_truncated_stream_raises_on_close():
    data = (WIRE / "text_stream.upstream.sse").read_bytes()
    decoder = anthropic.Decoder(upstream_req())
    decoder.feed(data[: data.index(b"event: message_stop")])
    with pytest.raises(errors.UpstreamProtocolError):
        decoder.close()


@pytest.mark.parametrize(
    "frame",
    [
        b"event: message_start\ndata: {not json\n\n",
        b'event: message_start\ndata: {"type":"message_start","message":5}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":[0],"delta":{}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0}\n\n',
        b"event: message_delta\ndata: [1]\n\n",
    ],
)
def test_malformed_frames_are_protocol_errors(frame):
    with pytest.raises(errors.UpstreamProtocolError):
        anthropic.Decoder(upstream_req()).feed(frame)


EVENT_NAMES = st.sampled_from(
    ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop", "error", "ping", "other"]
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(EVENT_NAMES, JSON, st.sampled_from(["type", "index", "delta", "message", "content_block", "usage"])), max_size=8))
def test_fuzz_decoder_raises_only_protocol_errors(frames):
    """Whatever JSON an upstream puts in its events, the decoder fails only as a protocol error."""
    decoder = anthropic.Decoder(upstream_req())
    data = b""
    for name, value, key in frames:
        payload = {"type": name, key: value}
        data += f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
    try:
        decoder.feed(data)
        decoder.close()
    except errors.UpstreamProtocolError:
        pass
