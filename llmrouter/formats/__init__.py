"""Wire formats. Pure: every function takes values and returns values.

A format module may serve clients (`openai`, `anthropic`, `responses`), upstreams
(`openai`, `anthropic`, `ollama`), or both: the `ClientFormat` and
`UpstreamFormat` protocols below are the contract, and the pipeline knows
formats only through them. Text completions (`openai_completions`,
`ollama_generate`) follow the same two; embeddings, which never stream, follow
`EmbeddingClientFormat` / `EmbeddingUpstreamFormat`. Formats read no clock, no randomness and never log:
the time is `req.now`, every id they make is `req.new_id(prefix)` (derived from
`req.id_seed`; the pipeline sets both right after parse_request), and what they
drop comes back as warnings (`Request.warnings`, `UpstreamCall.warnings`) that
the pipeline logs at debug level.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llmrouter import canonical, errors
from llmrouter.config import Provider


@dataclass
class UpstreamCall:
    path: str  # appended to the provider's base_url
    headers: list[tuple[str, str]]
    body: bytes
    warnings: list[str] = field(default_factory=list)  # what the translation dropped (logged at debug level)


@dataclass
class Frame:
    """One wire frame of an upstream stream and what it means."""

    raw: bytes
    events: list[canonical.StreamEvent] = field(default_factory=list)


@runtime_checkable
class ClientEncoder(Protocol):
    """Canonical stream events as one client's stream bytes."""

    # After error(): end the body normally (True: the in-band error is the
    # protocol's own last event, e.g. Responses `response.failed`) or cut the
    # connection so the client cannot take the stream for complete (False).
    end_after_error: bool

    def encode(self, event: canonical.StreamEvent) -> bytes:
        """Client bytes for one event."""

    def finish(self) -> bytes:
        """The end of a stream that ended normally."""

    def error(self, err: canonical.StreamError) -> bytes:
        """An in-band error; nothing but the end follows it."""

    def ping(self) -> bytes:
        """A keep-alive while the upstream is slow (b"" for none)."""


@runtime_checkable
class ClientFormat(Protocol):
    """A format clients speak (a module: openai, anthropic, responses; or an
    object: ollama_client.CHAT, ollama_client.GENERATE). Optional attributes:
    STREAM_CONTENT_TYPE (default text/event-stream) and STREAMS_BY_DEFAULT
    (default False: a body without `stream` is not streamed)."""

    @property
    def Encoder(self) -> Callable[[canonical.Request, str], ClientEncoder]:  # noqa: N802 (a class in each module)
        """The stream encoder class, called with (req, routed model)."""

    def parse_request(self, body: object) -> canonical.Request:
        """The decoded JSON body as a Request; errors.BadRequest names the field (`param`)."""

    def render_response(self, resp: canonical.Response, req: canonical.Request) -> dict[str, Any]:
        """A whole (non-stream) reply in the client's shape."""

    def error_body(self, err: errors.RouterError) -> dict[str, Any]:
        """The format's error shape."""


@runtime_checkable
class UpstreamDecoder(Protocol):
    """An upstream stream as frames, each with its raw bytes and canonical events."""

    def feed(self, data: bytes) -> list[Frame]:
        """The frames `data` completed."""

    def close(self) -> list[Frame]:
        """The last frames; errors.UpstreamProtocolError if the stream ended without its terminal event."""


@runtime_checkable
class UpstreamFormat(Protocol):
    """A format upstreams speak (a module: openai, anthropic, ollama)."""

    @property
    def Decoder(self) -> Callable[[canonical.Request], UpstreamDecoder]:  # noqa: N802 (a class in each module)
        """The stream decoder class, called with the request (ids the upstream leaves out come from it)."""

    def build_request(self, req: canonical.Request, model: str, provider: Provider) -> UpstreamCall:
        """`req` translated (sending `model`), or, when `passthrough`, the
        client's own body with only `model` (and stream usage) changed."""

    def parse_response(self, data: bytes, req: canonical.Request) -> canonical.Response:
        """A whole reply; errors.UpstreamProtocolError when it is not one."""

    def error_message(self, status: int, data: bytes) -> str:
        """The provider's own message from an error body."""


@runtime_checkable
class EmbeddingClientFormat(Protocol):
    """A client endpoint for embeddings (openai_embeddings, ollama_embed's two):
    a ClientFormat without an Encoder, since embeddings never stream."""

    def parse_request(self, body: object) -> canonical.Request:
        """The decoded JSON body as an embedding Request; errors.BadRequest names the field."""

    def render_response(self, resp: canonical.Embeddings, req: canonical.Request) -> dict[str, Any]:
        """The vectors in the client's shape and the encoding it asked for."""

    def error_body(self, err: errors.RouterError) -> dict[str, Any]:
        """The format's error shape."""


@runtime_checkable
class EmbeddingUpstreamFormat(Protocol):
    """An upstream embeddings API: an UpstreamFormat without a Decoder."""

    def build_request(self, req: canonical.Request, model: str, provider: Provider) -> UpstreamCall:
        """`req`'s inputs for the provider, sending `model`."""

    def parse_response(self, data: bytes, req: canonical.Request) -> canonical.Embeddings:
        """The vectors in input order; errors.UpstreamProtocolError when the reply is not one."""

    def error_message(self, status: int, data: bytes) -> str:
        """The provider's own message from an error body."""


def passthrough(req: canonical.Request, provider_format: str) -> bool:
    """Same format on both sides and untouched by plugins: forward the client's body."""
    return req.raw is not None and not req.modified and req.client_format == provider_format


def forwardable_body(req: canonical.Request, model: str) -> dict[str, Any]:
    """The client's own body, minus router-only fields, with the routed model."""
    assert req.raw is not None
    body = {k: v for k, v in req.raw.items() if k != "plugins"}
    body["model"] = model
    return body


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_COMPACT_ASCII = json.JSONEncoder(separators=(",", ":")).encode


def dumps(value: Any) -> str:
    """Compact JSON text that always encodes to UTF-8: non-ASCII text is kept
    as is, but a lone surrogate (valid in JSON, not in UTF-8) stays escaped."""
    text = _COMPACT(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _COMPACT_ASCII(value)
    return text
