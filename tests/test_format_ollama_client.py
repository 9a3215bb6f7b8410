"""Ollama's client API (formats/ollama_client.py), pure: /api/chat and
/api/generate bodies parsed into canonical requests, what each upstream format
is then sent, and replies rendered as Ollama objects and NDJSON lines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import anthropic, ollama, ollama_client, openai

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
JPEG = "/9j/4AAQSkZJRgABAQ"
CHAT, GENERATE = ollama_client.CHAT, ollama_client.GENERATE


def chat(**fields) -> c.Request:
    fields.setdefault("model", "llama3.2")
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return CHAT.parse_request(fields)


def sent(req: c.Request, fmt: str) -> dict:
    module = {"openai": openai, "anthropic": anthropic, "ollama": ollama}[fmt]
    base = "http://127.0.0.1:1/v1" if fmt == "openai" else "http://127.0.0.1:1"
    return json.loads(module.build_request(req, "m", Provider(name=f"p-{fmt}", format=fmt, base_url=base)).body)


# --- parsing ------------------------------------------------------------------------


def test_chat_defaults_to_streaming_and_keeps_the_body():
    req = chat()
    assert req.stream is True and req.client_format == "ollama" and req.raw["model"] == "llama3.2"
    assert chat(stream=False).stream is False
    assert req.messages == [c.Message("user", [c.Text("hi")])]


def test_system_messages_join_the_system_prompt_and_images_get_a_media_type():
    req = chat(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is this?", "images": [PNG, JPEG]},
        {"role": "system", "content": "and kind"},
    ])
    assert req.system == "be brief\n\nand kind"
    text, png, jpeg = req.messages[0].content
    assert text == c.Text("what is this?")
    assert (png.media_type, png.data) == ("image/png", PNG) and jpeg.media_type == "image/jpeg"


def test_tool_calls_get_ids_from_their_place_in_the_conversation():
    """Ollama's calls carry no ids: call_<message>_<call>, and results pair
    with the calls before them by name, else in order."""
    history = [
        {"role": "user", "content": "weather and time in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {"tz": "CET"}}},
        ]},
        {"role": "tool", "tool_name": "get_time", "content": "12:00"},
        {"role": "tool", "content": "sunny"},
    ]
    req = chat(messages=history)
    assistant, results = req.messages[1], req.messages[2]
    assert assistant.content == [
        c.ToolCall("call_1_0", "get_weather", '{"city":"Paris"}'),
        c.ToolCall("call_1_1", "get_time", '{"tz":"CET"}'),
    ]
    assert results.role == "user"
    assert [(r.tool_call_id, r.text) for r in results.content] == [("call_1_1", "12:00"), ("call_1_0", "sunny")]
    assert chat(messages=history).messages == req.messages  # the same history, the same ids


def test_tool_results_pair_by_id_when_the_client_sends_ids():
    req = chat(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f"}}, {"id": "b", "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "b", "tool_name": "f", "content": "2"},
        {"role": "tool", "tool_call_id": "a", "tool_name": "f", "content": "1"},
    ])
    assert [(r.tool_call_id, r.text) for r in req.messages[2].content] == [("b", "2"), ("a", "1")]


def test_a_tool_result_without_a_call_goes_as_user_text():
    req = chat(messages=[{"role": "user", "content": "x"}, {"role": "tool", "tool_name": "f", "content": "42"}])
    assert req.messages[1] == c.Message("user", [c.Text("Result of tool f: 42")])


def test_tools_and_options():
    req = chat(
        tools=[{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
        options={"temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": "END", "num_predict": 64,
                 "num_ctx": 8192, "presence_penalty": 0.5},
        keep_alive="10m",
    )
    assert req.tools == [c.Tool("f", "d", {"type": "object"})]
    assert (req.temperature, req.top_p, req.stop, req.max_tokens) == (0.2, 0.9, ["END"], 64)
    assert req.seed == 7 and req.extras["openai"] == {"presence_penalty": 0.5}
    assert req.extras["anthropic"] == {"top_k": 40}
    assert req.extras["ollama"]["keep_alive"] == "10m" and req.extras["ollama"]["options"]["num_ctx"] == 8192
    assert chat(options={"num_predict": -1}).max_tokens is None


def test_format_and_think():
    assert chat(format="json").response_format == {"type": "json_object", "strict": True}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert chat(format=schema).response_format["schema"] == schema
    assert chat(format="").response_format is None
    req = chat(think="high")
    assert req.extras["anthropic"]["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert req.extras["openai"]["reasoning_effort"] == "high"
    assert "thinking" not in chat(think=False).extras.get("anthropic", {})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "images": "abc"}]}, "messages[0].images"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, "messages[0].tool_calls[0].function.name"),
        ({"stream": "yes"}, "stream"),
        ({"options": []}, "options"),
        ({"options": {"temperature": "hot"}}, "options.temperature"),
        ({"options": {"num_predict": 1.5}}, "options.num_predict"),
        ({"options": {"stop": [1]}}, "options.stop"),
        ({"format": "yaml"}, "format"),
        ({"think": "very"}, "think"),
        ({"keep_alive": True}, "keep_alive"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ],
)
def test_bad_chat_fields_name_the_field(fields, param):
    with pytest.raises(errors.BadRequest) as caught:
        chat(**fields)
    assert caught.value.param == param and caught.value.status == 400
    # One message style for every client format (formats/validate.py).
    assert caught.value.message.startswith((f"{param} must be ", f"{param} is required")), caught.value.message


def test_generate_is_a_one_turn_request():
    req = GENERATE.parse_request({"model": "m", "prompt": "why?", "system": "short", "images": [PNG], "options": {"seed": 1}})
    assert req.client_format == "ollama-generate" and req.stream is True and req.system == "short"
    assert req.messages == [c.Message("user", [c.Text("why?"), c.Image("image/png", PNG)])]
    assert req.seed == 1 and "openai" not in req.extras


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"context": [1, 2]}, "context"), ({"template": "{{ .Prompt }}"}, "template"), ({"prompt": ""}, "prompt"),
     ({"prompt": 1}, "prompt"), ({"suffix": 1}, "suffix"), ({"raw": "yes"}, "raw"), ({"suffix": "}", "images": [PNG]}, "images")],
)
def test_generate_refuses_what_it_cannot_do_by_name(fields, param):
    with pytest.raises(errors.BadRequest) as caught:
        GENERATE.parse_request({"model": "m", "prompt": "p", **fields})
    assert caught.value.param == param and param in caught.value.message


@pytest.mark.parametrize("fields", [{"suffix": "\n    return x\n"}, {"raw": True}])
def test_generate_with_a_suffix_or_raw_is_a_text_completion(fields):
    body = {"model": "m", "prompt": "def f(", "options": {"num_predict": 9, "seed": 2}, "stream": False, **fields}
    req = GENERATE.parse_request(body)
    assert (req.kind, req.prompt, req.suffix, req.max_tokens, req.seed) == (c.COMPLETION, "def f(", fields.get("suffix"), 9, 2)
    assert req.client_format == "ollama"  # an Ollama upstream's /api/generate speaks it: passed through
    assert GENERATE.parse_request({"model": "m", "prompt": "p"}).kind == c.CHAT


# --- what each upstream is sent -------------------------------------------------------


def test_ollama_chat_to_an_ollama_upstream_is_passed_through():
    body = {"model": "alias", "messages": [{"role": "user", "content": "hi", "images": [PNG]}],
            "options": {"num_ctx": 4096, "mirostat": 1}, "keep_alive": -1, "think": True}
    assert sent(CHAT.parse_request(body), "ollama") == {**body, "model": "m"}


def test_generate_to_an_ollama_upstream_keeps_ollama_fields():
    req = GENERATE.parse_request({"model": "x", "prompt": "p", "keep_alive": "1h", "think": "low",
                                  "options": {"num_ctx": 4096, "temperature": 0.1}, "format": "json", "stream": False})
    body = sent(req, "ollama")
    assert body["messages"] == [{"role": "user", "content": "p"}] and body["stream"] is False
    assert (body["keep_alive"], body["think"], body["format"]) == ("1h", "low", "json")
    assert body["options"] == {"num_ctx": 4096, "temperature": 0.1}


def test_openai_upstream_gets_seed_reasoning_and_json_mode():
    body = sent(chat(options={"seed": 3, "top_k": 5, "num_predict": 9}, think=True, format="json", keep_alive="5m"), "openai")
    assert (body["seed"], body["reasoning_effort"], body["max_tokens"]) == (3, "medium", 9)
    assert body["response_format"] == {"type": "json_object"}
    assert "top_k" not in body and "keep_alive" not in body and "options" not in body


def test_anthropic_upstream_gets_top_k_thinking_room_and_refuses_json_mode():
    body = sent(chat(options={"top_k": 5}, think="low"), "anthropic")
    assert body["top_k"] == 5 and body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == anthropic.DEFAULT_MAX_TOKENS  # more than the budget already
    assert sent(chat(think="high"), "anthropic")["max_tokens"] == 16384 + anthropic.DEFAULT_MAX_TOKENS
    assert sent(chat(think="high", options={"num_predict": 20000}), "anthropic")["max_tokens"] == 20000
    with pytest.raises(errors.BadRequest, match="provider 'p-anthropic' .* no JSON mode"):
        sent(chat(format="json"), "anthropic")
    schema = {"type": "object", "properties": {}}
    assert sent(chat(format=schema), "anthropic")["output_config"]["format"]["schema"] == schema


def test_paired_tool_calls_and_results_reach_openai_and_anthropic():
    req = chat(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "w", "arguments": {"c": "P"}}}]},
        {"role": "tool", "tool_name": "w", "content": "sunny"},
    ])
    oa = sent(req, "openai")["messages"]
    assert oa[1]["tool_calls"][0]["id"] == "call_1_0" and oa[2] == {"role": "tool", "tool_call_id": "call_1_0", "content": "sunny"}
    an = sent(req, "anthropic")["messages"]
    assert an[1]["content"][0]["id"] == "call_1_0" and an[2]["content"][0]["tool_use_id"] == "call_1_0"


# --- replies --------------------------------------------------------------------------

NOW = 1735689600.25  # 2025-01-01T00:00:00.25Z


def timed(req: c.Request) -> c.Request:
    req.now, req.timing = NOW, (0.5, 2.0)
    return req


def test_chat_reply():
    req = timed(chat(stream=False))
    resp = c.Response("r", "upstream-model", [c.Text("hello"), c.ToolCall("t1", "f", '{"a":1}')], "tool_use", c.Usage(5, 3))
    assert CHAT.render_response(resp, req) == {
        "model": "upstream-model", "created_at": "2025-01-01T00:00:00.250000Z",
        "message": {"role": "assistant", "content": "hello",
                    "tool_calls": [{"id": "t1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]},
        "done": True, "done_reason": "stop", "total_duration": 2_000_000_000, "load_duration": 0,
        "prompt_eval_count": 5, "prompt_eval_duration": 500_000_000, "eval_count": 3, "eval_duration": 1_500_000_000,
    }


def test_generate_reply_and_thinking():
    req = timed(GENERATE.parse_request({"model": "m", "prompt": "p"}))
    thinking = c.Opaque("anthropic", {"type": "thinking", "thinking": "hmm", "signature": "s"})
    body = GENERATE.render_response(c.Response("r", "m", [thinking, c.Text("42")], "max_tokens", c.Usage(1, 2)), req)
    assert (body["response"], body["thinking"], body["done_reason"]) == ("42", "hmm", "length")
    assert "message" not in body


def test_stream_lines():
    req = timed(chat())
    encoder = CHAT.Encoder(req, "m")
    events = [
        c.MessageStart("x", "m", c.Usage(4, 0)), c.TextDelta("Hel"), c.TextDelta("lo"),
        c.ToolCallStart(0, "t1", "f"), c.ToolCallDelta(0, '{"a"'), c.ToolCallDelta(0, ":1}"),
        c.UsageUpdate(c.Usage(0, 6)), c.Stop("tool_use"),
    ]
    data = b"".join(encoder.encode(e) for e in events) + encoder.finish()
    lines = [json.loads(line) for line in data.splitlines()]
    assert [line["message"].get("content") for line in lines] == ["Hel", "lo", "", ""]
    assert lines[2]["message"]["tool_calls"] == [{"id": "t1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert all(line["created_at"] == "2025-01-01T00:00:00.250000Z" and line["model"] == "m" for line in lines)
    last = lines[-1]
    assert (last["done_reason"], last["prompt_eval_count"], last["eval_count"], last["total_duration"]) == ("stop", 4, 6, 2_000_000_000)
    assert encoder.finish() == b"" and encoder.ping() == b""


def test_stream_error_and_ping():
    encoder = GENERATE.Encoder(timed(GENERATE.parse_request({"model": "m", "prompt": "p"})), "m")
    assert json.loads(encoder.ping()) == {"model": "m", "created_at": "2025-01-01T00:00:00.250000Z", "response": "", "done": False}
    assert encoder.encode(c.TextDelta("a")).endswith(b"\n")
    assert encoder.error(c.StreamError("upstream broke")) == b'{"error":"upstream broke"}\n'
    assert encoder.end_after_error and encoder.finish() == b"" and encoder.encode(c.TextDelta("b")) == b""


def test_error_body():
    assert ollama_client.error_body(errors.NoRoute("model 'x' not found")) == {"error": "model 'x' not found"}


@given(st.floats(min_value=0, max_value=2**35, allow_nan=False))
def test_created_at_is_rfc3339_utc(now):
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=round(now * 1_000_000))
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert ollama_client._created_at(now) == expected
