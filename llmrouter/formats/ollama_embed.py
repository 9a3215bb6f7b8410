"""Ollama embeddings: the clients of POST /api/embed and of the older
POST /api/embeddings, and Ollama upstreams (always sent /api/embed). Pure.

    /api/embed       {"model", "input": str | [str], "truncate", "dimensions", "options", "keep_alive"}
                     -> {"model", "embeddings": [[...]], "total_duration", "load_duration", "prompt_eval_count"}
    /api/embeddings  {"model", "prompt", "options", "keep_alive"} -> {"embedding": [...]}

`options`, `keep_alive` and `truncate` reach Ollama upstreams only. Errors
are Ollama's `{"error": "..."}`.
"""

from __future__ import annotations

from typing import Any

from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall, dumps, ollama
from llmrouter.formats.ollama import _count
from llmrouter.formats.openai_embeddings import decode_vector, dropped, parse_texts
from llmrouter.formats.validate import body_object, take

FORMAT, KIND = "ollama", c.EMBEDDING
error_message = ollama.error_message
_PASSED = {"options": "object", "keep_alive": None, "truncate": "boolean"}  # for Ollama upstreams only


def error_body(err: errors.RouterError) -> dict[str, Any]:
    return {"error": err.message}


class _Client:
    """/api/embed (`legacy` False) or /api/embeddings (True)."""

    FORMAT, KIND = FORMAT, KIND
    error_body = staticmethod(error_body)

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy

    def parse_request(self, body: object) -> c.Request:
        body = body_object(body)
        model = take(body, "model", "string", required=True)
        if self.legacy:
            texts = [take(body, "prompt", "string", required=True)]
        else:
            texts = parse_texts(body.get("input"), "input")
        passed = {}
        for key, kind in _PASSED.items():
            value = take(body, key, kind) if kind else body.get(key)
            if value is not None:
                passed[key] = value
        return c.embedding_request(
            model, texts, dimensions=None if self.legacy else take(body, "dimensions", "positive"),
            extras={"ollama": passed}, client_format=FORMAT,
        )

    def render_response(self, resp: c.Embeddings, req: c.Request) -> dict[str, Any]:
        if self.legacy:
            return {"embedding": resp.vectors[0]}
        return {"model": resp.model or req.model, "embeddings": resp.vectors, **resp.durations,
                "prompt_eval_count": resp.usage.input_tokens}


embed_client, embeddings_client = _Client(legacy=False), _Client(legacy=True)


# --- upstream side -------------------------------------------------------------------


def build_request(req: c.Request, model: str, provider: Provider) -> UpstreamCall:
    body: dict[str, Any] = {"model": model, "input": req.inputs}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    body.update(req.extras.get("ollama", {}))
    headers = {"content-type": "application/json"}
    if provider.api_key:
        headers["authorization"] = f"Bearer {provider.api_key}"
    for name, value in provider.headers:
        headers[name.lower()] = value
    return UpstreamCall("/api/embed", list(headers.items()), dumps(body).encode(), dropped(req, "openai", "an ollama"))


def parse_response(data: bytes, req: c.Request) -> c.Embeddings:
    body = ollama.reply_object(data)
    vectors = body.get("embeddings")
    if not isinstance(vectors, list):
        raise errors.UpstreamProtocolError("ollama embed reply has no embeddings array")
    return c.Embeddings(
        model=str(body.get("model") or ""),
        vectors=[decode_vector(v) for v in vectors],
        usage=c.Usage(input_tokens=_count(body, "prompt_eval_count")),
        durations={k: _count(body, k) for k in ("total_duration", "load_duration") if k in body},
    )
