"""`response-healing`: repair almost-JSON replies (post_response).

`heal()` keeps the original's steps and its results on its six test vectors,
with three of its documented false results fixed (see docs/plugins.md):
  - an array without strings or objects that reads as prose is left alone:
    inside a sentence ("see [1] for details" was "healed" to `[1]`), or at
    the start of a line with words after it ("[1] Smith et al.");
  - a value that starts its line (or follows a colon) and never closes is
    first completed whole (the original's cut is the fallback), so
    `{"a": [1], "b": {"c": 1` is completed instead of truncated to
    `{"a": [1]}` at the last closing bracket;
  - trailing commas are removed after balancing and outside strings only, so
    `{"a": 1,` heals and `"x,}"` inside a string is left alone.
"""

from __future__ import annotations

import json
from typing import Any

from ..canonical import CHAT, Text
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


def _line_head(t: str, i: int) -> str:
    return t[t.rfind("\n", 0, i) + 1 : i].strip()


def _line_tail(t: str, i: int) -> str:
    nl = t.find("\n", i)
    return t[i + 1 : nl if nl >= 0 else len(t)].strip()


def _trimmed(t: str) -> list[str]:
    """Where the JSON may be in `t`, most likely first (prose cut away)."""
    starts = [i for i in (t.find("{"), t.find("[")) if i >= 0]
    if not starts:
        return [t]
    s = min(starts)
    head = _line_head(t, s)
    stack, _, k = _scan(t, s, stop_when_closed=True)
    if t[s] == "[" and _citation(t, s, k, head, closed=not stack):
        return [t]
    e = max(t.rfind("}"), t.rfind("]"))
    cut = t[s : e + 1] if e >= s else t  # the original's: up to the last closer
    if stack and (not head or head.endswith(":")):
        # The value never closes (truncated output): complete all of it, and
        # only if that fails fall back to the original's cut.
        return [t[s:], cut]
    return [cut]


def _citation(t: str, s: int, k: int, head: str, closed: bool) -> bool:
    """An array that reads as prose: it holds no string or object, and it sits
    inside a sentence ("see [1] for details") or is followed by words on its
    one line ("[1] Smith et al.")."""
    body = t[s : k + 1]
    if '"' in body or "{" in body:
        return False
    if head and not head.endswith(":"):
        return True
    return not head and closed and "\n" not in body and bool(_line_tail(t, k))


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
    for t in _trimmed(_strip_fence(text.strip())):
        stack, in_string, _ = _scan(t)
        t = _remove_trailing_commas(t + ('"' if in_string else "") + "".join(reversed(stack)))
        if is_json(t):
            return t
    return None


class ResponseHealing(Plugin):
    id = "response-healing"
    name = "Response Healing"

    def post_response(self, state: PluginState, settings: dict[str, Any]) -> Flow:
        resp = state.response
        # A text completion is a piece of code or prose to insert as is (an
        # editor's `{"a": 1,` is no broken JSON): only chat replies are healed.
        if resp is None or state.request.kind != CHAT:
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
