"""`response-healing`: repair almost-JSON replies (post_response).

`heal()` keeps the original's steps and its results on its six test vectors,
with three of its documented false results fixed (see docs/plugins.md):
  - JSON is cut out of prose only when it stands apart from the prose (starts
    a line or follows a colon, ends its line), so "see [1] for details" is
    no longer "healed" to `[1]`;
  - the JSON's end is where its first bracket closes, not the last closing
    bracket of the text, so `{"a": [1], "b": {"c": 1` is completed instead of
    truncated to `{"a": [1]}`;
  - trailing commas are removed after balancing and outside strings only, so
    `{"a": 1,` heals and `"x,}"` inside a string is left alone.
"""

from __future__ import annotations

import json
from typing import Any

from ..canonical import Text
from . import Flow, Plugin, PluginState

FENCE = "```"
_OPEN = {"{": "}", "[": "]"}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_json(text: str) -> bool:
    """Strict JSON (NaN and Infinity rejected); surrounding whitespace allowed."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return True


def _strip_fence(t: str) -> str:
    if not t.startswith(FENCE):
        return t
    t = t[len(FENCE):]
    if t.startswith("json"):
        t = t[4:]
    t = t.lstrip("\r\n")
    end = t.rfind(FENCE)
    if end >= 0:
        t = t[:end]
    return t.strip()


def _scan(t: str, start: int = 0, *, stop_when_closed: bool = False) -> tuple[list[str], bool, int]:
    """Bracket scan from `start`, skipping string contents.

    Returns (pending closers innermost last, still inside a string, index of
    the last character scanned). With `stop_when_closed` it stops where the
    first bracket closes. Mismatched closers are ignored, as in the original.
    """
    stack: list[str] = []
    in_string = escaped = False
    i = start - 1
    for i in range(start, len(t)):
        c = t[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in _OPEN:
            stack.append(_OPEN[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if stop_when_closed and not stack:
                break
    return stack, in_string, i


def _trim_prose(t: str) -> str:
    starts = [i for i in (t.find("{"), t.find("[")) if i >= 0]
    if not starts:
        return t
    s = min(starts)
    line_head = t[t.rfind("\n", 0, s) + 1 : s].strip()
    if line_head and not line_head.endswith(":"):
        return t  # a bracket inside a sentence, e.g. a citation
    stack, _, end = _scan(t, s, stop_when_closed=True)
    if stack:
        return t[s:]  # never closes: truncated output, keep all of it
    line_end = t.find("\n", end)
    if t[end + 1 : line_end if line_end >= 0 else len(t)].strip():
        return t  # more sentence after the closing bracket
    return t[s : end + 1]


def _remove_trailing_commas(t: str) -> str:
    """Drop each comma, outside strings, whose next non-blank character closes."""
    out: list[str] = []
    comma = -1  # index in `out` of a comma that may still be dropped
    in_string = escaped = False
    for c in t:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c in "}]" and comma >= 0:
            del out[comma]
            comma = -1
        elif c == ",":
            comma = len(out)
        elif c == '"':
            in_string = True
            comma = -1
        elif not c.isspace():
            comma = -1
        out.append(c)
    return "".join(out)


def heal(text: str) -> str | None:
    """The repaired JSON text, or None when `text` cannot be made into JSON."""
    t = _trim_prose(_strip_fence(text.strip()))
    stack, in_string, _ = _scan(t)
    t += ('"' if in_string else "") + "".join(reversed(stack))
    t = _remove_trailing_commas(t)
    return t if is_json(t) else None


class ResponseHealing(Plugin):
    id = "response-healing"
    name = "Response Healing"

    def post_response(self, state: PluginState, settings: dict[str, Any]) -> Flow:
        resp = state.response
        if resp is None:
            return Flow.CONTINUE
        text = resp.text
        if not text.strip() or is_json(text):
            return Flow.CONTINUE
        healed = heal(text)
        if healed is None:
            return Flow.CONTINUE
        if state.streamed:
            # The client already has the original bytes; the log says so
            # rather than recording a reply nobody received.
            state.warnings.append(
                "response-healing: the streamed reply is not valid JSON and was sent unchanged"
            )
            return Flow.CONTINUE
        first = next(i for i, p in enumerate(resp.content) if isinstance(p, Text))
        rest = [p for p in resp.content[first + 1 :] if not isinstance(p, Text)]
        resp.content = [*resp.content[:first], Text(healed), *rest]
        return Flow.MODIFIED
