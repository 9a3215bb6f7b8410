"""Ollama's own API through the real router: the official `ollama` Python client
(chat, generate, list, show; streamed and not; tools with a follow-up turn;
images) against fake upstreams of all three formats, plus raw requests for the
error shapes, the probes and the refused management endpoints.

One router and three fakes serve the module; routing is by model prefix
(`oa/…`, `an/…`, `ol/…`, prefix stripped), as in test_matrix.py.
"""

from __future__ import annotations

import base64
import json
import socket

import ollama
import pytest

from fakes import FakeUpstream, Fault, Reply
from harness import MODEL, PNG, SENT, UPSTREAMS, running_router, three_upstreams
from llmrouter.formats import anthropic as anthropic_format

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALLS = [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Oslo"}')]

# A model the Ollama upstream lists (`/api/tags`) routes there without a prefix.
DISCOVER_ROUTER = """
[[routers]]
type = "discover"
provider = "ol"
"""


@pytest.fixture(scope="module")
def world():
    with three_upstreams(DISCOVER_ROUTER) as world:
        yield world


@pytest.fixture
def router(world):
    return world[0]


@pytest.fixture
def fakes(world):
    for fake in world[1].values():
        fake._queue.clear()
    return world[1]


@pytest.fixture
def client(router):
    return ollama.Client(host=router.url, timeout=30)


def one_record(router, before: int) -> dict:
    """The single `complete` record of the one request made since `before` records."""
    records = router.wait_records(before + 1)
    assert len(records) == before + 1, records[before:]
    return records[-1]


def read(response, stream: bool):
    """The reply as one object, however it came: a streamed chat or generate
    is folded the way an app would (contents joined, the last object's stats)."""
    if not stream:
        return response, 1
    parts = list(response)
    last = parts[-1]
    assert last.done is True and all(p.done is False for p in parts[:-1])
    if hasattr(last, "message"):
        last.message.content = "".join(p.message.content or "" for p in parts)
        calls = [c for p in parts for c in (p.message.tool_calls or [])]
        last.message.tool_calls = calls or None
    else:
        last.response = "".join(p.response or "" for p in parts)
    return last, len(parts)


# --- chat -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_chat_text(client, router, fakes, upstream, stream):
    before = len(router.records)
    reply = client.chat(model=MODEL[upstream], messages=[{"role": "user", "content": "hello there"}], stream=stream,
                        options={"temperature": 0.3, "num_predict": 50, "stop": ["END"]})
    reply, parts = read(reply, stream)
    assert reply.message.role == "assistant" and reply.message.content == "echo: hello there"
    assert reply.model == SENT[upstream] and reply.done_reason == "stop"  # the model that answered
    assert reply.prompt_eval_count > 0 and reply.eval_count > 0 and reply.total_duration >= 0
    assert parts > 2 if stream else parts == 1

    sent = fakes[upstream].requests[-1].json
    assert sent["model"] == SENT[upstream]
    if upstream == "ollama":  # the same format: the client's own body, model changed
        assert sent["options"] == {"temperature": 0.3, "num_predict": 50, "stop": ["END"]}
        assert sent.get("stream", True) is stream
    elif upstream == "openai":
        assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["stream"]) == (0.3, 50, ["END"], stream)
    else:
        assert (sent["temperature"], sent["max_tokens"], sent["stop_sequences"]) == (0.3, 50, ["END"])

    record = one_record(router, before)
    assert (record["client_format"], record["status"], record["provider"], record["stream"]) == (
        "ollama", 200, {"openai": "oa", "anthropic": "an", "ollama": "ol"}[upstream], stream)
    assert record["response"]["content"] == "echo: hello there"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_chat_tools_with_a_follow_up_turn(client, router, fakes, upstream, stream):
    """The calls come back whole; the follow-up sends them and their results
    (Ollama's: no ids, by tool_name) and the upstream gets correctly paired ids."""
    fakes[upstream].enqueue(Reply.tool_calls(CALLS, text="checking"))
    history = [{"role": "user", "content": "weather in Paris and Oslo?"}]
    reply, _ = read(client.chat(model=MODEL[upstream], messages=history, tools=[WEATHER], stream=stream), stream)
    calls = reply.message.tool_calls
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]
    assert reply.message.content == "checking" and reply.done_reason == "stop"

    history += [
        {"role": "assistant", "content": reply.message.content,
         "tool_calls": [{"function": {"name": c.function.name, "arguments": dict(c.function.arguments)}} for c in calls]},
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
        {"role": "tool", "tool_name": "get_weather", "content": "snow"},
    ]
    fakes[upstream].enqueue(Reply.text("Paris is sunny, Oslo has snow."))
    final, _ = read(client.chat(model=MODEL[upstream], messages=history, tools=[WEATHER], stream=stream), stream)
    assert final.message.content == "Paris is sunny, Oslo has snow."

    sent = fakes[upstream].requests[-1].json
    if upstream == "openai":
        ids = [c["id"] for c in sent["messages"][1]["tool_calls"]]
        results = [(m["tool_call_id"], m["content"]) for m in sent["messages"][2:4]]
        assert results == [(ids[0], "sunny"), (ids[1], "snow")] and len(set(ids)) == 2
        assert sent["tools"][0]["function"]["name"] == "get_weather"
    elif upstream == "anthropic":
        ids = [b["id"] for b in sent["messages"][1]["content"] if b["type"] == "tool_use"]
        results = [(b["tool_use_id"], b["content"]) for b in sent["messages"][2]["content"]]
        assert results == [(ids[0], "sunny"), (ids[1], "snow")] and len(set(ids)) == 2
    else:
        assert sent["messages"][2:] == history[2:]


@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_chat_images(client, fakes, upstream):
    reply = client.chat(model=MODEL[upstream], stream=False,
                        messages=[{"role": "user", "content": "what is this?", "images": [base64.b64decode(PNG)]}])
    assert reply.message.content == "echo: what is this?"
    sent = fakes[upstream].requests[-1].json["messages"][-1]
    if upstream == "openai":
        assert sent["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}}
    elif upstream == "anthropic":
        assert sent["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    else:
        assert sent["images"] == [PNG]


def test_format_json_is_refused_by_anthropic_by_name(client, router):
    before = len(router.records)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=MODEL["anthropic"], messages=[{"role": "user", "content": "x"}], format="json", stream=False)
    assert caught.value.status_code == 400 and "provider 'an'" in caught.value.error
    assert one_record(router, before)["status"] == 400


def test_format_think_and_keep_alive_reach_each_upstream(client, fakes):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for upstream in UPSTREAMS:
        client.chat(model=MODEL[upstream], messages=[{"role": "user", "content": "x"}], stream=False,
                    format=schema, think="low", keep_alive="1m", options={"seed": 4, "top_k": 9})
    oa, an, ol = (fakes[u].requests[-1].json for u in UPSTREAMS)
    assert oa["response_format"]["json_schema"]["schema"] == schema
    assert (oa["seed"], oa["reasoning_effort"]) == (4, "low") and "keep_alive" not in oa
    assert an["output_config"]["format"]["schema"] == schema and an["top_k"] == 9
    assert an["thinking"] == {"type": "enabled", "budget_tokens": 1024} and an["max_tokens"] > 1024
    assert (ol["format"], ol["think"], ol["keep_alive"], ol["options"]) == (schema, "low", "1m", {"seed": 4, "top_k": 9})


def test_anthropic_gets_the_documented_default_max_tokens(client, fakes):
    client.chat(model=MODEL["anthropic"], messages=[{"role": "user", "content": "x"}], stream=False)
    assert fakes["anthropic"].requests[-1].json["max_tokens"] == anthropic_format.DEFAULT_MAX_TOKENS


def test_error_mid_stream_reaches_the_client(client, router, fakes):
    fakes["openai"].enqueue(Reply.text("one two three four", fault=Fault(after=2, kind="error", message="overloaded")))
    before = len(router.records)
    with pytest.raises(ollama.ResponseError, match="overloaded"):
        list(client.chat(model=MODEL["openai"], messages=[{"role": "user", "content": "x"}], stream=True))
    record = one_record(router, before)
    assert "overloaded" in record["error"]


def test_upstream_error_before_the_reply_is_an_ollama_error(client, router, fakes):
    fakes["ollama"].enqueue(Reply.error(500, "out of memory"))
    before = len(router.records)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=MODEL["ollama"], messages=[{"role": "user", "content": "x"}], stream=False)
    assert caught.value.status_code == 500 and "out of memory" in caught.value.error
    assert one_record(router, before)["status"] == 500


# --- generate -------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_generate(client, router, fakes, upstream, stream):
    before = len(router.records)
    reply = client.generate(model=MODEL[upstream], prompt="why is the sky blue?", system="be brief",
                            images=[base64.b64decode(PNG)], stream=stream, options={"num_predict": 30})
    reply, _ = read(reply, stream)
    assert reply.response == "echo: why is the sky blue?" and reply.done_reason == "stop" and reply.eval_count > 0
    sent = fakes[upstream].requests[-1]
    assert sent.route.endswith(("/chat/completions", "/messages", "/api/chat"))
    body = sent.json
    system = body["system"] if upstream == "anthropic" else body["messages"][0]["content"]
    assert system == "be brief"
    record = one_record(router, before)
    assert (record["client_format"], record["kind"], record["endpoint"], record["status"], record["stream"]) == (
        "ollama", "chat", "/api/generate", 200, stream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream", ["openai", "ollama"])
def test_generate_with_a_suffix_is_fill_in_the_middle(client, router, fakes, upstream, stream):
    """A suffix makes it a text completion: /completions with the suffix for
    an openai upstream, the client's own body to an Ollama's /api/generate."""
    before = len(router.records)
    reply = client.generate(model=MODEL[upstream], prompt="def f(", suffix="    return x", stream=stream,
                            options={"num_predict": 20, "temperature": 0})
    reply, _ = read(reply, stream)
    assert reply.response == "echo: def f(" and reply.done_reason == "stop"
    sent = fakes[upstream].requests[-1]
    if upstream == "openai":
        assert sent.route == "/v1/completions"
        assert (sent.json["prompt"], sent.json["suffix"], sent.json["max_tokens"]) == ("def f(", "    return x", 20)
    else:
        assert sent.route == "/api/generate"
        assert {k: v for k, v in sent.json.items() if k != "model"} == {
            "prompt": "def f(", "suffix": "    return x", "stream": stream, "options": {"num_predict": 20, "temperature": 0}}
    record = one_record(router, before)
    assert (record["client_format"], record["kind"], record["endpoint"], record["status"]) == (
        "ollama", "completion", "/api/generate", 200)


def test_generate_raw_is_a_text_completion(client, fakes):
    reply = client.generate(model=MODEL["openai"], prompt="<|user|>hi<|assistant|>", raw=True, stream=False)
    assert reply.response == "echo: <|user|>hi<|assistant|>"
    sent = fakes["openai"].requests[-1]
    assert sent.route == "/v1/completions" and sent.json["prompt"] == "<|user|>hi<|assistant|>" and "suffix" not in sent.json


def test_generate_with_a_suffix_is_refused_for_anthropic(client, router):
    before = len(router.records)
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model=MODEL["anthropic"], prompt="def f(", suffix="    return x", stream=False)
    assert caught.value.status_code == 400 and "'an'" in caught.value.error and "completion" in caught.value.error
    assert one_record(router, before)["error_code"] == "unsupported_kind"


# --- models ----------------------------------------------------------------------------


def test_list_is_the_routable_models(client, router):
    names = [m.model for m in client.list().models]
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    listed = [m["id"] for m in json.loads(data.split(b"\r\n\r\n", 1)[1])["data"]]
    assert names == list(dict.fromkeys(listed))
    assert {"claude-declared", "llama3.2:latest", "qwen2.5:0.5b"} <= set(names)


def test_show(client, fakes):
    shown = client.show(MODEL["ollama"])  # the Ollama upstream's own answer
    assert shown.capabilities == ["completion", "tools"] and shown.modelinfo["general.architecture"] == "llama"
    assert fakes["ollama"].requests[-1].json == {"model": "llama3.2:latest"}
    assert client.show("qwen2.5:0.5b").modelinfo["llama.context_length"] == 131072  # discovered
    assert set(client.show(MODEL["anthropic"]).capabilities) == {"completion", "tools", "vision", "thinking"}
    assert client.show(MODEL["openai"]).capabilities == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("nowhere")
    assert caught.value.status_code == 404 and "nowhere" in caught.value.error


def test_ps(client):
    assert client.ps().models == []


# --- raw: probes, errors, refusals ----------------------------------------------------------


def raw(router, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
    head = {"host": f"127.0.0.1:{router.port}", "connection": "close", "content-length": str(len(body)),
            "content-type": "application/json", **(headers or {})}
    request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(request.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_text, _, payload = data.partition(b"\r\n\r\n")
    lines = head_text.decode().split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    if fields.get("transfer-encoding") == "chunked":
        payload = _unchunk(payload)
    return int(lines[0].split()[1]), fields, payload


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2:]
    return out


def test_probes(router):
    assert raw(router, "GET", "/")[0::2] == (200, b"Ollama is running")
    status, headers, body = raw(router, "HEAD", "/")
    assert status == 200 and body == b""
    status, _, body = raw(router, "GET", "/", headers={"accept": "text/html"})
    assert b'href="/dashboard"' in body
    status, _, body = raw(router, "GET", "/api/version")
    assert status == 200 and json.loads(body)["version"].count(".") == 2


def test_stream_is_ndjson_with_router_headers(router):
    """No `stream` field: Ollama's default, a stream (the log says so too)."""
    body = json.dumps({"model": MODEL["openai"], "messages": [{"role": "user", "content": "a b"}]}).encode()
    before = len(router.records)
    status, headers, payload = raw(router, "POST", "/api/chat", body)
    assert one_record(router, before)["stream"] is True
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    assert headers["x-router-provider"] == "oa" and headers["x-router-model"] == "gpt-x"
    lines = [json.loads(line) for line in payload.splitlines()]
    assert lines[-1]["done"] is True and "".join(x["message"]["content"] for x in lines) == "echo: a b"


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/api/chat", b"{not json", 400, "not valid JSON"),
        ("/api/chat", b"[]", 400, "JSON object"),
        ("/api/chat", b'{"model": 1, "messages": []}', 400, "model"),
        ("/api/chat", b'{"model": "oa/x", "messages": [{"role": "user", "content": 1}]}', 400, "messages[0].content"),
        ("/api/chat", b'{"model": "oa/x", "messages": [{"role": "user", "content": "x"}], "options": {"top_k": "x"}}', 400, "options.top_k"),
        ("/api/generate", b'{"model": "oa/x", "prompt": "p", "raw": "yes"}', 400, "raw"),
        ("/api/generate", b'{"model": "oa/x", "prompt": "p", "context": [1]}', 400, "context"),
        ("/api/chat", b'{"model": "nowhere", "messages": [{"role": "user", "content": "x"}]}', 404, "nowhere"),
    ],
)
def test_bad_requests_get_ollama_errors_and_one_record(router, path, body, status, needle):
    before = len(router.records)
    got, headers, payload = raw(router, "POST", path, body)
    error = json.loads(payload)
    assert got == status and list(error) == ["error"] and needle in error["error"]
    record = one_record(router, before)
    assert record["status"] == status and (record["client_format"], record["endpoint"]) == ("ollama", path)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"),
     ("DELETE", "/api/delete"), ("POST", "/api/blobs/sha256:abc")],
)
def test_management_endpoints_are_refused(router, fakes, method, path):
    seen = sum(len(f.requests) for f in fakes.values())
    status, _, payload = raw(router, method, path, b'{"model": "ol/llama3.2:latest"}')
    assert status == 501
    assert "is not supported by llmrouter" in json.loads(payload)["error"]
    assert sum(len(f.requests) for f in fakes.values()) == seen  # never passed upstream


def test_wrong_methods_and_unknown_paths(router):
    assert raw(router, "GET", "/api/chat")[0] == 405
    status, _, payload = raw(router, "POST", "/api/tags")
    assert status == 405 and "error" in json.loads(payload)
    status, _, payload = raw(router, "GET", "/api/nothing")
    assert status == 404 and "error" in json.loads(payload)


def test_a_refused_oversized_body_is_an_ollama_error(router):
    head = f"POST /api/chat HTTP/1.1\r\nhost: 127.0.0.1:{router.port}\r\ncontent-type: application/json\r\ncontent-length: {2**40}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413") and "larger than" in json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:11434", "127.0.0.1.evil.com"])
def test_the_host_guard_covers_the_ollama_api(router, fakes, host):
    """A page rebound to 127.0.0.1 (DNS rebinding) reaches none of Ollama's
    endpoints: 403 in Ollama's shape, nothing upstream, and a refused chat or
    generate request still gets its one record."""
    seen = sum(len(f.requests) for f in fakes.values())
    before = len(router.records)
    chat = json.dumps({"model": MODEL["ollama"], "messages": [{"role": "user", "content": "x"}]}).encode()
    generate = json.dumps({"model": MODEL["ollama"], "prompt": "x"}).encode()
    for method, path, body in [("POST", "/api/chat", chat), ("POST", "/api/generate", generate), ("GET", "/api/tags", b""),
                               ("POST", "/api/show", b'{"model": "ol/llama3.2:latest"}'), ("GET", "/api/version", b""),
                               ("GET", "/", b""), ("POST", "/api/pull", b"{}")]:
        status, _, payload = raw(router, method, path, body, headers={"host": host})
        assert status == 403 and "allowed_hosts" in json.loads(payload)["error"], (path, payload)
    records = router.wait_records(before + 2)
    assert [(r["endpoint"], r["status"]) for r in records[before:]] == [("/api/chat", 403), ("/api/generate", 403)]
    assert sum(len(f.requests) for f in fakes.values()) == seen


def test_metrics_name_the_ollama_endpoints(client, router):
    client.chat(model=MODEL["openai"], messages=[{"role": "user", "content": "x"}], stream=False)
    client.generate(model=MODEL["openai"], prompt="x", stream=False)
    router.wait_records(len(router.records))
    status, _, body = raw(router, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and 'endpoint="/api/chat"' in text and 'endpoint="/api/generate"' in text


def test_a_reload_changes_what_tags_and_show_answer():
    from harness import make_config

    def config(model: str, url: str) -> str:
        return (f'[server]\nport = 0\n[[providers]]\nname = "an"\nformat = "anthropic"\nbase_url = "{url}"\n'
                f'models = ["{model}"]\n[[routers]]\ntype = "prefix"\nmodel_prefix = "{model}"\nprovider = "an"\n')

    with FakeUpstream() as fake, running_router(config("before", fake.url)) as router:
        client = ollama.Client(host=router.url, timeout=30)
        assert [m.model for m in client.list().models] == ["before"]
        router.loop.call(router.app.reconfigure, make_config(config("after", fake.url)))
        assert [m.model for m in client.list().models] == ["after"]
        assert "tools" in client.show("after").capabilities
        with pytest.raises(ollama.ResponseError):
            client.show("before")
