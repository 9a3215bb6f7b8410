"""A cheap closed-loop HTTP/1.1 load generator on plain asyncio protocols.

Each of `concurrency` keep-alive connections sends one prebuilt request,
waits for the whole response, records its latency and sends the next. Each
connection's first request is a warm-up, timed apart (`first_requests`): the
closed loop starts on all connections together once every one is warm, so
connection setup is not mixed into the steady-state numbers. The
response parser only does what the benchmark needs (status line,
Content-Length or chunked end), so the generator costs a few tens of
microseconds of CPU per request and is not what limits the numbers; the
runner measures its ceiling against the fake upstream in the same run.

Stream mode also records, for each response: time to the response head, to
the first SSE event, to the end, the number of events and the number of
socket reads that carried events (coalescing shows up as fewer reads), and
per event the delay from the fake's write (`t=<monotonic ns>` in the event)
to its arrival here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

perf = time.perf_counter


def build_request(
    port: int, stream: bool, path: str = "/v1/chat/completions", *, model: str = "bench-model", client: str = "openai", auth: str = "Bearer bench", headers: bytes = b""
) -> bytes:
    """One request, prebuilt. `client` is the body's format ("openai" or
    "anthropic"); `headers` are extra header lines (each ending in CRLF)."""
    body = b'{"model":"%s","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16' % model.encode()
    body += b',"stream":true}' if stream else b"}"
    if client == "anthropic":
        headers = b"anthropic-version: 2023-06-01\r\n" + headers
    return (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
        b"authorization: %s\r\n%scontent-length: %d\r\n\r\n%s"
    ) % (path.encode(), port, auth.encode(), headers, len(body), body)


@dataclass
class StreamSample:
    head: float  # seconds from sending the request
    first_event: float
    total: float
    events: int
    reads_with_events: int
    lags_us: list[float] = field(default_factory=list)  # fake's write -> arrival here


class Client(asyncio.Protocol):
    def __init__(self, run: "Run") -> None:
        self.run = run
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.reset()

    def reset(self) -> None:
        self.buf.clear()
        self.head_end = -1
        self.need = -1  # body end offset for Content-Length replies
        self.chunked = False
        self.scan = 0  # stream mode: where to look for the next event stamp
        self.events = 0
        self.reads = 0
        self.t_head = self.t_first = 0.0
        self.lags: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        self.reset()
        self.t0 = perf()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        now = perf()
        self.buf += data
        if self.head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_end = end + 4
            self.t_head = now
            head = bytes(self.buf[:end]).lower()
            if not head.startswith(b"http/1.1 200"):
                self.run.errors += 1
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                self.need = self.head_end + int(head[i + 15 : j if j >= 0 else len(head)])
            else:
                self.chunked = b"transfer-encoding: chunked" in head
                self.scan = self.head_end
        if self.run.stream:
            self.stamp_events(now)
        if self.need >= 0:
            done = len(self.buf) >= self.need
        else:
            done = self.chunked and self.buf.endswith(b"\r\n0\r\n\r\n")
        if done:
            self.run.finished(self, now)

    def stamp_events(self, now: float) -> None:
        now_ns = time.monotonic_ns()
        found = 0
        while True:
            i = self.buf.find(b" t=", self.scan)
            if i < 0:
                break
            j = self.buf.find(b'"', i)
            if j < 0:
                break  # the rest of this event is still on its way
            self.lags.append((now_ns - int(self.buf[i + 3 : j])) / 1000)
            self.scan = j
            found += 1
        if found:
            self.events += found
            self.reads += 1
            if not self.t_first:
                self.t_first = now

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


class Run:
    """One measurement: `concurrency` connections, closed loop, until `duration`."""

    def __init__(
        self, port: int, concurrency: int, *, stream: bool = False, duration: float = 1.0, requests: int = 0, request: bytes | None = None
    ) -> None:
        self.port = port
        self.concurrency = concurrency
        self.stream = stream
        self.duration = duration
        self.limit = requests  # stop after this many responses instead
        self.request = request or build_request(port, stream)
        self.latencies: list[float] = []
        self.streams: list[StreamSample] = []
        self.errors = 0
        self.dropped = 0
        self.clients: list[Client] = []
        self.done: asyncio.Future[None] | None = None
        self.measuring = False
        self.first_requests: list[float] = []  # each connection's first (warm-up) request

    def finished(self, client: Client, now: float) -> None:
        if not self.measuring:
            # Warm-up: each connection's first request is kept out of the
            # numbers (connection setup and accept are not what is measured);
            # the closed loop starts on every connection at once when all are warm.
            self.first_requests.append(now - client.t0)
            if len(self.first_requests) == self.concurrency:
                self.measuring = True
                self.started = perf()
                self.deadline = self.started + (self.duration if not self.limit else 3600)
                for c in self.clients:
                    c.send()
            return
        if self.stream:
            t0 = client.t0
            self.streams.append(
                StreamSample(client.t_head - t0, (client.t_first or now) - t0, now - t0, client.events, client.reads, client.lags)
            )
        else:
            self.latencies.append(now - client.t0)
        if self.limit and len(self.streams) + len(self.latencies) >= self.limit or perf() >= self.deadline:
            client.transport.close()
            return
        client.send()

    def lost(self, client: Client) -> None:
        self.clients.remove(client)
        if not client.transport or client.head_end >= 0 and client.need > len(client.buf):
            self.dropped += 1
        if not self.clients and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def go(self) -> "Run":
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.deadline = self.started = perf()
        for _ in range(self.concurrency):
            client = Client(self)
            self.clients.append(client)
            await loop.create_connection(lambda c=client: c, "127.0.0.1", self.port)
        await asyncio.wait_for(self.done, self.duration + 60 if not self.limit else 180)
        self.elapsed = perf() - self.started
        return self
