"""Request classifiers: turn a request into routing tags.

A classifier is a function `(req, settings) -> list[str]`. `classify` runs the
enabled ones in registry order and merges their tags with the tags `on_start`
plugins already put on the request. Pure: no I/O; problems come back as
warning strings for the caller to log.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

from .canonical import Request, Text
from .config import Entry

SCANS = ("all", "last_user")


def _haystack(req: Request, scan: str) -> str:
    if scan == "last_user":
        # The newest user turn that has text (an agent's last "user" turn is
        # often only tool results); the system prompt is not scanned.
        return req.last_user_text.lower()
    # The original's haystack: system, then " " + text of every turn, any role.
    # Only text parts count: image bytes or tool payloads must not tag.
    pieces = [req.system or ""]
    for message in req.messages:
        texts = [p.text for p in message.content if isinstance(p, Text)]
        pieces.append(" ".join(texts))
    return " ".join(pieces).lower()


@functools.lru_cache(maxsize=1024)
def _word_pattern(keyword: str) -> re.Pattern[str] | None:
    words = keyword.split()
    if not words:
        return None
    # Inner whitespace matches any run of whitespace; a boundary is required
    # only at an end that is a word character, so "c++" and ".net" still match.
    body = r"\s+".join(re.escape(w) for w in words)
    head = r"(?<!\w)" if re.match(r"\w", words[0]) else ""
    tail = r"(?!\w)" if re.search(r"\w$", words[-1]) else ""
    return re.compile(head + body + tail)


def _hits(keyword: str, haystack: str, word_boundary: bool) -> bool:
    keyword = keyword.lower()
    if not keyword:
        return False  # the original let "" match every request
    if not word_boundary:
        return keyword in haystack
    pattern = _word_pattern(keyword)
    return pattern is not None and pattern.search(haystack) is not None


def keyword(req: Request, settings: dict[str, Any]) -> list[str]:
    """Tags whose keywords occur in the request, in ascending tag-name order."""
    tags = settings.get("tags")
    if not isinstance(tags, dict):
        return []
    scan = settings.get("scan", "all")
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {', '.join(SCANS)}, not {scan!r}")
    word_boundary = settings.get("word_boundary", False)
    if not isinstance(word_boundary, bool):
        raise ValueError(f"word_boundary must be true or false, not {word_boundary!r}")
    haystack = _haystack(req, scan)
    out = []
    for tag in sorted(tags):
        words = tags[tag]
        if not isinstance(words, list):
            continue
        if any(isinstance(w, str) and _hits(w, haystack, word_boundary) for w in words):
            out.append(tag)
    return out


Classifier = Callable[[Request, "dict[str, Any]"], "list[str]"]

# Registry order is the order results are merged in.
REGISTRY: dict[str, Classifier] = {"keyword": keyword}


def classify(req: Request, entries: dict[str, Entry]) -> tuple[list[str], list[str]]:
    """Run every enabled classifier; return (tags, warnings).

    The tags start with those already on `req.tags` (set by `on_start`
    plugins), then each classifier's in registry order; duplicates keep their
    first position. A classifier that raises is skipped with a warning. The
    request is not changed: the caller stores the tags on it.
    """
    tags: list[str] = list(req.tags)
    warnings: list[str] = []
    for cid, run in REGISTRY.items():
        entry = entries.get(cid)
        if entry is None or not entry.enabled:
            continue
        try:
            tags.extend(run(req, entry.settings))
        except Exception as exc:  # a broken classifier must never fail a request
            warnings.append(f"classifier '{cid}' failed: {exc}")
    return list(dict.fromkeys(tags)), warnings
