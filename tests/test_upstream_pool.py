"""The upstream connection pool (llmrouter.upstream) against real loopback sockets.

A tiny scripted HTTP/1.1 server in this file counts the connections it
accepts and how many are open at once, so each test can check what the pool
did on the wire: reuse, closing half-read responses, replacing connections
the server closed, the max_connections limit, timeouts and connect errors.
No timing thresholds: timeouts are set short and only their outcome is checked.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall
from llmrouter.upstream import Upstreams

pytestmark = pytest.mark.anyio

CALL = UpstreamCall("/chat/completions", [("content-type", "application/json")], b'{"model":"m","messages":[]}')
OK_BODY = b'{"ok":true}'


def ok_response(body: bytes = OK_BODY) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


class Wire:
    """What a handler gets: the socket of one connection and its request."""

    def __init__(self, stream: anyio.abc.SocketStream, conn_id: int, body: bytes) -> None:
        self.stream = stream
        self.conn_id = conn_id
        self.body = body

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def wait_for_close(self) -> bool:
        """True once the client closed the connection (EOF or reset)."""
        try:
            while await self.stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        return True


# A handler answers one request; it returns False to end the connection.
Handler = Callable[[Wire], Awaitable[bool]]


async def answer_ok(wire: Wire) -> bool:
    await wire.send(ok_response())
    return True


class ScriptedServer:
    def __init__(self, handler: Handler = answer_ok) -> None:
        self.handler = handler
        self.accepted = 0
        self.live = 0
        self.max_live = 0
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request body)
        self.closed_by_client: list[int] = []
        self.first_reads: list[bytes] = []  # the first bytes received on each connection

    async def serve(self, host: str = "127.0.0.1", *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=host)
        async with listener:
            task_status.started(listener.extra(SocketAttribute.local_port))
            await listener.serve(self.connection)

    async def connection(self, stream: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        conn_id = self.accepted
        self.live += 1
        self.max_live = max(self.max_live, self.live)
        buf = b""
        try:
            async with stream:
                buf = await stream.receive()
                self.first_reads.append(buf)
                while True:
                    while b"\r\n\r\n" not in buf:
                        buf += await stream.receive()
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(buf) < length:
                        buf += await stream.receive()
                    body, buf = buf[:length], buf[length:]
                    self.requests.append((conn_id, body))
                    if not await self.handler(Wire(stream, conn_id, body)):
                        return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.closed_by_client.append(conn_id)
        finally:
            self.live -= 1


def provider(port: int, **settings: object) -> Provider:
    return Provider(name="fake", format="openai", base_url=f"http://127.0.0.1:{port}/v1", **settings)  # type: ignore[arg-type]


async def fetch(upstreams: Upstreams, prov: Provider) -> bytes:
    stream = await upstreams.open(prov, CALL)
    try:
        assert stream.status == 200
        return await stream.read_all(1 << 20)
    finally:
        await stream.aclose()


async def test_connections_are_reused_across_requests() -> None:
    """Sequential requests travel on one kept-alive connection."""
    server = ScriptedServer()
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port)
        upstreams = Upstreams((prov,))
        for _ in range(5):
            assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 1
        assert [conn for conn, _ in server.requests] == [1] * 5
        assert server.requests[0][1] == CALL.body
        assert upstreams.pool_stats("fake") == {"open": 1, "idle": 1, "opened": 1}
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_request_line_and_headers_reach_the_upstream() -> None:
    server = ScriptedServer()
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port)
        upstreams = Upstreams((prov,))
        await fetch(upstreams, prov)
        first = server.first_reads[0]
        head = first.split(b"\r\n\r\n")[0].lower() + b"\r\n"
        assert head.startswith(b"post /v1/chat/completions http/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:%d\r\n" % port in head
        assert b"\r\ncontent-length: %d\r\n" % len(CALL.body) in head
        assert b"\r\ncontent-type: application/json\r\n" in head
        # Head and body leave in one write (the pool holds writes until the read).
        assert first.endswith(CALL.body)
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_ipv6_literal_upstream() -> None:
    """http://[::1]:port/v1 connects over IPv6 and sends the bracketed Host."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = ScriptedServer()
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve, "::1")
        prov = Provider(name="v6", format="openai", base_url=f"http://[::1]:{port}/v1")
        upstreams = Upstreams((prov,))
        assert await fetch(upstreams, prov) == OK_BODY
        assert b"\r\nhost: [::1]:%d\r\n" % port in server.first_reads[0].lower()
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_response_closed_early_closes_its_connection() -> None:
    """A stream abandoned half-way is never handed to the next request."""
    saw_close = anyio.Event()

    async def stream_then_wait(wire: Wire) -> bool:
        if wire.conn_id == 1:
            await wire.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            await wire.send(b"6\r\ndata: \r\n")
            await wire.wait_for_close()
            saw_close.set()
            return False
        await wire.send(ok_response())
        return True

    server = ScriptedServer(stream_then_wait)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port)
        upstreams = Upstreams((prov,))
        stream = await upstreams.open(prov, CALL)
        assert await stream.read() == b"data: "
        await stream.aclose()
        with anyio.fail_after(5):
            await saw_close.wait()
        assert upstreams.pool_stats("fake")["open"] == 0
        assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 2
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_cancelled_read_closes_its_connection() -> None:
    """A read cancelled while waiting for the next chunk closes the socket."""
    saw_close = anyio.Event()

    async def stall(wire: Wire) -> bool:
        await wire.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await wire.wait_for_close()
        saw_close.set()
        return False

    server = ScriptedServer(stall)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port)
        upstreams = Upstreams((prov,))
        stream = await upstreams.open(prov, CALL)
        assert await stream.read() == b"hi"
        with anyio.move_on_after(0.05) as scope:
            await stream.read()
        assert scope.cancelled_caught
        await stream.aclose()
        with anyio.fail_after(5):
            await saw_close.wait()
        assert upstreams.pool_stats("fake") == {"open": 0, "idle": 0, "opened": 1}
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_cancelled_open_leaves_the_pool_consistent() -> None:
    """Cancelled while waiting for the head: the connection is dropped, the
    slot is given back, and the next request still works."""

    async def slow_first(wire: Wire) -> bool:
        if wire.conn_id == 1:
            await wire.wait_for_close()
            return False
        await wire.send(ok_response())
        return True

    server = ScriptedServer(slow_first)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port, max_connections=1)
        upstreams = Upstreams((prov,))
        with anyio.move_on_after(0.05):
            await upstreams.open(prov, CALL)
        assert upstreams.pool_stats("fake")["open"] == 0
        with anyio.fail_after(5):
            assert await fetch(upstreams, prov) == OK_BODY
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    """The server closes each connection after answering (without saying so):
    every request still succeeds, each on a fresh connection."""

    async def answer_and_hang_up(wire: Wire) -> bool:
        await wire.send(ok_response())
        return False

    server = ScriptedServer(answer_and_hang_up)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port)
        upstreams = Upstreams((prov,))
        for i in range(3):
            assert await fetch(upstreams, prov) == OK_BODY
            # Let the server's FIN arrive before the next request.
            with anyio.fail_after(5):
                while server.live:
                    await anyio.sleep(0.001)
        assert server.accepted == 3
        assert upstreams.pool_stats("fake")["open"] == 1
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_dead_idle_connection_missed_by_the_check_is_retried_once() -> None:
    """A reset connection that the staleness check misses (the race where the
    server closes just after the check) fails before any byte is sent, so the
    request goes out once more on a fresh connection."""

    async def answer_then_reset(wire: Wire) -> bool:
        await wire.send(ok_response())
        if wire.conn_id == 1:
            raw = wire.stream.extra(SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            return False
        return True

    server = ScriptedServer(answer_then_reset)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port)
        upstreams = Upstreams((prov,))
        assert await fetch(upstreams, prov) == OK_BODY
        with anyio.fail_after(5):
            while server.live:
                await anyio.sleep(0.001)
        await anyio.sleep(0.01)  # let the reset reach our socket
        pool = upstreams._pools["fake"]
        (idle,) = pool.idle
        idle.http.has_expired = lambda: False  # the check misses it
        assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 2
        assert [body for _, body in server.requests] == [CALL.body, CALL.body]
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_request_is_not_retried_once_it_was_sent() -> None:
    """The server takes the request, then hangs up without answering: that is
    an error for the caller, never a silent second attempt."""

    async def hang_up(wire: Wire) -> bool:
        return False

    server = ScriptedServer(hang_up)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port)
        upstreams = Upstreams((prov,))
        with pytest.raises(errors.UpstreamProtocolError):
            await upstreams.open(prov, CALL)
        assert len(server.requests) == 1
        assert upstreams.pool_stats("fake")["open"] == 0
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_max_connections_is_respected() -> None:
    """Six concurrent requests with max_connections = 2: never more than two
    sockets at the server, and every request is answered."""
    gate = anyio.Event()

    async def wait_for_gate(wire: Wire) -> bool:
        await gate.wait()
        await wire.send(ok_response())
        return True

    server = ScriptedServer(wait_for_gate)
    results: list[bytes] = []
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port, max_connections=2)
        upstreams = Upstreams((prov,))

        async def one() -> None:
            results.append(await fetch(upstreams, prov))

        async with anyio.create_task_group() as clients:
            for _ in range(6):
                clients.start_soon(one)
            with anyio.fail_after(5):
                while len(server.requests) < 2:
                    await anyio.sleep(0.001)
            await anyio.sleep(0.02)  # the other four must be queued at the pool, not at the server
            assert server.accepted == 2
            assert len(server.requests) == 2
            gate.set()
        assert results == [OK_BODY] * 6
        assert server.max_live == 2
        assert server.accepted == 2
        assert upstreams.pool_stats("fake")["opened"] == 2
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_no_response_head_in_time_is_an_upstream_timeout() -> None:
    async def never(wire: Wire) -> bool:
        await wire.wait_for_close()
        return False

    server = ScriptedServer(never)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port, first_byte_timeout=0.1)
        upstreams = Upstreams((prov,))
        with pytest.raises(errors.UpstreamTimeout) as caught:
            await upstreams.open(prov, CALL)
        assert "no response within 0.1s" in str(caught.value)
        assert caught.value.retryable
        assert upstreams.pool_stats("fake")["open"] == 0
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_stalled_body_is_an_upstream_timeout() -> None:
    """read_all gives up after idle_timeout without data."""

    async def half_body(wire: Wire) -> bool:
        await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":")
        await wire.wait_for_close()
        return False

    server = ScriptedServer(half_body)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port, idle_timeout=0.1)
        upstreams = Upstreams((prov,))
        stream = await upstreams.open(prov, CALL)
        try:
            with pytest.raises(errors.UpstreamTimeout):
                await stream.read_all(1 << 20)
        finally:
            await stream.aclose()
        assert upstreams.pool_stats("fake")["open"] == 0
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_connection_refused_is_an_upstream_connect_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prov = provider(port)
    upstreams = Upstreams((prov,))
    with pytest.raises(errors.UpstreamConnectError) as caught:
        await upstreams.open(prov, CALL)
    assert caught.value.retryable
    assert f"cannot connect to http://127.0.0.1:{port}/v1" in str(caught.value)
    assert upstreams.pool_stats("fake") == {"open": 0, "idle": 0, "opened": 0}
    await upstreams.aclose()


async def test_upstream_error_status_is_passed_on_and_connection_kept() -> None:
    """A 4xx/5xx with a complete body is a normal exchange: the connection stays usable."""
    calls = 0

    async def fail_once(wire: Wire) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            body = b'{"error":{"message":"slow down"}}'
            await wire.send(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        else:
            await wire.send(ok_response())
        return True

    server = ScriptedServer(fail_once)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)
        prov = provider(port)
        upstreams = Upstreams((prov,))
        stream = await upstreams.open(prov, CALL)
        assert stream.status == 429
        assert ("retry-after", "1") in stream.headers
        assert b"slow down" in await stream.read_all(1 << 16)
        await stream.aclose()
        assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 1
        await upstreams.aclose()
        tg.cancel_scope.cancel()


@pytest.fixture
def self_signed(tmp_path):  # type: ignore[no-untyped-def]
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_https_upstreams_speak_tls_and_verify_the_certificate(self_signed) -> None:  # type: ignore[no-untyped-def]
    """An https base_url gets a TLS handshake with certificate checks: a
    self-signed server is refused as a connect error (and so may fall back)."""
    import ssl

    from anyio.streams.tls import TLSListener

    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handshakes: list[str] = []

    async def handle(stream: anyio.abc.ByteStream) -> None:
        handshakes.append("tried")
        await stream.aclose()

    async with anyio.create_task_group() as tg:
        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = tcp.extra(SocketAttribute.local_port)
        listener = TLSListener(tcp, context, standard_compatible=False)
        tg.start_soon(listener.serve, handle)
        prov = Provider(name="tls", format="openai", base_url=f"https://127.0.0.1:{port}/v1")
        upstreams = Upstreams((prov,))
        with pytest.raises(errors.UpstreamConnectError) as caught:
            await upstreams.open(prov, CALL)
        assert "certificate" in str(caught.value).lower()
        assert upstreams.pool_stats("tls")["open"] == 0
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def trusted_tls_provider(tg: anyio.abc.TaskGroup, server: ScriptedServer, self_signed) -> Provider:  # type: ignore[no-untyped-def]
    """Serves `server` over TLS with the test certificate; returns a provider
    pointing at it that trusts the certificate (its ca_bundle)."""
    import ssl

    from anyio.streams.tls import TLSListener

    cert, key = self_signed
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(SocketAttribute.local_port)
    tg.start_soon(TLSListener(tcp, server_context, standard_compatible=False).serve, server.connection)
    return Provider(name="tls", format="openai", base_url=f"https://127.0.0.1:{port}/v1", ca_bundle=str(cert))


async def test_https_round_trip_reuses_the_tls_connection(self_signed) -> None:  # type: ignore[no-untyped-def]
    """With the test certificate trusted, requests go through TLS and the
    second one reuses the first one's connection."""
    server = ScriptedServer()
    async with anyio.create_task_group() as tg:
        prov = await trusted_tls_provider(tg, server, self_signed)
        upstreams = Upstreams((prov,))
        assert await fetch(upstreams, prov) == OK_BODY
        assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 1
        assert [body for _, body in server.requests] == [CALL.body, CALL.body]
        assert upstreams.pool_stats("tls") == {"open": 1, "idle": 1, "opened": 1}
        await upstreams.aclose()
        tg.cancel_scope.cancel()


async def test_tls_upstream_closing_its_connection_is_quiet(self_signed, caplog) -> None:  # type: ignore[no-untyped-def]
    """A TLS upstream that closes after its answer: the pooled connection is
    dropped and asyncio has nothing to warn about (TLS cannot stay half-open,
    so the wire does not ask for it there)."""

    async def answer_then_close(wire: Wire) -> bool:
        await wire.send(ok_response())
        return False

    server = ScriptedServer(answer_then_close)
    async with anyio.create_task_group() as tg:
        prov = await trusted_tls_provider(tg, server, self_signed)
        upstreams = Upstreams((prov,))
        assert await fetch(upstreams, prov) == OK_BODY
        with anyio.fail_after(5):
            while server.live:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)  # the close reaches the router's side
        assert await fetch(upstreams, prov) == OK_BODY  # on a fresh connection
        assert server.accepted == 2
        await upstreams.aclose()
        tg.cancel_scope.cancel()
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()], caplog.text


async def test_ca_bundle_trusts_a_private_ca(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An upstream whose certificate a private CA signed (a corporate proxy
    that re-signs TLS): refused as it stands, answered once the provider's
    ca_bundle names the CA. The default trust stays: one context per provider."""
    from anyio.streams.tls import TLSListener
    from tlscerts import make_test_ca

    ca = make_test_ca(tmp_path)
    server = ScriptedServer()
    async with anyio.create_task_group() as tg:
        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = tcp.extra(SocketAttribute.local_port)
        tg.start_soon(TLSListener(tcp, ca.server_context(), standard_compatible=False).serve, server.connection)
        plain = Provider(name="plain", format="openai", base_url=f"https://127.0.0.1:{port}/v1")
        private = Provider(name="private", format="openai", base_url=plain.base_url, ca_bundle=str(ca.ca))
        upstreams = Upstreams((plain, private))
        with pytest.raises(errors.UpstreamConnectError) as caught:
            await upstreams.open(plain, CALL)
        assert "certificate verify failed" in str(caught.value)
        assert await fetch(upstreams, private) == OK_BODY
        assert [body for _, body in server.requests] == [CALL.body]
        # A bundle that went away after startup fails the provider (so it can fall back), not the router.
        ca.ca.unlink()
        gone = Provider(name="gone", format="openai", base_url=plain.base_url, ca_bundle=str(ca.ca))
        with pytest.raises(errors.UpstreamConnectError, match="cannot load ca_bundle"):
            await upstreams.open(gone, CALL)
        await upstreams.aclose()
        tg.cancel_scope.cancel()
