"""Wire formats. Pure: every function takes values and returns values.

A format module may serve clients (`openai`, `anthropic`, `responses`), upstreams
(`openai`, `anthropic`, `ollama`), or both. Formats read no clock, no
randomness and never log: the time is `req.now`, every id they make is
`req.new_id(prefix)` (derived from `req.id_seed`; the pipeline sets both right
after parse_request), and what they drop comes back as warnings. The contract:

Client side
  parse_request(body: object) -> canonical.Request
      `body` is the decoded JSON. Raises errors.BadRequest naming the field
      (`param`) for a missing field or a wrong type. What it ignores or drops
      goes to `Request.warnings` (the pipeline logs it at debug level).
  render_response(resp: canonical.Response, req: canonical.Request) -> dict
  error_body(err: errors.RouterError) -> dict       the format's error shape
  class Encoder(req: canonical.Request, model: str)
      encode(event: canonical.StreamEvent) -> bytes  client bytes for one event
      finish() -> bytes                              after the stream ended normally
      error(err: canonical.StreamError) -> bytes     in-band error; nothing follows
      ping() -> bytes                                keep-alive while the upstream is slow

Upstream side
  build_request(req: canonical.Request, model: str, provider: config.Provider) -> UpstreamCall
      Translates `req` (sending `model`), or, when `passthrough(req, provider)`,
      forwards the client's own body with only `model` (and stream usage) changed.
      What the translation drops goes to `UpstreamCall.warnings`.
  parse_response(data: bytes, req: canonical.Request) -> canonical.Response
      raises errors.UpstreamProtocolError; ids the upstream left out come from `req`
  error_message(status: int, data: bytes) -> str       the provider's own message
  class Decoder(req: canonical.Request)                 (ids from `req`, as above)
      feed(data: bytes) -> list[Frame]   complete frames; each keeps its raw bytes
      close() -> list[Frame]             raises UpstreamProtocolError if the stream
                                         ended without its terminal event
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmrouter import canonical


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
