"""The driver: the one place where the pure pipeline meets I/O.

It runs a pipeline generator, performs each command it yields (upstream
calls through `upstream.Upstreams`, client writes through a ResponseWriter,
events through the bus) and sends back the replies. Whatever happens, it
publishes the request's single `complete` record at the end.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from llmrouter import canonical, errors, events
from llmrouter.commands import (
    AbortResponse,
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
from llmrouter.pipeline import CLIENT_FORMATS, Exchange, Pipeline, dump_json
from llmrouter.upstream import Upstreams, UpstreamStream
from llmrouter.wire import body_turn

log = logging.getLogger("llmrouter")

ERROR_BODY_LIMIT = 64 * 1024


class ResponseWriter(Protocol):
    async def start(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    async def send(self, data: bytes) -> None: ...
    async def end(self) -> None: ...
    async def abort(self) -> None: ...


class Publisher(Protocol):
    """EventBus.publish: `text` is the event's JSON when the caller has it already."""

    def __call__(self, event: dict[str, Any], text: str | None = None) -> None: ...


class Driver:
    def __init__(
        self,
        upstreams: Upstreams,
        publish: Publisher,
        log_record: Callable[[str], None] | None,
        clock_ms: Callable[[], int],
        observe: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.publish = publish
        self.log_record = log_record
        self.clock_ms = clock_ms
        self.observe = observe  # takes each `complete` record after it is published (metrics, measurements)

    async def run(self, pipeline: Pipeline, ex: Exchange, writer: ResponseWriter, started: float) -> None:
        """Runs one request to its end. Cancellation (client gone) propagates
        after the `complete` record is published."""
        rec = ex.record
        try:
            await _Run(self, pipeline, writer).loop()
        except errors.ClientGone:
            _mark_disconnected(ex)
        except anyio.get_cancelled_exc_class():
            _mark_disconnected(ex)
            raise
        except Exception:
            log.exception("request %s failed: bug in the router", ex.request_id)
            rec.error, rec.error_code, rec.status = "internal error in the router", "internal_error", 500
            with anyio.CancelScope(shield=True):
                await _answer_bug(ex, writer)
        finally:
            pipeline.close()
            self.finish(ex, started)

    def finish(self, ex: Exchange, started: float) -> None:
        record = ex.record.complete(self.clock_ms(), round((time.monotonic() - started) * 1000))
        # Encoded once for the log and the feed: the largest event of all.
        line = events.dumps(record) if self.log_record is not None else None
        self.publish(record, line)
        if line is not None:
            self.log_record(line)
        if self.observe is not None:
            self.observe(record)


async def _read_error_body(stream: UpstreamStream) -> bytes:
    body = bytearray()
    try:
        with anyio.move_on_after(stream.provider.idle_timeout):
            while len(body) < ERROR_BODY_LIMIT and (chunk := await stream.read()):
                body += chunk
    except errors.UpstreamError:
        pass
    return bytes(body[:ERROR_BODY_LIMIT])


def _mark_disconnected(ex: Exchange) -> None:
    rec, collector = ex.record, ex.collector
    if rec.error is None and ex.response_started and collector is not None and collector.stop_reason is not None:
        # The client hung up after the reply was complete (say, right after
        # `[DONE]`, before the terminating chunk): that is a success.
        reply = collector.response()
        rec.response, rec.usage, rec.status = canonical.response_to_json(reply), reply.usage.to_json(), 200
        return
    rec.error = rec.error or "client disconnected"
    rec.error_code = rec.error_code or "client_disconnected"
    rec.status = rec.status or 499


async def _answer_bug(ex: Exchange, writer: ResponseWriter) -> None:
    try:
        if ex.response_started:
            await writer.abort()
            return
        err = errors.RouterError("internal error in the router (see its log)")
        await writer.start(500, [("content-type", "application/json"), ("x-request-id", ex.request_id)])
        await writer.send(dump_json(CLIENT_FORMATS[ex.client_format].error_body(err)))
        await writer.end()
    except Exception:
        await writer.abort()


class _Run:
    """The state of one pipeline run: its open upstream response, if any."""

    def __init__(self, driver: Driver, pipeline: Pipeline, writer: ResponseWriter) -> None:
        self.driver = driver
        self.pipeline = pipeline
        self.writer = writer
        self.stream: UpstreamStream | None = None
        self.deadline = math.inf
        self.opened_at = 0.0
        self.last_chunk: float | None = None  # None until the first body chunk
        self.last_event = 0.0  # when the last chunk that carried a stream event arrived

    async def loop(self) -> None:
        try:
            await self.steps()
        finally:
            await self.release()

    async def steps(self) -> None:
        reply: Any = None
        throw: BaseException | None = None
        while True:
            try:
                cmd = self.pipeline.throw(throw) if throw is not None else self.pipeline.send(reply)
            except StopIteration:
                return
            reply = throw = None
            if type(cmd) is Publish:  # the commonest command, and synchronous: no coroutine for it
                self.driver.publish(cmd.event)
                continue
            try:
                reply = await self.perform(cmd)
            except errors.UpstreamError as exc:
                throw = exc  # delivered at the pipeline's `yield`

    async def perform(self, cmd: Any) -> Any:
        kind = cmd.__class__  # compared with `is`: no call per test (commands are final classes)
        if kind is SendBody:
            await self.writer.send(cmd.data)
        elif kind is ReadUpstream:
            return await self.read(cmd)
        elif kind is OpenUpstream:
            return await self.open(cmd)
        elif kind is ReadUpstreamBody:
            return await self.read_body(cmd.limit)
        elif kind is StartResponse:
            await self.writer.start(cmd.status, cmd.headers)
        elif kind is EndResponse:
            await self.writer.end()
        elif kind is AbortResponse:
            await self.writer.abort()
        elif kind is Log:
            getattr(log, cmd.level)(cmd.message)
        else:  # a command without a handler is a bug
            raise TypeError(f"unknown command {cmd!r}")
        return None

    async def open(self, cmd: OpenUpstream) -> UpstreamHead:
        await self.release()
        self.opened_at = time.monotonic()
        try:
            stream = await self.driver.upstreams.open(cmd.provider, cmd.call)
        except errors.UpstreamProtocolError as exc:
            # The connection broke before any response head (reset, closed):
            # like an unreachable provider, the request may go to the next one.
            raise errors.UpstreamConnectError(exc.message) from exc
        self.deadline = time.monotonic() + cmd.provider.total_timeout
        self.last_chunk = None
        self.last_event = self.opened_at
        if 200 <= stream.status < 300:
            self.stream = stream
            return UpstreamHead(stream.status, stream.headers)
        try:
            return UpstreamHead(stream.status, stream.headers, await _read_error_body(stream))
        finally:
            await stream.aclose()

    async def read(self, cmd: ReadUpstream) -> bytes:
        stream = self.stream
        assert stream is not None, "ReadUpstream without an open upstream"
        provider = stream.provider
        # Until the first chunk the wait is first_byte_timeout from sending the
        # request (time to first token); after it, idle_timeout between chunks.
        if self.last_chunk is None:
            quiet_until = self.opened_at + provider.first_byte_timeout
        else:
            quiet_until = self.last_chunk + provider.idle_timeout
        if cmd.progress and self.last_chunk is not None:
            self.last_event = self.last_chunk
        # Keep-alive bytes restart quiet_until but not this one.
        events_until = self.last_event + cmd.event_timeout
        give_up = min(quiet_until, self.deadline, events_until)
        keepalive = (cmd.ping_after, functools.partial(self.writer.send, cmd.ping)) if cmd.ping else None
        if stream.held:  # more has arrived, but others have waited long enough
            await body_turn()
        try:
            # Checked before reading too: a read of bytes already buffered may return without waiting.
            if time.monotonic() >= give_up:
                raise TimeoutError
            chunk = await stream.read(keepalive, give_up)
        except TimeoutError:
            if give_up == self.deadline:
                raise errors.UpstreamTimeout(f"provider '{provider.name}': reply not finished within {provider.total_timeout:g}s") from None
            if give_up == events_until:
                raise errors.UpstreamTimeout(f"provider '{provider.name}': no stream event for {cmd.event_timeout:g}s, only keep-alives") from None
            if self.last_chunk is None:
                raise errors.UpstreamTimeout(f"provider '{provider.name}': no first chunk within {provider.first_byte_timeout:g}s") from None
            raise errors.UpstreamTimeout(f"provider '{provider.name}': no data for {provider.idle_timeout:g}s") from None
        self.last_chunk = time.monotonic()
        return chunk

    async def read_body(self, limit: int) -> bytes:
        stream = self.stream
        assert stream is not None, "ReadUpstreamBody without an open upstream"
        try:
            return await stream.read_all(limit, self.deadline)
        except TimeoutError:
            raise errors.UpstreamTimeout(
                f"provider '{stream.provider.name}': reply not finished within {stream.provider.total_timeout:g}s"
            ) from None
        finally:
            await self.release()

    async def release(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.aclose()
