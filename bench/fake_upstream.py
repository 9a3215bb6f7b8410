"""A fast fake OpenAI upstream for the benchmark: plain asyncio protocols.

It does the least work an HTTP/1.1 keep-alive server can: find the end of the
head, read Content-Length bytes, answer. Non-streaming requests get a canned
chat.completion; requests whose body says `"stream": true` get a chunked SSE
reply of STREAM_CHUNKS events, each a separate write, spaced in time so the
receiver sees them as separate arrivals. Every event carries the monotonic
time (ns) at which it was written, so the client can measure how long each
one took to reach it, directly or through the router. Loopback only.

The request's model picks the pacing, so one fake serves every scenario and
every proxy under test (peers are configured with these model names):

- `mock-fast`: the whole stream (head, every event, the end) in one write;
- `mock-paced`: the head, 20 ms, then one event every 5 ms;
- any other model: the command line's --first-ms and --gap-ms.

    python3 bench/fake_upstream.py --port 18080 [--chunks 50 --gap-ms 1 --first-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1735689600,
        "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    },
    separators=(",", ":"),
).encode()
JSON_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(COMPLETION) + COMPLETION
)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
CHUNK_PREFIX = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1735689600,'
    b'"model":"bench-model","choices":[{"index":0,"delta":{"content":"tok '
)


def chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def stream_event(i: int) -> bytes:
    # The send time rides inside the content; passthrough forwards it untouched.
    body = CHUNK_PREFIX + b'%d t=%d"},"finish_reason":null}]}\n\n' % (i, time.monotonic_ns())
    return chunked(body)


LAST_EVENTS = chunked(
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1735689600,'
    b'"model":"bench-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
) + b"0\r\n\r\n"


PACED = (0.020, 0.005)  # mock-paced: seconds to the first event, between events
MODEL = re.compile(rb'"model"\s*:\s*"([^"]*)"')


def whole_stream(chunks: int) -> bytes:
    return STREAM_HEAD + b"".join(stream_event(i) for i in range(chunks)) + LAST_EVENTS


class FakeProtocol(asyncio.Protocol):
    def __init__(self, server: "FakeServer") -> None:
        self.server = server
        self.buf = b""
        self.busy = False  # a streamed reply is being written; later requests wait
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            self.server.requests += 1
            if b'"stream":true' in body or b'"stream": true' in body:
                model = MODEL.search(body)
                name = model.group(1) if model else b""
                if name == b"mock-fast":
                    self.transport.write(whole_stream(self.server.chunks))
                    continue
                pacing = PACED if name == b"mock-paced" else (self.server.first_s, self.server.gap_s)
                self.busy = True
                asyncio.get_running_loop().create_task(self.stream(*pacing))
                return
            self.transport.write(JSON_REPLY)

    async def stream(self, first_s: float, gap_s: float) -> None:
        s = self.server
        t = self.transport
        try:
            t.write(STREAM_HEAD)
            await asyncio.sleep(first_s)
            for i in range(s.chunks):
                if t.is_closing():
                    return
                t.write(stream_event(i))
                if gap_s:
                    await asyncio.sleep(gap_s)
            t.write(LAST_EVENTS)
        finally:
            self.busy = False
        if self.buf:
            self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections -= 1


class FakeServer:
    def __init__(self, chunks: int, gap_ms: float, first_ms: float) -> None:
        self.chunks = chunks
        self.gap_s = gap_ms / 1000
        self.first_s = first_ms / 1000
        self.requests = 0
        self.connections = 0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--chunks", type=int, default=50)
    ap.add_argument("--gap-ms", type=float, default=1.0)
    ap.add_argument("--first-ms", type=float, default=5.0)
    args = ap.parse_args()
    fake = FakeServer(args.chunks, args.gap_ms, args.first_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeProtocol(fake), "127.0.0.1", args.port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port} pid {os.getpid()}", flush=True)  # the runner waits for this line
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
