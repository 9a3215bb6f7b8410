"""GET /metrics (issue 13 §1): real requests of each outcome through the
router, then the exposition parsed by Prometheus' own parser."""

from __future__ import annotations

import json
import socket

import anthropic
import httpcore
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeUpstream, Hang, Reply
from harness import provider_config, running_router
from llmrouter.metrics import Metrics, escape

SSE_HEAD = [("content-type", "text/event-stream")]


def config(url: str, server: str = "", extra: str = "") -> str:
    return (
        f"[server]\nport = 0\n{server}\n{extra}\n"
        + provider_config(url, "up", extra="first_byte_timeout = 0.5")
        + provider_config(url, "anth", "anthropic")
        + '[[routers]]\ntype = "prefix"\nmodel_prefix = "claude"\nprovider = "anth"\n'
        + '[[routers]]\ntype = "prefix"\nmodel_prefix = "m"\nprovider = "up"\n'
    )


def scrape(router, headers: dict[str, str] | None = None) -> httpcore.Response:
    with httpcore.ConnectionPool() as pool:
        return pool.request("GET", router.url + "/metrics", headers={"host": "127.0.0.1", **(headers or {})})


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, through prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


def chat(router, model: str, **kwargs):
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], **kwargs)


def disconnect_mid_request(router, fake: FakeUpstream) -> None:
    body = json.dumps({"model": "m-gone", "stream": True, "messages": [{"role": "user", "content": "gone"}]}).encode()
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        fake.wait_until(lambda f: any(b"gone" in r.body for r in f.requests), timeout=10)


def test_every_outcome_is_counted_and_the_output_parses():
    with FakeUpstream() as fake, running_router(config(fake.url)) as router:
        def script(request):
            model = request.json.get("model", "") if request.json else ""
            if model == "m-fail":
                return Reply.error(500, "boom")
            if model in ("m-slow", "m-gone"):
                return Reply.raw(200, SSE_HEAD, [Hang()])
            return Reply.text(usage=(7, 3), chunks=3)

        fake.script = script
        assert chat(router, "m").choices[0].message.content
        assert "".join(c.choices[0].delta.content or "" for c in chat(router, "m", stream=True, stream_options={"include_usage": True}) if c.choices)
        anthropic.Anthropic(base_url=router.url, api_key="x", max_retries=0).messages.create(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.InternalServerError):
            chat(router, "m-fail")
        with pytest.raises(openai.APIStatusError) as timed_out:
            chat(router, "m-slow", stream=True)
        assert timed_out.value.status_code == 504
        with pytest.raises(openai.NotFoundError):
            chat(router, "nothing-routes-this")
        with pytest.raises(openai.BadRequestError):
            chat(router, "m", temperature="hot")
        with httpcore.ConnectionPool() as pool:  # refused: not JSON
            assert pool.request("POST", router.url + "/v1/chat/completions", headers={"content-type": "text/plain"}, content=b"{}").status == 415
        disconnect_mid_request(router, fake)
        router.wait_records(9)

        response = scrape(router)
        assert response.status == 200
        assert dict(response.headers)[b"content-type"] == b"text/plain; version=0.0.4; charset=utf-8"
        parsed = samples(response.content.decode())

    chat_path, messages_path = "/v1/chat/completions", "/v1/messages"
    requests = "llmrouter_requests_total"
    assert value(parsed, requests, provider="up", endpoint=chat_path, outcome="ok") == 2
    assert value(parsed, requests, provider="anth", endpoint=messages_path, outcome="ok") == 1
    assert value(parsed, requests, provider="up", endpoint=chat_path, outcome="upstream_error") == 1
    assert value(parsed, requests, provider="up", endpoint=chat_path, outcome="timeout") == 1
    assert value(parsed, requests, provider="up", endpoint=chat_path, outcome="client_closed") == 1
    assert value(parsed, requests, provider="", endpoint=chat_path, outcome="no_route") == 1
    assert value(parsed, requests, provider="", endpoint=chat_path, outcome="invalid_request") == 1
    assert value(parsed, requests, provider="", endpoint=chat_path, outcome="refused") == 1
    assert sum(v for (name, _), v in parsed.items() if name == requests) == 9

    assert value(parsed, "llmrouter_tokens_total", provider="up", direction="in") == 14  # streamed one included
    assert value(parsed, "llmrouter_tokens_total", provider="up", direction="out") == 6
    assert value(parsed, "llmrouter_request_duration_seconds_count", provider="up") == 5
    assert value(parsed, "llmrouter_request_duration_seconds_count", provider="") == 3
    assert value(parsed, "llmrouter_request_duration_seconds_bucket", provider="", le="+Inf") == 3
    assert value(parsed, "llmrouter_time_to_first_token_seconds_count", provider="up") == 1  # the one stream that answered
    assert value(parsed, "llmrouter_attempts_total", provider="up", result="ok") == 2
    assert value(parsed, "llmrouter_attempts_total", provider="up", result="error") == 2
    assert value(parsed, "llmrouter_attempts_total", provider="up", result="abandoned") == 1
    assert value(parsed, "llmrouter_in_flight_requests") == 0
    assert value(parsed, "llmrouter_circuit_open", provider="up") == 0
    assert ("llmrouter_circuit_open", frozenset({("provider", "anth")})) in parsed
    assert value(parsed, "llmrouter_events_dropped_total") == 0


def test_fallbacks_show_in_attempts_and_an_open_circuit_in_its_gauge():
    cfg = (
        "[server]\nport = 0\nbreaker_failures = 1\nbreaker_cooldown = 600\n"
        + provider_config("http://127.0.0.1:9", "down", extra="connect_timeout = 1")
    )
    with FakeUpstream() as fake:
        cfg += provider_config(fake.url, "up") + '[[routers]]\ntype = "fallback"\nproviders = ["down", "up"]\n'
        with running_router(cfg) as router:
            chat(router, "m")
            router.wait_records(1)
            parsed = samples(scrape(router).content.decode())
    assert value(parsed, "llmrouter_attempts_total", provider="down", result="error") == 1
    assert value(parsed, "llmrouter_attempts_total", provider="up", result="ok") == 1
    assert value(parsed, "llmrouter_requests_total", provider="up", endpoint="/v1/chat/completions", outcome="ok") == 1
    assert value(parsed, "llmrouter_circuit_open", provider="down") == 1


def test_metrics_need_the_client_key_and_a_foreign_origin_is_refused():
    with FakeUpstream() as fake:
        with running_router(config(fake.url, 'api_key_env = "ROUTER_KEY"'), environ={"ROUTER_KEY": "sekrit"}) as router:
            assert scrape(router).status == 401
            assert scrape(router, {"authorization": "Bearer nope"}).status == 401
            assert scrape(router, {"origin": "http://evil.example"}).status == 403
            assert scrape(router, {"x-api-key": "sekrit"}).status == 200
            openai.OpenAI(base_url=router.url + "/v1", api_key="sekrit", max_retries=0).chat.completions.create(
                model="m-private", messages=[{"role": "user", "content": "hi"}])
            router.wait_records(1)
            with httpcore.ConnectionPool() as pool:  # /health?verbose, with its per-model figures, needs the key too
                assert pool.request("GET", router.url + "/health?verbose").status == 401
                health = json.loads(pool.request("GET", router.url + "/health?verbose", headers={"x-api-key": "sekrit"}).content)
            assert health["measurements"]["up"]["samples"] == 1 and "m-private" in health["measurements"]["up"]["models"]


def test_model_names_are_labels_only_when_asked_and_are_escaped():
    model = 'm "quoted" \\ back\nslash'
    with FakeUpstream() as fake:
        for model_label in (False, True):
            with running_router(config(fake.url, extra=f"[metrics]\nmodel_label = {str(model_label).lower()}")) as router:
                chat(router, model)
                router.wait_records(1)
                text = scrape(router).content.decode()
            parsed = samples(text)
            labels = {"provider": "up", "endpoint": "/v1/chat/completions", "outcome": "ok"}
            if model_label:
                labels["model"] = model
            assert value(parsed, "llmrouter_requests_total", **labels) == 1
            assert any(model in dict(labels).values() for _, labels in parsed) is model_label


def test_the_renderer_escapes_label_values_and_writes_valid_histograms():
    metrics = Metrics(model_label=True)
    record = {
        "provider": "p", "sent_model": 'a"b\\c\nd', "client_format": "responses", "error_code": "something_new",
        "duration_ms": 2500, "stream": True, "usage": {"input_tokens": 1, "output_tokens": 2},
        "attempts": [{"provider": "p", "model": 'a"b\\c\nd', "outcome": "ok", "first_token_ms": 100}],
    }
    metrics.observe(record)
    text = metrics.render(in_flight=2, circuits={"p": False}, events_dropped=5)
    assert 'model="a\\"b\\\\c\\nd"' in text and escape("x\\") == "x\\\\"
    parsed = samples(text)
    labels = {"provider": "p", "model": 'a"b\\c\nd'}
    assert value(parsed, "llmrouter_requests_total", endpoint="/v1/responses", outcome="error", **labels) == 1
    assert value(parsed, "llmrouter_request_duration_seconds_bucket", le="2.5", **labels) == 1
    assert value(parsed, "llmrouter_request_duration_seconds_bucket", le="1.0", **labels) == 0
    assert value(parsed, "llmrouter_request_duration_seconds_sum", **labels) == 2.5
    assert value(parsed, "llmrouter_time_to_first_token_seconds_bucket", le="0.1", **labels) == 1
    assert value(parsed, "llmrouter_in_flight_requests") == 2
    assert value(parsed, "llmrouter_events_dropped_total") == 5


def test_serve_freezes_its_startup_objects_out_of_the_collector(tmp_path):
    """`llmrouter serve` freezes what it built at startup, so a full
    collection under load does not walk it (a pause of tens of ms); the
    scrape shows the frozen count and the collector's runs."""
    from subproc import RouterProcess

    with FakeUpstream() as fake:
        router = RouterProcess(config(fake.url), tmp_path)
        try:
            with httpcore.ConnectionPool() as http:
                reply = http.request("GET", f"{router.url}/metrics")
                assert reply.status == 200
                parsed = samples(reply.content.decode())
                health = json.loads(http.request("GET", f"{router.url}/health?verbose").content)
        finally:
            router.stop()
    assert value(parsed, "llmrouter_gc_frozen_objects") > 10_000  # the imported modules, the config, the app
    assert health["gc"]["frozen_objects"] > 10_000
    assert [value(parsed, "python_gc_collections_total", generation=g) >= 0 for g in "012"] == [True] * 3
    assert len(health["gc"]["collections"]) == 3
