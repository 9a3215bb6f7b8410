"""Routing over real sockets: discovery against a fake Ollama, fallback, tags, plugins."""

from __future__ import annotations

import json
import socket
import time

import httpcore
import openai
import pytest

from fakes import FakeUpstream, Hang, Reply
from harness import running_router

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
