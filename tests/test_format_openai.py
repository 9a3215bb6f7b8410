"""The OpenAI chat-completions format: golden conversions both ways, the stream
decoder at every byte split, the encoder checked with the official SDK."""

from __future__ import annotations

import dataclasses
import json

import httpx2 as httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import golden
from golden import assert_golden, pretty, tagged
from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import openai as fmt

WIRE = golden.WIRE / "openai"
PROVIDER = Provider(name="oa", format="openai", base_url="http://127.0.0.1:8080/v1", api_key="sk-test",
                    headers=(("x-extra", "1"),))


def load(name: str) -> dict:
    return json.loads((WIRE / name).read_text())


def upstream_req() -> c.Request:
    """The request an upstream reply belongs to (the Decoder and parse_response make ids with it)."""
    return c.Request("m", [])


# --- client requests --------------------------------------------------------------

def test_full_client_request_golden() -> None:
    """Every field a chat-completions client may send, as canonical values."""
    req = fmt.parse_request(load("chat_request.client.json"))
    assert_golden(pretty(tagged(req, omit=("raw",))), WIRE / "chat_request.canonical.json")
    assert req.system == "You are a helpful travel assistant.\n\nAnswer in metric units."
    assert [m.role for m in req.messages] == ["user", "assistant", "user", "user"]
    user = req.messages[0].content
    assert user[1].media_type == "image/jpeg" and user[1].data.startswith("/9j/") and user[1].url is None
    assert user[2].url.startswith("https://") and user[2].data is None
    results = req.messages[2].content  # two consecutive tool messages, one user turn
    assert [r.tool_call_id for r in results] == ["call_DdmO9pD3xa9XTPNJ32zg2hcA", "call_ABxRlW3zg0LdqZkR8fYvT1ce"]
    assert results[1].text == '{"temperature": 14, "sky": "rain"}'
    assert req.max_tokens == 512 and req.stop == ["\n\nHuman:"] and req.include_usage and req.stream
    assert req.response_format == {"type": "json_schema", "name": "weather_summary",
                                   "schema": req.raw["response_format"]["json_schema"]["schema"], "strict": True}
    assert req.plugins == [{"id": "response-healing"}, {"id": "pareto-router", "tier": "cheap"}]
    assert req.client_format == "openai" and req.raw["seed"] == 42


def test_minimal_request_and_defaults() -> None:
    req = fmt.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert req.messages == [c.Message("user", [c.Text("hi")])]
    assert (req.system, req.stream, req.include_usage, req.max_tokens, req.tools, req.tool_choice) == (
        None, False, False, None, [], None)


def test_request_variants() -> None:
    req = fmt.parse_request({
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}],
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
            {"role": "function", "name": "f", "content": "42"},
        ],
        "max_tokens": 7,
        "stop": "END",
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_object"},
        "tools": [{"type": "custom", "custom": {"name": "x"}}],
    })
    assert req.messages[0].content == [c.Opaque("openai", {"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}})]
    assert req.messages[1].content == [c.Text("no"), c.ToolCall("c1", "f", '{"a":1}')]
    assert req.messages[2].content == [c.ToolResult("f", [c.Text("42")])]
    assert (req.max_tokens, req.stop, req.tool_choice) == (7, ["END"], {"name": "f"})
    assert req.response_format == {"type": "json_object"} and req.tools == []
    body = json.loads(fmt.build_request(dataclasses.replace(req, modified=True), "m", PROVIDER).body)
    assert body["messages"][0] == {"role": "user", "content": [req.raw["messages"][0]["content"][0]]}  # opaque kept
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "f", "content": "42"}
    assert body["max_tokens"] == 7 and body["response_format"] == {"type": "json_object"}
    text_format = fmt.parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                     "response_format": {"type": "text"}})
    assert text_format.response_format is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 5}]}, "messages[1].content"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]},
         "messages[0].content[0].image_url.url"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": 3}}]}]},
         "messages[0].tool_calls[0].function.arguments"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": True}, "max_completion_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "always"}, "tool_choice"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}, "response_format.type"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "plugins": [{"name": "x"}]}, "plugins[0].id"),
    ],
)
def test_bad_requests_name_the_field(body: object, param: str | None) -> None:
    with pytest.raises(errors.BadRequest) as info:
        fmt.parse_request(body)
    assert info.value.param == param
    assert info.value.status == 400
    if param:  # one message style for every client format (formats/validate.py)
        assert info.value.message.startswith(f"{param} must be ") or info.value.message == f"{param} is required"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
KEYS = st.sampled_from(["model", "messages", "role", "content", "type", "text", "image_url", "url", "tool_calls",
                        "id", "function", "name", "arguments", "tool_call_id", "tools", "tool_choice", "stop",
                        "max_tokens", "response_format", "json_schema", "schema", "stream_options", "include_usage",
                        "plugins", "temperature", "stream", "refusal"])
# Objects built from the format's own keys reach far deeper than random keys do.
SHAPED = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from(
        ["user", "assistant", "tool", "system", "developer", "text", "image_url", "function", "data:image/png;base64,AA",
         "json_schema", "json_object", "auto", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(JSON, SHAPED, st.fixed_dictionaries({"model": st.text(max_size=3), "messages": SHAPED}, optional={"tools": SHAPED, "tool_choice": SHAPED})))
def test_arbitrary_json_raises_only_bad_request(body: object) -> None:
    try:
        req = fmt.parse_request(body)
    except errors.BadRequest as exc:
        assert exc.message
        return
    # Whatever parses must also render for an upstream.
    fmt.build_request(dataclasses.replace(req, modified=True), "m", PROVIDER)


def test_what_is_dropped_comes_back_as_warnings() -> None:
    """Formats never log: what they drop is returned for the pipeline to log."""
    req = fmt.parse_request({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "tool_calls": [{"type": "custom", "id": "x"}]}],
        "tools": [{"type": "custom", "custom": {}}],
        "tool_choice": {"type": "allowed_tools"},
    })
    assert req.warnings == ["dropped assistant tool call of type 'custom'", "dropped tool of type 'custom'",
                            "dropped tool_choice of type 'allowed_tools'"]
    req.modified = True  # rendered, not passed through
    req.messages[0].content.append(c.Opaque("anthropic", {"type": "thinking", "thinking": "hmm"}))
    assert fmt.build_request(req, "m", PROVIDER).warnings == ["dropped Opaque part for an openai upstream"]


def test_ids_derive_from_the_request_seed_and_differ() -> None:
    req = fmt.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    req.id_seed = "ab"
    body = fmt.render_response(c.Response("", "m", [c.ToolCall("", "f"), c.ToolCall("", "g")], "tool_use"), req)
    assert [call["id"] for call in body["choices"][0]["message"]["tool_calls"]] == ["call_ab1", "call_ab2"]
    assert body["id"] == "chatcmpl-ab3"


# --- client replies -----------------------------------------------------------------

def test_render_text_response() -> None:
    req = fmt.parse_request({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    resp = c.Response("msg_01XFDUDYJgAACzvnptvVoYEL", "claude-sonnet-4", [c.Text("Hello!")], "end_turn",
                      c.Usage(12, 6, cache_read_tokens=100))
    req.now = 1700000000.5
    body = fmt.render_response(resp, req)
    ChatCompletion.model_validate(body)
    assert body["id"].startswith("chatcmpl-") and body["created"] == 1700000000
    assert body["model"] == "claude-sonnet-4"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello!", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 112, "completion_tokens": 6, "total_tokens": 118,
                             "prompt_tokens_details": {"cached_tokens": 100}}


def test_render_tool_call_response_has_null_content() -> None:
    req = fmt.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    resp = c.Response("chatcmpl-keep", "", [c.ToolCall("toolu_1", "f", '{"x":1}'), c.ToolCall("", "g", "")], "tool_use")
    body = fmt.render_response(resp, req)
    ChatCompletion.model_validate(body)
    message = body["choices"][0]["message"]
    assert body["id"] == "chatcmpl-keep" and body["model"] == "m"
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0] == {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    assert message["tool_calls"][1]["id"].startswith("call_") and message["tool_calls"][1]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(("stop", "finish"), [("end_turn", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
                                              ("stop_sequence", "stop"), ("other", "stop")])
def test_finish_reasons(stop: str, finish: str) -> None:
    req = fmt.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    body = fmt.render_response(c.Response("", "m", [c.Text("x")], stop), req)
    assert body["choices"][0]["finish_reason"] == finish


def test_error_body() -> None:
    err = errors.BadRequest("messages[2].content must be a string", param="messages[2].content")
    assert fmt.error_body(err) == {"error": {"message": "messages[2].content must be a string", "type": "invalid_request_error",
                                             "param": "messages[2].content", "code": "invalid_request_error"}}
    limited = errors.UpstreamStatusError("slow down", status=429)
    assert fmt.error_body(limited)["error"] == {"message": "slow down", "type": "rate_limit_error", "param": None,
                                                "code": "upstream_status_error"}


# --- upstream requests ----------------------------------------------------------------

def test_rerendered_upstream_request_golden() -> None:
    """A plugin touched the request: the body is rebuilt, unknown client fields kept."""
    req = dataclasses.replace(fmt.parse_request(load("chat_request.client.json")), modified=True)
    call = fmt.build_request(req, "gpt-4o-mini", PROVIDER)
    body = json.loads(call.body)
    assert_golden(pretty(body), WIRE / "chat_request.upstream.json")
    assert call.path == "/chat/completions"
    assert call.headers == [("content-type", "application/json"), ("accept", "text/event-stream"),
                            ("authorization", "Bearer sk-test"), ("x-extra", "1")]
    assert body["model"] == "gpt-4o-mini" and "plugins" not in body
    assert body["seed"] == 42 and body["user"] == "user-1234" and body["max_completion_tokens"] == 512
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert body["stream_options"] == {"include_usage": True}


def test_passthrough_forwards_the_client_body() -> None:
    raw = load("chat_request.client.json")
    raw["stream_options"] = {"include_usage": False, "other": 1}
    call = fmt.build_request(fmt.parse_request(raw), "local-model", PROVIDER)
    body = json.loads(call.body)
    expected = {k: v for k, v in raw.items() if k != "plugins"}
    expected.update(model="local-model", stream_options={"include_usage": True, "other": 1})
    assert body == expected


def test_cross_format_request_rendering() -> None:
    """A request from another client format: tool results, images and opaque parts."""
    req = c.Request(
        model="claude",
        system="Be brief.",
        messages=[
            c.Message("user", [c.Text("look"), c.Image("image/png", "iVBOR"), c.Opaque("anthropic", {"type": "document"})]),
            c.Message("assistant", [c.Opaque("anthropic", {"type": "thinking"}), c.Text("Calling."), c.ToolCall("toolu_1", "shot", "{}")]),
            c.Message("user", [c.ToolResult("toolu_1", [c.Text("done"), c.Image("image/jpeg", "/9j/")], is_error=True), c.Text("and?")]),
            c.Message("user", [c.Text("a"), c.Text("b")]),
        ],
        tools=[c.Tool("shot", None, {"type": "object"})],
        tool_choice={"name": "shot"},
        max_tokens=100,
        stop=["x"],
        response_format={"type": "json_schema", "name": "r", "schema": {"type": "object"}, "strict": None},
        client_format="anthropic",
        raw={"model": "claude", "metadata": {"user_id": "u"}},
    )
    call = fmt.build_request(req, "gpt-4o", Provider(name="o", format="openai", base_url="https://api.openai.com/v1"))
    body = json.loads(call.body)
    assert ("authorization", "Bearer None") not in call.headers and len(call.headers) == 1
    assert "metadata" not in body and body["stream"] is False and "stream_options" not in body
    assert body["max_completion_tokens"] == 100 and body["stop"] == ["x"]
    assert body["tools"] == [{"type": "function", "function": {"name": "shot", "parameters": {"type": "object"}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "shot"}}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
        {"role": "assistant", "content": "Calling.",
         "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "done"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                                     {"type": "text", "text": "and?"}]},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    local = json.loads(fmt.build_request(req, "llama", PROVIDER).body)
    assert local["max_tokens"] == 100 and "max_completion_tokens" not in local


# --- upstream replies -------------------------------------------------------------------

def test_parse_text_reply() -> None:
    resp = fmt.parse_response((WIRE / "reply_text.upstream.json").read_bytes(), upstream_req())
    assert resp.id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG" and resp.model == "gpt-4o-2024-08-06"
    assert resp.text.startswith("The image shows") and resp.stop_reason == "end_turn"
    assert resp.usage == c.Usage(input_tokens=93, output_tokens=46, cache_read_tokens=1024)
    assert fmt.usage_json(resp.usage)["prompt_tokens"] == 1117  # round trip


def test_parse_tool_reply() -> None:
    resp = fmt.parse_response((WIRE / "reply_tools.upstream.json").read_bytes(), upstream_req())
    assert resp.content == [
        c.ToolCall("call_abc123", "get_current_weather", '{\n"location": "Boston, MA"\n}'),
        c.ToolCall("call_def456", "get_current_weather", '{"location": "Paris", "unit": "celsius"}'),
    ]
    assert resp.stop_reason == "tool_use" and resp.usage == c.Usage(82, 17)


def test_parse_reply_tolerances() -> None:
    bare = fmt.parse_response(b'{"choices":[{"message":{"content":null}}]}', upstream_req())
    assert (bare.content, bare.usage, bare.stop_reason, bare.id) == ([], c.Usage(), "end_turn", "")
    # llama.cpp-style: tool calls with finish_reason "stop"; arguments as an object
    calls = fmt.parse_response(b'{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},'
                               b'"finish_reason":"stop"}]}', upstream_req())
    assert calls.stop_reason == "tool_use" and calls.content[0].arguments == '{"a":1}'
    assert calls.content[0].id.startswith("call_")
    assert fmt.parse_response(b'{"choices":[{"finish_reason":"length","message":{"content":"x"}}]}', upstream_req()).stop_reason == "max_tokens"
    assert fmt.parse_response(b'{"choices":[{"finish_reason":"content_filter","message":{}}]}', upstream_req()).stop_reason == "other"
    assert fmt.parse_response(b'{"choices":[{"message":{"refusal":"I cannot."}}]}', upstream_req()).text == "I cannot."
    assert fmt.parse_response(b'{"choices":[]}', upstream_req()).content == []


@pytest.mark.parametrize("data", [b"", b"not json", b"[1]", b'{"id":"x"}', b'{"choices":{}}'])
def test_parse_reply_errors(data: bytes) -> None:
    with pytest.raises(errors.UpstreamProtocolError):
        fmt.parse_response(data, upstream_req())


@settings(max_examples=150, deadline=None)
@given(st.one_of(JSON, st.fixed_dictionaries({"choices": st.lists(SHAPED, max_size=2), "usage": SHAPED})))
def test_arbitrary_replies_raise_only_protocol_errors(value: object) -> None:
    try:
        fmt.parse_response(json.dumps(value).encode(), upstream_req())
    except errors.UpstreamProtocolError:
        pass


def test_error_message() -> None:
    body = b'{"error":{"message":"Incorrect API key provided: sk-abc.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}'
    assert fmt.error_message(401, body) == "Incorrect API key provided: sk-abc."
    assert fmt.error_message(500, b'{"error":"model not loaded"}') == "model not loaded"
    assert fmt.error_message(502, b"<html>" + b"x" * 1000) == ("<html>" + "x" * 1000)[:500]
    assert fmt.error_message(503, b"") == "HTTP 503 with an empty body"


# --- stream decoding ---------------------------------------------------------------------

STREAMS = ["text_stream", "tool_stream", "error_stream"]


def decode(data: bytes, pieces: list[int]) -> tuple[list[c.StreamEvent], bytes]:
    decoder = fmt.Decoder(upstream_req())
    events: list[c.StreamEvent] = []
    raw = b""
    start = 0
    for end in [*pieces, len(data)]:
        for frame in decoder.feed(data[start:end]):
            events.extend(frame.events)
            raw += frame.raw
        start = end
    return events, raw


@pytest.mark.parametrize("name", STREAMS)
def test_decoder_golden(name: str) -> None:
    data = (WIRE / f"{name}.upstream.sse").read_bytes()
    events, raw = decode(data, [])
    assert raw == data  # frames keep every byte, so a relay forwards them untouched
    assert_golden("".join(json.dumps(tagged(e, omit=("raw",)), ensure_ascii=False) + "\n" for e in events), WIRE / f"{name}.events.jsonl")


@pytest.mark.parametrize("name", STREAMS)
def test_decoder_at_every_byte_split(name: str) -> None:
    data = (WIRE / f"{name}.upstream.sse").read_bytes()
    expected, _ = decode(data, [])
    for cut in range(1, len(data)):
        assert decode(data, [cut])[0] == expected, f"split at byte {cut}"
    assert decode(data, list(range(1, len(data))))[0] == expected  # one byte at a time


def test_decoded_streams_reassemble() -> None:
    collector = c.ResponseCollector()
    for event in decode((WIRE / "tool_stream.upstream.sse").read_bytes(), [])[0]:
        collector.add(event)
    resp = collector.response()
    assert resp.content == [
        c.ToolCall("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", '{"location": "Paris, France"}'),
        c.ToolCall("call_ABxRlW3zg0LdqZkR8fYvT1ce", "get_weather", '{"location": "Bogotá, Colombia"}'),
    ]
    assert resp.stop_reason == "tool_use" and resp.usage == c.Usage(18, 38, cache_read_tokens=64)
    text = c.ResponseCollector()
    for event in decode((WIRE / "text_stream.upstream.sse").read_bytes(), [])[0]:
        text.add(event)
    assert text.response().text == "Bonjour ! Ça va très bien 🌞."


def test_decoder_end_of_stream() -> None:
    data = (WIRE / "text_stream.upstream.sse").read_bytes()
    decoder = fmt.Decoder(upstream_req())
    decoder.feed(data)
    assert decoder.close() == []
    # A finish_reason without [DONE] is a complete stream; the last event may lack its blank line.
    decoder = fmt.Decoder(upstream_req())
    head = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"length"}]}'
    assert decoder.feed(head) == []
    frames = decoder.close()
    assert [type(e) for e in frames[0].events] == [c.MessageStart, c.TextDelta, c.Stop]
    assert frames[0].events[-1] == c.Stop("max_tokens")
    # The error stream ends with no terminal event at all.
    decoder = fmt.Decoder(upstream_req())
    frames = decoder.feed((WIRE / "error_stream.upstream.sse").read_bytes())
    assert frames[-1].events == [c.StreamError("The server had an error while processing your request. Sorry about that!",
                                               502, "server_error")]
    with pytest.raises(errors.UpstreamProtocolError, match="ended before completion"):
        decoder.close()


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(errors.UpstreamProtocolError):
        fmt.Decoder(upstream_req()).feed(b"data: {oops\n\n")
    with pytest.raises(errors.UpstreamProtocolError):
        fmt.Decoder(upstream_req()).feed(b"data: [1]\n\n")


def test_decoder_tool_calls_without_index() -> None:
    """Some compatible servers repeat the id instead of an index, or send neither."""
    decoder = fmt.Decoder(upstream_req())
    chunks = [
        {"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{\"x\""}}]},
        {"tool_calls": [{"function": {"arguments": ":1}"}}]},
        {"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]},
    ]
    data = b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "delta": d}]}).encode() + b"\n\n" for d in chunks)
    events = [e for f in decoder.feed(data) for e in f.events]
    assert events[1:] == [c.ToolCallStart(0, "a", "f"), c.ToolCallDelta(0, '{"x"'), c.ToolCallDelta(0, ":1}"),
                          c.ToolCallStart(1, "b", "g"), c.ToolCallDelta(1, "{}")]


# --- stream encoding ----------------------------------------------------------------------

def sse_data(data: bytes) -> list[str]:
    return [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]


def encode(events: list[c.StreamEvent], include_usage: bool = True) -> bytes:
    req = fmt.parse_request({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                             "stream_options": {"include_usage": include_usage}})
    req.now, req.id_seed = 1754312345, "5eed"
    encoder = fmt.Encoder(req, "routed-model")
    return b"".join(encoder.encode(e) for e in events) + encoder.finish()


def anthropic_like_events() -> list[c.StreamEvent]:
    return [
        c.MessageStart("msg_01", "claude-sonnet-4", c.Usage(25, 1)),
        c.OpaqueBlock(c.Opaque("anthropic", {"type": "thinking", "thinking": "hmm"})),
        c.TextDelta("Checking both."),
        c.ToolCallStart(0, "toolu_01A", "get_weather"),
        c.ToolCallDelta(0, '{"location":'),
        c.ToolCallDelta(0, ' "Paris"}'),
        c.ToolCallStart(1, "toolu_01B", "get_time"),
        c.ToolCallDelta(1, '{"tz": "CET"}'),
        c.UsageUpdate(c.Usage(25, 61)),
        c.Stop("tool_use"),
    ]


def test_encoder_golden() -> None:
    out = encode(anthropic_like_events())
    assert_golden(out.decode(), WIRE / "tool_stream.client.sse")
    chunks = sse_data(out)
    assert chunks[-1] == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate_json(d) for d in chunks[:-1]]
    assert {(p.id, p.created, p.model) for p in parsed} == {("chatcmpl-5eed1", 1754312345, "claude-sonnet-4")}
    assert parsed[0].choices[0].delta.role == "assistant"
    assert [p.choices[0].finish_reason for p in parsed if p.choices][-1] == "tool_calls"
    assert parsed[-1].choices == [] and parsed[-1].usage.total_tokens == 86


def test_encoder_without_usage_and_with_openai_ids() -> None:
    events = decode((WIRE / "text_stream.upstream.sse").read_bytes(), [])[0]
    out = encode(events, include_usage=False)
    parsed = [ChatCompletionChunk.model_validate_json(d) for d in sse_data(out)[:-1]]
    assert all(p.choices for p in parsed)  # no usage chunk was asked for
    assert {p.id for p in parsed} == {"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"}
    assert "".join(p.choices[0].delta.content or "" for p in parsed) == "Bonjour ! Ça va très bien 🌞."


def test_encoder_without_stop_or_start() -> None:
    """A bare finish still frames a valid stream: role chunk, finish chunk, [DONE]."""
    chunks = sse_data(encode([], include_usage=False))
    assert chunks[-1] == "[DONE]" and len(chunks) == 3
    assert json.loads(chunks[1])["choices"][0]["finish_reason"] == "stop"


def test_encoder_error_and_ping() -> None:
    req = fmt.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    encoder = fmt.Encoder(req, "m")
    encoder.encode(c.TextDelta("partial"))
    out = encoder.error(c.StreamError("upstream died", 502, "api_error"))
    assert out == b'data: {"error":{"message":"upstream died","type":"api_error","param":null,"code":null}}\n\n'
    assert encoder.ping() == b": ping\n\n"


def sdk_client(body: bytes) -> openai.OpenAI:
    """The official client, answered from memory with `body` as an SSE stream."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body))
    return openai.OpenAI(api_key="x", base_url="http://router.test/v1", http_client=httpx.Client(transport=transport))


def test_sdk_stream_helper_accumulates_our_stream() -> None:
    """The SDK's own accumulator rebuilds both parallel calls from our chunks."""
    body = encode(anthropic_like_events())
    with sdk_client(body).chat.completions.stream(model="m", messages=[{"role": "user", "content": "hi"}]) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Checking both." and final.choices[0].finish_reason == "tool_calls"
    assert [(t.id, t.function.name, t.function.arguments) for t in message.tool_calls] == [
        ("toolu_01A", "get_weather", '{"location": "Paris"}'), ("toolu_01B", "get_time", '{"tz": "CET"}')]
    assert final.usage.prompt_tokens == 25 and final.usage.completion_tokens == 61


def test_upstream_stream_relayed_through_encoder_matches_sdk() -> None:
    events = decode((WIRE / "tool_stream.upstream.sse").read_bytes(), [7, 300, 301])[0]
    with sdk_client(encode(events)).chat.completions.stream(model="m", messages=[{"role": "user", "content": "x"}]) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [json.loads(t.function.arguments)["location"] for t in calls] == ["Paris, France", "Bogotá, Colombia"]
    assert final.usage.prompt_tokens == 82
