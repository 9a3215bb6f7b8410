"""A raw HTTP/1.1 probe for ingress tests: sends bytes in a chosen chunking and
reports the first response's status, whether the router closed the
connection, and how long the close took after the response.

Runs many probes concurrently on its own asyncio loop (the router under test
runs in a background loop of its own).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass

STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r?\n")


@dataclass
class Probe:
    status: int | None  # the first final (non-1xx) response's status; None if none came
    closed: bool  # the router closed the connection
    close_after: float | None  # seconds from the response head to the close, if it closed after answering
    says_close: bool  # the response carried `connection: close`
    elapsed: float  # from the first byte sent to the outcome
    send_seconds: float = 0.0  # how long sending the input took (slow under load)

    @property
    def outcome(self) -> str:
        """The decision, comparable across chunkings: a status class, `close`
        (closed without answering) or `hang` (neither, within the wait)."""
        if self.status is not None:
            return f"{self.status // 100}xx"
        return "close" if self.closed else "hang"


def pieces(data: bytes, chunking: str, byte_limit: int = 256) -> list[bytes]:
    """whole | two (split in the middle) | bytes (one byte per write for the
    first `byte_limit` bytes, then the rest at once)."""
    if chunking == "whole" or len(data) < 2:
        return [data]
    if chunking == "two":
        cut = len(data) // 2
        return [data[:cut], data[cut:]]
    head = [data[i : i + 1] for i in range(min(len(data), byte_limit))]
    return head + ([data[byte_limit:]] if len(data) > byte_limit else [])


async def probe(port: int, data: bytes, chunking: str = "whole", *, wait: float = 6.0) -> Probe:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.monotonic()

    sent_at = [started]

    async def send_all() -> None:
        try:
            for i, piece in enumerate(pieces(data, chunking)):
                writer.write(piece)
                await writer.drain()
                if chunking != "whole":
                    # Let the router read each piece on its own; a real pause
                    # now and then so small writes are not all coalesced.
                    await asyncio.sleep(0.001 if i % 16 == 15 or chunking == "two" else 0)
        except (ConnectionError, OSError):
            pass  # the router answered and closed before all of it was sent
        sent_at[0] = time.monotonic()

    sender = asyncio.create_task(send_all())
    buffer = b""
    status: int | None = None
    head_at: float | None = None
    says_close = False
    closed = False
    deadline = started + wait
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
            except asyncio.TimeoutError:
                break
            except (ConnectionError, OSError):
                chunk = b""
            if not chunk:
                closed = True
                break
            buffer += chunk
            if status is None:
                status, says_close, buffer = _first_final(buffer)
                if status is not None:
                    head_at = time.monotonic()
                    if not says_close:
                        break  # a keep-alive answer: that is the decision
                    deadline = min(deadline, head_at + 2.5)  # a refusal must be followed by a close
    finally:
        sender.cancel()
        try:
            await sender
        except (asyncio.CancelledError, Exception):
            pass
        writer.transport.abort()
    end = time.monotonic()
    close_after = end - head_at if closed and head_at is not None else None
    return Probe(status, closed, close_after, says_close, end - started, max(0.0, sent_at[0] - started))


def _first_final(buffer: bytes) -> tuple[int | None, bool, bytes]:
    """Skips 1xx responses; returns the first final status and whether its
    head says `connection: close`, once its whole head has arrived."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end == -1:
            return None, False, buffer
        head, buffer = buffer[: end + 4], buffer[end + 4 :]
        match = STATUS.match(head)
        if match is None:
            return 0, False, buffer  # not HTTP at all: reported as status 0
        status = int(match.group(1))
        if 100 <= status < 200:
            continue
        return status, b"\r\nconnection: close\r\n" in head.lower(), buffer


async def probe_many(port: int, cases: list[tuple[bytes, str]], concurrency: int = 48) -> list[Probe]:
    gate = asyncio.Semaphore(concurrency)

    async def one(data: bytes, chunking: str) -> Probe:
        async with gate:
            return await probe(port, data, chunking)

    return await asyncio.gather(*(one(d, c) for d, c in cases))
