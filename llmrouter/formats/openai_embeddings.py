"""OpenAI embeddings (`/embeddings`), client side and upstream side. Pure.

Client: POST /v1/embeddings bodies in, `list` objects of `embedding`s out.
Upstream: {base_url}/embeddings. Vectors travel as JSON floats or as base64
of little-endian float32 (what the official SDK asks for by default); the
upstream is asked for the client's encoding, its reply is read in either, and
the client always gets the encoding it asked for. Never passed through raw:
a server that ignores `encoding_format` would otherwise hand a base64 client
floats. Embeddings never stream.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall, openai
from llmrouter.formats.validate import bad, body_object, parse_plugins, take

FORMAT, KIND = "openai", c.EMBEDDING
ENCODINGS = ("float", "base64")
error_body = openai.error_body
error_message = openai.error_message


def parse_texts(value: Any, field: str) -> list[str]:
    """A string or a non-empty array of strings (shared with the Ollama clients)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if value is None:
        raise errors.BadRequest(f"{field} is required", param=field)
    raise bad(field, "a string or a non-empty array of strings (token arrays are not supported)")


# --- client side -------------------------------------------------------------------


def parse_request(body: object) -> c.Request:
    body = body_object(body)
    model = take(body, "model", "string", required=True)
    encoding = take(body, "encoding_format", "string")
    if encoding is None:
        encoding = "float"
    elif encoding not in ENCODINGS:
        raise bad("encoding_format", 'one of "float", "base64"')
    user = take(body, "user", "string")
    return c.embedding_request(
        model,
        parse_texts(body.get("input"), "input"),
        dimensions=take(body, "dimensions", "positive"),
        encoding_format=encoding,
        plugins=parse_plugins(body),
        extras={"openai": {"user": user}} if user is not None else {},
        client_format=FORMAT,
    )


def encode_vector(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode_vector(value: Any) -> list[float]:
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b"\0"  # not base64: refused below
        if len(raw) % 4 == 0:
            return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    raise errors.UpstreamProtocolError("upstream embedding is neither an array of numbers nor base64 float32")


def render_response(resp: c.Embeddings, req: c.Request) -> dict[str, Any]:
    encode = encode_vector if req.encoding_format == "base64" else list
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(resp.vectors)],
        "model": resp.model or req.model,
        "usage": {"prompt_tokens": resp.usage.input_tokens, "total_tokens": resp.usage.input_tokens},
    }


# --- upstream side -------------------------------------------------------------------


def build_request(req: c.Request, model: str, provider: Provider) -> UpstreamCall:
    body: dict[str, Any] = {"model": model, "input": req.inputs, "encoding_format": req.encoding_format}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    body.update(req.extras.get("openai", {}))
    return openai.upstream_call("/embeddings", body, False, provider, dropped(req, "ollama", "an openai"))


def dropped(req: c.Request, fmt: str, upstream: str) -> list[str]:
    """Warnings for the fields only a `fmt` upstream takes (kept in extras[fmt])."""
    return [f"dropped embedding field {k!r} for {upstream} upstream" for k in req.extras.get(fmt, {})]


def parse_response(data: bytes, req: c.Request) -> c.Embeddings:
    obj = openai.reply_json(data)
    items = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise errors.UpstreamProtocolError("upstream embeddings reply has no data array")
    # The index says which input a vector belongs to; servers that omit it keep input order.
    ordered = sorted(enumerate(items), key=lambda pair: _index(pair[1], pair[0]))
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens")
    return c.Embeddings(
        model=obj["model"] if isinstance(obj.get("model"), str) else "",
        vectors=[decode_vector(item.get("embedding")) for _, item in ordered],
        usage=c.Usage(input_tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0),
    )


def _index(item: dict[str, Any], position: int) -> int:
    index = item.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position
