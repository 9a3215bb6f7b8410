"""The router application: routes, access rules, and the wiring of its parts.

`run(config)` starts everything (server, request log, discovery) and stops it
all on `App.shutdown()`; `App.handle` is the HTTP handler the server calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import secrets
import time
import urllib.parse
from typing import Any

import anyio
import anyio.abc

from llmrouter import errors, events, reload, router
from llmrouter.breaker import Breakers
from llmrouter.bus import EventBus, Subscription
from llmrouter.config import Config
from llmrouter.discovery import Discovery
from llmrouter.driver import Driver
from llmrouter.measure import Measurements
from llmrouter.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from llmrouter.ollama_api import OllamaAPI, is_ollama_path
from llmrouter.pipeline import CLIENT_FORMATS, Context, Exchange, handle
from llmrouter.reqlog import RequestLog
from llmrouter.server import HTTPRequest, ProtocolFailure, ResponseWriter, Server
from llmrouter.upstream import Upstreams

log = logging.getLogger("llmrouter")

# POST endpoints served by the pipeline -> their client format (pipeline.CLIENT_FORMATS).
CHAT_ROUTES = {
    "/v1/chat/completions": "openai", "/v1/messages": "anthropic", "/v1/responses": "responses",
    "/v1/completions": "openai-completions", "/v1/embeddings": "openai-embeddings",
    "/api/chat": "ollama", "/api/generate": "ollama-generate",
    "/api/embed": "ollama-embed", "/api/embeddings": "ollama-embeddings",
}
GET_ROUTES = ("/health", "/v1/models", "/metrics", "/dashboard", "/dashboard/events")
KEEPALIVE_EVERY = 15.0
SUBSCRIBER_BUFFER = 1024
FEED_SEND_TIMEOUT = 5.0  # a feed subscriber whose socket takes no data this long is cut off
FEED_SEND_BUFFER = 64 * 1024  # kernel send buffer per feed connection (the default autotunes to MBs)
FEED_BATCH = 256  # events written to a subscriber in one send, at most


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hosts = HostGuard(config.server.host, config.server.allowed_hosts)
        self.bus = EventBus(_sse)
        self.upstreams = Upstreams(config.providers)
        self.discovery = Discovery(config, self.upstreams)
        self.reqlog = RequestLog(config.logging.path) if config.logging.enabled else None
        self.metrics = Metrics(config.metrics.model_label)
        self.measurements = Measurements()  # handed to the Context; a reload carries its providers' entries over
        self.ctx = Context(
            config=config,
            discovered=self.discovery.models,
            rng=random.Random(),
            clock_ms=lambda: int(time.time() * 1000),
            new_seed=lambda: os.urandom(12).hex(),
            monotonic=time.monotonic,
            breakers=Breakers(config.server.breaker_failures, config.server.breaker_cooldown),
            measurements=self.measurements,
        )
        self.driver = self._driver(self.upstreams)
        self.ollama = OllamaAPI(self, time.time())
        self.server = Server(self.handle, self.render_failure, config.server)
        self._ids = itertools.count()
        self.stopped = anyio.Event()  # set once run() has drained and closed everything

    async def run(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serves until shutdown() has drained the server; reports the bound port."""
        try:
            # Bound first, outside any task group: a busy port is a plain OSError.
            port = await self.server.listen(self.config.server.host, self.config.server.port)
            async with anyio.create_task_group() as background:
                if self.reqlog is not None:
                    background.start_soon(self.reqlog.run)
                await self.discovery.first_pass()
                background.start_soon(self.discovery.refresh_forever)
                async with anyio.create_task_group() as serving:
                    await serving.start(self.server.serve)
                    task_status.started(port)
                background.cancel_scope.cancel()  # the request log flushes as it stops
            await self.upstreams.aclose()
        finally:
            self.stopped.set()

    def _driver(self, upstreams: Upstreams) -> Driver:
        return Driver(upstreams, self.bus.publish, self.reqlog.append if self.reqlog else None, self.ctx.clock_ms, self.observe)

    async def reconfigure(self, config: Config) -> None:
        """Hot reload (reload.py): `config` serves the requests that start from
        now on; running ones finish with the context, driver and pools they
        began with. State kept per provider carries over (reload.carry_over)."""
        old_config, old_upstreams = self.config, self.upstreams
        self.upstreams = Upstreams(config.providers, old_upstreams)
        circuits = reload.carry_over(old_config, config, self.ctx.breakers.circuits)
        breakers = Breakers(config.server.breaker_failures, config.server.breaker_cooldown, circuits)
        self.measurements = Measurements(reload.carry_over(old_config, config, self.measurements.providers))
        # in_flight moves along: requests decrement the context current when they end.
        self.ctx = dataclasses.replace(self.ctx, config=config, breakers=breakers, measurements=self.measurements, redact=None)
        self.driver = self._driver(self.upstreams)
        self.config = config
        self.hosts = HostGuard(config.server.host, config.server.allowed_hosts)
        self.server.limits = config.server  # for connections accepted from now on
        relist = self.discovery.reconfigure(config, self.upstreams)
        # Everything above happened between two awaits: no request saw half of it.
        await old_upstreams.retire(self.upstreams)
        await self.discovery.refresh_all(relist)

    def shutdown(self) -> None:
        """Graceful: stop accepting, end event feeds, let in-flight requests finish."""
        self.server.shutdown()
        self.bus.close_all()

    # --- HTTP ----------------------------------------------------------------

    async def handle(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        path, method = request.path, request.method
        client_format = CHAT_ROUTES.get(path)
        problem = self.access_problem(request, client_format)
        if client_format is not None:
            if problem is None and method != "POST":
                problem = errors.MethodNotAllowed(f"{method} is not allowed on {path}; use POST")
            # Refusals go through the pipeline too, so they are logged and published.
            await self.chat(request, writer, client_format, problem)
            return
        if is_ollama_path(path):  # Ollama's API beside chat: /, /api/tags, /api/show, ...
            await (self.respond_error(writer, "ollama", problem) if problem else self.ollama.handle(request, writer))
            return
        if problem is not None:
            await self.respond_error(writer, _error_format(path), problem)
            return
        if path in GET_ROUTES and (path.startswith("/dashboard") is False or self.config.server.dashboard):
            if method not in ("GET", "HEAD"):
                await self.respond_error(writer, "openai", errors.MethodNotAllowed(f"{method} is not allowed on {path}; use GET"), allow="GET, HEAD")
                return
            if path == "/health":
                await self.health(request, writer)
            elif path == "/v1/models":
                await self.models(writer)
            elif path == "/metrics":
                await self.render_metrics(writer)
            elif path == "/dashboard":
                await self.dashboard(writer)
            else:
                await self.event_feed(writer)
            return
        await self.respond_error(writer, _error_format(path), errors.NotFound(f"no route for {method} {path}"))

    def access_problem(self, request: HTTPRequest, client_format: str | None) -> errors.RouterError | None:
        """Refuses what a browser page or an unauthorised caller must not do."""
        if request.path == "/health" and "verbose" not in request.query:
            return None  # the bare liveness answer tells nobody anything
        key = self.config.server.api_key
        keyed = key is not None and _presents_key(request, key)
        # DNS rebinding: a page whose name the attacker points at 127.0.0.1 is
        # "same-origin" with the router; only the Host header gives it away.
        # A caller with the client key is no such page.
        host = request.headers.get("host", "")
        if not keyed and not self.hosts.allows(host):
            return errors.Forbidden(
                f"requests for host {host!r} are not allowed (DNS-rebinding guard): list it in server.allowed_hosts"
                + (" or present the client key" if key is not None else "")
            )
        origin = request.headers.get("origin")
        if origin and not _same_or_loopback_origin(origin, host):
            return errors.Forbidden(f"requests from origin {origin!r} are not allowed")
        if key is not None and not keyed:
            return errors.Unauthorized("missing or invalid API key")
        if client_format is not None and request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json" and not ctype.endswith("+json"):
                return errors.UnsupportedMediaType("the request body must be JSON with content-type: application/json")
        return None

    async def chat(self, request: HTTPRequest, writer: ResponseWriter, client_format: str, refusal: errors.RouterError | None) -> None:
        started = time.monotonic()
        number = next(self._ids)
        request_id = request.headers.get("x-request-id", "")
        # It goes back in a response header: printable ASCII only (h11 cannot send more).
        if not request_id or len(request_id) > 128 or not (request_id.isascii() and request_id.isprintable()):
            request_id = os.urandom(16).hex()
        ex = Exchange(
            id=number,
            request_id=request_id,
            client_format=client_format,
            headers=request.headers,
            body=request.body,
            record=events.Record(number, request_id, *_format_and_kind(client_format), endpoint=request.path),
            refusal=refusal,
            listened=self.bus.listeners > 0,
        )
        self.ctx.in_flight += 1
        try:
            await self.driver.run(handle(self.ctx, ex), ex, writer, started)
        finally:
            self.ctx.in_flight -= 1

    def observe(self, record: dict[str, Any]) -> None:
        """Feeds a request's `complete` record to the metrics and the live
        measurements, and publishes the providers' new figures."""
        self.metrics.observe(record)
        changed = self.measurements.observe(record)
        if not self.bus.listeners:
            return
        for name in changed:
            stats = self.measurements.get(name)
            if stats is not None:
                self.driver.publish(events.measured(record["ts_ms"], name, stats.to_json()))

    async def render_metrics(self, writer: ResponseWriter) -> None:
        now = self.ctx.monotonic()
        states = self.ctx.breakers.snapshot([p.name for p in self.config.providers], now)
        text = self.metrics.render(
            in_flight=self.ctx.in_flight,
            circuits={name: entry["state"] != "closed" for name, entry in states.items()},
            events_dropped=self.bus.dropped_total,
            gc_collections=[generation["collections"] for generation in gc.get_stats()],
            gc_frozen=gc.get_freeze_count(),
        )
        await writer.respond(200, [("content-type", METRICS_CONTENT_TYPE)], text.encode())

    async def health(self, request: HTTPRequest, writer: ResponseWriter) -> None:
        if "verbose" not in request.query:
            await writer.respond(200, [("content-type", "text/plain; charset=utf-8")], b"ok")
            return
        body = {
            "status": "ok",
            "in_flight": self.ctx.in_flight,
            "providers": [
                {
                    "name": p.name,
                    "format": p.format,
                    "cost_per_1m_tokens": p.cost_per_1m_tokens,
                    "quality": p.quality,
                    "latency_ms": p.latency_ms,
                    "throughput_tokens_per_sec": p.throughput_tokens_per_sec,
                }
                for p in self.config.providers
            ],
            "discovered": {k: sorted(v) for k, v in self.discovery.models.items()},
            "events": self.bus.statistics(),
            "breakers": self.ctx.breakers.snapshot([p.name for p in self.config.providers], self.ctx.monotonic()),
            # Model names come from clients: only where the feed is open too (no client key).
            "measurements": self.measurements.to_json(),
            # Collector pauses show in the tail latency; startup objects are frozen out of them (`serve`).
            "gc": {"collections": [generation["collections"] for generation in gc.get_stats()], "frozen_objects": gc.get_freeze_count()},
        }
        await writer.respond(200, [("content-type", "application/json")], json.dumps(body).encode())

    async def models(self, writer: ResponseWriter) -> None:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": provider}
            for model, provider in router.available_models(self.config, self.discovery.models)
        ]
        body = json.dumps({"object": "list", "data": data}).encode()
        await writer.respond(200, [("content-type", "application/json")], body)

    async def dashboard(self, writer: ResponseWriter) -> None:
        from importlib.resources import files

        page = files("llmrouter").joinpath("dashboard.html").read_bytes()
        await writer.respond(200, [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-cache")], page)

    async def event_feed(self, writer: ResponseWriter) -> None:
        """SSE: `event: <type>` + `data: <json>` per event; a comment after
        KEEPALIVE_EVERY seconds (up to a third more) with nothing sent."""
        with self.bus.subscribe(SUBSCRIBER_BUFFER) as sub:
            writer.limit_send_buffer(FEED_SEND_BUFFER)
            await writer.start(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache"), ("x-accel-buffering", "no")])
            await writer.send(b": connected\n\n")
            quiet = _QuietTimer(sub, KEEPALIVE_EVERY)
            try:
                while True:
                    await sub.wait()
                    # Whatever is queued goes out in one write: one send per
                    # burst, not per event, for each subscriber.
                    frames = sub.take(FEED_BATCH)
                    if frames:
                        dropped = sub.take_dropped()
                        if dropped:
                            frames.insert(0, _sse({"type": "dropped", "v": events.SCHEMA_VERSION, "count": dropped}))
                        data = b"".join(frames)
                    elif sub.closed:
                        break
                    elif quiet.due:
                        data = b": keep-alive\n\n"
                    else:
                        continue
                    quiet.sent()
                    # A subscriber that stopped reading (a frozen tab, a suspended
                    # laptop) would hold its connection forever: cut it off.
                    try:
                        await writer.send(data, FEED_SEND_TIMEOUT)
                    except TimeoutError:
                        await writer.abort()
                        return
            finally:
                quiet.cancel()
            await writer.end()

    async def respond_error(self, writer: ResponseWriter, client_format: str, err: errors.RouterError, allow: str | None = None) -> None:
        body = json.dumps(CLIENT_FORMATS[client_format].error_body(err)).encode()
        headers = [("content-type", "application/json")]
        if allow:
            headers.append(("allow", allow))
        await writer.respond(err.status, headers, body)

    def render_failure(self, failure: ProtocolFailure) -> tuple[list[tuple[str, str]], bytes]:
        err = _status_error(failure.status, failure.message)
        return [("content-type", "application/json")], json.dumps(CLIENT_FORMATS[_error_format(failure.path)].error_body(err)).encode()


class _QuietTimer:
    """One repeating timer per feed, not one per wait: it ticks every third of
    `every` seconds and, once nothing was sent for `every`, sets `due` and
    wakes the feed."""

    def __init__(self, sub: Subscription, every: float) -> None:
        self._sub = sub
        self._every = every
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()
        self.due = False
        self._timer = self._loop.call_later(every / 3, self._tick)

    def _tick(self) -> None:
        if self._loop.time() - self._last_sent >= self._every:
            self.due = True
            self._sub.wake()
        self._timer = self._loop.call_later(self._every / 3, self._tick)

    def sent(self) -> None:
        self._last_sent = self._loop.time()
        self.due = False

    def cancel(self) -> None:
        self._timer.cancel()


def _error_format(path: str) -> str:
    """The error shape for a path that is not a chat route: Anthropic's under
    /v1/messages, Ollama's under /api/."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "ollama" if path.startswith("/api/") else "openai"


def _status_error(status: int, message: str) -> errors.RouterError:
    for cls in (errors.BadRequest, errors.RequestTimeout, errors.PayloadTooLarge, errors.HeadersTooLarge, errors.NotFound):
        if cls.status == status:
            return cls(message)
    err = errors.BadRequest(message)
    err.status = status
    return err


def _format_and_kind(client_format: str) -> tuple[str, str]:
    """The wire format and request kind an endpoint's record shows."""
    module = CLIENT_FORMATS[client_format]
    return getattr(module, "FORMAT", client_format), getattr(module, "KIND", "chat")


def _sse(event: dict[str, Any], text: str | None = None) -> bytes:
    if text is None:
        text = events.dumps(event)
    return b"event: " + event["type"].encode() + b"\ndata: " + text.encode() + b"\n\n"


def _presents_key(request: HTTPRequest, key: str) -> bool:
    presented = request.headers.get("x-api-key") or _bearer(request.headers.get("authorization", ""))
    if not presented and request.path.startswith("/dashboard"):
        # A browser cannot add headers to a page load or an EventSource.
        presented = urllib.parse.parse_qs(request.query).get("api_key", [None])[0]
    return bool(presented) and secrets.compare_digest(presented.encode(), key.encode())


class HostGuard:
    """Which Host headers the router answers: loopback addresses, localhost,
    the address it listens on and `server.allowed_hosts` (`"*"`: any)."""

    def __init__(self, listen: str, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.names = {_normal_host(name) for name in ("localhost", listen, *allowed)}
        self._answers: dict[str, bool] = {}  # the few Host values clients send, checked once each

    def allows(self, header: str) -> bool:
        answer = self._answers.get(header)
        if answer is None:
            answer = self._check(header)
            if len(self._answers) < 256:  # Host values come from clients: bound what they can make us keep
                self._answers[header] = answer
        return answer

    def _check(self, header: str) -> bool:
        if self.any:
            return True
        match = _HOST_HEADER.match(header)
        if match is None:
            return False
        name = _normal_host(match.group(1) or match.group(2))
        if not name:
            return False
        if name in self.names:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False


# host[:port] or [IPv6][:port]
_HOST_HEADER = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([^\[\]:]*))(?::[0-9]*)?\Z")


def _normal_host(name: str) -> str:
    name = name.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(name))  # one spelling per address (::1 = 0:0::1)
    except ValueError:
        return name


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _same_or_loopback_origin(origin: str, host: str) -> bool:
    scheme, _, rest = origin.partition("://")
    if scheme not in ("http", "https"):
        return False
    if rest == host:
        return True
    if rest.startswith("["):  # an IPv6 literal, then nothing but an optional port
        hostname, _, port = rest.partition("]")
        hostname += "]"
    else:
        hostname, _, port = rest.partition(":")
        port = ":" + port if port else ""
    if port and not (port[0] == ":" and port[1:].isdigit()):
        return False
    return hostname in ("127.0.0.1", "localhost", "[::1]")

