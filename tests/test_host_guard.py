"""The DNS-rebinding guard (issue 10, item 1), with raw requests.

A page whose name an attacker points at 127.0.0.1 is "same-origin" with the
router: the browser sends its own name as Host, and no Origin on a GET (on a
POST, an Origin equal to that Host). Only the Host header gives it away, so
every route but the bare `/health` answers a Host that is not a loopback
address, `localhost`, the listen address or a `server.allowed_hosts` entry
with 403 in the route's error shape, and nothing reaches an upstream. A
caller that presents the client key may use any Host. A refused chat request
still gets its one log line and one `complete` event.

The same attack in a real browser is in test_dashboard.py.
"""

from __future__ import annotations

import json
import time

from fakes import FakeUpstream
from harness import provider_config, raw_http, raw_request, running_router
from llmrouter.app import HostGuard

KEY = "rk-host-guard-8e1f3a5c7b"
CHATS = {
    "/v1/chat/completions": b'{"model":"m","messages":[{"role":"user","content":"hi"}]}',
    "/v1/messages": b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}',
    "/v1/responses": b'{"model":"m","input":"hi"}',
    "/v1/completions": b'{"model":"m","prompt":"def f(","suffix":"return 1"}',
    "/v1/embeddings": b'{"model":"m","input":"hi"}',
    "/api/chat": b'{"model":"m","messages":[{"role":"user","content":"hi"}]}',
    "/api/generate": b'{"model":"m","prompt":"hi"}',
    "/api/embed": b'{"model":"m","input":"hi"}',
    "/api/embeddings": b'{"model":"m","prompt":"hi"}',
}
# Routes answered by the router itself (no pipeline, so no record).
GETS = ("/v1/models", "/dashboard", "/dashboard/events", "/health?verbose", "/metrics", "/no/such/route", "/v1/messages/x",
        "/", "/api/tags", "/api/version", "/api/ps")
POSTS = {"/api/show": b'{"model":"m"}', "/api/pull": b'{"model":"m"}'}


def config_for(url: str, server: str = "", log: str = "") -> str:
    logging = f'[logging]\nenabled = true\npath = "{log}"\n' if log else ""
    return (f"[server]\nport = 0\n{server}\n{logging}" + provider_config(url)
            + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n')


def request(port: int, method: str, path: str, host: str | None, headers: dict[str, str] | None = None,
            body: bytes = b"", version: str = "HTTP/1.1") -> tuple[int, dict[str, str], bytes]:
    if body:
        headers = {"content-type": "application/json", **(headers or {})}
    return raw_request(port, method, path, host=host, headers=headers, body=body, version=version)


def feed_status(port: int, host: str, query: str = "") -> int:
    """The event feed's status; a served feed never ends, so only its head is read."""
    raw = raw_http(port, f"GET /dashboard/events{query} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode(), read_until_close=False)
    return int(raw.split(b" ", 2)[1])


def assert_forbidden(path: str, status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 403, (path, status, body[:200])
    assert headers["content-type"] == "application/json" and "access-control-allow-origin" not in headers
    error = json.loads(body)
    if path == "/" or path.startswith("/api/"):  # the Ollama probe and API: Ollama's shape
        assert list(error) == ["error"] and "allowed_hosts" in error["error"], error
        return
    if path.startswith("/v1/messages"):
        assert error["type"] == "error" and error["error"]["type"] == "permission_error", error
    else:
        assert error["error"]["code"] == "forbidden" and error["error"]["type"] == "permission_error", error
    assert "allowed_hosts" in json.dumps(error)


def forged_hosts(port: int) -> list[str]:
    return [f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.com:{port}", f"localhost.evil.com:{port}",
            f"[::1].evil.com:{port}", f"EVIL.example:{port}", "0x7f000001", f"127.0.0.1:{port}@evil.example", ""]


def wait_lines(path, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.02)


def test_forged_host_is_refused_on_every_route_with_one_record_per_chat(tmp_path):
    log = tmp_path / "requests.jsonl"
    with FakeUpstream() as fake, running_router(config_for(fake.url, log=str(log))) as router:
        port = router.port
        chats = 0
        for host in forged_hosts(port):
            for origin in (None, f"http://{host}"):  # a rebound page sends no Origin on GET, its own on POST
                extra = {"origin": origin} if origin else {}
                for path, body in CHATS.items():
                    assert_forbidden(path, *request(port, "POST", path, host, extra, body))
                    chats += 1
                for path in GETS:
                    assert_forbidden(path, *request(port, "GET", path, host, extra))
                for path, body in POSTS.items():
                    assert_forbidden(path, *request(port, "POST", path, host, extra, body))
                # A wrong method is still a refusal of the host first.
                assert_forbidden("/v1/chat/completions", *request(port, "GET", "/v1/chat/completions", host, extra))
                chats += 1
        assert len(fake.requests) == 0
        # The bare liveness answer stays open (it says nothing).
        status, _, body = request(port, "GET", "/health", "evil.example")
        assert (status, body) == (200, b"ok")
        records = router.wait_records(chats)
        time.sleep(0.2)  # nothing more may come
        assert len(router.records) == chats
        assert {(r["status"], r["error_code"]) for r in router.records} == {(403, "forbidden")}
        starts = [e for e in router.events if e["type"] == "start"]
        assert sorted(e["id"] for e in starts) == sorted(r["id"] for r in records)  # one of each per request
    lines = wait_lines(log, chats)
    assert len(lines) == chats and sorted(r["id"] for r in lines) == sorted(r["id"] for r in records)


def test_a_request_without_host_is_refused():
    with FakeUpstream() as fake, running_router(config_for(fake.url)) as router:
        port = router.port
        # HTTP/1.1 requires Host: h11 refuses it before any route.
        assert request(port, "GET", "/v1/models", None)[0] == 400
        # HTTP/1.0 may omit it; the guard refuses it.
        assert_forbidden("/v1/models", *request(port, "GET", "/v1/models", None, version="HTTP/1.0"))
        assert_forbidden("/v1/chat/completions", *request(port, "POST", "/v1/chat/completions", None,
                                                         body=CHATS["/v1/chat/completions"], version="HTTP/1.0"))
        assert router.wait_records(1)[0]["status"] == 403
        assert len(fake.requests) == 0


def test_loopback_names_and_addresses_are_served():
    with FakeUpstream() as fake, running_router(config_for(fake.url)) as router:
        port = router.port
        hosts = [f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "localhost", "LocalHost", f"[::1]:{port}",
                 "[::1]", "127.5.6.7", f"127.255.255.254:{port}", "[0:0::1]"]
        for host in hosts:
            for path in ("/v1/models", "/dashboard", "/health?verbose"):
                assert request(port, "GET", path, host)[0] == 200, (host, path)
            assert feed_status(port, host) == 200, host
            for path, body in CHATS.items():
                assert request(port, "POST", path, host, {"origin": f"http://{host}"}, body)[0] == 200, (host, path)
        assert len(fake.requests) == len(hosts) * len(CHATS)


def test_allowed_hosts_and_star():
    with FakeUpstream() as fake:
        with running_router(config_for(fake.url, 'allowed_hosts = ["router.lan", "10.1.2.3"]')) as router:
            port = router.port
            for host in (f"router.lan:{port}", "ROUTER.lan", f"10.1.2.3:{port}"):
                assert request(port, "GET", "/v1/models", host)[0] == 200, host
                assert request(port, "POST", "/v1/chat/completions", host, {"origin": f"http://{host}"},
                               CHATS["/v1/chat/completions"])[0] == 200, host
            for host in (f"evil.example:{port}", "sub.router.lan", "router.lan.evil.com", "10.1.2.4"):
                assert_forbidden("/v1/models", *request(port, "GET", "/v1/models", host))
        with running_router(config_for(fake.url, 'allowed_hosts = ["*"]')) as router:
            assert request(router.port, "GET", "/dashboard", f"evil.example:{router.port}")[0] == 200
            assert feed_status(router.port, f"evil.example:{router.port}") == 200
        assert len(fake.requests) == 3


def test_the_listen_address_is_served():
    # Bound to every address (reached here through 127.0.0.1): a request for
    # the listen address itself is served; other names need allowed_hosts.
    with FakeUpstream() as fake:
        with running_router(config_for(fake.url, 'host = "0.0.0.0"\nallow_unauthenticated = true')) as router:
            port = router.port
            assert request(port, "GET", "/v1/models", f"0.0.0.0:{port}")[0] == 200
            assert_forbidden("/v1/models", *request(port, "GET", "/v1/models", f"router.lan:{port}"))
    guard = HostGuard("router.lan", ())
    assert guard.allows("router.lan:8090") and guard.allows("Router.LAN") and not guard.allows("evil.example")
    guard = HostGuard("::1", ("fe80::1",))
    assert guard.allows("[::1]:1") and guard.allows("[fe80:0::1]:8090") and not guard.allows("fe80::1")


def test_the_client_key_passes_any_host():
    with FakeUpstream() as fake:
        cfg = config_for(fake.url, 'api_key_env = "ROUTER_KEY"')
        with running_router(cfg, {"ROUTER_KEY": KEY}) as router:
            port = router.port
            evil = f"evil.example:{port}"
            bearer = {"authorization": f"Bearer {KEY}"}
            assert request(port, "GET", "/v1/models", evil, bearer)[0] == 200
            assert request(port, "GET", "/v1/models", evil, {"x-api-key": KEY})[0] == 200
            assert request(port, "POST", "/v1/messages", evil, {"x-api-key": KEY}, CHATS["/v1/messages"])[0] == 200
            assert request(port, "GET", f"/dashboard?api_key={KEY}", evil)[0] == 200
            assert feed_status(port, evil, f"?api_key={KEY}") == 200
            # Without the key (or with a wrong one), the Host is refused first.
            assert_forbidden("/v1/models", *request(port, "GET", "/v1/models", evil))
            assert_forbidden("/v1/models", *request(port, "GET", "/v1/models", evil, {"authorization": "Bearer wrong"}))
            assert_forbidden("/dashboard", *request(port, "GET", "/dashboard?api_key=wrong", evil))
            # A loopback Host without the key is a plain 401.
            assert request(port, "GET", "/v1/models", f"127.0.0.1:{port}")[0] == 401
        assert len(fake.requests) == 1


def test_verbose_health_needs_the_key_when_one_is_set():
    with FakeUpstream() as fake, running_router(config_for(fake.url, 'api_key_env = "ROUTER_KEY"'), {"ROUTER_KEY": KEY}) as router:
        port, host = router.port, f"127.0.0.1:{router.port}"
        assert request(port, "GET", "/health", host)[2] == b"ok"
        status, _, body = request(port, "GET", "/health?verbose", host)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
        status, _, body = request(port, "GET", "/health?verbose", host, {"authorization": f"Bearer {KEY}"})
        assert status == 200 and json.loads(body)["status"] == "ok"
