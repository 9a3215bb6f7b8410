"""The Ollama chat format (upstream only): request bodies, replies, /api/tags and
NDJSON stream decoding, against golden fixtures in tests/wire/ollama/.

Ollama gives no reply ids and (in older versions) no tool-call ids, so the
module synthesizes them; the golden comparisons replace each synthesized id by
its order of appearance. Set LLMROUTER_UPDATE_GOLDENS=1 to rewrite derived files.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import golden
from golden import assert_golden, tagged
from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import ollama

WIRE = golden.WIRE / "ollama"
STREAMS = ["text_stream", "tool_stream", "error_stream"]


def provider(**kw) -> Provider:
    return Provider(name="local", format="ollama", base_url="http://127.0.0.1:11434", **kw)


def request(**kw) -> c.Request:
    """SPEC section 14's helper: model test-model, one user message, nothing else set."""
    kw.setdefault("model", "test-model")
    kw.setdefault("messages", [c.Message("user", [c.Text("hi")])])
    return c.Request(**kw)


def seeded() -> c.Request:
    """The request an upstream reply belongs to: its id seed makes the ids Ollama does not send."""
    return request(id_seed="5eed")


def body_of(req: c.Request, model: str = "llama3") -> dict:
    return json.loads(ollama.build_request(req, model, provider()).body)


def decode(data: bytes, chunks) -> tuple[list, bytes]:
    decoder = ollama.Decoder(seeded())
    frames = [f for chunk in chunks for f in decoder.feed(chunk)]
    frames += decoder.close()
    return tagged([e for f in frames for e in f.events]), b"".join(f.raw for f in frames)


# --- SPEC 14.2 -------------------------------------------------------------------------


def test_request_includes_system_and_options():
    req = request(model="llama3", system="be terse", max_tokens=128, temperature=0.5)
    body = body_of(req, "llama3")
    assert body["model"] == "llama3"
    assert body["messages"][0] == {"role": "system", "content": "be terse"}
    assert body["messages"][1]["role"] == "user"
    assert body["options"] == {"temperature": 0.5, "num_predict": 128}
    assert "format" not in body


def test_response_maps_usage_and_stop_reason():
    data = json.dumps(
        {"model": "llama3", "message": {"role": "assistant", "content": "hello"}, "done": True,
         "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5}
    ).encode()
    resp = ollama.parse_response(data, seeded())
    assert resp.text == "hello"
    assert resp.stop_reason == "end_turn"
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (10, 5)


def test_parses_tags_response():
    data = b'{"models":[{"name":"llama3:8b"},{"name":"mistral:latest"}]}'
    assert ollama.parse_tags(data) == ["llama3:8b", "mistral:latest"]


# --- build_request ---------------------------------------------------------------------


def test_request_without_options_sends_none_and_stream_flag_always():
    body = body_of(request())
    assert body == {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert body_of(request(stream=True))["stream"] is True


def test_tool_conversation_matches_golden():
    """Images, assistant tool calls, tool results (with tool_name), tools and a schema."""
    req = request(
        system="You are a weather bot.",
        messages=[
            c.Message("user", [c.Text("Weather here?"), c.Image(media_type="image/png", data="iVBORw0KGgo="), c.Image(url="https://x.test/remote.png")]),
            c.Message("assistant", [c.Opaque("anthropic", {"type": "thinking", "thinking": "hmm"}), c.Text("Checking."), c.ToolCall("call_1", "get_current_weather", '{"location":"Paris, FR","format":"celsius"}'), c.ToolCall("call_2", "broken", "{oops")]),
            c.Message("user", [c.ToolResult("call_1", [c.Text("22C, sunny")]), c.ToolResult("call_2", [c.Text("chart"), c.Image(media_type="image/png", data="AAAA")], is_error=True), c.ToolResult("unknown", [c.Text("?")]), c.Text("Thanks, and tomorrow?")]),
            c.Message("user", [c.ToolResult("call_1", [c.Text("again")])]),
        ],
        tools=[c.Tool("get_current_weather", "Get the current weather", {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}), c.Tool("broken")],
        tool_choice="required",
        top_p=0.9,
        stop=["\n\n"],
        stream=True,
        response_format={"type": "json_schema", "name": "w", "schema": {"type": "object", "properties": {"t": {"type": "number"}}}, "strict": True},
    )
    call = ollama.build_request(req, "qwen3:8b", provider(api_key="secret", headers=(("X-Team", "a"),)))
    assert call.path == "/api/chat"
    assert call.headers == [("content-type", "application/json"), ("authorization", "Bearer secret"), ("x-team", "a")]
    body = json.loads(call.body)
    assert_golden(json.dumps(body, indent=1, ensure_ascii=False) + "\n", WIRE / "tool_conversation.request.json")
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "tool", "tool", "user", "tool"]
    assert body["messages"][1]["images"] == ["iVBORw0KGgo="]  # the remote URL cannot be sent
    assert body["messages"][2]["tool_calls"][1] == {"function": {"name": "broken", "arguments": {}}}
    assert body["messages"][3] == {"role": "tool", "content": "22C, sunny", "tool_name": "get_current_weather"}
    assert "tool_name" not in body["messages"][5]
    assert body["format"] == req.response_format["schema"]


def test_json_object_format_and_tool_choice_none():
    req = request(response_format={"type": "json_object"}, tools=[c.Tool("f")], tool_choice="none")
    body = body_of(req)
    assert body["format"] == "json" and "tools" not in body


def test_no_authorization_without_a_key():
    assert ollama.build_request(request(), "m", provider()).headers == [("content-type", "application/json")]


# --- parse_response / error_message ---------------------------------------------------


def test_reply_with_tool_calls_matches_golden():
    resp = ollama.parse_response((WIRE / "reply_tool_calls.upstream.json").read_bytes(), seeded())
    assert resp.stop_reason == "tool_use"
    assert resp.tool_calls[0].id.startswith("call_")
    assert json.loads(resp.tool_calls[0].arguments) == {"format": "celsius", "location": "Paris, FR"}
    assert_golden(json.dumps(tagged(resp), indent=1, ensure_ascii=False) + "\n", WIRE / "reply_tool_calls.canonical.json")


def test_reply_ids_are_unique_and_ollama_call_ids_are_kept():
    data = json.dumps(
        {"model": "m", "done": True, "message": {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_abc", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}, {"function": {"name": "g", "arguments": {}}}]}}
    ).encode()
    first, second = ollama.parse_response(data, request(id_seed="0a")), ollama.parse_response(data, request(id_seed="0b"))
    assert first.id != second.id and first.id.startswith("ollama-0a")
    assert first.tool_calls[0].id == "call_abc"
    assert first.tool_calls[1].id.startswith("call_0a") and first.tool_calls[1].id != second.tool_calls[1].id


@pytest.mark.parametrize("reason, expected", [("stop", "end_turn"), ("length", "max_tokens"), (None, "end_turn"), ("unload", "other")])
def test_done_reasons(reason, expected):
    data = {"model": "m", "message": {"role": "assistant", "content": "x"}, "done": True}
    if reason:
        data["done_reason"] = reason
    assert ollama.parse_response(json.dumps(data).encode(), seeded()).stop_reason == expected


@pytest.mark.parametrize("data", [b"nope", b"[1]", b'{"error": "model \\"x\\" not found"}', b'{"message": {"tool_calls": [{"function": 3}]}}'])
def test_malformed_replies_are_protocol_errors(data):
    with pytest.raises(errors.UpstreamProtocolError):
        ollama.parse_response(data, seeded())


def test_error_message():
    assert ollama.error_message(404, b'{"error":"model \\"llama9\\" not found, try pulling it first"}') == (
        'model "llama9" not found, try pulling it first'
    )
    assert ollama.error_message(500, b"oops") == "oops"
    assert ollama.error_message(503, b"") == "upstream returned HTTP 503"


def test_tags_skip_nameless_entries_and_reject_garbage():
    assert ollama.parse_tags(b'{"models":[{"model":"qwen3:8b"},{"size":1},"x"]}') == ["qwen3:8b"]
    assert ollama.parse_tags(b'{"models":[]}') == []
    for data in (b"<html>", b'{"models": 3}', b"[]"):
        with pytest.raises(errors.UpstreamProtocolError):
            ollama.parse_tags(data)


# --- Decoder --------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_decoder_matches_golden_events(name):
    data = (WIRE / f"{name}.upstream.ndjson").read_bytes()
    events, raw = decode(data, [data])
    assert raw == data
    assert_golden("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events), WIRE / f"{name}.events.jsonl")


@pytest.mark.parametrize("name", STREAMS)
def test_decoder_at_every_byte_split(name):
    data = (WIRE / f"{name}.upstream.ndjson").read_bytes()
    expected = decode(data, [data])
    for cut in range(1, len(data)):
        assert decode(data, [data[:cut], data[cut:]]) == expected, cut
    assert decode(data, [data[i : i + 1] for i in range(len(data))]) == expected


def test_decoder_one_frame_per_line():
    data = (WIRE / "text_stream.upstream.ndjson").read_bytes()
    frames = ollama.Decoder(seeded()).feed(data)
    assert [f.raw for f in frames] == data.splitlines(keepends=True)


def test_streamed_tool_calls_collect_into_a_reply():
    data = (WIRE / "tool_stream.upstream.ndjson").read_bytes()
    decoder = ollama.Decoder(seeded())
    collector = c.ResponseCollector()
    for frame in decoder.feed(data) + decoder.close():
        for event in frame.events:
            collector.add(event)
    resp = collector.response()
    assert resp.text == "Checking both cities."
    assert [json.loads(t.arguments)["location"] for t in resp.tool_calls] == ["Paris, FR", "Zürich, CH"]
    assert len({t.id for t in resp.tool_calls}) == 2
    assert resp.stop_reason == "tool_use" and resp.usage == c.Usage(122, 33)


def test_last_line_without_newline_is_decoded_on_close():
    data = (WIRE / "text_stream.upstream.ndjson").read_bytes().rstrip(b"\n")
    decoder = ollama.Decoder(seeded())
    decoder.feed(data)
    last = decoder.close()
    assert [type(e).__name__ for e in last[0].events] == ["UsageUpdate", "Stop"]
    assert last[0].events[-1] == c.Stop("max_tokens")


def test_truncated_stream_raises_on_close():
    data = (WIRE / "text_stream.upstream.ndjson").read_bytes()
    decoder = ollama.Decoder(seeded())
    decoder.feed(data[: data.rindex(b"{")])
    with pytest.raises(errors.UpstreamProtocolError):
        decoder.close()


def test_error_line_is_a_stream_error_and_close_is_quiet():
    decoder = ollama.Decoder(seeded())
    frames = decoder.feed(b'{"error":"out of memory"}\n')
    assert frames[0].events == [c.StreamError("out of memory", 502, "api_error")]
    assert decoder.close() == []


@pytest.mark.parametrize("line", [b"{oops\n", b"[1,2]\n", b'{"message":{"tool_calls":[{"function":null}]},"done":false}\n'])
def test_malformed_lines_are_protocol_errors(line):
    with pytest.raises(errors.UpstreamProtocolError):
        ollama.Decoder(seeded()).feed(line)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["message", "content", "tool_calls", "function", "name", "arguments", "id", "done", "done_reason", "error", "eval_count"]), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(JSON, max_size=5))
def test_fuzz_decoder_raises_only_protocol_errors(lines):
    decoder = ollama.Decoder(seeded())
    try:
        decoder.feed(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        decoder.close()
    except errors.UpstreamProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(JSON)
def test_fuzz_parse_response_raises_only_protocol_errors(value):
    try:
        ollama.parse_response(json.dumps(value).encode(), seeded())
    except errors.UpstreamProtocolError:
        pass
