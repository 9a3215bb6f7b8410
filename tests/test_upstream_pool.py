"""The upstream connection pool (llmrouter.upstream) against real loopback sockets.

A tiny scripted HTTP/1.1 server in this file counts the connections it
accepts and how many are open at once, so each test can check what the pool
did on the wire: reuse, closing half-read responses, replacing connections
the server closed, the max_connections limit, timeouts and connect errors.
No timing thresholds: timeouts are set short and only their outcome is checked.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSListener

from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall
from llmrouter.upstream import Upstreams
from tiers import need_tool

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
        self.port = 0

    async def serve(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, *,
                    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        tcp = await anyio.create_tcp_listener(local_host=host)
        self.port = tcp.extra(SocketAttribute.local_port)
        listener = TLSListener(tcp, tls, standard_compatible=False) if tls else tcp
        async with listener:
            task_status.started(self.port)
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


@contextlib.asynccontextmanager
async def pooled(handler: Handler = answer_ok, *, host: str = "127.0.0.1", tls: TrustedTLS | None = None,
                 **settings: object) -> AsyncIterator[tuple[ScriptedServer, Provider, Upstreams]]:
    """The set-up of most tests here: a ScriptedServer running `handler` (over
    TLS when `tls` is given, with the provider trusting its certificate), and
    an Upstreams holding one provider "fake" (with `settings`) that points at
    it; both are closed at the end."""
    server = ScriptedServer(handler)
    if tls is not None:
        settings.setdefault("ca_bundle", tls.ca_bundle)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve, host, tls.server if tls else None)
        address = f"[{host}]" if ":" in host else host
        scheme = "https" if tls else "http"
        prov = Provider(name="fake", format="openai", base_url=f"{scheme}://{address}:{port}/v1", **settings)  # type: ignore[arg-type]
        upstreams = Upstreams((prov,))
        try:
            yield server, prov, upstreams
        finally:
            await upstreams.aclose()
            tg.cancel_scope.cancel()


def waiting_for_a_slot(upstreams: Upstreams, name: str) -> int:
    """Requests queued at the pool for one of its max_connections slots."""
    slots = upstreams._pools[name]._slots
    return slots.statistics().tasks_waiting if slots is not None else 0


async def fetch(upstreams: Upstreams, prov: Provider) -> bytes:
    stream = await upstreams.open(prov, CALL)
    try:
        assert stream.status == 200
        return await stream.read_all(1 << 20)
    finally:
        await stream.aclose()


async def test_connections_are_reused_across_requests() -> None:
    """Sequential requests travel on one kept-alive connection."""
    async with pooled() as (server, prov, upstreams):
        for _ in range(5):
            assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 1
        assert [conn for conn, _ in server.requests] == [1] * 5
        assert server.requests[0][1] == CALL.body
        assert upstreams.pool_stats("fake") == {"open": 1, "idle": 1, "opened": 1}


async def test_request_line_and_headers_reach_the_upstream() -> None:
    async with pooled() as (server, prov, upstreams):
        await fetch(upstreams, prov)
        first = server.first_reads[0]
        head = first.split(b"\r\n\r\n")[0].lower() + b"\r\n"
        assert head.startswith(b"post /v1/chat/completions http/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:%d\r\n" % server.port in head
        assert b"\r\ncontent-length: %d\r\n" % len(CALL.body) in head
        assert b"\r\ncontent-type: application/json\r\n" in head
        # Head and body leave in one write (the pool holds writes until the read).
        assert first.endswith(CALL.body)


async def test_ipv6_literal_upstream() -> None:
    """http://[::1]:port/v1 connects over IPv6 and sends the bracketed Host."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with pooled(host="::1") as (server, prov, upstreams):
        assert await fetch(upstreams, prov) == OK_BODY
        assert b"\r\nhost: [::1]:%d\r\n" % server.port in server.first_reads[0].lower()


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

    async with pooled(stream_then_wait) as (server, prov, upstreams):
        stream = await upstreams.open(prov, CALL)
        assert await stream.read() == b"data: "
        await stream.aclose()
        with anyio.fail_after(5):
            await saw_close.wait()
        assert upstreams.pool_stats("fake")["open"] == 0
        assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 2


async def test_cancelled_read_closes_its_connection() -> None:
    """A read cancelled while waiting for the next chunk closes the socket."""
    saw_close = anyio.Event()

    async def stall(wire: Wire) -> bool:
        await wire.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await wire.wait_for_close()
        saw_close.set()
        return False

    async with pooled(stall) as (server, prov, upstreams):
        stream = await upstreams.open(prov, CALL)
        assert await stream.read() == b"hi"
        with anyio.move_on_after(0.05) as scope:
            await stream.read()
        assert scope.cancelled_caught
        await stream.aclose()
        with anyio.fail_after(5):
            await saw_close.wait()
        assert upstreams.pool_stats("fake") == {"open": 0, "idle": 0, "opened": 1}


async def test_cancelled_open_leaves_the_pool_consistent() -> None:
    """Cancelled while waiting for the head: the connection is dropped, the
    slot is given back, and the next request still works."""

    async def slow_first(wire: Wire) -> bool:
        if wire.conn_id == 1:
            await wire.wait_for_close()
            return False
        await wire.send(ok_response())
        return True

    async with pooled(slow_first, max_connections=1) as (server, prov, upstreams):
        with anyio.move_on_after(0.05):
            await upstreams.open(prov, CALL)
        assert upstreams.pool_stats("fake")["open"] == 0
        with anyio.fail_after(5):
            assert await fetch(upstreams, prov) == OK_BODY


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    """The server closes each connection after answering (without saying so):
    every request still succeeds, each on a fresh connection."""

    async def answer_and_hang_up(wire: Wire) -> bool:
        await wire.send(ok_response())
        return False

    async with pooled(answer_and_hang_up) as (server, prov, upstreams):
        for i in range(3):
            assert await fetch(upstreams, prov) == OK_BODY
            # Let the server's FIN arrive before the next request.
            with anyio.fail_after(5):
                while server.live:
                    await anyio.sleep(0.001)
        assert server.accepted == 3
        assert upstreams.pool_stats("fake")["open"] == 1


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

    async with pooled(answer_then_reset) as (server, prov, upstreams):
        assert await fetch(upstreams, prov) == OK_BODY
        pool = upstreams._pools["fake"]
        (idle,) = pool.idle
        with anyio.fail_after(5):
            while not idle.http.has_expired():  # the reset has reached our socket
                await anyio.sleep(0.001)
        idle.http.has_expired = lambda: False  # the check misses it
        assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 2
        assert [body for _, body in server.requests] == [CALL.body, CALL.body]


async def test_request_is_not_retried_once_it_was_sent() -> None:
    """The server takes the request, then hangs up without answering: that is
    an error for the caller, never a silent second attempt."""

    async def hang_up(wire: Wire) -> bool:
        return False

    async with pooled(hang_up) as (server, prov, upstreams):
        with pytest.raises(errors.UpstreamProtocolError):
            await upstreams.open(prov, CALL)
        assert len(server.requests) == 1
        assert upstreams.pool_stats("fake")["open"] == 0


async def test_max_connections_is_respected() -> None:
    """Six concurrent requests with max_connections = 2: never more than two
    sockets at the server, and every request is answered."""
    gate = anyio.Event()

    async def wait_for_gate(wire: Wire) -> bool:
        await gate.wait()
        await wire.send(ok_response())
        return True

    results: list[bytes] = []
    async with pooled(wait_for_gate, max_connections=2) as (server, prov, upstreams):

        async def one() -> None:
            results.append(await fetch(upstreams, prov))

        async with anyio.create_task_group() as clients:
            for _ in range(6):
                clients.start_soon(one)
            with anyio.fail_after(5):  # two at the server, the other four queued at the pool
                while len(server.requests) < 2 or waiting_for_a_slot(upstreams, "fake") < 4:
                    await anyio.sleep(0.001)
            assert server.accepted == 2
            assert len(server.requests) == 2
            gate.set()
        assert results == [OK_BODY] * 6
        assert server.max_live == 2
        assert server.accepted == 2
        assert upstreams.pool_stats("fake")["opened"] == 2


async def test_no_response_head_in_time_is_an_upstream_timeout() -> None:
    async def never(wire: Wire) -> bool:
        await wire.wait_for_close()
        return False

    async with pooled(never, first_byte_timeout=0.1) as (server, prov, upstreams):
        with pytest.raises(errors.UpstreamTimeout) as caught:
            await upstreams.open(prov, CALL)
        assert "no response within 0.1s" in str(caught.value)
        assert caught.value.retryable
        assert upstreams.pool_stats("fake")["open"] == 0


async def test_stalled_body_is_an_upstream_timeout() -> None:
    """read_all gives up after idle_timeout without data."""

    async def half_body(wire: Wire) -> bool:
        await wire.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":")
        await wire.wait_for_close()
        return False

    async with pooled(half_body, idle_timeout=0.1) as (server, prov, upstreams):
        stream = await upstreams.open(prov, CALL)
        try:
            with pytest.raises(errors.UpstreamTimeout):
                await stream.read_all(1 << 20)
        finally:
            await stream.aclose()
        assert upstreams.pool_stats("fake")["open"] == 0


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
            await wire.send(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        else:
            await wire.send(ok_response())
        return True

    async with pooled(fail_once) as (server, prov, upstreams):
        stream = await upstreams.open(prov, CALL)
        assert stream.status == 429
        assert ("retry-after", "1") in stream.headers  # names in lower case (decoded when first read)
        assert list(stream.headers) == [("retry-after", "1"), ("content-length", "33")]
        assert b"slow down" in await stream.read_all(1 << 16)
        await stream.aclose()
        assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 1


@pytest.fixture
def self_signed(tmp_path):  # type: ignore[no-untyped-def]
    need_tool("openssl", hint="makes the self-signed certificate")
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


@dataclass(frozen=True)
class TrustedTLS:
    """A server context with the test certificate, and that certificate as
    the provider's ca_bundle (so the router's own TLS context trusts it)."""

    server: ssl.SSLContext
    ca_bundle: str


@pytest.fixture
def trusted_tls(self_signed) -> TrustedTLS:  # type: ignore[no-untyped-def]
    cert, key = self_signed
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    return TrustedTLS(server_context, str(cert))


async def test_https_round_trip_reuses_the_tls_connection(trusted_tls) -> None:  # type: ignore[no-untyped-def]
    """With the test certificate trusted, requests go through TLS and the
    second one reuses the first one's connection."""
    async with pooled(tls=trusted_tls) as (server, prov, upstreams):
        assert await fetch(upstreams, prov) == OK_BODY
        assert await fetch(upstreams, prov) == OK_BODY
        assert server.accepted == 1
        assert [body for _, body in server.requests] == [CALL.body, CALL.body]
        assert upstreams.pool_stats("fake") == {"open": 1, "idle": 1, "opened": 1}


async def test_tls_upstream_closing_its_connection_is_quiet(trusted_tls, caplog) -> None:  # type: ignore[no-untyped-def]
    """A TLS upstream that closes after its answer: the pooled connection is
    dropped and asyncio has nothing to warn about (TLS cannot stay half-open,
    so the wire does not ask for it there)."""

    async def answer_then_close(wire: Wire) -> bool:
        await wire.send(ok_response())
        return False

    async with pooled(answer_then_close, tls=trusted_tls) as (server, prov, upstreams):
        assert await fetch(upstreams, prov) == OK_BODY
        (idle,) = upstreams._pools["fake"].idle
        with anyio.fail_after(5):
            while not idle.http.has_expired():  # the close has reached the router's side
                await anyio.sleep(0.01)
        assert await fetch(upstreams, prov) == OK_BODY  # on a fresh connection
        assert server.accepted == 2
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()], caplog.text
