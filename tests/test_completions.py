"""Completions for editors (issue 11 §3): the OpenAI SDK's legacy
`completions` (stream and not, with a fill-in-the-middle `suffix`) through
the router to fake openai upstreams ({base}/completions) and Ollama upstreams
(/api/generate, NDJSON turned into text_completion SSE); anthropic refused;
fallback before the first byte; an editor that cancels mid-flight makes the
router close the upstream request at once; one complete record per request."""

from __future__ import annotations

import json
import socket
import struct

import httpcore
import openai
import pytest

from fakes import Delay, Hang, Reply
from harness import running_router
from test_chaos import JSON_HEAD, SSE_HEAD
from test_embeddings import config, fake, posted, router, sdk  # noqa: F401  (fake and router are fixtures)

PREFIX, SUFFIX = "def add(a, b):\n    ", "\n    return total\n"


@pytest.mark.parametrize("model", ["o/coder", "l/coder"])
def test_fill_in_the_middle_without_streaming(router, fake, model):
    reply = sdk(router).completions.with_raw_response.create(
        model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=16, temperature=0.2, seed=7, stop=["\n\n"])
    result = reply.parse()
    assert result.object == "text_completion" and result.id.startswith("cmpl-") and result.model == "coder"
    assert result.choices[0].text == "echo: " + PREFIX and result.choices[0].finish_reason == "stop"
    assert result.usage.prompt_tokens == 3 and result.usage.completion_tokens == 4
    assert reply.headers["x-router-provider"] == ("oai" if model.startswith("o/") else "olla")
    (sent,) = posted(fake)
    if model.startswith("o/"):  # same format: the client's body, with the routed model
        assert sent.route == "/v1/completions"
        assert sent.json == {"model": "coder", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 16,
                             "temperature": 0.2, "seed": 7, "stop": ["\n\n"]}
    else:
        assert sent.route == "/api/generate"
        assert sent.json == {"model": "coder", "prompt": PREFIX, "stream": False, "suffix": SUFFIX,
                             "options": {"num_predict": 16, "temperature": 0.2, "seed": 7, "stop": ["\n\n"]}}
    (record,) = router.wait_records(1)
    assert (record["kind"], record["client_format"], record["status"], record["stream"]) == ("completion", "openai", 200, False)
    assert record["messages"] == [{"role": "user", "content": PREFIX}]
    assert record["response"]["content"] == "echo: " + PREFIX and record["usage"]["output_tokens"] == 4


@pytest.mark.parametrize("model", ["o/coder", "l/coder"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_fill_in_the_middle_streaming(router, fake, model, include_usage):
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(sdk(router).completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, stream=True, **options))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == "echo: " + PREFIX and len(texts) > 3  # word by word, as the upstream sent it
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    usage = [c.usage for c in chunks if c.usage]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == ([(3, 4)] if include_usage else [])
    (sent,) = posted(fake)
    assert sent.json["suffix"] == SUFFIX and sent.json.get("stream") is True
    (record,) = router.wait_records(1)
    assert (record["kind"], record["status"], record["stream"]) == ("completion", 200, True)
    assert record["response"]["content"] == "echo: " + PREFIX
    assert (record["usage"]["input_tokens"], record["usage"]["output_tokens"]) == (3, 4)


def test_a_plain_completion_goes_to_ollama_raw(router, fake):
    """Without a suffix the prompt is continued as given: no chat template."""
    sdk(router).completions.create(model="l/coder", prompt="Once upon a time", max_tokens=4)
    assert posted(fake)[0].json == {"model": "coder", "prompt": "Once upon a time", "stream": False, "raw": True,
                                    "options": {"num_predict": 4}}


def test_anthropic_is_never_sent_a_completion(router, fake):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk(router).completions.create(model="a/claude", prompt=PREFIX, suffix=SUFFIX, stream=stream)
        error = refused.value.body
        assert error["code"] == "unsupported_kind" and "'claude' (format anthropic)" in error["message"]
    assert posted(fake) == []
    assert [(r["kind"], r["status"]) for r in router.wait_records(2)] == [("completion", 400)] * 2


@pytest.mark.parametrize("body, param", [
    ({"model": "o/c"}, "prompt"),
    ({"model": "o/c", "prompt": [1, 2, 3]}, "prompt"),  # tokens
    ({"model": "o/c", "prompt": ["a", "b"]}, "prompt"),  # a batch
    ({"model": "o/c", "prompt": "x", "suffix": 3}, "suffix"),
    ({"model": "o/c", "prompt": "x", "seed": 1.5}, "seed"),
    ({"model": "o/c", "prompt": "x", "max_tokens": -1}, "max_tokens"),
])
def test_bad_input_is_a_400_naming_the_field(router, fake, body, param):
    reply = httpcore.request("POST", router.url + "/v1/completions", headers={"content-type": "application/json"},
                             content=json.dumps(body).encode())
    assert reply.status == 400 and json.loads(reply.content)["error"]["param"] == param
    assert posted(fake) == []
    (record,) = router.wait_records(1)
    assert record["kind"] == "completion" and record["status"] == 400


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_before_the_first_byte(fake, stream):
    with running_router(config(fake, fallback=("oai", "olla"))) as router:
        fake.enqueue(Reply.error(503, "model loading"))
        reply = sdk(router).completions.with_raw_response.create(model="coder", prompt="x y", stream=stream)
        assert reply.headers["x-router-provider"] == "olla"
        if stream:
            assert "".join(c.choices[0].text for c in reply.parse() if c.choices) == "echo: x y"
        else:
            assert reply.parse().choices[0].text == "echo: x y"
        (record,) = router.wait_records(1)
        assert [(a["provider"], a["outcome"]) for a in record["attempts"]] == [("oai", "error"), ("olla", "ok")]


# --- an editor cancelling mid-flight ----------------------------------------------------

PHASES = {  # what the upstream is doing when the editor hangs up
    "before_head": lambda: Reply.raw(None, [], [Hang()]),
    "before_first_chunk": lambda: Reply.raw(200, SSE_HEAD, [Hang()]),
    "mid_stream": lambda: Reply.text("w " * 200, chunks=200, delay=0.05),
    "non_stream_wait": lambda: Reply.raw(200, [*JSON_HEAD, ("content-length", "2")], [Delay(60), b"{}"]),
}


@pytest.mark.parametrize("model", ["o/coder", "l/coder"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_cancelled_completion_closes_its_upstream_request(fake, model, phase):
    """The upstream would go on for seconds (or forever); the editor's hang-up
    must end its connection, and the record says 499."""
    with running_router(config(fake)) as router:
        provider = "oai" if model.startswith("o/") else "olla"
        pooled = router.app.upstreams.pool_stats(provider)["open"]  # model discovery's connection
        fake.enqueue(PHASES[phase]())
        body = json.dumps({"model": model, "prompt": PREFIX, "suffix": SUFFIX, "stream": phase != "non_stream_wait"}).encode()
        sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        fake.wait_until(lambda f: len(posted(f)) == 1, timeout=10)
        if phase == "mid_stream":
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # text is flowing
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # editors often reset
        sock.close()
        conn = fake.connections[posted(fake)[0].connection_id]
        fake.wait_until(lambda f: conn.closed_by_peer, timeout=10)  # long before the reply would have ended
        (record,) = router.wait_records(1, timeout=10)
        assert (record["kind"], record["status"], record["error_code"]) == ("completion", 499, "client_disconnected")
        fake.wait_until(lambda f: conn.closed, timeout=10)
        assert router.app.upstreams.pool_stats(provider)["open"] <= pooled  # the cancelled one is not kept
        assert sdk(router).completions.create(model=model, prompt="next").choices[0].text == "echo: next"
        assert [r["status"] for r in router.wait_records(2)] == [499, 200]  # one record each, no more



def test_plugins_see_the_prompt_but_completions_are_never_healed(fake):
    """Keyword classifiers tag a completion by its prompt; response-healing
    (enabled for every request) leaves a completion's text as the model wrote it."""
    extra = ('[classifiers.keyword]\nenabled = true\n[classifiers.keyword.tags]\npython = ["def "]\n'
             '[plugins.response-healing]\nenabled = true\n')
    with running_router(config(fake, extra)) as router:
        fake.script = lambda request: Reply.text('{"a": 1,', chunks=1)
        reply = sdk(router).completions.with_raw_response.create(model="o/coder", prompt=PREFIX)
        assert reply.parse().choices[0].text == '{"a": 1,' and reply.headers["x-router-tags"] == "python"
        (record,) = router.wait_records(1)
        assert record["tags"] == ["python"] and record["plugins"] == []


def test_fields_ollama_cannot_take_are_dropped_with_a_debug_line(router, fake, caplog):
    with caplog.at_level("DEBUG", logger="llmrouter"):
        sdk(router).completions.create(model="l/coder", prompt="x", echo=True, n=1, logprobs=2)
        router.wait_records(1)
    assert set(posted(fake)[0].json) == {"model", "prompt", "stream", "raw"}
    dropped = [r.getMessage() for r in caplog.records if "dropped completion field" in r.getMessage()]
    assert sorted(dropped) == [f"dropped completion field '{k}' for an ollama upstream" for k in ("echo", "logprobs", "n")]


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": "o/coder", "prompt": "x"}),
    ("/v1/embeddings", {"model": "o/emb", "input": "x"}),
    ("/api/embed", {"model": "l/emb", "input": "x"}),
    ("/api/embeddings", {"model": "l/emb", "prompt": "x"}),
])
def test_the_host_guard_and_the_client_key_cover_the_new_routes(fake, path, body):
    """A page reached through DNS rebinding (a foreign Host) and a caller
    without the key are refused before anything reaches an upstream."""
    server = '[server]\nport = 0\napi_key_env = "ROUTER_KEY"\n'
    with running_router(config(fake).replace("[server]\nport = 0\n", server), environ={"ROUTER_KEY": "k-123"}) as router:
        def post(**headers: str) -> int:
            return httpcore.request("POST", router.url + path, content=json.dumps(body).encode(),
                                    headers={"content-type": "application/json", **headers}).status
        assert post(host="attacker.example") == 403
        assert post() == 401
        assert post(authorization="Bearer k-123") == 200
        assert len(posted(fake)) == 1
        assert [r["status"] for r in router.wait_records(3)] == [403, 401, 200]
