"""Lifecycle events: the public, versioned contract of the event feed and log.

Each request produces `start`, `classified`, `routed` (once per attempt) and
exactly one `complete`. Events are plain JSON-ready dicts; the `complete`
record is also the JSONL log line. Pure: the clock is passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmrouter import formats

SCHEMA_VERSION = 1


def start(
    id: int, ts_ms: int, model: str, in_flight: int, request_id: str, client_format: str, stream: bool, kind: str = "chat"
) -> dict[str, Any]:
    return {
        "type": "start",
        "v": SCHEMA_VERSION,
        "id": id,
        "ts_ms": ts_ms,
        "model": model,
        "in_flight": in_flight,
        "request_id": request_id,
        "client_format": client_format,
        "kind": kind,
        "stream": stream,
    }


def classified(id: int, ts_ms: int, tags: list[str]) -> dict[str, Any]:
    return {"type": "classified", "v": SCHEMA_VERSION, "id": id, "ts_ms": ts_ms, "tags": list(tags)}


def routed(id: int, ts_ms: int, provider: str, model: str, attempt: int) -> dict[str, Any]:
    return {
        "type": "routed",
        "v": SCHEMA_VERSION,
        "id": id,
        "ts_ms": ts_ms,
        "provider": provider,
        "model": model,
        "attempt": attempt,
    }


def breaker(ts_ms: int, provider: str, state: str, failures: int, cooldown_s: float) -> dict[str, Any]:
    """A provider's circuit breaker changed state (not tied to one request)."""
    return {
        "type": "breaker",
        "v": SCHEMA_VERSION,
        "ts_ms": ts_ms,
        "provider": provider,
        "state": state,
        "failures": failures,
        "cooldown_s": cooldown_s,
    }


def reload(ts_ms: int, ok: bool, source: str, problems: list[str], restart_needed: list[str], added: list[str], removed: list[str], changed: list[str]) -> dict[str, Any]:
    """The config was re-read (SIGHUP): applied (`ok`) or refused with its problems."""
    return {
        "type": "reload",
        "v": SCHEMA_VERSION,
        "ts_ms": ts_ms,
        "ok": ok,
        "source": source,
        "problems": list(problems),
        "restart_needed": list(restart_needed),
        "added": list(added),
        "removed": list(removed),
        "changed": list(changed),
    }


def measured(ts_ms: int, provider: str, figures: dict[str, Any]) -> dict[str, Any]:
    """A provider's live measurements changed (llmrouter/measure.py); not tied to one request."""
    return {"type": "measured", "v": SCHEMA_VERSION, "ts_ms": ts_ms, "provider": provider, **figures}


@dataclass
class Attempt:
    provider: str
    model: str
    outcome: str = "pending"  # ok | error
    status: int | None = None
    duration_ms: int = 0
    error: str | None = None
    first_token_ms: int | None = None  # streams: from sending the request to the first chunk

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "outcome": self.outcome,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "first_token_ms": self.first_token_ms,
            "error": self.error,
        }


@dataclass
class Record:
    """Everything the `complete` event says about one request, filled as it runs."""

    id: int
    request_id: str
    client_format: str
    kind: str = "chat"  # chat | completion | embedding
    endpoint: str = ""  # the path the request came to, e.g. "/v1/embeddings"
    requested_model: str = ""
    sent_model: str = ""
    provider: str | None = None
    tags: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    response: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    status: int | None = None
    stream: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    usage: dict[str, int] | None = None
    first_byte_ms: int | None = None
    inputs: dict[str, Any] | None = None  # embeddings: {"count", "chars"} (never the texts)

    def complete(self, ts_ms: int, duration_ms: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "complete",
            "v": SCHEMA_VERSION,
            "id": self.id,
            "ts_ms": ts_ms,
            "request_id": self.request_id,
            "client_format": self.client_format,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "provider": self.provider,
            "requested_model": self.requested_model,
            "sent_model": self.sent_model or self.requested_model,
            "duration_ms": duration_ms,
            "first_byte_ms": self.first_byte_ms,
            "status": self.status,
            "stream": self.stream,
            "tags": self.tags,
            "plugins": self.plugins,
            "system": self.system,
            "messages": self.messages,
            "response": self.response,
            "usage": self.usage,
            "attempts": [a.to_json() for a in self.attempts],
            "error": self.error,
            "error_code": self.error_code,
        }
        if self.inputs is not None:
            out["inputs"] = self.inputs
        return out


def dumps(event: dict[str, Any]) -> str:
    """Compact, single-line JSON (safe inside one SSE data line and one log line)."""
    text = formats.dumps(event)  # a lone surrogate from a client keeps everything escaped
    if text.isascii():
        return text
    # str.splitlines() (and JavaScript before ES2019) end lines at these too.
    for char in _LINE_BREAKS:
        if char in text:
            text = text.replace(char, f"\\u{ord(char):04x}")
    return text


_LINE_BREAKS = ("\u2028", "\u2029", "\x85")


# Fields every reader can rely on, per event type (the original's names).
REQUIRED = {
    "start": {"id": int, "ts_ms": int, "model": str, "in_flight": int},
    "classified": {"id": int, "ts_ms": int, "tags": list},
    "routed": {"id": int, "ts_ms": int, "provider": str, "model": str},
    "complete": {"id": int, "ts_ms": int, "requested_model": str, "sent_model": str, "duration_ms": int, "tags": list, "plugins": list, "messages": list},
    "dropped": {"count": int},
    "reload": {"ts_ms": int, "ok": bool},
    "measured": {"ts_ms": int, "provider": str, "samples": int, "in_flight": int},
}


def parse(text: str) -> dict[str, Any]:
    """Reads one event (ours, or the original tool's), checking the fields
    readers rely on. Raises ValueError for anything else."""
    event = json.loads(text)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError("an event is a JSON object with a string `type`")
    required = REQUIRED.get(event["type"])
    if required is None:
        return event  # a newer event type: readers skip what they do not know
    for name, kind in required.items():
        value = event.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{event['type']} event: `{name}` must be {kind.__name__}")
    return event
