"""Incremental framing for Server-Sent Events and NDJSON. Pure, no I/O.

Both splitters accept bytes in arbitrary pieces (a frame, a line, or a UTF-8
character may be split anywhere) and return complete frames, each with the raw
bytes it came from, so that a relay can forward frames untouched while a
decoder reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmrouter import errors

# Longest line a splitter buffers; a longer one is a broken upstream.
MAX_LINE_BYTES = 64 * 1024 * 1024


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    raw: bytes = b""  # the frame exactly as received, blank line included


class SSESplitter:
    """Splits a byte stream into SSE events (WHATWG 'event stream' rules)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._raw = bytearray()
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if b"\r" in chunk:
            return self._feed_lines(chunk)
        events: list[SSEEvent] = []
        if self._buffer or self._raw or self._data or self._event:
            # An event is open: finish it line by line, up to the first blank
            # line, after which nothing is pending.
            cut = chunk.find(b"\n\n")
            if cut < 0:
                return self._feed_lines(chunk)
            events = self._feed_lines(chunk[: cut + 2])
            chunk = chunk[cut + 2 :]
        # Whole events, split at blank lines in one pass; the common one-line
        # `data: ...` event needs no line-by-line parsing.
        *whole, rest = chunk.split(b"\n\n")
        for part in whole:
            if part[:6] == b"data: " and b"\n" not in part:
                events.append(SSEEvent("message", part[6:].decode("utf-8", "replace"), self._id, part + b"\n\n"))
            else:
                events += self._feed_lines(part + b"\n\n")
        if rest:
            events += self._feed_lines(rest)
        return events

    def _feed_lines(self, chunk: bytes) -> list[SSEEvent]:
        ends_line = b"\n" in chunk or b"\r" in chunk or self._buffer.endswith(b"\r")
        self._buffer += chunk
        if not ends_line:  # more of a long line: append only, never rescan (linear time)
            _check_line(self._buffer)
            return []
        events: list[SSEEvent] = []
        while True:
            # A line ends at \n, \r\n or a lone \r; a trailing \r may still be
            # followed by \n in the next chunk, so it is held back.
            cut = _line_end(self._buffer)
            if cut is None:
                _check_line(self._buffer)
                return events
            end, after = cut
            line_bytes = self._buffer[:end]
            self._raw += self._buffer[:after]
            self._buffer = self._buffer[after:]
            event = self._line(line_bytes.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            raw = bytes(self._raw)
            self._raw.clear()
            if not self._data and not self._event:
                return SSEEvent(event="", raw=raw) if raw.strip() else None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id, raw)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buffer.strip() or self._data or self._event)


def _check_line(buffer: bytearray) -> None:
    if len(buffer) > MAX_LINE_BYTES:
        raise errors.UpstreamProtocolError(f"upstream sent a line longer than {MAX_LINE_BYTES} bytes")


def _line_end(buffer: bytes | bytearray) -> tuple[int, int] | None:
    n = buffer.find(b"\n")
    r = buffer.find(b"\r")
    if r == -1 or (n != -1 and n < r):
        return None if n == -1 else (n, n + 1)
    if r + 1 < len(buffer):
        return (r, r + 2) if buffer[r + 1 : r + 2] == b"\n" else (r, r + 1)
    return None  # a \r at the very end: wait for the next byte


class NDJSONSplitter:
    """Splits a byte stream into non-empty lines (Ollama's streaming format)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        if b"\n" not in chunk:  # only the new bytes can end a line: linear time
            _check_line(self._buffer)
            return []
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        return [bytes(line) + b"\n" for line in lines if line.strip()]

    def close(self) -> list[bytes]:
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [rest] if rest.strip() else []


def encode_event(data: str, event: str | None = None) -> bytes:
    """One SSE frame. `data` must not contain newlines (compact JSON)."""
    if event:
        return b"event: " + event.encode() + b"\ndata: " + data.encode() + b"\n\n"
    return b"data: " + data.encode() + b"\n\n"
