"""Upstream HTTP: httpcore's HTTP/1.1 connections under a small keep-alive pool.

This is the only module that imports httpcore for serving. httpcore's errors
are translated here into the router's UpstreamError family, so the pipeline
never sees a foreign exception.

Why not httpcore's AsyncConnectionPool: profiled behind the router it cost
several hundred microseconds of CPU per request more than the connection it
hands out (a pool-wide lock, a sweep of every connection per request, nested
per-request cancel scopes), and the gap grew with concurrency; see
docs/performance.md. httpcore's own connection classes do the HTTP/1.1 work
(h11 framing, keep-alive state, closing a half-read response); the pool here
only keeps idle connections in a stack and counts in-flight requests against
`max_connections`. Plain-HTTP upstreams get an `AsyncHTTP11Connection` over a
wire (`wire.py`) in a wrapper of ours (`_Socket`); HTTPS upstreams get an
`AsyncHTTPConnection`, which does the TLS handshake over the same wrapper
with one context per provider (`tls_context`: the trust of httpcore's default
context plus the provider's `ca_bundle`). The pool also builds httpcore's
Request itself (`_Request`: headers checked by h11 once per distinct set),
replaces httpcore's per-connection locks (`_Unshared`) and reads the body
from httpcore's h11 connection; tests/test_upstream_httpcore.py fails if a
new httpcore or h11 changes what that relies on.

Pool rules:
- an idle connection is reused only if httpcore says it is idle and not
  expired (expired includes "the socket is readable", i.e. the upstream closed
  it or sent something unasked);
- a response closed before its end closes its connection (httpcore does that
  when the exchange is not complete), and so does a cancelled or failed one:
  a half-read connection never goes back to the pool;
- when a reused connection fails before a single byte of the request reached
  the socket, the request is sent once more on a fresh connection; once
  anything was sent it is never retried (the upstream may have acted on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import select
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import anyio
import h11
import httpcore

from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall
from llmrouter.wire import Wire, connect, others_ready

KEEPALIVE_EXPIRY = 30.0  # idle upstream connections older than this are closed
# Body chunks (a stream's events) handled per read while other tasks are ready,
# so that a stream whose events all arrived at once does not hold the loop.
FAIR_SLICE = 24
NO_LIMIT = 1 << 62
Keepalive = tuple[float, Callable[[], Awaitable[None]]]
_CACHED = 64  # URLs and header sets kept per pool (a header forwarded from clients can vary)


# httpcore's exceptions, translated by `_translate`. Callers catch these in a
# plain try/except: a @contextmanager around every read costs a generator per
# call, which showed up in the profile of a stream's per-chunk path.
_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.ConnectError,
    httpcore.UnsupportedProtocol,
    httpcore.ProtocolError,
    httpcore.NetworkError,
)


def _translate(provider: Provider, exc: Exception) -> errors.UpstreamError:
    name = provider.name
    if isinstance(exc, httpcore.ConnectTimeout):
        return errors.UpstreamTimeout(f"provider '{name}': connect timed out after {provider.connect_timeout:g}s")
    if isinstance(exc, httpcore.TimeoutException):
        return errors.UpstreamTimeout(f"provider '{name}': timed out ({type(exc).__name__})")
    if isinstance(exc, httpcore.ConnectError):
        return errors.UpstreamConnectError(f"provider '{name}': cannot connect to {provider.base_url}: {exc or 'connection refused'}")
    if isinstance(exc, httpcore.UnsupportedProtocol):
        return errors.UpstreamConnectError(f"provider '{name}': unsupported URL {provider.base_url}")
    return errors.UpstreamProtocolError(f"provider '{name}': connection failed: {exc or type(exc).__name__}")


class _DeadlineReached(httpcore.ReadTimeout):
    """A read ran into the caller's deadline (`_Socket.deadline`); the
    caller words the error, it knows which timeout that was."""


class _Socket(httpcore.AsyncNetworkStream):
    """A wire (`wire.py`) as httpcore's connections want it.

    Unlike httpcore's AnyIOStream it holds writes until the next read, so a
    request's head and body leave in one send (one syscall here, one wakeup
    at the upstream), makes no cancel scope for an operation without a
    timeout, and counts the bytes that reached the socket (`sent`), which is
    what decides whether a failed request may be retried."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self._pending: list[bytes] = []
        self.sent = 0
        # How long a read may wait: `deadline` (time.monotonic()) is the
        # caller's (the response head's first_byte_timeout, the driver's idle
        # and total timeouts for the body), `read_timeout` limits each wait of
        # read_all. Both are plain loop timers in the wire, set only when a
        # read really waits: a cancel scope per read is not free.
        self.deadline: float | None = None
        self.read_timeout: float | None = None
        self.keepalive: Keepalive | None = None  # set by UpstreamStream.read for one read
        self._poll: Any = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # Held until the first read, which always follows: the whole request
        # is then written while first_byte_timeout runs, so no timer of its own.
        if buffer:
            self._pending.append(buffer)

    async def _flush(self, timeout: float | None) -> None:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        try:
            await self.wire.write(data, timeout)
        except ConnectionError as exc:
            raise httpcore.WriteError(f"sending the request failed: {exc}") from exc
        self.sent += len(data)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            try:
                await self._flush(None if self.deadline is None else self.deadline - time.monotonic())
            except TimeoutError:
                raise _DeadlineReached() from None
        if self.keepalive is not None:
            await self._wait_calling_keepalive(*self.keepalive)
        wait = self._wait_limit()
        try:
            return await self.wire.read(wait)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            if wait is not None and wait != self.read_timeout:
                raise _DeadlineReached() from exc
            raise httpcore.ReadTimeout(f"no data for {wait:g}s") from exc
        except OSError as exc:
            raise httpcore.ReadError(f"reading the response failed: {exc or type(exc).__name__}") from exc

    def _wait_limit(self) -> float | None:
        wait = self.read_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            wait = left if wait is None or left < wait else wait
        return wait

    async def _wait_calling_keepalive(self, seconds: float, keepalive: Callable[[], Awaitable[None]]) -> None:
        while True:
            wait = self._wait_limit()
            if await self.wire.wait_readable(seconds if wait is None else min(seconds, wait)):
                return
            if wait is not None and wait <= seconds:
                raise _DeadlineReached()
            await keepalive()

    async def aclose(self) -> None:
        self._pending.clear()
        self.wire.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(timeout):
                self.wire.transport = await loop.start_tls(self.wire.transport, self.wire, ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from exc
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(f"TLS handshake failed: {exc or type(exc).__name__}") from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._readable()
        if info in ("ssl_object", "socket"):
            return self.wire.extra(info)
        if info == "client_addr":
            return self.wire.extra("sockname")
        if info == "server_addr":
            return self.wire.extra("peername")
        return None

    def _readable(self) -> bool:
        """True when a read would not block: on an idle keep-alive connection
        that means the upstream closed it (or broke protocol). The wire knows
        what the event loop has seen; a poll sees what arrived since."""
        wire = self.wire
        if wire.at_eof or wire.buffered or wire.transport.is_closing():
            return True
        if self._poll is None:  # one poll object per socket, not one per check
            sock = wire.extra("socket")
            if sock is None or sock.fileno() < 0:
                return True
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)
        # A socket closed since would have closed its transport (checked above).
        return bool(self._poll.poll(0))


async def _connect(host: str, port: int, timeout: float | None, deadline: float | None = None) -> _Socket:
    limit, by_deadline = timeout, False
    if deadline is not None and (limit is None or deadline - time.monotonic() < limit):
        limit, by_deadline = max(deadline - time.monotonic(), 0.0), True
    try:
        with anyio.fail_after(limit):
            wire = await connect(host, port)
    except TimeoutError as exc:
        if by_deadline:
            raise _DeadlineReached() from exc
        raise httpcore.ConnectTimeout(f"connect timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or "connection refused") from exc
    return _Socket(wire)


class _TLSBackend(httpcore.AsyncNetworkBackend):
    """Gives one AsyncHTTPConnection its socket and hands it to the pool's `_Conn`."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        socket = self.conn.socket = await _connect(host, port, timeout)
        return socket

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The trust httpcore's default context has (the system's CAs plus
    certifi's, see docs/install.md), plus the CAs in `ca_bundle`: a corporate
    proxy that re-signs TLS, or an on-prem upstream with a private CA."""
    import certifi  # httpcore's own dependency

    context = ssl.create_default_context()
    # cadata, not certifi.where(): from a zipapp, where() extracts a temporary file.
    context.load_verify_locations(cadata=certifi.contents())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=ca_bundle)
    return context


class _Unshared:
    """Stands in for httpcore's per-connection locks: an AsyncHTTP11Connection's
    state lock and an AsyncHTTPConnection's request lock. They guard a
    connection against concurrent requests, which this pool already rules out
    (a connection belongs to one request from _take to put_back), and each
    acquisition is a trip through the event loop: two per request on a plain
    connection, three on a TLS one."""

    async def __aenter__(self) -> "_Unshared":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _unshared(http: Any, lock: str) -> bool:
    """Replaces the lock in `http`'s private attribute `lock`; False if a
    future httpcore renamed it (then this does nothing)."""
    if type(getattr(http, lock, None)).__name__ != "AsyncLock":
        return False
    setattr(http, lock, _Unshared())
    return True


class _Body:
    """A request body for httpcore: one chunk (httpcore's ByteStream is private)."""

    __slots__ = ("content",)

    def __init__(self, content: bytes) -> None:
        self.content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.content


class _Request(httpcore.Request):
    """httpcore's Request with its fields handed over ready-made by the pool.

    httpcore's own __init__ checks every field's type on every request
    (typing's Mapping and Sequence checks, two calls per header), and h11
    then checks each header again with its regexes when httpcore turns the
    request into an h11.Request: together about 120 Python calls per request
    (bench/upstream_fetch.py). Here the headers come already checked by h11 (h11's own Headers,
    made by `_Pool.request`, which h11.Request takes as they are), and the
    URL is the pool's. tests/test_upstream_httpcore.py checks that this
    builds what httpcore's __init__ builds, so a new httpcore fails there."""

    def __init__(self, method: bytes, url: httpcore.URL, headers: Headers, body: bytes, extensions: dict[str, Any]) -> None:
        self.method = method
        self.url = url
        self.headers = headers  # type: ignore[assignment]  # a Sequence of byte pairs, as httpcore reads it
        self.stream = _Body(body)
        self.extensions = extensions


class _Conn:
    """One pooled connection: httpcore's, and our socket under it (a TLS
    connection's once its first request connected it)."""

    __slots__ = ("http", "socket", "h11", "unshared", "idle_since", "closed")

    def __init__(self, socket: _Socket | None = None) -> None:
        self.http: Any = None
        self.socket = socket
        self.h11: h11.Connection | None = None  # httpcore's, found at the first response
        self.unshared = False  # the HTTP/1.1 connection's state lock replaced (_unshared)
        self.idle_since = 0.0
        self.closed = False

    def first_response(self) -> None:
        """Once the first response came, the HTTP/1.1 connection exists (a TLS
        connection's is made by its first request): the h11 connection that
        UpstreamStream reads, and the state lock to replace."""
        self.h11 = _h11_of(self.http)
        if not self.unshared:
            self.unshared = _unshared(getattr(self.http, "_connection", None), "_state_lock")

    @property
    def sent(self) -> int:
        socket = self.socket
        return socket.sent if socket is not None else 0


class _Pool:
    """One provider's connections: an idle stack (most recent on top, so the
    warmest socket is reused and the rest can age out) and a semaphore that
    counts in-flight requests against max_connections. A connection is only
    opened by a request holding a slot when no idle one is usable, so open
    connections never exceed max_connections."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.retired = False  # replaced by a reload: keeps no idle connection
        url = httpcore.URL(provider.base_url)
        self.tls = url.scheme == b"https"
        self.host = url.host.decode("ascii")
        self.port = url.port or (443 if self.tls else 80)
        self.origin = httpcore.Origin(url.scheme, url.host, self.port)
        self.prefix = url.target.rstrip(b"/")
        host = b"[%b]" % url.host if b":" in url.host else url.host  # an IPv6 literal keeps its brackets
        self.host_header = host if url.port is None else b"%b:%d" % (host, url.port)
        self.host_item = (b"host", b"host", self.host_header)  # an h11 Headers item: raw name, name, value
        # Only "connect" is read (by AsyncHTTPConnection, for TCP and TLS);
        # reads and writes are timed by first_byte_timeout (Upstreams.open),
        # the driver's idle timer and read_all.
        self.extensions = {"timeout": {"connect": provider.connect_timeout}}
        self._urls: dict[str, httpcore.URL] = {}  # by path
        self._checked: dict[tuple[tuple[str, str], ...], list[tuple[bytes, bytes, bytes]]] = {}  # h11's header items, by headers
        self.size = provider.max_connections
        self.connect_timeout = provider.connect_timeout
        self.ca_bundle = provider.ca_bundle
        self._ssl_context: ssl.SSLContext | None = None  # made at the first TLS connection
        self.idle: list[_Conn] = []
        self.open = 0  # connections open now (idle or busy)
        self.opened = 0  # connections ever opened
        self._slots: anyio.Semaphore | None = None

    def request(self, method: str, call: UpstreamCall) -> httpcore.Request:
        """httpcore's Request for `call`, its URL and headers made once per
        distinct path and header set (the header checks are h11's own).
        Raises h11.LocalProtocolError for a header h11 refuses."""
        url = self._urls.get(call.path)
        if url is None:
            if len(self._urls) >= _CACHED:
                self._urls.clear()
            url = self._urls[call.path] = httpcore.URL(scheme=self.origin.scheme, host=self.origin.host, port=self.port, target=self.prefix + call.path.encode("latin-1"))
        if Headers is None:
            raw = [(b"host", self.host_header), (b"content-length", b"%d" % len(call.body))]
            raw += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in call.headers]
            return httpcore.Request(method, url, headers=raw, content=call.body, extensions=self.extensions)
        key = tuple(call.headers)
        items = self._checked.get(key)
        if items is None:
            if len(self._checked) >= _CACHED:
                self._checked.clear()
            raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in key]
            items = self._checked[key] = normalize_and_validate(raw)._full_items
        # Content-Length is the only header that changes from request to request: digits of ours.
        headers = Headers([self.host_item, (b"content-length", b"content-length", b"%d" % len(call.body)), *items])
        return _Request(b"POST" if method == "POST" else method.encode("ascii"), url, headers, call.body, self.extensions)

    async def acquire_slot(self, deadline: float | None = None) -> None:
        if self._slots is None:  # made lazily: it must belong to the running loop
            self._slots = anyio.Semaphore(self.size)
        try:
            self._slots.acquire_nowait()  # the common case costs no trip through the event loop
        except anyio.WouldBlock:
            if deadline is None:
                await self._slots.acquire()
                return
            with anyio.CancelScope(deadline=anyio.current_time() + deadline - time.monotonic()) as scope:
                await self._slots.acquire()
            if scope.cancelled_caught:
                raise _DeadlineReached() from None

    def release_slot(self) -> None:
        assert self._slots is not None
        self._slots.release()

    async def send(self, request: httpcore.Request, deadline: float | None) -> tuple[_Conn, httpcore.Response]:
        """Takes a slot and a connection and sends the request; the head must
        come by `deadline` (time.monotonic(); None: the caller's scope times it).
        One coroutine from here to httpcore's: each level is resumed as the head arrives."""
        await self.acquire_slot(deadline)
        try:
            conn, reused = await self._take(deadline)
            while True:
                socket, sent_before = conn.socket, conn.sent
                if socket is not None:
                    socket.deadline = deadline  # the socket's timer, not a cancel scope
                try:
                    return conn, await conn.http.handle_async_request(request)
                except (httpcore.NetworkError, httpcore.RemoteProtocolError):
                    await self.discard(conn)
                    if not reused or conn.sent != sent_before:
                        raise
                except BaseException:
                    await self.discard(conn)
                    raise
                finally:
                    if socket is not None:
                        socket.deadline = None
                # The pooled connection was dead before any byte of the request reached
                # it, so the upstream cannot have seen the request: try a fresh one, once.
                conn, reused = await self._new(deadline), False
        except BaseException:
            self.release_slot()
            raise

    async def _take(self, deadline: float | None) -> tuple[_Conn, bool]:
        while self.idle:
            conn = self.idle.pop()
            if conn.http.is_idle() and not conn.http.has_expired():
                return conn, True
            await self.discard(conn)
        return await self._new(deadline), False

    async def _new(self, deadline: float | None) -> _Conn:
        self.open += 1
        try:
            if self.tls:
                if self._ssl_context is None:
                    try:
                        self._ssl_context = tls_context(self.ca_bundle)
                    except OSError as exc:  # ca_bundle removed or broken since startup (ssl.SSLError is an OSError)
                        raise httpcore.ConnectError(f"cannot load ca_bundle {self.ca_bundle}: {exc}") from exc
                conn = _Conn()
                conn.http = httpcore.AsyncHTTPConnection(  # connects (and handshakes) on its first request
                    self.origin, ssl_context=self._ssl_context, keepalive_expiry=KEEPALIVE_EXPIRY,
                    http1=True, http2=False, retries=0, network_backend=_TLSBackend(conn),
                )
                _unshared(conn.http, "_request_lock")  # its HTTP/1.1 connection's lock: at the first response
            else:
                conn = _Conn(await _connect(self.host, self.port, self.connect_timeout, deadline))
                conn.http = httpcore.AsyncHTTP11Connection(self.origin, conn.socket, keepalive_expiry=KEEPALIVE_EXPIRY)
                conn.unshared = _unshared(conn.http, "_state_lock")
        except BaseException:
            self.open -= 1
            raise
        self.opened += 1
        return conn

    async def put_back(self, conn: _Conn) -> None:
        """Takes a connection whose response was closed: idle ones are kept."""
        if conn.closed:
            return
        if self.retired or not conn.http.is_idle():
            await self.discard(conn)
            return
        now = time.monotonic()
        conn.idle_since = now
        self.idle.append(conn)
        # Age out the bottom of the stack, which only a burst would reach.
        while self.idle and now - self.idle[0].idle_since > KEEPALIVE_EXPIRY:
            await self.discard(self.idle.pop(0))

    async def discard(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.open -= 1
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await conn.http.aclose()

    async def aclose(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            await self.discard(conn)


def _h11_of(http: Any) -> h11.Connection | None:
    """The h11 connection under one of httpcore's connections (an
    AsyncHTTPConnection holds its HTTP/1.1 connection once connected);
    None if a future httpcore keeps it elsewhere."""
    state = getattr(getattr(http, "_connection", http), "_h11_state", None)
    return state if isinstance(state, h11.Connection) else None


class _Headers(Sequence[tuple[str, str]]):
    """A response's headers as (lower-case name, value) strings, decoded when
    first read: every reply's head is handed on, but only an error's is read
    (for Retry-After), and an upstream sends ten to twenty headers."""

    __slots__ = ("_raw", "_decoded")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._decoded: list[tuple[str, str]] | None = None

    def _items(self) -> list[tuple[str, str]]:
        if self._decoded is None:
            self._decoded = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in self._raw]
        return self._decoded

    def __getitem__(self, index):  # type: ignore[no-untyped-def,override]
        return self._items()[index]

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(self._items())


try:  # h11's own header list, checked once per distinct set (`_Pool.request`)
    from h11._headers import Headers, normalize_and_validate
except ImportError:  # another h11: httpcore's own Request for every request (slower, the same bytes)
    Headers = None

# A chunked body's usual chunk, read here instead of by h11 (about 35 calls a
# chunk there, one event each): a size line of hex digits alone, the data, CRLF.
_PLAIN_CHUNK_HEAD = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
try:
    from h11._readers import ChunkedReader as _H11ChunkedReader
except ImportError:  # another h11: it reads every chunk itself
    _H11ChunkedReader = None


def _feed(conn: h11.Connection, data: bytes | None, out: list[bytes], limit: int) -> bool:
    """Gives h11 the socket's `data` (b"" at its end; None: nothing new).
    Where h11 reads a chunked body and stands between two chunks, the whole
    plain chunks among its unread bytes and `data` are read here first, into
    `out`; h11 gets the rest and goes on from that chunk boundary. True when
    h11 got nothing (it has nothing unread)."""
    reader = getattr(conn, "_reader", None)
    if (
        type(reader) is _H11ChunkedReader  # h11's private reader state, read defensively:
        and getattr(reader, "_bytes_in_chunk", 1) == 0  # another h11 reads every chunk itself
        and getattr(reader, "_bytes_to_discard", b"x") == b""  # (tests/test_upstream_pool.py
        and getattr(reader, "_reading_trailer", True) is False  # checks this one is read here)
        and (data or data is None)
    ):
        unread = conn._receive_buffer.maybe_extract_at_most(NO_LIMIT)
        if unread:
            data = bytes(unread) + (data or b"")
        elif not data:
            return True
        data = data[_plain_chunks(data, out, limit) :]
        if not data:
            return True
    if data is None:
        return False
    conn.receive_data(data)
    return False


def _plain_chunks(data: bytes, out: list[bytes], limit: int) -> int:
    """Appends the data of the whole plain chunks at the start of `data` to
    `out` (until it holds `limit` pieces) and returns where they end. It stops at the last chunk (size 0, with its
    trailers), at a chunk not wholly here, and at anything h11 would read
    otherwise or refuse (extensions, a bad size line or footer): h11 reads
    those, from that chunk boundary on, with its own rules."""
    pos, end = 0, len(data)
    while pos < end and len(out) < limit:
        head = _PLAIN_CHUNK_HEAD.match(data, pos)
        if head is None:
            break
        start = head.end()
        stop = start + int(head.group(1), 16)
        if stop == start or data[stop : stop + 2] != b"\r\n":
            break
        out.append(data[start:stop])
        pos = stop + 2
    return pos


class UpstreamStream:
    """An open upstream response: its head, then body chunks as they arrive.
    `aclose()` must be called (the driver does it in a finally): it hands the
    connection back to the pool, or closes it if the body was not read to its end.

    The body is read from httpcore's own h11 connection, all that has arrived
    in one pass: httpcore's iterator hands out one HTTP chunk per step, through
    several generators and context managers per chunk, and a stream whose
    events come together would take one trip through the driver per event.
    httpcore still closes the exchange (`aclose` -> its `_response_closed`),
    which sees the same h11 states either way."""

    def __init__(self, provider: Provider, response: httpcore.Response, pool: _Pool, conn: _Conn) -> None:
        self.provider = provider
        self.status = response.status
        self.headers = _Headers(response.headers)
        self._response = response
        if conn.h11 is None:
            conn.first_response()
        self._h11 = conn.h11
        self._chunks: AsyncIterator[bytes] | None = None  # httpcore's iterator, when there is no h11 to read
        self._pool: _Pool | None = pool
        self._conn = conn
        self.done = False
        self.held = False  # the last read stopped early for fairness: more has arrived

    async def read(self, keepalive: Keepalive | None = None, deadline: float | None = None) -> bytes:
        """The body bytes that have arrived (waiting for some if none has),
        b"" at the end. Raises UpstreamError, or TimeoutError when `deadline`
        (time.monotonic()) passes first.

        No timer of its own otherwise: the caller bounds the wait. `keepalive`
        is (seconds, callback): while the socket stays quiet that long, the
        callback is awaited (it sends the client a keep-alive). Cancelling a
        read closes the response, so a keep-alive cannot be done by timing
        the read out and reading again."""
        if self.done:
            return b""
        socket = self._conn.socket
        if socket is not None:
            socket.keepalive, socket.deadline = keepalive, deadline
        try:
            if self._h11 is not None and socket is not None:
                return await self._read_events(self._h11, socket)
            if self._chunks is None:
                self._chunks = self._response.aiter_stream().__aiter__()
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self.done = True
            return b""
        except _DeadlineReached:
            raise TimeoutError() from None
        except _HTTPCORE_ERRORS as exc:
            raise _translate(self.provider, exc) from exc
        finally:
            if socket is not None:
                socket.keepalive = socket.deadline = None

    async def _read_events(self, conn: h11.Connection, socket: _Socket) -> bytes:
        out: list[bytes] = []
        limit = FAIR_SLICE
        _feed(conn, None, out, limit)  # what came with the head, or was left by the last read
        while True:
            if len(out) >= limit:
                if others_ready():
                    # Others are waiting: the rest stays in h11's buffer for
                    # the next read, which lets them run first.
                    break
                limit = NO_LIMIT
                _feed(conn, None, out, limit)
                continue
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpcore.RemoteProtocolError(str(exc)) from exc
            if type(event) is h11.Data:
                out.append(event.data)
            elif event is h11.NEED_DATA:
                if out:
                    break
                if _feed(conn, await socket.read(65536), out, limit) and out:
                    break
            else:  # EndOfMessage (or the connection closed where that ends the body)
                self.done = True
                break
        self.held = not self.done and len(out) >= limit
        return out[0] if len(out) == 1 else b"".join(out)

    async def read_all(self, limit: int, deadline: float | None = None) -> bytes:
        """The whole body; each wait for more data is limited to idle_timeout
        (a body already received with the head costs no timer at all), the
        whole read to `deadline` (then TimeoutError)."""
        socket = self._conn.socket
        if socket is not None:
            socket.read_timeout = self.provider.idle_timeout if math.isfinite(self.provider.idle_timeout) else None
        try:
            body = bytearray()
            while not self.done:  # a body that came with the head: one read
                body += await self.read(deadline=deadline)
                if len(body) > limit:
                    raise errors.UpstreamProtocolError(f"provider '{self.provider.name}': response larger than {limit} bytes")
            return bytes(body)
        finally:
            if socket is not None:
                socket.read_timeout = None

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._conn.unshared:
            # Nothing in here waits on such a connection (no lock, and closing
            # a wire does not wait), so cancellation, which strikes only at a
            # wait, cannot interrupt it: no shield needed.
            await self._settle(pool)
        else:
            # A cancelled request must still settle its connection, and closing
            # a response can take httpcore's lock (a wait): shielded.
            with anyio.CancelScope(shield=True):
                await self._settle(pool)

    async def _settle(self, pool: _Pool) -> None:
        try:
            try:
                # httpcore closes the socket unless the exchange completed. Its
                # stream's aclose, not Response.aclose: that one only adds a
                # typing check (tests/test_upstream_httpcore.py).
                await self._response.stream.aclose()  # type: ignore[union-attr]
            except Exception:
                pass
            await pool.put_back(self._conn)
        finally:
            pool.release_slot()


class Upstreams:
    def __init__(self, providers: tuple[Provider, ...], previous: Upstreams | None = None) -> None:
        """`previous`: the pools of a reloaded config; a provider whose settings
        are all unchanged (its key aside: keys only go into headers) keeps its pool."""
        kept = previous._pools if previous is not None else {}
        self._pools = {p.name: kept[p.name] if p.name in kept and kept[p.name].provider == p else _Pool(p) for p in providers}

    async def retire(self, successor: Upstreams) -> None:
        """After a reload: the pools `successor` did not keep close their idle
        connections now and each busy one when its response ends (requests
        that started before the reload still use them)."""
        for pool in self._pools.values():
            if successor._pools.get(pool.provider.name) is not pool:
                pool.retired = True
                await pool.aclose()

    def pool_stats(self, name: str) -> dict[str, int]:
        """Open, idle and ever-opened connections of one provider (for tests and /health)."""
        pool = self._pools[name]
        return {"open": pool.open, "idle": len(pool.idle), "opened": pool.opened}

    async def open(self, provider: Provider, call: UpstreamCall, method: str = "POST") -> UpstreamStream:
        """Sends the request and waits for the response head (first_byte_timeout)."""
        pool = self._pools.get(provider.name)
        if pool is None:  # a provider this router was not built with (tests)
            pool = self._pools[provider.name] = _Pool(provider)
        try:
            request = pool.request(method, call)
        except h11.LocalProtocolError as exc:  # as httpcore would have raised it
            raise _translate(provider, httpcore.LocalProtocolError(str(exc))) from exc
        try:
            if pool.tls:
                # The TLS connect happens inside httpcore, on a socket made
                # there: one cancel scope times connect, handshake and head.
                with anyio.CancelScope(deadline=anyio.current_time() + provider.first_byte_timeout) as scope:
                    conn, response = await pool.send(request, None)
                if scope.cancelled_caught:
                    raise _DeadlineReached()
            else:
                conn, response = await pool.send(request, time.monotonic() + provider.first_byte_timeout)
        except _DeadlineReached:
            raise errors.UpstreamTimeout(f"provider '{provider.name}': no response within {provider.first_byte_timeout:g}s") from None
        except _HTTPCORE_ERRORS as exc:
            raise _translate(provider, exc) from exc
        return UpstreamStream(provider, response, pool, conn)

    async def aclose(self) -> None:
        """Closes idle connections; busy ones close as their responses do."""
        for pool in self._pools.values():
            await pool.aclose()
