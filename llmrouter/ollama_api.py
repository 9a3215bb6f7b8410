"""Ollama's API beside chat and generate: models, model details, version, probes.

Apps written for Ollama probe `/` and `/api/version`, list `/api/tags` and
ask `/api/show` before they chat; these answers let them use llmrouter as if
it were Ollama. Management endpoints (pull, push, create, copy, delete,
blobs) change an Ollama's model store: they are refused with 501 and never
forwarded. /api/chat and /api/generate go through the pipeline (app.py).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Protocol

import anyio

from llmrouter import canonical, errors, router
from llmrouter.config import Config, Provider
from llmrouter.discovery import Discovery
from llmrouter.formats import UpstreamCall, ollama_client
from llmrouter.pipeline import Context
from llmrouter.server import HTTPRequest, ResponseWriter
from llmrouter.upstream import Upstreams

log = logging.getLogger("llmrouter")

# The Ollama release whose API this module answers as (apps gate features on it).
VERSION = "0.12.0"
MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/")
SHOW_REPLY_LIMIT = 16 * 1024 * 1024  # verbose answers list the tokenizer's vocabulary
RUNNING = "Ollama is running"


def is_ollama_path(path: str) -> bool:
    return path == "/" or path.startswith("/api/")


class Live(Protocol):
    """What the app holds now: a reload swaps these, so they are read per request."""

    config: Config
    discovery: Discovery
    upstreams: Upstreams
    ctx: Context


class OllamaAPI:
    def __init__(self, app: Live, now: float) -> None:
        self.app = app
        self.started_at = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def handle(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        path, method = request.path, request.method
        if path.startswith(MANAGEMENT) or path in (p.rstrip("/") for p in MANAGEMENT):
            name = path.removeprefix("/api/").split("/")[0]
            await self.error(writer, errors.RouterError(f"/api/{name} is not supported by llmrouter: it manages no model store"), 501)
            return
        gets = {"/": self.root, "/api/version": self.version, "/api/tags": self.tags, "/api/ps": self.ps}
        if path in gets:
            if method not in ("GET", "HEAD"):
                await self.error(writer, errors.MethodNotAllowed(f"{method} is not allowed on {path}; use GET"))
                return
            await gets[path](request, writer)
        elif path == "/api/show":
            if method != "POST":
                await self.error(writer, errors.MethodNotAllowed(f"{method} is not allowed on {path}; use POST"))
                return
            await self.show(request, writer)
        else:
            await self.error(writer, errors.NotFound(f"no route for {method} {path}"))

    async def error(self, writer: ResponseWriter, err: errors.RouterError, status: int | None = None) -> None:
        await _json(writer, ollama_client.error_body(err), status or err.status)

    async def root(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        if "text/html" in request.headers.get("accept", "") and self.app.config.server.dashboard:
            page = f'<!doctype html><title>llmrouter</title><p>{RUNNING} (llmrouter). <a href="/dashboard">Dashboard</a></p>'
            await writer.respond(200, [("content-type", "text/html; charset=utf-8")], page.encode())
            return
        await writer.respond(200, [("content-type", "text/plain; charset=utf-8")], RUNNING.encode())

    async def version(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        await _json(writer, {"version": VERSION})

    async def ps(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        await _json(writer, {"models": []})  # what an upstream has loaded is its own business

    async def tags(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        names = dict.fromkeys(model for model, _ in router.available_models(self.app.config, self.app.discovery.models))
        await _json(writer, {"models": [self.model_entry(name) for name in names]})

    def model_entry(self, name: str) -> dict[str, Any]:
        return {"name": name, "model": name, "modified_at": self.started_at, "size": 0, "digest": "", "details": _details()}

    async def show(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            await self.error(writer, errors.BadRequest(f"request body is not valid JSON: {exc}"))
            return
        name = body.get("model") or body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            await self.error(writer, errors.BadRequest("model must be a non-empty string", param="model"))
            return
        try:
            app = self.app
            decision = next(router.decisions(canonical.Request(model=name, messages=[]), app.config, app.discovery.models, app.ctx.rng, app.ctx.measurements))
        except (errors.RouterError, StopIteration):
            await self.error(writer, errors.NotFound(f"model '{name}' not found"))
            return
        if decision.provider.format == "ollama":
            await self.proxy_show(writer, decision.provider, {**body, "model": decision.model})
            return
        await _json(writer, {
            "modelfile": "", "parameters": "", "template": "", "details": _details(),
            "model_info": {}, "capabilities": capabilities(decision.provider), "modified_at": self.started_at,
        })

    async def proxy_show(self, writer: ResponseWriter, provider: Provider, body: dict[str, Any]) -> None:
        """The Ollama upstream's own answer, status and all (the address is the configured one)."""
        headers = [("content-type", "application/json"), ("accept", "application/json")]
        if provider.api_key:
            headers.append(("authorization", f"Bearer {provider.api_key}"))
        headers.extend(provider.headers)
        try:
            with anyio.fail_after(provider.total_timeout):
                stream = await self.app.upstreams.open(provider, UpstreamCall("/api/show", headers, json.dumps(body).encode()))
                try:
                    data = await stream.read_all(SHOW_REPLY_LIMIT)
                finally:
                    await stream.aclose()
        except TimeoutError:
            await self.error(writer, errors.UpstreamTimeout(f"provider '{provider.name}': no answer to /api/show"))
            return
        except errors.RouterError as exc:
            await self.error(writer, errors.UpstreamError(f"provider '{provider.name}': {exc.message}"))
            return
        await writer.respond(stream.status, [("content-type", "application/json; charset=utf-8")], data)


def capabilities(provider: Provider) -> list[str]:
    """What a non-Ollama provider's models can do, as far as its format tells:
    every chat API takes tools; every Claude model and OpenAI's own API take images."""
    out = ["completion", "tools"]
    if provider.format == "anthropic" or "//api.openai.com" in provider.base_url:
        out.append("vision")
    if provider.format == "anthropic":
        out.append("thinking")
    return out


def _details() -> dict[str, Any]:
    return {"parent_model": "", "format": "", "family": "", "families": None, "parameter_size": "", "quantization_level": ""}


async def _json(writer: ResponseWriter, body: dict[str, Any], status: int = 200) -> None:
    await writer.respond(status, [("content-type", "application/json; charset=utf-8")], json.dumps(body).encode())
