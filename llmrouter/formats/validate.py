"""Typed readers for client JSON bodies, shared by every client format. Pure.

One message style for every client: `<path> must be <what>` for a wrong type
and `<path> is required` for a missing field, where <path> names the field as
the client wrote it (`messages[2].content[0].text`) and is also the error's
`param`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmrouter import errors


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "string": (lambda v: isinstance(v, str), "a string"),
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),  # every upstream refuses an empty tool name
    "integer": (_is_int, "an integer"),
    "count": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "positive": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "boolean": (lambda v: isinstance(v, bool), "a boolean"),
    "array": (lambda v: isinstance(v, list), "an array"),
    "strings": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "an array of strings"),
    "object": (lambda v: isinstance(v, dict), "an object"),
}


def bad(path: str, expected: str) -> errors.BadRequest:
    return errors.BadRequest(f"{path} must be {expected}", param=path)


def where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def take(obj: dict[str, Any], key: str, kind: str, path: str = "", required: bool = False) -> Any:
    """obj[key] checked against `kind`; None when absent or null (unless required)."""
    value = obj.get(key)
    if value is None:
        if required:
            at = where(path, key)  # the path only for an error: a valid body costs no call for it
            raise errors.BadRequest(f"{at} is required", param=at)
        return None
    check, expected = KINDS[kind]
    if not check(value):
        raise bad(where(path, key), expected)
    return value


def object_at(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(path, "an object")
    return value


def body_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.BadRequest("request body must be a JSON object")
    return body


def parse_plugins(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The router's own `plugins` extension: objects with a string `id`."""
    items = take(body, "plugins", "array") or []
    for i, item in enumerate(items):
        take(object_at(item, f"plugins[{i}]"), "id", "string", f"plugins[{i}]", required=True)
    return [dict(item) for item in items]
