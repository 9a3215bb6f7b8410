"""The HTTP/1.1 server: anyio sockets and h11. The only module that imports h11.

One task per connection runs h11's request/response cycle: keep-alive,
pipelined requests in order, `Expect: 100-continue`, limits on header size,
body size and slow clients, and a watcher that notices a client hanging up
while its response is being produced. Each connection is an exception
firewall: nothing that happens on one connection can stop the listener.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute

from llmrouter import errors
from llmrouter.config import ServerConfig

log = logging.getLogger("llmrouter.server")

READ_SIZE = 65536
SERVER_HEADER = ("server", "llmrouter")


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
        self.started = False
        self.finished = False

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Sends the head at once for streams; a response of known length is
        held back and written together with its body (one write, not three)."""
        self.started = True
        headers = [SERVER_HEADER, *headers]
        if self._conn.server.closing:
            headers.append(("connection", "close"))
        event = h11.Response(status_code=status, headers=headers, reason=_reason(status))
        if any(name == "content-length" for name, _ in headers):
            self._held = self._conn.serialize(event)
        else:
            await self._conn.send(event)

    async def send(self, data: bytes) -> None:
        if self._head_only:
            data = b""
        if self._held:
            data = self._held + self._conn.serialize(h11.Data(data=data)) if data else self._held
            self._held = b""
            await self._conn.write(data)
        elif data:
            await self._conn.send(h11.Data(data=data))

    async def end(self) -> None:
        self.finished = True
        held, self._held = self._held, b""
        await self._conn.write(held + self._conn.serialize(h11.EndOfMessage()))

    async def abort(self) -> None:
        self.finished = True
        await self._conn.close_abruptly()

    def limit_send_buffer(self, size: int) -> None:
        """Caps the kernel's send buffer of this connection (for long-lived
        event feeds): writes to a reader that stopped reading then block
        after `size` bytes instead of after megabytes of autotuned buffer."""
        sock = self._conn.stream.extra(SocketAttribute.raw_socket, None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        await self.start(status, [*headers, ("content-length", str(len(body)))])
        await self.send(body)
        await self.end()


class Connection:
    def __init__(self, server: "Server", stream: anyio.abc.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.limits = server.limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.closed = False
        self.head_request = False  # h11 refuses a body in the answer to HEAD
        self.fed = 0  # bytes given to h11, to size a head it refused
        self.in_body = False
        self._tasks: anyio.abc.TaskGroup | None = None  # holds this connection's reader task
        self._reader_started = False
        self._read_wanted = anyio.Event()  # set: the reader should do one read
        self._ahead: anyio.Event | None = None  # a read-ahead in flight, or done and not yet taken
        self._ahead_eof = False
        self._handler_scope: anyio.CancelScope | None = None
        try:
            host, port = stream.extra(SocketAttribute.remote_address)[:2]
            self.client = f"{host}:{port}"
        except Exception:
            self.client = "?"

    async def send(self, event: h11.Event) -> None:
        await self.write(self.serialize(event))

    def serialize(self, event: h11.Event) -> bytes:
        if self.closed:
            raise errors.ClientGone()
        return self.h11.send(event) or b""

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise errors.ClientGone()
        if not data:
            return
        try:
            await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.h11.send_failed()
            self.closed = True
            raise errors.ClientGone() from exc
        except BaseException:
            self.h11.send_failed()
            raise

    async def close_abruptly(self) -> None:
        self.closed = True
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.stream.aclose()

    async def _read(self) -> bytes:
        try:
            return await self.stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return b""

    async def receive(self) -> bool:
        """Feeds h11 the next bytes; False at EOF or a broken connection."""
        if self._ahead is not None:  # the read-ahead started during the last response
            await self._ahead.wait()
            self._ahead = None
            if not self._ahead_eof:
                return True  # it already fed h11
            data = b""
        else:
            data = await self._read()
        self.h11.receive_data(data)
        self.fed += len(data)
        return bool(data)

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as self._tasks:
                try:
                    while not self.closed:
                        if not await self.one_cycle():
                            break
                finally:
                    self._tasks.cancel_scope.cancel()  # a read-ahead still waiting
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
        idle_deadline = anyio.current_time() + limits.keepalive_timeout
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    idle = self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]
                    if idle:
                        deadline = idle_deadline
                    else:
                        first_byte_at = first_byte_at or anyio.current_time()
                        deadline = first_byte_at + limits.header_timeout
                    with self.server.idle_scope(self, waiting_for_first_byte=idle) as scope:
                        scope.deadline = min(scope.deadline, deadline)
                        alive = await self.receive()
                    if scope.cancelled_caught:
                        if idle:
                            return None  # idle keep-alive connection: close quietly
                        await self.refuse(ProtocolFailure(408, "request headers not received in time"))
                        return None
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
            # h11 sizes a head only while it is incomplete; a complete one that
            # is too big gets 431 whatever else is wrong with it, as it would
            # have had it arrived in pieces.
            head = self.fed - fed_before_head - len(self.h11.trailing_data[0])
            if status == 431 or "too long" in str(exc).lower() or (not self.in_body and head > limits.max_header_bytes):
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
        size = len(event.target) + len(event.method) + 12
        for name, value in event.headers:
            key = name.decode("latin-1")
            size += len(name) + len(value) + 4
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
        deadline = anyio.current_time() + limits.body_timeout  # for the whole body
        while True:
            ev = self.h11.next_event()
            if ev is h11.NEED_DATA:
                # A timer only around reads: a small body usually came with the
                # head and needs none (a deadline scope per request is not free).
                with anyio.CancelScope(deadline=deadline) as scope:
                    alive = await self.receive()
                if scope.cancelled_caught:
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
        """Runs the handler while watching for the client to hang up."""
        with anyio.CancelScope() as scope:
            self._handler_scope = scope
            try:
                self.watch()
                await self.server.handler(request, writer)
            except errors.ClientGone:
                pass
            except Exception:
                log.exception("unhandled error serving %s %s", request.method, request.path)
                if not writer.started:
                    with contextlib.suppress(errors.ClientGone):
                        await self.refuse(ProtocolFailure(500, "internal error in the router", request.path), writer)
                else:
                    await self.close_abruptly()
            finally:
                self._handler_scope = None
        if scope.cancelled_caught and not writer.finished:
            await self.close_abruptly()  # the read-ahead saw the client leave

    def watch(self) -> None:
        """Starts a read-ahead while a response is produced: EOF means the
        client is gone (the handler is cancelled); bytes are a pipelined
        request, fed to h11 for later. The read-ahead outlives the response
        and serves as the next request's first read (`receive`), so nothing
        has to be cancelled when the response ends. One reader task per
        connection does these reads: a task group, a task and a cancel per
        request cost more than the rest of the server's work on a small
        request (docs/performance.md)."""
        if self._ahead is not None and self._ahead.is_set():
            self._ahead = None  # done during the last response; its bytes are already in h11
            if self._ahead_eof:
                self.closed = True
                assert self._handler_scope is not None
                self._handler_scope.cancel()
                return
        if self._ahead is None and self.h11.their_state is h11.DONE and self._tasks is not None:
            self._ahead, self._ahead_eof = anyio.Event(), False
            self._read_wanted.set()
            if not self._reader_started:
                self._reader_started = True
                self._tasks.start_soon(self._reader)

    async def _reader(self) -> None:
        while True:
            await self._read_wanted.wait()
            self._read_wanted = anyio.Event()
            data = await self._read()
            done = self._ahead
            assert done is not None
            if data:
                self.h11.receive_data(data)
                self.fed += len(data)
            else:
                self._ahead_eof = True
                if self._handler_scope is not None:  # the client left while its response was produced
                    self.closed = True
                    self._handler_scope.cancel()
            done.set()
            if not data:
                return

    async def refuse(self, failure: ProtocolFailure, writer: ResponseWriter | None = None) -> None:
        """Answers a request the server cannot serve, then closes the connection."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or self.closed:
            self.closed = True
            return
        headers, body = self.server.render_error(failure)
        headers = [SERVER_HEADER, *headers, ("content-length", str(len(body))), ("connection", "close")]
        with contextlib.suppress(errors.ClientGone):
            await self.send(h11.Response(status_code=failure.status, headers=headers, reason=_reason(failure.status)))
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
                            await self.stream.send(data)
                    await self.stream.send_eof()
                    with anyio.move_on_after(1.0):
                        while await self.stream.receive(READ_SIZE):
                            pass
            with contextlib.suppress(Exception):
                await self.stream.aclose()
            self.closed = True


@dataclass
class Server:
    handler: Handler
    render_error: ErrorRenderer
    limits: ServerConfig
    closing: bool = False
    in_flight: int = 0
    _idle: dict[Connection, anyio.CancelScope] = field(default_factory=dict)
    _drained: anyio.Event | None = None
    _accept_scope: anyio.CancelScope | None = None

    async def serve(self, host: str, port: int, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listens until `shutdown()`, then drains in-flight requests and returns."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
        bound = listener.extra(SocketAttribute.local_port)
        async with anyio.create_task_group() as connections:
            with anyio.CancelScope() as self._accept_scope:
                task_status.started(bound)
                async with listener:
                    await listener.serve(self._firewall, task_group=connections)
            await listener.aclose()
            await self._drain()
            connections.cancel_scope.cancel()

    async def _firewall(self, stream: anyio.abc.SocketStream) -> None:
        conn = Connection(self, stream)
        try:
            await conn.run()
        except Exception:
            log.exception("connection %s failed", conn.client)
            await conn.close_abruptly()

    def shutdown(self) -> None:
        """Stops accepting; idle keep-alive connections close; busy ones finish."""
        self.closing = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for scope in list(self._idle.values()):
            scope.cancel()

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

    @contextlib.contextmanager
    def idle_scope(self, conn: Connection, *, waiting_for_first_byte: bool):
        scope = anyio.CancelScope()
        if waiting_for_first_byte:
            if self.closing:
                scope.cancel()
            self._idle[conn] = scope
        try:
            with scope:
                yield scope
        finally:
            self._idle.pop(conn, None)


@functools.lru_cache(maxsize=None)
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


