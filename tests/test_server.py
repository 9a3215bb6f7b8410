"""The HTTP server over real loopback sockets: framing, keep-alive, limits, shutdown."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import httpcore
import pytest

from fakes import FakeUpstream, Reply
from harness import provider_config, raw_http, running_router

CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def config_for(url: str, server: str = "") -> str:
    return (
        f"[server]\nport = 0\n{server}\n"
        + provider_config(url)
        + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'
    )


@pytest.fixture
def fake():
    with FakeUpstream() as upstream:
        yield upstream


def post(path: bytes = b"/v1/chat/completions", body: bytes = CHAT, extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def responses_in(data: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def test_health_and_head(fake):
    with running_router(config_for(fake.url)) as router:
        reply = raw_http(router.port, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"\r\n\r\nok")
        head = raw_http(router.port, b"HEAD /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        assert b"content-length: 2" in head.lower()


def test_keep_alive_and_pipelining_in_order(fake):
    with running_router(config_for(fake.url)) as router:
        both = (
            post()
            + b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
            + post(body=b'{"model":"m","messages":[{"role":"user","content":"second"}]}', extra=b"connection: close\r\n")
        )
        reply = raw_http(router.port, both)
        assert responses_in(reply) == [200, 200, 200]
        first, second = reply.index(b"echo: hi"), reply.index(b"echo: second")
        assert first < reply.index(b"\r\n\r\nok") < second
        assert fake.connections_opened == 1


def test_not_found_and_method_not_allowed_are_json(fake):
    with running_router(config_for(fake.url)) as router:
        reply = raw_http(router.port, b"GET /nope HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 404")
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "not_found_error"
        reply = raw_http(router.port, b"GET /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 405") and b"allow: post" in reply.lower()
        reply = raw_http(router.port, b"GET /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["type"] == "error"  # Anthropic's shape there


def test_expect_100_continue(fake):
    with running_router(config_for(fake.url)) as router:
        with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(CHAT)
            )
            assert sock.recv(1024).startswith(b"HTTP/1.1 100")
            sock.sendall(CHAT)
            assert b"200 OK" in sock.recv(65536)


def test_headers_over_64k_in_one_read_are_431(fake):
    with running_router(config_for(fake.url)) as router:
        big = b"x-filler: " + b"a" * 70_000 + b"\r\n"
        reply = raw_http(router.port, post(extra=big))
        assert reply.startswith(b"HTTP/1.1 431")
        assert fake.requests == []


def test_body_over_limit_is_413(fake):
    with running_router(config_for(fake.url, "max_body_bytes = 1000")) as router:
        reply = raw_http(router.port, post(body=b'{"model":"m","messages":[],"x":"' + b"a" * 2000 + b'"}'))
        assert reply.startswith(b"HTTP/1.1 413")
        chunked = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"".join(b"200\r\n" + b"a" * 0x200 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
        )
        assert raw_http(router.port, chunked).startswith(b"HTTP/1.1 413")
        assert fake.requests == []
        assert [r["status"] for r in router.records] == []  # refused before any pipeline ran


def test_slow_headers_get_408_and_close(fake):
    with running_router(config_for(fake.url, "header_timeout = 0.3")) as router:
        # The socket timeout (5 s) only keeps the test from hanging: reading to
        # the end proves the router closed the connection after its 408.
        with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and reply.count(b"HTTP/1.1") == 1
            assert b"connection: close" in reply.lower()


def test_idle_keep_alive_connection_is_closed(fake):
    with running_router(config_for(fake.url, "keepalive_timeout = 0.3")) as router:
        with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            assert sock.recv(65536) == b""  # closed by the router: the socket timeout would raise


def test_malformed_request_line_is_400(fake):
    with running_router(config_for(fake.url)) as router:
        reply = raw_http(router.port, b"BLAH\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400")
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"]


def test_a_failing_handler_does_not_stop_the_listener(fake):
    with running_router(config_for(fake.url)) as router:
        original = router.app.server.handler

        async def flaky(request, writer):
            if request.path == "/boom":
                raise RuntimeError("bug")
            await original(request, writer)

        router.app.server.handler = flaky
        reply = raw_http(router.port, b"GET /boom HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 500") and b"Traceback" not in reply
        assert raw_http(router.port, b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").endswith(b"ok")


def test_foreign_origin_and_form_posts_are_refused(fake):
    with running_router(config_for(fake.url)) as router:
        evil = raw_http(router.port, post(extra=b"origin: https://evil.example\r\n"))
        assert evil.startswith(b"HTTP/1.1 403")
        form = raw_http(router.port, post().replace(b"application/json", b"text/plain"))
        assert form.startswith(b"HTTP/1.1 415")
        local = raw_http(router.port, post(extra=b"origin: http://localhost:3000\r\nconnection: close\r\n"))
        assert local.startswith(b"HTTP/1.1 200")
        assert len(fake.requests) == 1


def test_models_lists_what_the_router_can_serve(fake):
    text = config_for(fake.url) + '[[routers]]\ntype = "prefix"\nmodel_prefix = "x/"\nprovider = "fake"\nrewrite_model = "big-model"\n'
    with running_router(text) as router:
        with httpcore.ConnectionPool() as pool:
            listing = json.loads(pool.request("GET", router.url + "/v1/models").content)
        assert listing["object"] == "list"
        assert {"id": "big-model", "object": "model", "created": 0, "owned_by": "fake"} in listing["data"]


def test_graceful_shutdown_lets_streams_finish(fake):
    fake.script = lambda request: Reply.text("a b c d e", chunks=5, delay=0.1)
    with running_router(config_for(fake.url)) as router:
        results: list[bytes] = []

        def stream() -> None:
            payload = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
            results.append(raw_http(router.port, post(body=payload, extra=b"connection: close\r\n")))

        worker = threading.Thread(target=stream)
        worker.start()
        fake.wait_until(lambda f: len(f.requests) == 1)
        router.shutdown()
        worker.join(5)
        assert b"data: [DONE]" in results[0]
        with pytest.raises(OSError):
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:  # the listener closes once shutdown starts
                socket.create_connection(("127.0.0.1", router.port), timeout=1).close()
                time.sleep(0.02)
        (record,) = router.wait_records(1)
        assert record["status"] == 200


def _stream_request(version: bytes, method: bytes = b"POST") -> bytes:
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    return (
        method + b" /v1/chat/completions " + version + b"\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )


def test_streamed_body_framing_follows_the_clients_http_version(fake):
    """The router frames a stream's chunks itself (not through h11's per-event
    path): an HTTP/1.1 client gets valid chunked framing, an HTTP/1.0 client
    the bare body and a close, with the same events."""
    import h11

    fake.script = lambda request: Reply.text("one two three four", chunks=4, delay=0.02)
    with running_router(config_for(fake.url)) as router:
        reply = raw_http(router.port, _stream_request(b"HTTP/1.1"))
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
        client.send(h11.EndOfMessage())
        client.receive_data(reply)
        head = client.next_event()
        assert isinstance(head, h11.Response) and head.status_code == 200
        assert (b"transfer-encoding", b"chunked") in head.headers
        assert (b"server", b"llmrouter") in head.headers and (b"content-type", b"text/event-stream") in head.headers
        chunked_body, pieces = b"", 0
        while not isinstance(event := client.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event  # a framing error raises in next_event
            chunked_body += event.data
            pieces += 1
        assert pieces > 1 and chunked_body.endswith(b"data: [DONE]\n\n")

        reply10 = raw_http(router.port, _stream_request(b"HTTP/1.0"))
        head10, _, body10 = reply10.partition(b"\r\n\r\n")
        assert head10.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head10.lower()
        texts = [json.loads(line[6:])["choices"][0]["delta"].get("content") for body in (chunked_body, body10)
                 for line in body.split(b"\n") if line.startswith(b"data: {")]
        assert "".join(t or "" for t in texts) == 2 * "one two three four"

        reply_head = raw_http(router.port, _stream_request(b"HTTP/1.1", b"HEAD"))
        assert reply_head.startswith(b"HTTP/1.1 ") and reply_head.endswith(b"\r\n\r\n")
