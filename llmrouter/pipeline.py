"""The request pipeline: one synchronous generator per request. Pure.

    on_start plugins → classifiers → pre_request plugins → router rules
    → provider call (with fallback) → post_response plugins → on_end plugins

`handle` yields commands (llmrouter.commands) for the driver to perform and
receives their replies, so the whole flow, fallback included, reads like
blocking code and is testable without sockets. It fills `Exchange.record`;
the driver publishes that record as the one `complete` event however the
request ends (errors and disconnects included).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmrouter import breaker, canonical, classifiers, errors, events, formats, plugins, router
from llmrouter.commands import (
    AbortResponse,
    Command,
    EndResponse,
    Log,
    OpenUpstream,
    Publish,
    ReadUpstream,
    ReadUpstreamBody,
    SendBody,
    StartResponse,
    UpstreamHead,
)
from llmrouter.config import Config, Provider
from llmrouter.measure import Measurements
from llmrouter.redact import Redactor
from llmrouter.formats import (
    anthropic, ollama, ollama_client, ollama_embed, ollama_generate, openai, openai_completions, openai_embeddings,
    responses,
)

# Client endpoints by name (app.py maps paths to these). A module that serves
# another kind than chat says so in KIND, and its wire format in FORMAT.
CLIENT_FORMATS: dict[str, formats.ClientFormat | formats.EmbeddingClientFormat] = {
    "openai": openai, "anthropic": anthropic, "responses": responses,
    "openai-completions": openai_completions, "openai-embeddings": openai_embeddings,
    "ollama": ollama_client.CHAT, "ollama-generate": ollama_client.GENERATE,
    "ollama-embed": ollama_embed.embed_client, "ollama-embeddings": ollama_embed.embeddings_client,
}
UPSTREAM_FORMATS: dict[str, formats.UpstreamFormat] = {"openai": openai, "anthropic": anthropic, "ollama": ollama}
# Upstream codecs per request kind and provider format; a format missing here
# has no such API (Anthropic has neither completions nor embeddings).
KIND_UPSTREAMS: dict[str, dict[str, Any]] = {  # UpstreamFormat; EmbeddingUpstreamFormat for embeddings
    canonical.CHAT: UPSTREAM_FORMATS,
    canonical.COMPLETION: {"openai": openai_completions, "ollama": ollama_generate},
    canonical.EMBEDDING: {"openai": openai_embeddings, "ollama": ollama_embed},
}

MAX_REPLY_BYTES = 64 * 1024 * 1024
PING_AFTER = 10.0  # seconds of upstream silence before a keep-alive goes to the client
# Client headers forwarded to upstreams of the client's own format.
FORWARDED_HEADERS = ("anthropic-beta",)

Pipeline = Generator[Command, Any, None]


class _FirstDraw:
    """The default rng (tests): the random rule's draws follow the candidates' order."""

    def randrange(self, stop: int, /) -> int:
        return 0


def _counting_seeds() -> Callable[[], str]:
    """Deterministic id seeds (tests); app.py passes random ones."""
    count = itertools.count(1)
    return lambda: f"{next(count):08x}"


@dataclass
class Context:
    """What every request shares: immutable config plus live routing state."""

    config: Config
    discovered: Mapping[str, Collection[str]] = field(default_factory=dict)
    rng: router.Rng = field(default_factory=_FirstDraw)
    clock_ms: Callable[[], int] = lambda: 0  # wall clock, epoch ms
    new_seed: Callable[[], str] = field(default_factory=_counting_seeds)  # a hex string, unique per request
    monotonic: Callable[[], float] = lambda: 0.0
    in_flight: int = 0
    breakers: breaker.Breakers = field(default_factory=breaker.Breakers)
    measurements: Measurements = field(default_factory=Measurements)  # live figures the rules rank by
    # Removes configured keys from upstream error text (built from the config when not given).
    redact: Callable[[str], str] | None = None

    def __post_init__(self) -> None:
        if self.redact is None:
            keys = [p.api_key for p in self.config.providers] + [self.config.server.api_key]
            self.redact = Redactor(keys)


@dataclass
class Exchange:
    """One client request and what has happened to it so far."""

    id: int
    request_id: str
    client_format: str
    headers: Mapping[str, str]
    body: bytes
    record: events.Record
    response_started: bool = False
    error_sent: bool = False  # an in-band error already went to the client
    encoder: formats.ClientEncoder | None = None  # the client-format stream encoder, once streaming
    collector: canonical.ResponseCollector | None = None  # what a stream carried so far
    raw_reply: bytes | None = None  # an upstream body forwarded unchanged
    refusal: errors.RouterError | None = None  # refused before routing (access rules, method)
    first_chunk_at: float | None = None  # ctx.monotonic() at the current attempt's first stream chunk
    # Someone listens to the live feed (app.py asks the bus as the request
    # starts): only then are its start, classified and routed events built.
    listened: bool = True


def handle(ctx: Context, ex: Exchange) -> Pipeline:
    client = CLIENT_FORMATS[ex.client_format]
    rec = ex.record
    try:
        yield from _serve(ctx, ex, client)
    except errors.RouterError as err:
        rec.error, rec.error_code = err.message, err.code
        if ex.collector is not None:  # keep what was streamed before the failure
            partial = ex.collector.response()
            rec.response, rec.usage = canonical.response_to_json(partial), partial.usage.to_json()
        if not ex.response_started:
            rec.status = err.status
            yield from _send_error(ex, client, err)
        else:
            rec.status = 200  # the status line the client already has
            assert ex.encoder is not None  # a response starts only with a stream's first frame or a whole body
            if not ex.error_sent:
                yield SendBody(ex.encoder.error(canonical.StreamError(err.message, err.status, err.kind)))
            # Cut the body short (no terminating chunk) unless the format's
            # in-band error is itself a terminal event its clients wait for.
            yield EndResponse() if ex.encoder.end_after_error else AbortResponse()


def _serve(ctx: Context, ex: Exchange, client: formats.ClientFormat) -> Pipeline:
    rec = ex.record
    body, problem = _decode_json(ex.body)
    if isinstance(body, dict):
        model = body.get("model")
        rec.requested_model = model if isinstance(model, str) else ""
        rec.stream = body.get("stream", getattr(client, "STREAMS_BY_DEFAULT", False)) is True  # Ollama streams by default
    if ex.listened:
        yield Publish(events.start(ex.id, ctx.clock_ms(), rec.requested_model, ctx.in_flight, ex.request_id, rec.client_format, rec.stream, rec.kind))
    if ex.refusal is not None:
        raise ex.refusal
    if problem:
        raise errors.BadRequest(problem)

    req = client.parse_request(body)
    rec.kind = req.kind  # an endpoint may serve more than one kind (Ollama's /api/generate with a suffix)
    # Formats read no clock and no randomness: the time and the seed of every
    # id they make come with the request.
    req.now, req.id_seed = ctx.clock_ms() / 1000, ctx.new_seed()
    yield from _log_all(req.warnings, "debug")
    req.extras["headers"] = {h: ex.headers[h] for h in FORWARDED_HEADERS if h in ex.headers}
    log_inputs = ctx.config.logging.embedding_inputs
    _record_prompt(rec, req, log_inputs)
    active, warnings = plugins.resolve(ctx.config.plugins, req.plugins)
    if warnings:
        yield from _log_all(warnings)
    state = plugins.PluginState(request=req, streamed=req.stream)

    flow = yield from _stage("on_start", active, state, rec)
    if flow == plugins.CONTINUE:
        tags, warnings = classifiers.classify(req, ctx.config.classifiers)
        if warnings:
            yield from _log_all(warnings)
        req.tags = tags
        rec.tags = list(tags)
        if ex.listened:
            yield Publish(events.classified(ex.id, ctx.clock_ms(), tags))
        flow = yield from _stage("pre_request", active, state, rec)
        _record_prompt(rec, req, log_inputs)  # as the plugins left it
        if flow == plugins.CONTINUE and state.response is None:
            yield from _route(ctx, ex, client, req, state)

    if state.response is None:
        raise errors.RouterError("pipeline stopped without producing a response")
    if not rec.attempts:
        rec.provider = "plugin"  # a plugin answered
        rec.sent_model = req.model
        if req.stream:
            yield from _stream_reply(ex, client, req, state.response)

    # Reply-side plugins see text replies only, not embedding vectors (docs/plugins.md).
    if req.kind != canonical.EMBEDDING:
        healed = yield from _stage("post_response", active, state, rec)
        if healed == plugins.CONTINUE:
            yield from _stage("on_end", active, state, rec)
    resp = state.response
    rec.response = canonical.response_to_json(resp)
    rec.usage = resp.usage.to_json()
    rec.status = 200
    if req.stream:
        # Only now, with the attempt, the breaker and the record done: a
        # client that hangs up as the stream ends loses none of them.
        yield EndResponse()
        return
    if ex.raw_reply is not None and not state.response_modified:
        body_bytes = ex.raw_reply
    else:
        body_bytes = dump_json(client.render_response(resp, req))
    headers = [("content-type", "application/json"), ("content-length", str(len(body_bytes))), *_router_headers(ex, rec)]
    yield StartResponse(200, headers)
    ex.response_started = True
    yield SendBody(body_bytes)
    yield EndResponse()


def _route(ctx: Context, ex: Exchange, client: formats.ClientFormat, req: canonical.Request, state: plugins.PluginState) -> Pipeline:
    """Tries providers in the router's order until one answers (fallback)."""
    rec = ex.record
    server = ctx.config.server
    max_attempts = server.max_attempts if server.fallback_on_error else 1
    tried: set[str] = set()
    skipped: list[str] = []  # providers whose circuit is open
    unable: dict[str, str] = {}  # provider -> its format, which has no API for this kind: never sent one
    last_error: errors.UpstreamError | None = None
    for decision in router.decisions(req, ctx.config, ctx.discovered, ctx.rng, ctx.measurements):
        name = decision.provider.name
        if name in tried or name in skipped or name in unable:
            continue
        if not serves(decision.provider, req.kind):
            unable[name] = decision.provider.format  # on to the next decision, as for an open circuit
            continue
        if len(tried) >= max_attempts:
            break
        allowed, change = ctx.breakers.allow(name, ctx.monotonic())
        if change is not None:
            yield _breaker_event(ctx, change)
        if not allowed:  # failing repeatedly: on to the next decision at once
            skipped.append(name)
            continue
        if last_error is not None:  # said once the next provider is known (there may be none)
            yield Log("warning", f"request {ex.request_id}: {last_error.message}; trying provider '{name}'")
        tried.add(name)
        rec.provider, rec.sent_model = name, decision.model
        if ex.listened:
            yield Publish(events.routed(ex.id, ctx.clock_ms(), name, decision.model, len(tried)))
        attempt = events.Attempt(name, decision.model)
        rec.attempts.append(attempt)
        started = ctx.monotonic()
        ctx.measurements.started(name, decision.model)
        try:
            yield from _call(ctx, ex, client, req, state, decision)
        except errors.UpstreamError as err:
            attempt.outcome, attempt.status, attempt.error = "error", err.status, err.message
            attempt.duration_ms = round((ctx.monotonic() - started) * 1000)
            change = _breaker_outcome(ctx, name, err.status)
            if change is not None:
                yield _breaker_event(ctx, change)
            if ex.response_started or not err.retryable:
                raise
            last_error = err
            continue
        finally:
            ctx.breakers.abandon(name)  # ended without an outcome (client gone): free a probe slot
            ctx.measurements.ended(name, decision.model)
        attempt.outcome, attempt.status = "ok", 200
        attempt.duration_ms = round((ctx.monotonic() - started) * 1000)
        if req.stream and ex.first_chunk_at is not None:
            attempt.first_token_ms = round((ex.first_chunk_at - started) * 1000)
        change = ctx.breakers.success(name)
        if change is not None:
            yield _breaker_event(ctx, change)
        return
    if last_error is not None:
        raise last_error
    # router.decisions yields a decision or raises NoRoute itself, and each
    # decision was tried (failing above), skipped (circuit open) or unable.
    if skipped:
        wait = ctx.breakers.retry_in(skipped, ctx.monotonic())
        raise errors.CircuitOpen(
            f"provider(s) {', '.join(skipped)} failed repeatedly and are skipped for now; retry in {wait:.0f}s",
            retry_after=breaker.retry_after_header(wait),
        )
    raise kind_not_supported(req, unable)


def serves(provider: Provider, kind: str) -> bool:
    """Whether `provider`'s format has an API for requests of `kind`; routing
    (and `llmrouter replay`) passes over a provider that has none."""
    return provider.format in KIND_UPSTREAMS[kind]


def kind_not_supported(req: canonical.Request, unable: Mapping[str, str]) -> errors.KindNotSupported:
    """The 400 when every provider routed was `unable` ({name: format}) to serve `req`'s kind."""
    names = ", ".join(f"'{name}' (format {fmt})" for name, fmt in unable.items())
    return errors.KindNotSupported(f"no provider routed for model '{req.model}' can serve {req.kind} requests: "
                                   f"provider {names} has no API for them", param="model")


def _breaker_outcome(ctx: Context, name: str, status: int) -> breaker.Change | None:
    # Any answer below 500 (even 429) shows the provider is up.
    if status < 500:
        return ctx.breakers.success(name)
    return ctx.breakers.failure(name, ctx.monotonic())


def _breaker_event(ctx: Context, change: breaker.Change) -> Publish:
    # Rare (a circuit changed state) and not tied to one request: published whoever listens.
    return Publish(events.breaker(ctx.clock_ms(), change.provider, change.state, change.failures, change.cooldown))


def _call(
    ctx: Context, ex: Exchange, client: formats.ClientFormat, req: canonical.Request, state: plugins.PluginState, decision: router.Decision
) -> Pipeline:
    provider = decision.provider
    if provider.api_key_env and not provider.api_key:
        raise errors.UpstreamConnectError(
            f'provider \'{provider.name}\' has api_key_env = "{provider.api_key_env}" but that variable is not set'
        )
    upstream = KIND_UPSTREAMS[req.kind][provider.format]
    call = upstream.build_request(req, decision.model, provider)
    yield from _log_all(call.warnings, "debug")
    opened = ctx.monotonic()
    head: UpstreamHead = yield OpenUpstream(provider, call)
    head_after = ctx.monotonic() - opened
    if 300 <= head.status < 400:  # never followed (it could point anywhere), nor passed on
        raise errors.UpstreamProtocolError(f"provider '{provider.name}' answered with a redirect ({head.status}); redirects are not followed")
    if not 200 <= head.status < 300:
        message = ctx.redact(upstream.error_message(head.status, head.error_body))  # upstreams quote keys
        retry_after = next((v for k, v in head.headers if k == "retry-after"), None)
        raise errors.UpstreamStatusError(
            f"provider '{provider.name}' returned {head.status}: {message}", status=head.status, retry_after=retry_after
        )
    if req.stream:
        yield from _relay_stream(ctx, ex, client, req, state, decision, upstream)
        return
    data = yield ReadUpstreamBody(MAX_REPLY_BYTES)
    req.timing = (head_after, ctx.monotonic() - opened)
    state.response = upstream.parse_response(data, req)
    if req.kind == canonical.EMBEDDING and len(state.response.vectors) != len(req.messages):
        raise errors.UpstreamProtocolError(
            f"provider '{provider.name}' sent {len(state.response.vectors)} embeddings for {len(req.messages)} inputs"
        )
    if formats.passthrough(req, provider.format):
        ex.raw_reply = data


def _relay_stream(
    ctx: Context,
    ex: Exchange,
    client: formats.ClientFormat,
    req: canonical.Request,
    state: plugins.PluginState,
    decision: router.Decision,
    upstream: formats.UpstreamFormat,
) -> Pipeline:
    """Streams the upstream reply to the client event by event, translating
    each frame (or forwarding it untouched when both sides share a format)."""
    rec = ex.record
    relay = formats.passthrough(req, decision.provider.format)
    # OpenAI upstreams are always asked for stream usage; a client that did
    # not ask for it does not get that extra frame.
    drop_usage = relay and not req.include_usage and decision.provider.format == "openai"
    encoder = ex.encoder = client.Encoder(req, decision.model)
    decoder = upstream.Decoder(req)
    collector = ex.collector = canonical.ResponseCollector(decision.model)
    collect = collector.add
    started = ctx.monotonic()
    ex.first_chunk_at = None
    event_timeout = ctx.config.server.stream_idle_timeout
    progress = False
    held: list[bytes] = []  # before the head: relayed frames with no event yet (keep-alives)
    while True:
        # Before its head, nothing can go to the client, keep-alives included.
        chunk = yield ReadUpstream(PING_AFTER, encoder.ping() if ex.response_started else b"", event_timeout, progress)
        if ex.first_chunk_at is None:
            ex.first_chunk_at = ctx.monotonic()
        if rec.first_byte_ms is None:
            rec.first_byte_ms = round((ex.first_chunk_at - started) * 1000)
        # Every frame that arrived is handled in this one pass and goes out in
        # one write; only an error event stops the pass.
        out: list[bytes] = []
        failure: canonical.StreamError | None = None
        progress = False  # an event came in this read (comments, pings and blank lines are no progress)
        for frame in decoder.feed(chunk) if chunk else decoder.close():
            events = frame.events
            for event in events:
                if event.__class__ is canonical.StreamError:
                    # An upstream may quote the key it was sent in its error.
                    event = failure = canonical.StreamError(ctx.redact(event.message), event.status, event.kind)
                collect(event)
            if failure is not None:
                if relay:
                    out.append(ctx.redact(frame.raw.decode("utf-8", "replace")).encode())
                break
            if events:
                progress = True
            if not relay:
                out += [encoder.encode(e) for e in events]
            elif not (drop_usage and events and events[0].__class__ is canonical.UsageUpdate and _usage_only(frame)):
                out.append(frame.raw)
        if not ex.response_started:
            # First-chunk gate: the status line waits for the first upstream
            # event, so a provider that fails before it (an error event, garbage,
            # a stall, only keep-alives) still gets a real status and a fallback.
            if failure is not None and not progress:
                raise errors.UpstreamStatusError(
                    f"provider '{decision.provider.name}' failed: {failure.message}", status=failure.status
                )
            if not progress and chunk:
                held += out  # a relay's frames without an event wait for the head with the first one
                continue
            out[:0] = held
            yield StartResponse(200, [*_stream_headers(client), *_router_headers(ex, rec)])
            ex.response_started = True
            if len(out) > 1 and failure is None:
                # Fairness: the head goes out with the first frame alone; the
                # writer lets other requests' work run before the rest.
                yield SendBody(out[0])
                del out[0]
        if failure is not None and not relay:
            out.append(encoder.error(failure))
        if out:
            yield SendBody(b"".join(out))
        if failure is not None:
            ex.error_sent = True
            state.response = collector.response()
            raise errors.UpstreamError(f"provider '{decision.provider.name}' failed mid-stream: {failure.message}")
        if not chunk:
            break
    if not relay:
        req.timing = ((rec.first_byte_ms or 0) / 1000, ctx.monotonic() - started)
        yield SendBody(encoder.finish())
    state.response = collector.response()  # the stream ends in _serve, once its outcome is recorded


def _stream_reply(ex: Exchange, client: formats.ClientFormat, req: canonical.Request, resp: canonical.Response) -> Pipeline:
    """Streams a reply that a plugin produced (no upstream involved)."""
    encoder = ex.encoder = client.Encoder(req, resp.model or req.model)
    yield StartResponse(200, [*_stream_headers(client), *_router_headers(ex, ex.record)])
    ex.response_started = True
    out = [encoder.encode(e) for e in canonical.response_events(resp)]
    yield SendBody(b"".join(out) + encoder.finish())


def _stage(stage: str, active: list[plugins.ActivePlugin], state: plugins.PluginState, rec: events.Record) -> Generator[Command, Any, str]:
    result = plugins.run_stage(stage, active, state)
    rec.plugins.extend(result.ids)
    if result.warnings:
        yield from _log_all(result.warnings)
    return result.flow


def _record_prompt(rec: events.Record, req: canonical.Request, log_inputs: bool) -> None:
    rec.system = req.system
    if req.kind == canonical.EMBEDDING:
        # Inputs can be large or private: their count and sizes only, unless
        # [logging] embedding_inputs turns the texts on.
        texts = req.inputs
        rec.inputs = {"count": len(texts), "chars": [len(t) for t in texts]}
        if not log_inputs:
            rec.messages = []
            return
    rec.messages = [canonical.message_to_json(m) for m in req.messages]


def _send_error(ex: Exchange, client: formats.ClientFormat, err: errors.RouterError) -> Pipeline:
    headers = [("content-type", "application/json"), ("x-request-id", ex.request_id)]
    if isinstance(err, errors.MethodNotAllowed):
        headers.append(("allow", "POST"))
    retry_after = getattr(err, "retry_after", None)
    if retry_after:
        headers.append(("retry-after", retry_after))
    body = dump_json(client.error_body(err))
    headers.append(("content-length", str(len(body))))
    yield StartResponse(err.status, headers)
    ex.response_started = True
    yield SendBody(body)
    yield EndResponse()


def _log_all(warnings: list[str], level: str = "warning") -> Pipeline:
    for warning in warnings:
        yield Log(level, warning)


def _stream_headers(client: formats.ClientFormat) -> list[tuple[str, str]]:
    content_type = getattr(client, "STREAM_CONTENT_TYPE", "text/event-stream")  # Ollama: NDJSON
    return [("content-type", content_type), ("cache-control", "no-cache"), ("x-accel-buffering", "no")]


def _router_headers(ex: Exchange, rec: events.Record) -> list[tuple[str, str]]:
    headers = [("x-request-id", ex.request_id)]
    if rec.provider:
        headers.append(("x-router-provider", rec.provider))
    if rec.sent_model:
        headers.append(("x-router-model", _header_safe(rec.sent_model)))
    if rec.tags:
        headers.append(("x-router-tags", _header_safe(",".join(rec.tags))))
    return headers


@functools.lru_cache(maxsize=256)  # the same few model names and tags, request after request
def _header_safe(value: str) -> str:
    # Control characters are no more allowed in a header value than CR/LF,
    # nor are leading or trailing spaces: h11 refuses the whole response (a
    # 500) for a model name like "m\x0b" or " m".
    return value.encode("ascii", "backslashreplace").decode("ascii").translate(_CONTROLS).strip()


_CONTROLS = {c: " " for c in (*range(0x20), 0x7F)}


def _usage_only(frame: formats.Frame) -> bool:
    return all(isinstance(e, canonical.UsageUpdate) for e in frame.events)


def _decode_json(body: bytes) -> tuple[Any, str | None]:
    if not body:
        return None, "request body is empty: expected a JSON object"
    try:
        # json.loads with options would build a decoder per call.
        value = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"request body is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return value, "request body must be a JSON object"
    return value, None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which would be forwarded as `Infinity` (not JSON).
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number {text} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def dump_json(value: Any) -> bytes:
    return formats.dumps(value).encode("utf-8")
