"""Embeddings through the router (issue 11 §2): the OpenAI SDK (base64, its
default, and float) and the official ollama client (`embed`, `embeddings`)
to fake openai and ollama upstreams; whatever encoding the upstream sends,
the client gets the one it asked for. Anthropic providers are never sent an
embedding request. One complete record per request, without the input texts
unless [logging] embedding_inputs says so."""

from __future__ import annotations

import json

import httpcore
import ollama
import openai
import pytest

from fakes import FakeUpstream, Reply, vector_for
from harness import provider_config, running_router
from test_fakes import float32s

TEXTS = ["the quick brown fox", "jumps"]


def config(fake: FakeUpstream, extra: str = "", fallback: tuple[str, ...] = ()) -> str:
    """Models "o/…" go to an openai provider, "l/…" to an ollama one, "a/…" to
    an anthropic one; any model then to the `fallback` providers, in order."""
    rules = "".join(
        f'[[routers]]\ntype = "prefix"\nmodel_prefix = "{p}/"\nprovider = "{n}"\nstrip_prefix = true\n'
        for p, n in (("o", "oai"), ("l", "olla"), ("a", "claude"))
    )
    if fallback:
        rules += f'[[routers]]\ntype = "fallback"\nproviders = {json.dumps(list(fallback))}\n'
    providers = "".join(provider_config(fake.url, n, f) for n, f in (("oai", "openai"), ("olla", "ollama"), ("claude", "anthropic")))
    return "[server]\nport = 0\n" + extra + providers + rules


@pytest.fixture
def fake():
    with FakeUpstream() as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture
def router(fake):
    with running_router(config(fake)) as running:
        yield running


def posted(fake: FakeUpstream) -> list:
    """What reached the upstream, without the router's model discovery."""
    return [r for r in fake.requests if r.method == "POST"]


def sdk(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("model", ["o/emb", "l/emb"])
@pytest.mark.parametrize("encoding", [None, "float", "base64"])
@pytest.mark.parametrize("upstream_sends", [None, "float", "base64"])
def test_openai_sdk_gets_the_encoding_it_asked_for(router, fake, model, encoding, upstream_sends):
    """None: the SDK's default (it asks for base64 and decodes it); the
    upstream may answer in the asked encoding or ignore it."""
    if upstream_sends:
        fake.enqueue(Reply.embeddings(encoding=upstream_sends))
    extra = {"encoding_format": encoding} if encoding else {}
    reply = sdk(router).embeddings.with_raw_response.create(model=model, input=TEXTS, **extra)
    result = reply.parse()
    asked = encoding or "base64"
    assert all(isinstance(d.embedding, str if encoding == "base64" else list) for d in result.data)
    assert [float32s(d.embedding) for d in result.data] == [vector_for(t) for t in TEXTS]
    assert [d.index for d in result.data] == [0, 1] and result.model == "emb"
    assert result.usage.prompt_tokens == result.usage.total_tokens == 5
    (sent,) = posted(fake)
    if model.startswith("o/"):
        assert sent.route == "/v1/embeddings" and sent.json == {"model": "emb", "input": TEXTS, "encoding_format": asked}
    else:
        assert sent.route == "/api/embed" and sent.json == {"model": "emb", "input": TEXTS}
    assert reply.headers["x-router-provider"] == ("oai" if model.startswith("o/") else "olla")
    (record,) = router.wait_records(1)
    assert record["kind"] == "embedding" and record["client_format"] == "openai" and record["status"] == 200
    assert record["usage"]["input_tokens"] == 5 and record["response"]["count"] == 2


def test_dimensions_and_user_are_forwarded(router, fake):
    result = sdk(router).embeddings.create(model="o/emb", input="x", dimensions=16, user="u1", encoding_format="float")
    assert result.data[0].embedding == vector_for("x", 16)
    assert posted(fake)[0].json == {"model": "emb", "input": ["x"], "encoding_format": "float", "dimensions": 16, "user": "u1"}
    sdk(router).embeddings.create(model="l/emb", input="x", dimensions=16, user="u1")
    assert posted(fake)[1].json == {"model": "emb", "input": ["x"], "dimensions": 16}


@pytest.mark.parametrize("model", ["o/emb", "l/emb"])
def test_ollama_client_embed_and_embeddings(router, fake, model):
    client = ollama.Client(host=router.url)
    embedded = client.embed(model=model, input=TEXTS, keep_alive="5m", truncate=True)
    assert embedded.embeddings == [vector_for(t) for t in TEXTS] and embedded.prompt_eval_count == 5
    assert embedded.model == "emb"
    single = client.embed(model=model, input="jumps")
    assert single.embeddings == [vector_for("jumps")]
    legacy = client.embeddings(model=model, prompt="jumps")
    assert legacy.embedding == vector_for("jumps")
    sent = [r.json for r in posted(fake)]
    if model.startswith("o/"):
        assert [r.route for r in posted(fake)] == ["/v1/embeddings"] * 3
        assert sent[0] == {"model": "emb", "input": TEXTS, "encoding_format": "float"}  # Ollama-only fields dropped
    else:
        assert [r.route for r in posted(fake)] == ["/api/embed"] * 3  # the legacy endpoint too
        assert sent[0] == {"model": "emb", "input": TEXTS, "keep_alive": "5m", "truncate": True}
        assert embedded.total_duration == 14_000_000 and embedded.load_duration == 1_000_000
    records = router.wait_records(3)
    assert [(r["kind"], r["client_format"], r["status"]) for r in records] == [("embedding", "ollama", 200)] * 3


def test_anthropic_is_never_sent_an_embedding(router, fake):
    """Routed only to an anthropic provider: a 400 naming it, in each
    client's shape. Routed to anthropic then openai: the openai one answers."""
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(router).embeddings.create(model="a/emb", input="x")
    error = refused.value.body
    assert error["code"] == "unsupported_kind" and error["param"] == "model" and "'claude'" in error["message"]
    with pytest.raises(ollama.ResponseError) as refused_ollama:
        ollama.Client(host=router.url).embed(model="a/emb", input="x")
    assert refused_ollama.value.status_code == 400 and "'claude' (format anthropic)" in refused_ollama.value.error
    assert posted(fake) == []
    records = router.wait_records(2)
    assert [(r["status"], r["error_code"], r["attempts"]) for r in records] == [(400, "unsupported_kind", [])] * 2


def test_routing_falls_through_an_anthropic_provider(fake):
    with running_router(config(fake, fallback=("claude", "oai"))) as router:
        fell_through = sdk(router).embeddings.with_raw_response.create(model="a/emb", input="x")
        assert fell_through.headers["x-router-provider"] == "oai"
        assert [r.route for r in posted(fake)] == ["/v1/embeddings"]  # the only upstream request
        (record,) = router.wait_records(1)
        assert record["status"] == 200 and [a["provider"] for a in record["attempts"]] == ["oai"]


def post(router, path: str, body: object) -> tuple[int, object]:
    reply = httpcore.request("POST", router.url + path, headers={"content-type": "application/json"},
                             content=json.dumps(body).encode())
    return reply.status, json.loads(reply.content)


@pytest.mark.parametrize("body, param", [
    ({"model": "o/e"}, "input"),
    ({"model": "o/e", "input": [1, 2, 3]}, "input"),  # token arrays
    ({"model": "o/e", "input": []}, "input"),
    ({"model": "o/e", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "o/e", "input": "x", "encoding_format": ""}, "encoding_format"),
    ({"model": "o/e", "input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x"}, "model"),
])
def test_bad_openai_input_is_a_400_naming_the_field(router, fake, body, param):
    status, error = post(router, "/v1/embeddings", body)
    assert status == 400 and error["error"]["param"] == param and param in error["error"]["message"]
    assert posted(fake) == []


@pytest.mark.parametrize("path, body, word", [
    ("/api/embed", {"model": "l/e", "input": [[1, 2]]}, "input"),
    ("/api/embed", {"model": "l/e", "input": "x", "truncate": "yes"}, "truncate"),
    ("/api/embeddings", {"model": "l/e"}, "prompt"),
    ("/api/embeddings", [1], "JSON object"),
])
def test_bad_ollama_input_is_a_400_in_ollama_shape(router, fake, path, body, word):
    status, error = post(router, path, body)
    assert status == 400 and set(error) == {"error"} and word in error["error"]
    assert posted(fake) == []


def test_upstream_failure_falls_back_and_a_wrong_count_is_refused(fake):
    with running_router(config(fake, fallback=("oai", "olla"))) as router:
        fake.enqueue(Reply.error(503, "loading"))
        result = sdk(router).embeddings.with_raw_response.create(model="any", input=TEXTS)
        assert result.headers["x-router-provider"] == "olla"
        assert [float32s(d.embedding) for d in result.parse().data] == [vector_for(t) for t in TEXTS]
        fake.enqueue(Reply.json({"object": "list", "data": [{"index": 0, "embedding": [0.5]}], "model": "m"}))
        with pytest.raises(openai.APIStatusError) as failed:
            sdk(router).embeddings.create(model="o/m", input=TEXTS)
        assert failed.value.status_code == 502 and "1 embeddings for 2 inputs" in failed.value.message


def test_the_log_holds_counts_and_sizes_not_texts(fake, tmp_path):
    private = ["my secret diary", "α"]
    for logged in (False, True):
        extra = f'[logging]\nenabled = true\npath = "{tmp_path}/{logged}.jsonl"\nembedding_inputs = {str(logged).lower()}\n'
        with running_router(config(fake, extra)) as router:
            sdk(router).embeddings.create(model="o/emb", input=private)
            (record,) = router.wait_records(1)
        line = (tmp_path / f"{logged}.jsonl").read_text()
        assert json.loads(line)["inputs"] == record["inputs"] == {"count": 2, "chars": [15, 1]}
        assert ("my secret diary" in line) is logged
        assert record["messages"] == ([{"role": "user", "content": t} for t in private] if logged else [])
        assert "embedding" not in json.dumps(record["response"])  # vectors are never logged


def test_embedding_inputs_must_be_a_boolean(fake):
    from harness import make_config
    from llmrouter.errors import ConfigError

    with pytest.raises(ConfigError, match="logging.embedding_inputs"):
        make_config(config(fake, '[logging]\nembedding_inputs = "yes"\n'))


@pytest.mark.parametrize("method, path, ctype, status", [
    ("GET", "/api/embed", "application/json", 405),
    ("GET", "/v1/embeddings", "application/json", 405),
    ("POST", "/api/embeddings", "text/plain", 415),
    ("POST", "/v1/embeddings", "text/plain", 415),
])
def test_wrong_method_or_content_type_is_refused_in_the_callers_shape(router, fake, method, path, ctype, status):
    reply = httpcore.request(method, router.url + path, headers={"content-type": ctype},
                             content=b'{"model": "o/e", "input": "x"}' if method == "POST" else b"")
    error = json.loads(reply.content)["error"]
    assert reply.status == status and isinstance(error, str if path.startswith("/api/") else dict)
    (record,) = router.wait_records(1)
    assert (record["kind"], record["status"]) == ("embedding", status) and posted(fake) == []


def test_metrics_count_embeddings_and_completions_by_endpoint(router, fake):
    from test_metrics import samples, scrape, value

    sdk(router).embeddings.create(model="o/emb", input=TEXTS)
    ollama.Client(host=router.url).embeddings(model="l/emb", prompt="jumps")
    sdk(router).completions.create(model="l/coder", prompt="x y")
    with pytest.raises(openai.BadRequestError):
        sdk(router).embeddings.create(model="a/emb", input="x")
    records = router.wait_records(4)
    assert [r["endpoint"] for r in records] == ["/v1/embeddings", "/api/embeddings", "/v1/completions", "/v1/embeddings"]
    parsed = samples(scrape(router).content.decode())
    requests = "llmrouter_requests_total"
    assert value(parsed, requests, provider="oai", endpoint="/v1/embeddings", outcome="ok") == 1
    assert value(parsed, requests, provider="olla", endpoint="/api/embeddings", outcome="ok") == 1
    assert value(parsed, requests, provider="olla", endpoint="/v1/completions", outcome="ok") == 1
    assert value(parsed, requests, provider="", endpoint="/v1/embeddings", outcome="no_route") == 1
    assert value(parsed, "llmrouter_tokens_total", provider="oai", direction="in") == 5  # the embedding's prompt tokens


def test_check_says_when_embedding_texts_are_logged(fake, tmp_path):
    from harness import make_config
    from llmrouter.config import describe

    quiet = describe(make_config(config(fake, f'[logging]\nenabled = true\npath = "{tmp_path}/r.jsonl"\n')))
    loud = describe(make_config(config(fake, f'[logging]\nenabled = true\npath = "{tmp_path}/r.jsonl"\nembedding_inputs = true\n')))
    assert f"request log: {tmp_path}/r.jsonl\n" in quiet
    assert f"request log: {tmp_path}/r.jsonl (with embedding input texts)\n" in loud


def test_an_embedding_gives_no_time_to_first_token_sample():
    from llmrouter.measure import Measurements

    measured = Measurements()
    attempt = {"provider": "olla", "model": "e", "outcome": "ok", "status": 200, "duration_ms": 12}
    measured.observe({"kind": "embedding", "stream": False, "usage": {"input_tokens": 5, "output_tokens": 0}, "attempts": [attempt]})
    stats = measured.get("olla").to_json()
    assert stats["ttft_ms"] is None and stats["duration_ms"] == 12 and stats["error_rate"] == 0
    measured.observe({"kind": "completion", "stream": False, "usage": {"input_tokens": 5, "output_tokens": 4}, "attempts": [attempt]})
    assert measured.get("olla").to_json()["ttft_ms"] == 12
