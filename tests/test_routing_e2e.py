"""Routing over real sockets: discovery against a fake Ollama, fallback, tags, plugins."""

from __future__ import annotations

import json
import socket
import time

import httpcore
import openai
import pytest

from fakes import FakeUpstream, Hang, Reply
from harness import provider_config, running_router

MESSAGES = [{"role": "user", "content": "hello"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ollama_config(url: str, server: str = "") -> str:
    return f"""
[server]
port = 0
{server}
[[providers]]
name = "ollama"
format = "ollama"
base_url = "{url}"
[[routers]]
type = "discover"
provider = "ollama"
"""


def verbose_health(router) -> dict:
    with httpcore.ConnectionPool() as pool:
        return json.loads(pool.request("GET", router.url + "/health?verbose").content)


def chat(router, model: str, **kwargs):
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kwargs)


def test_discovered_model_routes_with_latest_tag():
    with FakeUpstream(models=["llama3:latest", "qwen2.5:0.5b"]) as fake:
        with running_router(ollama_config(fake.url)) as router:
            raw = chat(router, "llama3")
            assert raw.parse().choices[0].message.content == "echo: hello"
            assert raw.headers["x-router-model"] == "llama3:latest"
            sent = [r for r in fake.requests if r.path == "/api/chat"][-1]
            assert sent.json["model"] == "llama3:latest"
            with pytest.raises(openai.NotFoundError) as info:
                chat(router, "mistral")
            assert "no provider configured for model 'mistral'" in info.value.message
            models = {m["id"] for m in json.loads(
                httpcore.request("GET", router.url + "/v1/models").content)["data"]}
            assert {"llama3:latest", "qwen2.5:0.5b"} <= models


def test_discovery_never_holds_startup_longer_than_its_timeout():
    with FakeUpstream() as fake:
        fake.script = lambda request: Reply.raw(200, [], [Hang()]) if request.path == "/api/tags" else None
        # The tags request never ends: startup that waited for it would miss running_router's start deadline.
        with running_router(ollama_config(fake.url, "discovery_timeout = 0.3")) as router:
            assert verbose_health(router)["discovered"] == {}


def test_discovery_refreshes_when_a_provider_comes_and_goes():
    port = free_port()
    with running_router(ollama_config(f"http://127.0.0.1:{port}", "discovery_interval = 0.2\ndiscovery_timeout = 0.5")) as router:
        assert verbose_health(router)["discovered"] == {}
        with FakeUpstream(models=["phi3:mini"], port=port):
            deadline = time.monotonic() + 5
            while verbose_health(router)["discovered"] != {"ollama": ["phi3:mini"]}:
                assert time.monotonic() < deadline, "discovery did not pick the provider up"
                time.sleep(0.05)
            assert chat(router, "phi3:mini").parse().choices[0].message.content == "echo: hello"
        deadline = time.monotonic() + 5
        while verbose_health(router)["discovered"]:
            assert time.monotonic() < deadline, "a provider that went away kept its models"
            time.sleep(0.05)


def two_providers(first: str, second: str, server: str = "") -> str:
    return f"""
[server]
port = 0
{server}
[[providers]]
name = "primary"
format = "openai"
base_url = "{first}/v1"
[[providers]]
name = "backup"
format = "anthropic"
base_url = "{second}"
[[routers]]
type = "prefix"
model_prefix = ""
provider = "primary"
[[routers]]
type = "fallback"
providers = ["backup"]
"""


def test_falls_back_when_the_first_provider_is_down():
    dead = f"http://127.0.0.1:{free_port()}"
    with FakeUpstream() as backup:
        with running_router(two_providers(dead, backup.url)) as router:
            raw = chat(router, "m")
            assert raw.parse().choices[0].message.content == "echo: hello"
            assert raw.headers["x-router-provider"] == "backup"
            (record,) = router.wait_records(1)
            assert [(a["provider"], a["outcome"]) for a in record["attempts"]] == [("primary", "error"), ("backup", "ok")]
            assert [e["provider"] for e in router.events if e["type"] == "routed"] == ["primary", "backup"]


def test_falls_back_on_429_and_5xx_but_not_on_400():
    with FakeUpstream() as primary, FakeUpstream() as backup:
        primary.enqueue(Reply.error(429, "busy"), Reply.error(503, "down"), Reply.error(400, "bad request"))
        with running_router(two_providers(primary.url, backup.url)) as router:
            assert chat(router, "m").headers["x-router-provider"] == "backup"
            assert chat(router, "m", stream=True).headers["x-router-provider"] == "backup"
            with pytest.raises(openai.BadRequestError):
                chat(router, "m")
            assert len(backup.requests) == 2


def test_fallback_can_be_switched_off():
    dead = f"http://127.0.0.1:{free_port()}"
    with FakeUpstream() as backup:
        with running_router(two_providers(dead, backup.url, "fallback_on_error = false")) as router:
            with pytest.raises(openai.APIStatusError) as info:
                chat(router, "m")
            assert info.value.status_code == 502 and backup.requests == []


def test_tags_headers_and_plugins_never_forwarded():
    with FakeUpstream() as fake:
        config = f"""
[server]
port = 0
[[providers]]
name = "local"
format = "openai"
base_url = "{fake.url}/v1"
[[routers]]
type = "tag"
tag = "code"
provider = "local"
rewrite_model = "coder"
[classifiers.keyword]
enabled = true
[classifiers.keyword.tags]
code = ["python", "def "]
"""
        with running_router(config) as router:
            client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="any",
                messages=[{"role": "user", "content": "write python please"}],
                extra_body={"plugins": [{"id": "response-healing"}]},
            )
            assert raw.headers["x-router-tags"] == "code" and raw.headers["x-router-model"] == "coder"
            sent = fake.requests[-1].json
            assert "plugins" not in sent and sent["model"] == "coder"


# --- rules on live measurements (issue 13 §2) ---------------------------------------


def two_fakes_config(slow_url: str, fast_url: str, rule: str) -> str:
    return (
        "[server]\nport = 0\n"
        + provider_config(slow_url, "slow", extra="latency_ms = 1.0\nthroughput_tokens_per_sec = 1000.0")
        + provider_config(fast_url, "fast")
        + f'[[routers]]\n{rule}\nproviders = ["slow", "fast"]\n'
    )


def test_measured_latency_rule_moves_to_the_faster_provider_once_both_are_measured():
    with FakeUpstream() as slow, FakeUpstream() as fast:
        slow.script = lambda request: Reply.text("slow", chunks=2).delayed(0.4)
        # The slow one declares 1 ms: the live figure wins once it exists.
        with running_router(two_fakes_config(slow.url, fast.url, 'type = "latency"\nmeasured = true')) as router:
            used = [chat(router, "m", stream=True).headers["x-router-provider"] for _ in range(4)]
            assert used == ["slow", "fast", "fast", "fast"]  # each measured once, then the fastest
            router.wait_records(4)
            figures = verbose_health(router)["measurements"]
            assert figures["slow"]["samples"] == 1 and figures["fast"]["samples"] == 3
            assert figures["slow"]["ttft_ms"] > figures["fast"]["ttft_ms"]
            assert figures["fast"]["models"]["m"]["samples"] == 3
            # The live views get the same figures from `measured` events, one after each request.
            measured = [e for e in router.events if e["type"] == "measured"]
            assert [e["provider"] for e in measured] == used
            assert {k: v for k, v in measured[-1].items() if k not in ("type", "v", "ts_ms", "provider")} == {
                k: v for k, v in figures["fast"].items() if k != "models"}


def test_measured_throughput_rule_and_its_fallback_follow_the_live_ranking():
    with FakeUpstream() as slow, FakeUpstream() as fast:
        slow.script = lambda request: Reply.text("one two three", usage=(3, 3)).delayed(0.4)
        fast.script = lambda request: Reply.text("one two three", usage=(3, 3))
        with running_router(two_fakes_config(slow.url, fast.url, 'type = "throughput"\nmeasured = true')) as router:
            assert [chat(router, "m").headers["x-router-provider"] for _ in range(3)] == ["slow", "fast", "fast"]
            fast.enqueue(Reply.error(503, "down for a moment"))
            raw = chat(router, "m")  # the fastest fails: the next in the live ranking answers
            assert raw.headers["x-router-provider"] == "slow"
            assert [a["provider"] for a in router.wait_records(4)[-1]["attempts"]] == ["fast", "slow"]
            assert 0 < verbose_health(router)["measurements"]["fast"]["error_rate"] < 1


def test_least_busy_sends_the_next_request_to_the_idle_provider():
    with FakeUpstream() as first, FakeUpstream() as second:
        first.enqueue(Reply.raw(200, [("content-type", "text/event-stream")], [Hang()]))
        cfg = (
            "[server]\nport = 0\n" + provider_config(first.url, "a") + provider_config(second.url, "b")
            + '[[routers]]\ntype = "least_busy"\nproviders = ["a", "b"]\n'
        )
        with running_router(cfg) as router:
            body = json.dumps({"model": "m", "stream": True, "messages": MESSAGES}).encode()
            with socket.create_connection(("127.0.0.1", router.port), timeout=10) as held:
                held.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                first.wait_until(lambda f: len(f.requests) == 1)
                assert verbose_health(router)["measurements"]["a"]["in_flight"] == 1
                assert chat(router, "m").headers["x-router-provider"] == "b"  # a is busy
            router.wait_records(2)  # the held request ended when its client left
            assert verbose_health(router)["measurements"]["a"]["in_flight"] == 0
            assert chat(router, "m").headers["x-router-provider"] == "a"  # a tie again: list order
