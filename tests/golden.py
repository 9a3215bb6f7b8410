"""Golden files under tests/wire/<format>/ and the JSON the format tests compare.

    assert_golden(pretty(tagged(request)), WIRE / "chat_request.canonical.json")

LLMROUTER_UPDATE_GOLDENS=1 rewrites the files instead of comparing (then review
the diff: a golden file is a statement about the wire format).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

WIRE = Path(__file__).parent / "wire"


def assert_golden(actual: str, path: Path) -> None:
    if os.environ.get("LLMROUTER_UPDATE_GOLDENS") == "1":
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"missing golden {path}; run with LLMROUTER_UPDATE_GOLDENS=1"
    assert actual == path.read_text(encoding="utf-8"), f"{path.name} differs from its golden file {path}"


def tagged(value: object, omit: tuple[str, ...] = ()) -> object:
    """Canonical values as plain JSON, each dataclass tagged with its class name
    (fields named in `omit`, e.g. the raw upstream bytes, left out)."""
    if dataclasses.is_dataclass(value):
        fields = {f.name: tagged(getattr(value, f.name), omit) for f in dataclasses.fields(value) if f.name not in omit}
        return {"_type": type(value).__name__, **fields}
    if isinstance(value, list):
        return [tagged(v, omit) for v in value]
    if isinstance(value, dict):
        return {k: tagged(v, omit) for k, v in value.items()}
    return value


def pretty(value: object) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False) + "\n"
