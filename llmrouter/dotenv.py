"""A small `.env` reader: KEY=VALUE lines loaded into the environment at start.

The syntax is the common subset that shells, docker and systemd agree on:

    # a comment line
    export OPENAI_API_KEY=sk-...      # `export ` is optional
    NAME = plain value                # a comment after an unquoted value
    GREETING="two\\nlines"             # double quotes: \\n \\t \\r \\" \\\\ escapes
    LITERAL='no $expansion, no \\n'    # single quotes: taken as written

A `#` starts a comment only at the start of a line or after whitespace, so
`KEY=a#b` keeps `a#b`. Lines that do not fit (no `=`, a bad name, an unclosed
quote) are skipped rather than fatal: a stray line must not stop the router.
Variables already in the environment always win over the file.
"""

from __future__ import annotations

import os
import re
from typing import MutableMapping

_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)\Z", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _only_comment(rest: str) -> bool:
    """True when what follows a closing quote is blank or a comment."""
    rest = rest.strip()
    return not rest or rest.startswith("#")


def _double_quoted(text: str) -> str | None:
    """Decode `"..."` at the start of `text`; None when it is not closed."""
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            # Unknown escapes stay as written, as shells do.
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        if ch == '"':
            return "".join(out) if _only_comment(text[i + 1 :]) else None
        out.append(ch)
        i += 1
    return None


def _value(raw: str) -> str | None:
    if raw.startswith('"'):
        return _double_quoted(raw)
    if raw.startswith("'"):
        end = raw.find("'", 1)
        if end < 0 or not _only_comment(raw[end + 1 :]):
            return None
        return raw[1:end]
    if raw.startswith("#"):
        return ""  # `KEY= # note`: the comment follows an empty value
    return re.split(r"\s#", raw, maxsplit=1)[0].rstrip()


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse `.env` text into a dict; later lines win over earlier ones."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            continue
        value = _value(match.group(2))
        if value is not None:
            result[match.group(1)] = value
    return result


def load_dotenv(
    path: str = ".env", environ: MutableMapping[str, str] = os.environ
) -> list[str]:
    """Set the variables of the file at `path` that `environ` does not have yet.

    Returns the names it set, in file order. A missing file is not an error
    (returns []); any other OSError (a directory, no permission) is raised so
    the caller can report it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    # utf-8-sig drops the BOM some Windows editors write.
    values = parse_dotenv(data.decode("utf-8-sig", errors="replace"))
    added = []
    for name, value in values.items():
        if name not in environ:
            environ[name] = value
            added.append(name)
    return added
