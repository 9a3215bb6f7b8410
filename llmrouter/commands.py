"""What the pure pipeline asks the I/O driver to do.

The pipeline is a synchronous generator that yields these commands; the
driver performs each one and sends back its reply (or throws an
UpstreamError into the generator at that `yield`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall


@dataclass(frozen=True)
class Publish:
    """Send an event to live subscribers. Reply: None. Never blocks."""

    event: dict[str, Any]


@dataclass(frozen=True)
class Log:
    """A diagnostic line for stderr (pure code never logs by itself). Reply: None."""

    level: str  # "debug" | "info" | "warning"
    message: str


@dataclass(frozen=True)
class OpenUpstream:
    """Send a request upstream. Reply: UpstreamHead. Raises UpstreamError."""

    provider: Provider
    call: UpstreamCall


@dataclass(frozen=True)
class UpstreamHead:
    status: int
    headers: Sequence[tuple[str, str]]  # lower-case names
    error_body: bytes = b""  # the (bounded) body of a non-2xx reply, already read


@dataclass(frozen=True)
class ReadUpstream:
    """Reply: the next body chunk, b"" at the end. While the upstream is
    quiet, `ping` (a keep-alive in the client's format; b"" for none) goes
    to the client every `ping_after` seconds. An upstream that sends no
    stream event for `event_timeout` seconds, however many keep-alive bytes
    it sends, gets UpstreamTimeout; `progress` says that the previous chunk
    carried an event (only the pipeline can tell)."""

    ping_after: float = 10.0
    ping: bytes = b""
    event_timeout: float = math.inf
    progress: bool = False


@dataclass(frozen=True)
class ReadUpstreamBody:
    """Reply: the whole body (at most `limit` bytes). Raises UpstreamError."""

    limit: int


@dataclass(frozen=True)
class StartResponse:
    status: int
    headers: list[tuple[str, str]]


@dataclass(frozen=True)
class SendBody:
    """Reply: None once the bytes are written (this is where backpressure acts)."""

    data: bytes


@dataclass(frozen=True)
class EndResponse:
    """Finish the response normally (the terminating chunk)."""


@dataclass(frozen=True)
class AbortResponse:
    """Close the client connection without finishing the response, so the
    client cannot mistake a truncated stream for a complete one."""


Command = (
    Publish | Log | OpenUpstream | ReadUpstream | ReadUpstreamBody | StartResponse | SendBody | EndResponse | AbortResponse
)
