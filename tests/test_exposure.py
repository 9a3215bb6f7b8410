"""Exposure (issue 6, item 10): who may talk to the router and where it may
connect.

- Binding a non-loopback address needs `server.api_key_env` or
  `allow_unauthenticated = true` (the real CLI; exit 2 and no port otherwise);
  with a key, clients present it as a Bearer token or `x-api-key` and get a
  401 in their own error shape without it — the dashboard and its feed too.
- A foreign `Origin` or a non-JSON POST (what a web page can send without a
  preflight) is refused with 0 upstream calls, on every route but /health.
- SSRF: no request field — model names, body fields like `base_url`,
  headers like Host or X-Forwarded-*, absolute-form targets, CONNECT, image
  URLs, an upstream redirect — makes the router connect anywhere but its
  configured upstreams: a canary listener on 127.0.0.2 sees 0 connections.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading


from fakes import FakeUpstream, Reply
from harness import provider_config, raw_request, running_router
from reliability_report import record
from subproc import RouterProcess, environ

KEY = "rk-exposure-4d1c9b7e2f"
CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
ANTHROPIC_CHAT = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'


def config_for(url: str, server: str = "") -> str:
    return (f"[server]\nport = 0\n{server}\n" + provider_config(url)
            + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n')


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> tuple[int, dict, bytes]:
    return raw_request(port, method, path, headers=headers, body=body, timeout=5)


# --- binding and the client key ------------------------------------------------------


def test_non_loopback_bind_needs_a_key_or_an_explicit_opt_out(tmp_path):
    with FakeUpstream() as fake:
        for server, args in (('host = "0.0.0.0"', ()), ("", ("--host", "0.0.0.0")), ("", ("--host", "::"))):
            cfg = tmp_path / "config.toml"
            cfg.write_text(config_for(fake.url, server))
            result = subprocess.run([sys.executable, "-m", "llmrouter", "serve", str(cfg), *args], env=environ(),
                                    capture_output=True, text=True, timeout=20)
            assert result.returncode == 2, result.stderr
            where = "--host" if args else "server.host"
            assert where in result.stderr and "api_key_env" in result.stderr and "allow_unauthenticated" in result.stderr
            assert "listening" not in result.stderr and "Traceback" not in result.stderr
        # An explicit opt-out binds every address (reached here through 127.0.0.1).
        with RouterProcess(config_for(fake.url, 'host = "0.0.0.0"\nallow_unauthenticated = true'), tmp_path) as router:
            assert request(router.port, "POST", "/v1/chat/completions", {"content-type": "application/json"}, CHAT)[0] == 200


def test_client_key_is_required_everywhere_but_plain_health(tmp_path):
    with FakeUpstream() as fake:
        cfg = config_for(fake.url, 'host = "0.0.0.0"\napi_key_env = "ROUTER_KEY"')
        with RouterProcess(cfg, tmp_path, env={"ROUTER_KEY": KEY}) as router:
            port = router.port
            json_type = {"content-type": "application/json"}
            for headers in ({}, {"authorization": "Bearer nope"}, {"x-api-key": KEY[:-1]}, {"authorization": KEY},
                            {"authorization": f"Basic {KEY}"}):
                status, got, body = request(port, "POST", "/v1/chat/completions", {**json_type, **headers}, CHAT)
                assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error", (headers, body)
                status, got, body = request(port, "POST", "/v1/messages", {**json_type, **headers}, ANTHROPIC_CHAT)
                assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error", (headers, body)
                assert json.loads(body)["type"] == "error"  # Anthropic's shape on its route
                for path in ("/dashboard", "/dashboard/events", "/v1/models"):
                    assert request(port, "GET", path, headers)[0] == 401, (path, headers)
            assert len(fake.requests) == 0
            for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}, {"authorization": f"bearer  {KEY} "}):
                assert request(port, "POST", "/v1/chat/completions", {**json_type, **headers}, CHAT)[0] == 200, headers
                assert request(port, "POST", "/v1/messages", {**json_type, **headers}, ANTHROPIC_CHAT)[0] == 200, headers
            assert request(port, "GET", "/health")[0] == 200  # liveness needs no key, and says nothing
            assert request(port, "GET", "/health")[2] == b"ok"
            # ?verbose (provider names and states, never a URL or a key) needs the key.
            assert request(port, "GET", "/health?verbose")[0] == 401
            status, _, verbose = request(port, "GET", "/health?verbose", {"x-api-key": KEY})
            assert status == 200 and fake.url.encode() not in verbose and KEY.encode() not in verbose
            # The dashboard page and its feed also take the key as ?api_key (a browser cannot add headers).
            assert request(port, "GET", f"/dashboard?api_key={KEY}")[0] == 200
            assert all("authorization" not in r.headers and "x-api-key" not in r.headers for r in fake.requests)


# --- browsers: Origin and simple requests ---------------------------------------------

FOREIGN = ["https://evil.example", "null", "http://127.0.0.1.evil.com", "http://localhost.evil.com:8090",
           "file://", "chrome-extension://abcdef", "http://[::1].evil.com"]
SIMPLE_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""]


def test_foreign_origins_and_simple_posts_are_refused_without_upstream_calls():
    with FakeUpstream() as fake, running_router(config_for(fake.url)) as router:
        port = router.port
        refused = 0
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/messages", ANTHROPIC_CHAT), ("/v1/responses", b'{"model":"m","input":"hi"}')):
            for origin in FOREIGN:
                status, _, reply = request(port, "POST", path, {"content-type": "application/json", "origin": origin}, body)
                assert status == 403, (path, origin, reply)
                assert "access-control-allow-origin" not in _.keys()
                refused += 1
            for ctype in SIMPLE_TYPES:
                headers = {"content-type": ctype} if ctype else {}
                status, _, reply = request(port, "POST", path, headers, body)
                assert status == 415, (path, ctype, reply)
                refused += 1
        for path in ("/dashboard", "/dashboard/events", "/v1/models"):
            for origin in FOREIGN:
                assert request(port, "GET", path, {"origin": origin})[0] == 403, (path, origin)
                refused += 1
        assert len(fake.requests) == 0
        # The router's own pages, and local tools, are served.
        assert request(port, "GET", "/dashboard", {"origin": f"http://127.0.0.1:{port}"})[0] == 200
        assert request(port, "POST", "/v1/chat/completions", {"content-type": "application/json", "origin": f"http://localhost:{port}"}, CHAT)[0] == 200
    record("exposure.browser_refusals", refused, upstream_calls=0, bound="0 upstream calls")


# --- SSRF --------------------------------------------------------------------------------


class Canary:
    """A listener on 127.0.0.2 that counts every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def ssrf_vectors(canary: str, host: str) -> list[tuple[str, str, str, dict, bytes]]:
    """(name, method, target, headers, body)"""
    url = f"http://{host}/v1"
    j = {"content-type": "application/json"}

    def chat(**extra) -> bytes:
        return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}).encode()

    def anth(**extra) -> bytes:
        return json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()

    vectors = [
        ("body base_url", "POST", "/v1/chat/completions", j, chat(base_url=url)),
        ("body api_base", "POST", "/v1/chat/completions", j, chat(api_base=url)),
        ("body baseURL", "POST", "/v1/chat/completions", j, chat(baseURL=url)),
        ("body api_key", "POST", "/v1/chat/completions", j, chat(api_key="sk-attacker")),
        ("body extra_headers", "POST", "/v1/chat/completions", j, chat(extra_headers={"Host": host, "X-Forwarded-Host": host})),
        ("body extra_body.url", "POST", "/v1/chat/completions", j, chat(extra_body={"url": url})),
        ("body metadata.endpoint", "POST", "/v1/messages", j, anth(metadata={"endpoint": url})),
        ("body anthropic base_url", "POST", "/v1/messages", j, anth(base_url=url)),
        ("body responses base_url", "POST", "/v1/responses", j, json.dumps({"model": "m", "input": "hi", "base_url": url}).encode()),
    ]
    for model in (url, f"openai/{url}", f"http://{host}", host, f"//{host}/x", f"@{host}", f"m@{host}",
                  "ollama/../../x", f"../{host}", f"m\r\nhost: {host}", f"http://user:pass@{host}/"):
        vectors.append((f"model {model!r}", "POST", "/v1/chat/completions", j, json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()))
        vectors.append((f"anthropic model {model!r}", "POST", "/v1/messages", j, anth(model=model)))
    for name in ("host", "x-forwarded-host", "x-forwarded-for", "x-forwarded-proto", "forwarded", "x-upstream-base",
                 "x-original-url", "x-rewrite-url", "x-real-ip", "x-host"):
        value = f"for={host};host={host}" if name == "forwarded" else host
        vectors.append((f"header {name}", "POST", "/v1/chat/completions", {**j, name: value}, chat()))
    vectors += [
        ("image_url", "POST", "/v1/chat/completions", j, json.dumps({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": f"http://{host}/cat.png"}}]}]}).encode()),
        ("anthropic url image", "POST", "/v1/messages", j, anth(messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": f"http://{host}/cat.png"}}]}])),
        ("absolute-form target", "POST", f"http://{host}/v1/chat/completions", j, chat()),
        ("absolute-form GET", "GET", f"http://{host}/health", {}, b""),
        ("CONNECT", "CONNECT", host, {}, b""),
        ("redirecting upstream", "POST", "/v1/chat/completions", j, chat(model="redirect")),
        ("redirecting upstream (stream)", "POST", "/v1/chat/completions", j, chat(model="redirect", stream=True)),
    ]
    return vectors


def test_no_request_field_makes_the_router_connect_elsewhere():
    canary = Canary()
    host = f"127.0.0.2:{canary.port}"
    try:
        with FakeUpstream() as fake, FakeUpstream() as other:
            fake.script = lambda r: (Reply.raw(302, [("location", f"http://{host}/v1/chat/completions"), ("content-length", "0")])
                                     if r.json.get("model") == "redirect" else None)
            cfg = (config_for(fake.url) + provider_config(other.url, name="other", fmt="anthropic")
                   + '[[routers]]\ntype = "prefix"\nmodel_prefix = "x/"\nprovider = "other"\n')
            with running_router(cfg) as router:
                vectors = ssrf_vectors(f"http://{host}", host)
                statuses = {}
                for name, method, target, headers, body in vectors:
                    hdrs = {"x-request-id": f"ssrf-{len(statuses)}", **headers}
                    statuses[name] = request(router.port, method, target, hdrs, body)[0]
                    assert statuses[name] < 500 or statuses[name] in (502, 505), (name, statuses[name])
                router.wait_idle()  # nothing still running could connect later
            assert canary.connections == 0, statuses
            assert statuses["redirecting upstream"] == 502  # a redirect is not followed, nor passed on
            # What the configured upstreams were sent: their own Host, none of the attacker's headers.
            for r in fake.requests + other.requests:
                assert r.headers["host"] == f"127.0.0.1:{fake.port if r in fake.requests else other.port}"
                leaked = {"x-forwarded-host", "x-forwarded-for", "forwarded", "x-upstream-base", "x-original-url",
                          "x-rewrite-url", "x-real-ip", "x-host", "authorization"} & set(r.headers)
                assert not leaked, (r.path, leaked)
    finally:
        canary.close()
    record("exposure.ssrf_vectors", len(vectors), canary_connections=0, bound="0 connections",
           attacker_headers_forwarded=0)
