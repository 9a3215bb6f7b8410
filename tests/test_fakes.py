"""The fake upstreams are faithful: the official SDKs, pointed straight at them
(no router), parse what they send; Ollama's NDJSON has the documented fields;
the chaos actions do what they say; the background loop starts and stops."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from dataclasses import dataclass, field

import anthropic
import anyio
import h11
import ollama
import openai
import pytest

from background import BackgroundLoop
from fakes import Close, Delay, FakeUpstream, Fault, Hang, Reply, ToolCall, drip, vector_for

USER = [{"role": "user", "content": "hello there"}]
WEATHER = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"zone": "CET", "fmt": "24h"}')]


@pytest.fixture
def fake():
    with FakeUpstream() as server:
        yield server
    assert not server.errors, server.errors


def oai(fake: FakeUpstream, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0, **kwargs)


def claude(fake: FakeUpstream, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0, **kwargs)


@dataclass
class Exchange:
    """One request over a raw socket, read with an h11 client: the response
    body as the HTTP chunks the server wrote, and how the connection ended."""

    status: int = 0
    headers: dict = field(default_factory=dict)
    chunks: list = field(default_factory=list)
    arrivals: list = field(default_factory=list)
    complete: bool = False  # the body ended properly
    error: str = ""  # why it did not

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def exchange(fake: FakeUpstream, path: str, payload: dict | None = None,
             method: str = "POST", timeout: float = 5.0) -> Exchange:
    sock = socket.create_connection(("127.0.0.1", fake.port), timeout=timeout)
    conn = h11.Connection(h11.CLIENT)
    data = json.dumps(payload).encode() if payload is not None else b""
    head = [("host", "fake"), ("content-length", str(len(data)))]
    sock.sendall(conn.send(h11.Request(method=method, target=path, headers=head))
                 + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
    result, current = Exchange(), b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                result.status = event.status_code
                result.headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                current += event.data
                if event.chunk_end or "transfer-encoding" not in result.headers:
                    result.chunks.append(current)
                    result.arrivals.append(time.monotonic())
                    current = b""
            elif isinstance(event, h11.EndOfMessage):
                result.complete = True
                return result
    except (h11.RemoteProtocolError, ConnectionResetError) as exc:
        if current:
            result.chunks.append(current)
        result.error = type(exc).__name__
        return result
    finally:
        sock.close()


# --------------------------------------------------------------------------
# BackgroundLoop


async def _service(value: int, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
    task_status.started(value * 2)
    await anyio.sleep_forever()


async def _crash_later(*, task_status=anyio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    raise ValueError("service crashed")


async def _fail_early(*, task_status=anyio.TASK_STATUS_IGNORED) -> None:
    raise KeyError("no port")


def test_background_loop_start_call_and_prompt_exit():
    """start() returns the started() value; call() runs a coroutine; exit
    cancels a task that would run forever (exit raises after its stop_timeout otherwise)."""
    with BackgroundLoop(stop_timeout=10) as loop:
        assert loop.start(_service, 21) == 42
        assert loop.call(anyio.sleep, 0) is None
        assert loop.call(_add, 2, 3) == 5


async def _add(a: int, b: int) -> int:
    await anyio.sleep(0)
    return a + b


def test_background_loop_reports_a_crashed_service_on_exit():
    """An exception escaping a started task is raised when the loop exits."""
    with pytest.raises(ValueError, match="service crashed"):
        with BackgroundLoop() as loop:
            loop.start(_crash_later)


def test_background_loop_start_raises_when_service_fails_before_started():
    with BackgroundLoop() as loop:
        with pytest.raises(KeyError):
            loop.start(_fail_early)
        assert loop.start(_service, 1) == 2  # the loop is still usable


# --------------------------------------------------------------------------
# OpenAI chat completions, checked with the official SDK


def test_openai_sync_non_stream_echoes_and_records(fake):
    """The default answer echoes the last user text; the request is recorded."""
    reply = oai(fake).chat.completions.create(model="gpt-x", messages=USER, temperature=0.5)
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "gpt-x" and reply.object == "chat.completion"
    assert reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 3
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer x"
    assert request.json["temperature"] == 0.5 and request.format == "openai"


def test_openai_sync_stream_chunks_and_usage(fake):
    """Role delta first, one chunk per piece, finish_reason, then the usage
    chunk with no choices when include_usage is asked for."""
    fake.enqueue(Reply.text("The quick brown fox", chunks=4, usage=(11, 4)))
    chunks = list(oai(fake).chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:5]]
    assert pieces == ["The ", "quick", " brow", "n fox"]
    assert chunks[5].choices[0].finish_reason == "stop"
    assert chunks[6].choices == [] and chunks[6].usage.total_tokens == 15
    assert all(c.usage is None for c in chunks[:6]) and len(chunks) == 7


def test_openai_stream_without_include_usage_has_no_usage_chunk(fake):
    stream = oai(fake).chat.completions.create(model="m", messages=USER, stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices for c in chunks)


def test_openai_stream_helper_accumulates_parallel_tool_calls(fake):
    """The SDK's stream helper reassembles index-keyed argument deltas."""
    fake.enqueue(Reply.tool_calls(WEATHER, chunks=4))
    with oai(fake).chat.completions.stream(model="m", messages=USER) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("call_0_0", "get_weather", '{"city": "Paris"}'),
        ("call_0_1", "get_time", '{"zone": "CET", "fmt": "24h"}'),
    ]


def test_openai_tool_call_wire_shape(fake):
    """First delta of a call carries id, type and name; then argument pieces only."""
    fake.enqueue(Reply.tool_calls([ToolCall("f", '{"a": 1}', id="call_abc")], chunks=2))
    result = exchange(fake, "/v1/chat/completions", {"model": "m", "messages": USER, "stream": True})
    events = [json.loads(c[len(b"data: "):]) for c in result.chunks[:-1]]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "f", "arguments": ""}}]}
    assert deltas[1:3] == [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
                           for p in ('{"a"', ': 1}')]
    assert result.chunks[-1] == b"data: [DONE]\n\n" and result.complete


def test_openai_non_stream_tool_calls(fake):
    fake.enqueue(Reply.tool_calls(WEATHER[:1], text="checking"))
    message = oai(fake).chat.completions.create(model="m", messages=USER).choices[0].message
    assert message.content == "checking"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}


@pytest.mark.anyio
async def test_openai_async_client_stream_text(fake):
    """AsyncOpenAI in the test's loop, the fake in its own thread."""
    client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0)
    fake.enqueue(Reply.text("one two three"))
    async with client:
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        reply = await client.chat.completions.create(model="m", messages=USER)
    assert text == "one two three"
    assert reply.choices[0].message.content == "echo: hello there"


@pytest.mark.parametrize("status, error", [
    (400, openai.BadRequestError), (401, openai.AuthenticationError),
    (404, openai.NotFoundError), (429, openai.RateLimitError),
    (500, openai.InternalServerError), (503, openai.InternalServerError),
])
def test_openai_errors_are_typed(fake, status, error):
    fake.enqueue(Reply.error(status, "scripted failure", retry_after=7))
    with pytest.raises(error) as info:
        oai(fake).chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == status
    assert info.value.body["message"] == "scripted failure"
    assert info.value.response.headers["retry-after"] == "7"


def test_openai_error_mid_stream_raises(fake):
    fake.enqueue(Reply.text("a b c d", fault=Fault(after=3, kind="error", message="overloaded")))
    stream = oai(fake).chat.completions.create(model="m", messages=USER, stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="overloaded"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "a", " b"]


# --------------------------------------------------------------------------
# Anthropic messages, checked with the official SDK


def test_anthropic_create_text(fake):
    message = claude(fake).messages.create(
        model="claude-x", max_tokens=50, messages=USER, system=[{"type": "text", "text": "be brief"}])
    assert message.content[0].text == "echo: hello there"
    assert message.stop_reason == "end_turn" and message.model == "claude-x"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    [request] = fake.requests
    assert request.path == "/v1/messages"
    # this SDK version sends the key as a bearer token; older ones used x-api-key
    assert "x" in (request.headers.get("x-api-key"), request.headers.get("authorization", "")[7:])
    assert "anthropic-version" in request.headers


def test_anthropic_stream_final_message_text(fake):
    fake.enqueue(Reply.text("streamed words here", chunks=3, usage=(9, 3)))
    with claude(fake).messages.stream(model="c", max_tokens=50, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["stream", "ed wor", "ds here"]
    assert final.content[0].text == "streamed words here"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3


def test_anthropic_stream_text_then_tool_use(fake):
    fake.enqueue(Reply.tool_calls(WEATHER, text="Let me look.", chunks=3))
    with claude(fake).messages.stream(model="c", max_tokens=50, messages=USER) as stream:
        final = stream.get_final_message()
    text, *tools = final.content
    assert text.text == "Let me look." and final.stop_reason == "tool_use"
    assert [(t.id, t.name, t.input) for t in tools] == [
        ("toolu_0_0", "get_weather", {"city": "Paris"}),
        ("toolu_0_1", "get_time", {"zone": "CET", "fmt": "24h"}),
    ]


def test_anthropic_event_sequence_on_the_wire(fake):
    """message_start, content_block_start, ping, deltas, stops, message_delta,
    message_stop: each its own `event:`/`data:` frame and its own write."""
    fake.enqueue(Reply.tool_calls(WEATHER[:1], text="hi", chunks=2))
    result = exchange(fake, "/v1/messages", {"model": "c", "max_tokens": 5, "messages": USER,
                                             "stream": True})
    names = [c.split(b"\n")[0].decode() for c in result.chunks]
    assert names == ["event: " + n for n in [
        "message_start", "content_block_start", "ping", "content_block_delta",
        "content_block_delta", "content_block_stop", "content_block_start",
        "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]]
    tool_start = json.loads(result.chunks[6].split(b"data: ")[1])
    assert tool_start["content_block"] == {"type": "tool_use", "id": "toolu_0_0",
                                           "name": "get_weather", "input": {}}
    first_json = json.loads(result.chunks[7].split(b"data: ")[1])
    assert first_json["delta"] == {"type": "input_json_delta", "partial_json": ""}
    assert result.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize("status, error", [
    (401, anthropic.AuthenticationError), (404, anthropic.NotFoundError),
    (413, anthropic.RequestTooLargeError), (429, anthropic.RateLimitError),
    (500, anthropic.InternalServerError), (529, anthropic.OverloadedError),
])
def test_anthropic_errors_are_typed(fake, status, error):
    fake.enqueue(Reply.error(status, "scripted failure"))
    with pytest.raises(error) as info:
        claude(fake).messages.create(model="c", max_tokens=5, messages=USER)
    assert info.value.status_code == status
    assert info.value.body["error"]["message"] == "scripted failure"
    assert info.value.body["type"] == "error"


def test_anthropic_error_event_mid_stream(fake):
    fake.enqueue(Reply.text("a b c", fault=Fault(after=4, kind="error", message="Overloaded")))
    with pytest.raises(anthropic.APIStatusError, match="Overloaded") as info:
        with claude(fake).messages.stream(model="c", max_tokens=5, messages=USER) as stream:
            stream.get_final_message()
    assert info.value.body["error"]["type"] == "overloaded_error"


# --------------------------------------------------------------------------
# Ollama, checked against the documented NDJSON fields


def test_ollama_streams_ndjson_by_default(fake):
    """Without "stream": false Ollama streams: done:false lines, then a done:true
    line with done_reason and the counters; one line per write."""
    result = exchange(fake, "/api/chat", {"model": "llama3.2", "messages": USER})
    assert result.headers["content-type"] == "application/x-ndjson" and result.complete
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in result.chunks)
    lines = [json.loads(c) for c in result.chunks]
    *parts, last = lines
    for part in parts:
        assert set(part) == {"model", "created_at", "message", "done"} and part["done"] is False
        assert part["message"]["role"] == "assistant" and part["model"] == "llama3.2"
    assert "".join(p["message"]["content"] for p in parts) == "echo: hello there"
    assert last["done"] is True and last["done_reason"] == "stop"
    assert {"total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
            "eval_count", "eval_duration"} <= set(last)
    assert (last["prompt_eval_count"], last["eval_count"]) == (2, 3)


def test_ollama_tool_calls_stream_and_non_stream(fake):
    """Tool calls arrive whole with arguments as a JSON object."""
    fake.enqueue(Reply.tool_calls(WEATHER), Reply.tool_calls(WEATHER, stop="max_tokens"))
    streamed = exchange(fake, "/api/chat", {"model": "m", "messages": USER})
    calls = [json.loads(c)["message"]["tool_calls"] for c in streamed.chunks[:-1]]
    assert calls == [[{"id": "call_0_0", "function": {"index": 0, "name": "get_weather",
                                                      "arguments": {"city": "Paris"}}}],
                     [{"id": "call_0_1", "function": {"index": 1, "name": "get_time",
                                                      "arguments": {"zone": "CET", "fmt": "24h"}}}]]
    whole = exchange(fake, "/api/chat", {"model": "m", "messages": USER, "stream": False})
    body = json.loads(whole.body)
    assert body["done"] is True and body["done_reason"] == "length"
    assert [c["function"]["name"] for c in body["message"]["tool_calls"]] == ["get_weather", "get_time"]
    assert whole.headers["content-type"] == "application/json; charset=utf-8"


def test_ollama_escapes_like_go(fake):
    fake.enqueue(Reply.text("a<b>&c", chunks=1))
    result = exchange(fake, "/api/chat", {"model": "m", "messages": USER})
    assert b'"content":"a\\u003cb\\u003e\\u0026c"' in result.chunks[0]
    assert json.loads(result.chunks[0])["message"]["content"] == "a<b>&c"


def test_ollama_official_client_reads_the_fake(fake):
    """The official ollama client, straight at the fake: chat (streamed and
    not, with tool calls), list and show (a listed model, then a 404)."""
    client = ollama.Client(host=fake.url)
    assert client.chat(model="m", messages=USER, stream=False).message.content == "echo: hello there"
    parts = list(client.chat(model="m", messages=USER, stream=True))
    assert "".join(p.message.content for p in parts) == "echo: hello there" and parts[-1].eval_count == 3
    fake.enqueue(Reply.tool_calls(WEATHER))
    calls = client.chat(model="m", messages=USER, stream=False).message.tool_calls
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET", "fmt": "24h"})]
    assert [m.model for m in client.list().models] == ["llama3.2:latest", "qwen2.5:0.5b"]
    shown = client.show("llama3.2:latest")
    assert shown.capabilities == ["completion", "tools"] and shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("nope")
    assert caught.value.status_code == 404


def test_model_lists(fake):
    fake.models = ["llama3.2:latest", "phi3:mini"]
    tags = json.loads(exchange(fake, "/api/tags", method="GET").body)
    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "phi3:mini"]
    assert {"model", "modified_at", "size", "digest", "details"} <= set(tags["models"][0])
    listed = oai(fake).models.list()
    assert [m.id for m in listed.data] == ["llama3.2:latest", "phi3:mini"]


def test_ollama_error_shape(fake):
    fake.enqueue(Reply.error(404, 'model "nope" not found, try pulling it first'))
    result = exchange(fake, "/api/chat", {"model": "nope", "messages": USER})
    assert result.status == 404
    assert json.loads(result.body) == {"error": 'model "nope" not found, try pulling it first'}


def test_unknown_route_is_404(fake):
    result = exchange(fake, "/v2/nothing", {})
    assert result.status == 404 and "error" in json.loads(result.body)


# --------------------------------------------------------------------------
# Text completions and embeddings, checked with the official clients


def test_openai_completions_with_the_sdk(fake):
    client = oai(fake)
    reply = client.completions.create(model="m", prompt="def add(a, b):", suffix="\n", max_tokens=8)
    assert reply.object == "text_completion" and reply.id == "cmpl-fake0"
    assert reply.choices[0].text == "echo: def add(a, b):" and reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0
    chunks = list(client.completions.create(model="m", prompt="one two", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: one two"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert fake.requests[0].json["suffix"] == "\n"


def float32s(embedding: list[float] | str) -> list[float]:
    """An SDK embedding as floats: base64 asked for explicitly stays a string."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return embedding


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
def test_openai_embeddings_with_the_sdk(fake, encoding):
    """Without encoding_format the SDK asks for base64 and decodes it itself."""
    extra = {"encoding_format": encoding} if encoding else {}
    reply = oai(fake).embeddings.create(model="e", input=["alpha", "beta gamma"], **extra)
    assert [float32s(d.embedding) for d in reply.data] == [vector_for("alpha"), vector_for("beta gamma")]
    assert reply.usage.prompt_tokens == 3 and fake.requests[0].json["encoding_format"] == (encoding or "base64")
    wide = oai(fake).embeddings.create(model="e", input="x", dimensions=40)
    assert wide.data[0].embedding == vector_for("x", 40)


def test_embeddings_reply_can_ignore_the_asked_encoding(fake):
    fake.enqueue(Reply.embeddings(encoding="float"))
    raw = exchange(fake, "/v1/embeddings", {"model": "e", "input": "x", "encoding_format": "base64"})
    assert json.loads(raw.body)["data"][0]["embedding"] == vector_for("x")


def test_ollama_generate_and_embed_with_the_official_client(fake):
    client = ollama.Client(host=fake.url)
    whole = client.generate(model="m", prompt="def f(", suffix="return 1", stream=False)
    assert whole.response == "echo: def f(" and whole.done and whole.done_reason == "stop"
    assert whole.prompt_eval_count == 2 and whole.eval_count == 3
    pieces = list(client.generate(model="m", prompt="a b", stream=True))
    assert "".join(p.response for p in pieces) == "echo: a b" and pieces[-1].done and not pieces[0].done
    assert fake.requests[0].route == "/api/generate" and fake.requests[0].json["suffix"] == "return 1"
    embedded = client.embed(model="e", input=["alpha", "beta"])
    assert embedded.embeddings == [vector_for("alpha"), vector_for("beta")]
    assert embedded.prompt_eval_count == 2 and embedded.total_duration > 0


# --------------------------------------------------------------------------
# Scripting and chaos actions


def test_queue_then_script_then_default(fake):
    fake.script = lambda request: Reply.text("scripted") if "pick" in request.path else None
    fake.enqueue(Reply.text("queued"))
    client = oai(fake)
    texts = [client.chat.completions.create(model="m", messages=USER).choices[0].message.content
             for _ in range(2)]
    picked = exchange(fake, "/pick/chat/completions", {"model": "m", "messages": USER})
    assert texts == ["queued", "echo: hello there"]
    assert json.loads(picked.body)["choices"][0]["message"]["content"] == "scripted"


def test_script_failure_is_a_500_and_recorded():
    with FakeUpstream() as fake:
        fake.script = lambda request: 1 / 0
        result = exchange(fake, "/v1/chat/completions", {"model": "m", "messages": USER})
    assert result.status == 500 and b"ZeroDivisionError" in result.body
    assert len(fake.errors) == 1


def test_close_mid_stream_breaks_the_response(fake):
    """Close after two frames: the client gets those two, then an incomplete body."""
    fake.enqueue(Reply.text("a b c d", fault=Fault(after=2)))
    result = exchange(fake, "/v1/chat/completions", {"model": "m", "messages": USER, "stream": True})
    assert len(result.chunks) == 2 and not result.complete and result.error
    fake.enqueue(Reply.text("a b c d", fault=Fault(after=2)))
    stream = oai(fake).chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIConnectionError):
        list(stream)


def test_partial_frame_and_missing_terminal_event(fake):
    fake.enqueue(Reply.text("a b", fault=Fault(after=3, kind="partial")),
                 Reply.text("a b", fault=Fault(after=4, kind="end")))
    cut = exchange(fake, "/v1/messages", {"model": "c", "max_tokens": 5, "messages": USER,
                                          "stream": True})
    assert not cut.complete and cut.chunks[-1].startswith(b"event: content_block_delta")
    assert not cut.chunks[-1].endswith(b"\n\n")
    unterminated = exchange(fake, "/v1/messages", {"model": "c", "max_tokens": 5,
                                                   "messages": USER, "stream": True})
    assert unterminated.complete and len(unterminated.chunks) == 4
    assert b"message_stop" not in unterminated.body


def test_truncated_non_stream_body_is_a_connection_error(fake):
    fake.enqueue(Reply.text("a long enough answer", fault=Fault(kind="partial")))
    with pytest.raises(openai.APIConnectionError):
        oai(fake).chat.completions.create(model="m", messages=USER)


def test_reset_before_headers(fake):
    fake.enqueue(Reply.raw(None, actions=[Close(reset=True)]))
    with pytest.raises(anthropic.APIConnectionError):
        claude(fake).messages.create(model="c", max_tokens=5, messages=USER)


def test_delay_holds_the_head(fake):
    fake.enqueue(Reply.text("late").delayed(0.3))
    begin = time.monotonic()
    reply = oai(fake).chat.completions.create(model="m", messages=USER)
    assert time.monotonic() - begin >= 0.3 and reply.choices[0].message.content == "late"


def test_per_chunk_delay_spaces_the_writes(fake):
    """Each frame is its own HTTP chunk, and the delays add up (a busy client
    may read late, so only the total since the request is certain)."""
    fake.enqueue(Reply.text("a b c", delay=0.05))
    begin = time.monotonic()
    result = exchange(fake, "/api/chat", {"model": "m", "messages": USER})
    assert len(result.chunks) == 4 and result.arrivals[-1] - begin >= 0.15


def test_hang_times_the_client_out_and_the_fake_sees_it_leave(fake):
    """A hanging upstream trips the SDK timeout; the client then closes the
    connection, and the fake notices it at once."""
    fake.enqueue(Reply.raw(200, [("content-type", "application/json")], [b"{", Hang()]))
    with pytest.raises(openai.APITimeoutError):
        oai(fake, timeout=0.3).chat.completions.create(model="m", messages=USER)
    fake.wait_peer_closed(1, timeout=2)
    fake.wait_until(lambda f: f.connections_open == 0, timeout=2)


def test_raw_bytes_and_drip(fake):
    """status=None writes bytes unframed (here a hand-made response, in 3-byte drips)."""
    wire = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    fake.enqueue(Reply.raw(None, actions=drip(wire, size=3, interval=0.01)))
    result = exchange(fake, "/anything", {})
    assert (result.status, result.body, result.complete) == (200, b"hello", True)


def test_keep_alive_reuses_one_connection(fake):
    client = oai(fake)
    for _ in range(2):
        client.chat.completions.create(model="m", messages=USER)
    assert fake.connections_opened == 1
    assert [r.connection_id for r in fake.requests] == [0, 0]
    client.close()
    fake.wait_peer_closed(1)


@pytest.mark.anyio
async def test_serve_in_the_tests_own_loop():
    """Used from an async test: tg.start(fake.serve); the fake notices a client
    that disconnects in the middle of a hanging stream."""
    fake = FakeUpstream()
    fake.enqueue(Reply.raw(200, [("content-type", "text/event-stream")],
                           [b"data: {}\n\n", Delay(0.01), Hang()]))
    async with anyio.create_task_group() as tg:
        port = await tg.start(fake.serve)
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            await client.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                              b"content-length: 2\r\n\r\n{}")
            assert b"data: {}" in await client.receive()
            await fake.wait_until_async(lambda f: len(f.requests) == 1)
        await fake.wait_peer_closed_async(1, timeout=2)
        assert fake.connections[0].closed_by_peer
        tg.cancel_scope.cancel()
    assert not fake.errors


def test_reset_is_a_tcp_rst_and_close_is_a_fin(fake):
    """Close(reset=True) aborts with RST; Close() ends with FIN mid-body."""
    # the pause lets the client read the head before the RST discards its buffers
    fake.enqueue(Reply.raw(200, [], [b"data: {}\n\n", Delay(0.1), Close(reset=True)]),
                 Reply.text("a b", fault=Fault(after=1, kind="close")))
    payload = {"model": "m", "messages": USER, "stream": True}
    reset = exchange(fake, "/v1/chat/completions", payload)
    closed = exchange(fake, "/v1/chat/completions", payload)
    assert (reset.status, reset.error) == (200, "ConnectionResetError")
    assert (len(closed.chunks), closed.error) == (1, "RemoteProtocolError")


def test_stop_reasons_map_to_each_format(fake):
    """One canonical stop reason, each format's own word for it."""
    fake.enqueue(*[Reply.text("x", stop="max_tokens")] * 3)
    assert oai(fake).chat.completions.create(
        model="m", messages=USER).choices[0].finish_reason == "length"
    assert claude(fake).messages.create(
        model="c", max_tokens=1, messages=USER).stop_reason == "max_tokens"
    result = exchange(fake, "/api/chat", {"model": "m", "messages": USER, "stream": False})
    assert json.loads(result.body)["done_reason"] == "length"
    with pytest.raises(ValueError):
        Reply.text("x", stop="length")
    with pytest.raises(ValueError):
        Fault(kind="explode")
