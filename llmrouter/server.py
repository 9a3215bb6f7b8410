"""The HTTP/1.1 server: h11 over wires (asyncio transports, `wire.py`), run
by anyio tasks. With upstream.py (which reads httpcore's h11 connection), the
only module that imports h11.

One task per connection runs h11's request/response cycle: keep-alive,
pipelined requests in order, `Expect: 100-continue`, limits on header size,
body size and slow clients. While a response is produced, the wire keeps
reading: pipelined bytes wait in its buffer, and EOF means the client hung up
(the handler is cancelled). Each connection is an exception firewall: nothing
that happens on one connection can stop the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import anyio
import anyio.abc
import h11

from llmrouter import errors
from llmrouter.config import ServerConfig
from llmrouter.wire import Wire, body_turn

log = logging.getLogger("llmrouter.server")

LISTEN_BACKLOG = 1024  # also how many connections asyncio accepts per wakeup
SERVER_HEADER = ("server", "llmrouter")
# A parsed head's size on the wire: h11 hands over method, target and header
# fields without the separators, which these add back.
REQUEST_LINE_EXTRA = len(b"  HTTP/1.1\r\n")  # two spaces, the version, CRLF
HEADER_LINE_EXTRA = len(b": \r\n")  # colon, space, CRLF


@dataclass
class HTTPRequest:
    method: str
    target: str
    path: str
    query: str
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    body: bytes = b""
    client: str = ""


@dataclass
class ProtocolFailure:
    """A request the server itself refuses before any handler runs."""

    status: int
    message: str
    path: str = "/"


Handler = Callable[[HTTPRequest, "ResponseWriter"], Awaitable[None]]
ErrorRenderer = Callable[[ProtocolFailure], tuple[list[tuple[str, str]], bytes]]


class ResponseWriter:
    """Writes one response on a connection; write failures become ClientGone."""

    def __init__(self, conn: "Connection", head_only: bool) -> None:
        self._conn = conn
        self._head_only = head_only
        self._held = b""  # a response head waiting to go out with its body
        self._streamed = False  # no content-length: a body sent piece by piece
        self._chunked = False  # ... in HTTP/1.1 chunks
        self.started = False
        self.finished = False

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Holds the head back: it goes out with the first body bytes (one
        write, not two; a stream's head with its first event) or at `end()`."""
        self.started = True
        self._streamed = True
        for name, _ in headers:  # a plain loop: no call per header
            if name == "content-length":
                self._streamed = False
                break
        # h11's rule (an HTTP/1.0 client gets the body as is, then a close);
        # the chunks are framed here, as h11 would, without its per-event
        # machinery (h11 keeps no state between chunks; it still ends the body).
        self._chunked = self._streamed and not self._head_only and (self._conn.h11.their_http_version or b"") >= b"1.1"
        headers = [SERVER_HEADER, *headers]
        if self._conn.server.closing:
            headers.append(("connection", "close"))
        if not self._streamed:
            self._held = self._conn.serialize(_response(status, headers))
            return
        # For a body without a length h11 rewrites the framing headers, each
        # time checking the whole list again (about 150 calls for a stream's
        # head). It gets the headers it acts on; the others, checked by
        # `_header`, go in after its status line.
        framing = [(name, value) for name, value in headers if name.lower() in _FRAMING_HEADERS]
        lines = b"".join([b"%s: %s\r\n" % _header(name, value) for name, value in headers if name.lower() not in _FRAMING_HEADERS])
        head = self._conn.serialize(_response(status, framing))
        status_line = head.index(b"\r\n") + 2
        self._held = head[:status_line] + lines + head[status_line:]


    async def send(self, data: bytes, timeout: float | None = None) -> None:
        """Raises TimeoutError when the client's socket takes none of it for
        `timeout` seconds (None: waits as long as the client reads slowly)."""
        if self._head_only:
            data = b""
        if self._held:
            data = self._held + self._frame(data) if data else self._held
            self._held = b""
            await self._conn.write(data, timeout)
            if self._streamed:  # the rest of the body waits its turn: other requests' heads go first
                await body_turn()
        elif data:
            await self._conn.write(self._frame(data), timeout)

    def _frame(self, data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else self._conn.serialize(h11.Data(data=data))

    async def end(self) -> None:
        self.finished = True
        held, self._held = self._held, b""
        await self._conn.write(held + self._conn.serialize(h11.EndOfMessage()))

    async def abort(self) -> None:
        self.finished = True
        self._conn.close_abruptly()

    def limit_send_buffer(self, size: int) -> None:
        """Caps this connection's send buffers, the kernel's and the
        transport's (for long-lived event feeds): writes to a reader that
        stopped reading then block after about `size` bytes instead of after
        megabytes of autotuned buffer."""
        wire = self._conn.wire
        wire.limit_write_buffer(size)
        sock = wire.extra("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        await self.start(status, [*headers, ("content-length", str(len(body)))])
        await self.send(body)
        await self.end()


class Connection:
    def __init__(self, server: "Server", wire: Wire) -> None:
        self.server = server
        self.wire = wire
        self.limits = server.limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.closed = False
        self.head_request = False  # h11 refuses a body in the answer to HEAD
        self.fed = 0  # bytes given to h11, to size a head it refused
        self.in_body = False
        self._handler_scope: anyio.CancelScope | None = None
        peer = wire.extra("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"

    async def send(self, event: h11.Event) -> None:
        await self.write(self.serialize(event))

    def serialize(self, event: h11.Event) -> bytes:
        if self.closed:
            raise errors.ClientGone()
        return self.h11.send(event) or b""

    async def write(self, data: bytes, timeout: float | None = None) -> None:
        if self.closed:
            raise errors.ClientGone()
        if not data:
            return
        try:
            await self.wire.write(data, timeout)
        except ConnectionError as exc:
            self.h11.send_failed()
            self.closed = True
            raise errors.ClientGone() from exc
        except BaseException:
            self.h11.send_failed()
            raise

    def close_abruptly(self) -> None:
        self.closed = True
        self.wire.close()

    async def _read(self, timeout: float | None = None) -> bytes:
        try:
            return await self.wire.read(timeout)
        except ConnectionError:
            return b""

    async def receive(self, timeout: float | None = None) -> bool:
        """Feeds h11 the next bytes; False at EOF or a broken connection.
        Raises TimeoutError when none came within `timeout` seconds."""
        data = await self._read(timeout)
        self.h11.receive_data(data)
        self.fed += len(data)
        return bool(data)

    async def run(self) -> None:
        try:
            while not self.closed:
                if not await self.one_cycle():
                    break
        finally:
            await self.close_gracefully()

    async def one_cycle(self) -> bool:
        """Serves one request; False when the connection should close."""
        request = await self.read_request()
        if request is None:
            return False
        head_only = request.method == "HEAD"
        writer = ResponseWriter(self, head_only)
        self.server.requests_started()
        try:
            await self.run_handler(request, writer)
        finally:
            self.server.requests_finished()
        if self.closed or not writer.finished:
            return False
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is not h11.DONE:
            return False
        if self.server.closing:
            return False
        self.h11.start_next_cycle()
        return True

    async def read_request(self) -> HTTPRequest | None:
        limits = self.limits
        self.head_request = self.in_body = False
        fed_before_head = self.fed - len(self.h11.trailing_data[0])
        first_byte_at: float | None = None
        idle_deadline = time.monotonic() + limits.keepalive_timeout
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    # One wait on a loop timer (wire.read), not a cancel scope:
                    # an idle keep-alive connection waits for a new request's
                    # first byte (shutdown() interrupts that wait), a started
                    # head for the rest of it.
                    idle = self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]
                    if idle:
                        if self.server.closing:
                            return None
                        deadline = idle_deadline
                        self.server.idle(self)
                    else:
                        first_byte_at = first_byte_at or time.monotonic()
                        deadline = first_byte_at + limits.header_timeout
                    try:
                        alive = await self.receive(deadline - time.monotonic())
                    except TimeoutError:
                        if idle:
                            return None  # idle keep-alive connection (or shutdown): close quietly
                        await self.refuse(ProtocolFailure(408, "request headers not received in time"))
                        return None
                    finally:
                        if idle:
                            self.server.waited(self)
                    if not alive and self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]:
                        return None
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return None
                if isinstance(event, h11.Request):
                    return await self.read_body(event)
                return None
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            # h11 sizes a head only while it is incomplete (and hints 431 then);
            # a complete one that is too big gets 431 whatever else is wrong
            # with it, as it would have had it arrived in pieces.
            head = self.fed - fed_before_head - len(self.h11.trailing_data[0])
            if not self.in_body and head > limits.max_header_bytes:
                status = 431
            await self.refuse(ProtocolFailure(status, f"malformed HTTP request: {exc}"))
            return None

    async def read_body(self, event: h11.Request) -> HTTPRequest | None:
        limits = self.limits
        self.head_request = event.method == b"HEAD"
        self.in_body = True
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        size = len(event.method) + len(event.target) + REQUEST_LINE_EXTRA
        for name, value in event.headers.raw_items():  # a list: no call per header, as iterating Headers makes
            key = name.decode("latin-1").lower()
            size += len(name) + len(value) + HEADER_LINE_EXTRA
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if size > limits.max_header_bytes:
            await self.refuse(ProtocolFailure(431, f"request headers larger than {limits.max_header_bytes} bytes", path))
            return None
        # After the size check, which h11 makes too while a head is incomplete:
        # the same head gets the same answer however it was split.
        if not event.http_version.startswith(b"1."):  # h11 parses any d.d (e.g. the HTTP/2 preface)
            await self.refuse(ProtocolFailure(505, f"HTTP/{event.http_version.decode()} is not supported; use HTTP/1.1"))
            return None
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            await self.refuse(ProtocolFailure(413, f"request body larger than {limits.max_body_bytes} bytes", path))
            return None
        if self.h11.they_are_waiting_for_100_continue:
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        deadline = time.monotonic() + limits.body_timeout  # for the whole body
        while True:
            ev = self.h11.next_event()
            if ev is h11.NEED_DATA:
                # A timer only for reads that wait: a small body usually came
                # with the head and needs none.
                try:
                    alive = await self.receive(deadline - time.monotonic())
                except TimeoutError:
                    await self.refuse(ProtocolFailure(408, "request body not received in time", path))
                    return None
                if not alive:
                    ev = self.h11.next_event()
                    if ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                        return None
                else:
                    continue
            if isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > limits.max_body_bytes:
                    await self.refuse(ProtocolFailure(413, f"request body larger than {limits.max_body_bytes} bytes", path))
                    return None
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                return None
        return HTTPRequest(event.method.decode("ascii", "replace"), target, path, query, headers, bytes(body), self.client)

    async def run_handler(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        """Runs the handler; a client that hangs up meanwhile cancels it."""
        with anyio.CancelScope() as scope:
            self._handler_scope = scope
            self.wire.on_eof = self._client_left
            if self.wire.at_eof:
                self._client_left()
            try:
                await self.server.handler(request, writer)
            except errors.ClientGone:
                pass
            except Exception:
                log.exception("unhandled error serving %s %s", request.method, request.path)
                if not writer.started:
                    with contextlib.suppress(errors.ClientGone):
                        await self.refuse(ProtocolFailure(500, "internal error in the router", request.path), writer)
                else:
                    self.close_abruptly()
            finally:
                self._handler_scope = None
                self.wire.on_eof = None
        if scope.cancelled_caught and not writer.finished:
            self.close_abruptly()

    def _client_left(self) -> None:
        """EOF while a response is produced: the client is gone (HTTP/1.1
        clients do not half-close and wait), so the work for it stops."""
        if self._handler_scope is not None:
            self.closed = True
            self._handler_scope.cancel()

    async def refuse(self, failure: ProtocolFailure, writer: ResponseWriter | None = None) -> None:
        """Answers a request the server cannot serve, then closes the connection."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or self.closed:
            self.closed = True
            return
        headers, body = self.server.render_error(failure)
        headers = [SERVER_HEADER, *headers, ("content-length", str(len(body))), ("connection", "close")]
        with contextlib.suppress(errors.ClientGone):
            await self.send(_response(failure.status, headers))
            if not self.head_request:
                await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())
        # Not marked closed: close_gracefully then lingers (half-close, read
        # what the client still sends). Closing with unread input makes the
        # kernel send a RST, which can destroy the refusal before it is read.

    async def close_gracefully(self) -> None:
        """Half-closes, gives the client a moment to read, then closes."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                if not self.closed and self.h11.our_state is not h11.ERROR:
                    with contextlib.suppress(h11.LocalProtocolError):
                        data = self.h11.send(h11.ConnectionClosed())
                        if data:
                            await self.wire.write(data)
                    self.wire.write_eof()
                    with anyio.move_on_after(1.0):
                        while await self._read():
                            pass
            self.wire.close()
            self.closed = True


@dataclass
class Server:
    handler: Handler
    render_error: ErrorRenderer
    limits: ServerConfig
    closing: bool = False
    in_flight: int = 0
    _idle: dict[Connection, Wire] = field(default_factory=dict)
    _drained: anyio.Event | None = None
    _listening: asyncio.Server | None = None
    _connections: anyio.abc.TaskGroup | None = None
    _stop: anyio.Event | None = None

    async def listen(self, host: str, port: int) -> int:
        """Binds the listening socket and returns its port; raises OSError
        (port in use, address not this machine's) before anything else
        starts. Connections wait in the backlog until `serve()`."""
        loop = asyncio.get_running_loop()
        self._listening = await loop.create_server(
            lambda: Wire(self._accepted), host, port, backlog=LISTEN_BACKLOG, start_serving=False
        )
        return self._listening.sockets[0].getsockname()[1]

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accepts on the bound socket until `shutdown()`, then drains in-flight requests and returns."""
        assert self._listening is not None, "listen() first"
        self._stop = anyio.Event()
        async with anyio.create_task_group() as connections:
            self._connections = connections
            try:
                if not self.closing:
                    await self._listening.start_serving()
                task_status.started()
                if not self.closing:
                    await self._stop.wait()
            finally:
                self._listening.close()
            await self._drain()
            connections.cancel_scope.cancel()

    def _accepted(self, wire: Wire) -> None:
        assert self._connections is not None
        self._connections.start_soon(self._firewall, wire)

    async def _firewall(self, wire: Wire) -> None:
        conn = Connection(self, wire)
        try:
            await conn.run()
        except Exception:
            log.exception("connection %s failed", conn.client)
            conn.close_abruptly()

    def shutdown(self) -> None:
        """Stops accepting; idle keep-alive connections close; busy ones finish."""
        self.closing = True
        if self._listening is not None:
            self._listening.close()
        if self._stop is not None:
            self._stop.set()
        for wire in list(self._idle.values()):
            wire.interrupt()

    async def _drain(self) -> None:
        if self.in_flight:
            self._drained = anyio.Event()
            with anyio.move_on_after(self.limits.drain_timeout):
                await self._drained.wait()
            if self.in_flight:
                log.warning("shutdown: %d request(s) still running after %gs; cancelling them", self.in_flight, self.limits.drain_timeout)

    def requests_started(self) -> None:
        self.in_flight += 1

    def requests_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._drained is not None:
            self._drained.set()

    def idle(self, conn: Connection) -> None:
        """`conn` waits for a new request's first byte: shutdown() ends that wait."""
        self._idle[conn] = conn.wire

    def waited(self, conn: Connection) -> None:
        self._idle.pop(conn, None)


def _response(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    """h11's Response, with each header checked and encoded by `_header`,
    whose cache makes that one call for the headers a router sends over and
    over (h11 would check every one on every response: about a third of its
    work for a small reply). h11 still reads the framing headers."""
    return h11.Response(status_code=status, headers=[_header(n, v) for n, v in headers], reason=_reason(status), _parsed=True)


@functools.lru_cache(maxsize=1024)
def _header(name: str, value: str) -> tuple[bytes, bytes]:
    """A header as h11 would take it (ASCII, a token name, a value without
    NUL, CR or LF inside), or the error h11 would raise."""
    raw_name, raw_value = name.encode("ascii"), value.encode("ascii")
    if not _FIELD_NAME.fullmatch(raw_name):
        raise h11.LocalProtocolError(f"Illegal header name {raw_name!r}")
    if not _FIELD_VALUE.fullmatch(raw_value):
        raise h11.LocalProtocolError(f"Illegal header value {raw_value!r}")
    return raw_name, raw_value


# RFC 7230's token and field-value, as h11 checks them.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})  # what h11 reads of a response
_FIELD_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")


@functools.lru_cache(maxsize=None)
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


