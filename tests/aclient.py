"""A small asyncio HTTP/1.1 client for load tests: one request per connection
(`connection: close`), the body de-chunked, and whether it ended properly."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the terminating chunk (or the whole content-length) arrived
    first_byte: float | None = None  # seconds from sending to the response head
    seconds: float = 0.0
    aborted: bool = False  # we hung up on purpose


async def exchange(port: int, path: str, body: dict | bytes, *, headers: dict[str, str] | None = None,
                   abort_after: int | None = None, timeout: float = 30.0) -> Reply:
    """POSTs `body`; with `abort_after`, hangs up (RST) once that many body bytes came."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json", "connection: close",
            f"content-length: {len(data)}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reply = Reply()
    raw = b""
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()
        deadline = started + timeout
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.0, deadline - time.monotonic()))
            if not chunk:
                break
            raw += chunk
            if reply.first_byte is None and b"\r\n\r\n" in raw:
                reply.first_byte = time.monotonic() - started
            if abort_after is not None and b"\r\n\r\n" in raw and len(raw.split(b"\r\n\r\n", 1)[1]) >= abort_after:
                reply.aborted = True
                break
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass
    finally:
        writer.transport.abort()  # RST when we hang up early; harmless after EOF
    reply.seconds = time.monotonic() - started
    if b"\r\n\r\n" not in raw:
        return reply
    head_bytes, rest = raw.split(b"\r\n\r\n", 1)
    lines = head_bytes.decode("latin-1").split("\r\n")
    reply.status = int(lines[0].split()[1])
    reply.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if reply.headers.get("transfer-encoding") == "chunked":
        reply.body, reply.complete = _dechunk(rest)
    else:
        length = int(reply.headers.get("content-length", len(rest)))
        reply.body, reply.complete = rest[:length], len(rest) >= length
    return reply


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out = b""
    while True:
        line_end = data.find(b"\r\n")
        if line_end == -1:
            return out, False
        size = int(data[:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            return out, data[line_end + 2 : line_end + 4] == b"\r\n"
        start = line_end + 2
        if len(data) < start + size + 2:
            return out + data[start:], False
        out += data[start : start + size]
        data = data[start + size + 2 :]
