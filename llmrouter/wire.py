"""Byte streams over asyncio transports: the sockets of the server's client
connections and of the upstream connections.

Why not anyio's SocketStream: on the asyncio backend every `receive()` resumes
and pauses the transport's reading (two epoll_ctl calls) and every `send()` is
a checkpoint (one more event-loop iteration) followed by a wait for a drain
event. Profiled behind the router, a minimal h11 relay on these wires used
about half the CPU per request that the same relay on anyio streams did
(docs/performance.md). anyio still runs everything else: the tasks, cancel
scopes and timeouts. An `await` on a wire waits on a plain asyncio future,
which anyio's cancellation cancels like any other.

A wire keeps reading while nobody asks (input is buffered, up to
`READ_HIGH_WATER`; then the transport stops reading, so a fast sender is
slowed by TCP instead of filling memory), which is what lets the server notice
a client hanging up while its response is produced (`on_eof`) without a reader
task. Writes go straight to the transport; they wait only while the transport's
send buffer is above its high-water mark, so a slow reader slows the writer.
"""

from __future__ import annotations

import asyncio
import collections
import math
import weakref
from collections.abc import Callable
from typing import Any

READ_HIGH_WATER = 256 * 1024


class Wire(asyncio.Protocol):
    def __init__(self, on_connect: Callable[["Wire"], None] | None = None) -> None:
        self.transport: Any = None  # an asyncio.Transport once connected
        self.at_eof = False  # the peer sent EOF, or the connection is gone
        self.lost = False  # the connection is gone
        self.error: BaseException | None = None  # why it was lost, when not cleanly
        self.on_eof: Callable[[], None] | None = None  # told once when input ends
        self._on_connect = on_connect
        self._chunks: list[bytes] = []
        self._size = 0
        self._reading_paused = False
        self._writing_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None
        # When (loop time) the waiting read and drain run out, and the one
        # timer that checks both (`_watch`): no timer per wait.
        self._read_until = math.inf
        self._drain_until = math.inf
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_at = math.inf

    # asyncio's protocol callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._input_ended()
        # Stay open for writing: a half-closed peer still gets its answer. TLS
        # cannot half-close (asyncio warns about a True there), so it closes.
        return self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.error = exc
        if self._watchdog is not None:  # it would keep this wire alive until its time
            self._watchdog.cancel()
            self._watchdog = None
        self._input_ended()
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.set_result(None)

    def _input_ended(self) -> None:
        if self.at_eof:
            return
        self.at_eof = True
        self._wake_reader()
        if self.on_eof is not None:
            self.on_eof()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    # the stream side

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return self._size

    async def wait_readable(self, timeout: float | None = None) -> bool:
        """Waits until a read would not wait (data or EOF), at most `timeout`
        seconds; False when that ran out. Consumes nothing."""
        if not (self._chunks or self.at_eof):
            try:
                await self._wait(timeout)
            except TimeoutError:
                return False
        return True

    def interrupt(self) -> None:
        """Ends a wait in read() or wait_readable() as if its time ran out."""
        if self._reader is not None:
            _time_out(self._reader)

    async def read(self, timeout: float | None = None) -> bytes:
        """Everything received so far, waiting for some if there is none (at
        most `timeout` seconds, then TimeoutError); b"" at EOF. Raises
        ConnectionError when the connection broke."""
        while not self._chunks:
            if self.at_eof:
                if self.error is not None:
                    raise ConnectionResetError(str(self.error) or type(self.error).__name__)
                return b""
            await self._wait(timeout)
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._reading_paused and not self.lost:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._reader = loop.create_future()
        if timeout is not None and timeout != math.inf:
            self._read_until = until = loop.time() + timeout
            self._watch(loop, until)
        try:
            await self._reader
        finally:
            self._reader = None
            self._read_until = math.inf

    async def write(self, data: bytes, timeout: float | None = None) -> None:
        """Hands `data` to the transport; waits while its send buffer is full
        (at most `timeout` seconds, then TimeoutError). Raises ConnectionError
        when the connection is gone or the send failed."""
        if self.lost or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)
        if self.transport.is_closing():  # the send failed: asyncio closes the transport at once
            raise ConnectionResetError("the peer closed the connection")
        if self._writing_paused and not self.lost:
            await self._drain(timeout)
        if self.lost:
            raise ConnectionResetError("the connection is closed")

    async def _drain(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        if timeout is not None and timeout != math.inf:
            self._drain_until = until = loop.time() + timeout
            self._watch(loop, until)
        try:
            while self._writing_paused and not self.lost:
                self._drainer = loop.create_future()
                await self._drainer
        finally:
            self._drainer = None
            self._drain_until = math.inf

    # Time limits. A wait sets when it runs out; the watchdog is moved only
    # when that is sooner than the watchdog's time. When the watchdog goes off
    # it times out the waits whose time is up and sets itself for the soonest
    # time left, so a stream of short waits under one long limit costs no
    # timer per wait (a loop timer is a heap entry, and a cancelled one stays
    # in the heap until its time).

    def _watch(self, loop: asyncio.AbstractEventLoop, until: float) -> None:
        if self._watchdog is not None:
            if self._watch_at <= until:
                return
            self._watchdog.cancel()
        self._watch_at = until
        self._watchdog = loop.call_at(until, self._watchdog_fired)

    def _watchdog_fired(self) -> None:
        # A limit at or before this time is up: a sooner one would have moved the watchdog.
        due, self._watchdog = self._watch_at, None
        if self._read_until <= due:
            self.interrupt()
        if self._drain_until <= due and self._drainer is not None:
            _time_out(self._drainer)
        soonest = min(self._read_until, self._drain_until)
        if soonest != math.inf:
            self._watch(asyncio.get_running_loop(), soonest)

    def write_eof(self) -> None:
        if not self.lost and self.transport.can_write_eof():
            self.transport.write_eof()

    def limit_write_buffer(self, size: int) -> None:
        """Writes then wait once `size` bytes are queued in user space."""
        self.transport.set_write_buffer_limits(high=size)

    def close(self) -> None:
        """Closes after the queued data is sent."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Closes at once, dropping queued data."""
        if self.transport is not None:
            self.transport.abort()

    def extra(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default) if self.transport is not None else default


def others_ready() -> bool:
    """True when other tasks or callbacks wait for this loop (asyncio's run
    queue; always True on a loop that does not show it, such as uvloop)."""
    return bool(getattr(asyncio.get_running_loop(), "_ready", True))


async def fair_turn() -> None:
    """Lets the other ready tasks run first, if there are any."""
    if others_ready():
        await asyncio.sleep(0)


async def body_turn() -> None:
    """Waits, if other tasks are ready, for this stream's next turn to go on
    with a body: one body goes on per event-loop iteration, while everything
    else that is ready runs in every iteration, so a request working towards
    its response head never waits for a row of other streams' bodies."""
    if not others_ready():
        return
    loop = asyncio.get_running_loop()
    try:
        lane = _LANES.setdefault(loop, collections.deque())
    except TypeError:  # a loop that takes no weak reference: a plain turn
        await asyncio.sleep(0)
        return
    turn = loop.create_future()
    lane.append(turn)
    if len(lane) == 1:
        loop.call_soon(_next_body, lane)
    await turn


def _next_body(lane: collections.deque[asyncio.Future[None]]) -> None:
    while lane:
        turn = lane.popleft()
        if not turn.done():  # a cancelled waiter's turn passes on
            turn.set_result(None)
            break
    if lane:
        asyncio.get_running_loop().call_soon(_next_body, lane)  # the next one in the next iteration


_LANES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, collections.deque[asyncio.Future[None]]] = weakref.WeakKeyDictionary()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def connect(host: str, port: int) -> Wire:
    """Opens a TCP connection (the caller bounds the wait). Raises OSError."""
    loop = asyncio.get_running_loop()
    # Happy eyeballs (IPv6 and IPv4 tried side by side) is asyncio's own loop's; uvloop lacks it.
    options = {"happy_eyeballs_delay": 0.25} if isinstance(loop, asyncio.BaseEventLoop) else {}
    _, wire = await loop.create_connection(Wire, host, port, **options)
    return wire
