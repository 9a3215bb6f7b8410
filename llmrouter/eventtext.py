"""Text helpers for the router's event-feed records, shared by `watch` and the
TUI. Pure: no clock, no time zone, no I/O.
"""

from __future__ import annotations

import unicodedata
from typing import Any


def clean(text: Any) -> str:
    """One printable line: newlines, tabs and control characters (an ESC in a
    prompt must not reach the terminal as an escape sequence) become spaces."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def clock_text(ts_ms: Any, utc_offset_s: int = 0) -> str:
    """HH:MM:SS of an epoch-ms time, `utc_offset_s` east of UTC (the caller
    knows the time zone: reading it is not pure)."""
    if not isinstance(ts_ms, (int, float)) or isinstance(ts_ms, bool):
        return "--:--:--"
    secs = (int(ts_ms // 1000) + utc_offset_s) % 86400
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


def content_text(content: Any) -> str:
    """Message content is a string, or a list of parts (text and others)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                pieces.append(text if isinstance(text, str) else f"[{part.get('type', 'part')}]")
        return " ".join(pieces)
    return ""


def prompt_of(messages: Any) -> str:
    """The last user message's text, else the last message's."""
    if not isinstance(messages, list) or not messages:
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = content_text(message.get("content"))
            if text:
                return text
    last = messages[-1]
    return content_text(last.get("content")) if isinstance(last, dict) else ""


def kind_text(event: dict[str, Any]) -> str | None:
    """The request kind of a `start` or `complete` event when it is not a chat:
    "completion", or "embedding ×N" (N inputs)."""
    kind = event.get("kind")
    if not isinstance(kind, str) or kind in ("", "chat"):
        return None
    inputs = event.get("inputs")
    count = inputs.get("count") if isinstance(inputs, dict) else None
    return clean(kind) + (f" ×{count}" if isinstance(count, int) else "")


def reply_text(response: dict[str, Any]) -> str:
    """A logged reply as one text: its content, or an embedding's shape (the vectors are never logged)."""
    if "dimensions" in response and "content" not in response:
        return f"{response.get('count', 0)} vectors × {response.get('dimensions')} dimensions"
    return clean(response.get("content"))


def tokens_of(event: dict[str, Any]) -> tuple[int, int]:
    """(input, output) tokens of a `complete` record, 0 when not reported."""
    usage = event.get("usage") or (event.get("response") or {}).get("usage") or {}
    if not isinstance(usage, dict):
        return 0, 0
    def num(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) else 0
    return num("input_tokens"), num("output_tokens")


def is_error(event: dict[str, Any]) -> bool:
    status = event.get("status")
    return bool(event.get("error")) or (isinstance(status, int) and status >= 400)


def error_text(event: dict[str, Any]) -> str:
    detail = [str(x) for x in (event.get("status"), event.get("error_code")) if x]
    prefix = f"({' '.join(detail)}) " if detail else ""
    return prefix + clean(event.get("error") or "failed")


def model_text(event: dict[str, Any]) -> tuple[str, str | None]:
    """(requested, sent) when the router rewrote the model, else (sent, None)."""
    requested = event.get("requested_model") or ""
    sent = event.get("sent_model") or requested
    return (requested, sent) if requested and sent != requested else (sent, None)


def attempts_text(event: dict[str, Any]) -> str | None:
    """The providers tried, when there was a fallback or a failed attempt."""
    attempts = [a for a in event.get("attempts") or [] if isinstance(a, dict)]
    if not attempts or (len(attempts) == 1 and attempts[0].get("outcome") == "ok"):
        return None
    steps = []
    for a in attempts:
        mark = "ok" if a.get("outcome") == "ok" else f"failed {a.get('status') or clean(a.get('error') or '')}".rstrip()
        steps.append(f"{a.get('provider')}/{a.get('model')} {mark} ({a.get('duration_ms', 0)}ms)")
    return " → ".join(steps)


def reload_text(event: dict[str, Any]) -> str:
    """One line about a `reload` event (watch, tui)."""
    if not event.get("ok"):
        problems = [clean(p) for p in event.get("problems") or []]
        return f"config reload refused, nothing changed ({len(problems)} problem(s)){': ' + problems[0] if problems else ''}"
    parts = [f"config reloaded from {clean(event.get('source'))}"]
    parts += [f"{key}: {', '.join(clean(n) for n in event[key])}" for key in ("added", "removed", "changed") if event.get(key)]
    if event.get("restart_needed"):
        parts.append(f"needs a restart: {', '.join(clean(n) for n in event['restart_needed'])}")
    return "; ".join(parts)


def measured_text(event: dict[str, Any]) -> str:
    """A `measured` event's live figures, in one line (watch --stats, tui)."""

    def figure(key: str, unit: str) -> str:
        value = event.get(key)
        return f"{value:.0f}{unit}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"

    rate = event.get("error_rate")
    errors = f"{rate * 100:.0f}%" if isinstance(rate, (int, float)) and not isinstance(rate, bool) else "–"
    return f"{_count(event.get('in_flight'))} in flight · ttft {figure('ttft_ms', 'ms')} · {figure('tokens_per_sec', ' tok/s')} · {errors} err · {_count(event.get('samples'))} samples"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
