"""The driver: the one place where the pure pipeline meets I/O.

It runs a pipeline generator, performs each command it yields (upstream
calls through `upstream.Upstreams`, client writes through a ResponseWriter,
events through the bus) and sends back the replies. Whatever happens, it
publishes the request's single `complete` record at the end.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc

from llmrouter import canonical, errors, events
from llmrouter.commands import (
    AbortResponse,
    CloseUpstream,
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

log = logging.getLogger("llmrouter")

ERROR_BODY_LIMIT = 64 * 1024


class ResponseWriter(Protocol):
    async def start(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    async def send(self, data: bytes) -> None: ...
    async def end(self) -> None: ...
    async def abort(self) -> None: ...


class ChunkReader:
    """Reads upstream chunks in a task of its own, one chunk ahead, so that
    waiting for the next chunk can time out (to send a keep-alive, or to
    enforce the idle limit) without cancelling a read in the middle."""

    def __init__(self, stream: UpstreamStream, tg: anyio.abc.TaskGroup) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Any](1)
        self._scope = anyio.CancelScope()
        tg.start_soon(self._pump, stream)

    async def _pump(self, stream: UpstreamStream) -> None:
        with self._scope:
            async with self._send:
                try:
                    while True:
                        chunk = await stream.read()
                        try:  # the pipeline is usually waiting: hand over without a trip through the loop
                            self._send.send_nowait(chunk)
                        except anyio.WouldBlock:
                            await self._send.send(chunk)  # one chunk ahead already: wait (backpressure)
                        if not chunk:
                            return
                except errors.UpstreamError as exc:
                    await self._send.send(exc)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # the pipeline stopped reading
                except Exception as exc:  # never let the task group wrap a stray error
                    await self._send.send(errors.UpstreamProtocolError(f"reading upstream failed: {exc!r}"))

    async def next(self, timeout: float) -> bytes | errors.UpstreamError | None:
        try:  # a chunk that is already here needs no timer (the common case in a busy stream)
            return self._receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return b""
        # A bare deadline scope: move_on_after wraps the same in a generator.
        with anyio.CancelScope(deadline=anyio.current_time() + timeout):
            try:
                return await self._receive.receive()
            except anyio.EndOfStream:
                return b""
        return None

    def close(self) -> None:
        self._scope.cancel()
        self._receive.close()


class Driver:
    def __init__(
        self,
        upstreams: Upstreams,
        publish: Callable[[dict[str, Any]], None],
        log_record: Callable[[str], None] | None,
        clock_ms: Callable[[], int],
    ) -> None:
        self.upstreams = upstreams
        self.publish = publish
        self.log_record = log_record
        self.clock_ms = clock_ms

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
        self.publish(record)
        if self.log_record is not None:
            self.log_record(events.dumps(record))


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
        self.tg: anyio.abc.TaskGroup | None = None  # opened at the first ReadUpstream
        self.stream: UpstreamStream | None = None
        self.reader: ChunkReader | None = None
        self.deadline = math.inf
        self.opened_at = 0.0
        self.last_chunk: float | None = None  # None until the first body chunk

    async def loop(self) -> None:
        try:
            await self.steps(None, None)
        finally:
            await self.release()

    async def steps(self, reply: Any, throw: BaseException | None) -> None:
        while True:
            try:
                cmd = self.pipeline.throw(throw) if throw is not None else self.pipeline.send(reply)
            except StopIteration:
                return
            if self.tg is None and isinstance(cmd, ReadUpstream):
                await self.streaming_steps(cmd)
                return
            reply, throw = await self.perform_catching(cmd)

    async def perform_catching(self, cmd: Any) -> tuple[Any, BaseException | None]:
        try:
            return await self.perform(cmd), None
        except errors.UpstreamError as exc:
            return None, exc  # delivered at the pipeline's `yield`

    async def streaming_steps(self, first: ReadUpstream) -> None:
        """Runs the rest of the pipeline inside a task group for the ChunkReader.
        Opened only here, at the first ReadUpstream, because a task group and
        its cancellation cost more than the rest of a small non-streaming
        request's driving (see docs/performance.md)."""
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            self.tg = tg
            try:
                await self.steps(*await self.perform_catching(first))
            except Exception as exc:  # kept out of the group, which would wrap it in an ExceptionGroup
                failure = exc
            finally:
                await self.release()  # stops the reader task, so the group need not be cancelled
        if failure is not None:
            raise failure

    async def perform(self, cmd: Any) -> Any:
        if isinstance(cmd, SendBody):
            await self.writer.send(cmd.data)
        elif isinstance(cmd, ReadUpstream):
            return await self.read(cmd.ping_after)
        elif isinstance(cmd, Publish):
            self.driver.publish(cmd.event)
        elif isinstance(cmd, OpenUpstream):
            return await self.open(cmd)
        elif isinstance(cmd, ReadUpstreamBody):
            return await self.read_body(cmd.limit)
        elif isinstance(cmd, StartResponse):
            await self.writer.start(cmd.status, cmd.headers)
        elif isinstance(cmd, EndResponse):
            await self.writer.end()
        elif isinstance(cmd, AbortResponse):
            await self.writer.abort()
        elif isinstance(cmd, CloseUpstream):
            await self.release()
        elif isinstance(cmd, Log):
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
        if 200 <= stream.status < 300:
            self.stream = stream
            return UpstreamHead(stream.status, stream.headers)
        try:
            return UpstreamHead(stream.status, stream.headers, await _read_error_body(stream))
        finally:
            await stream.aclose()

    async def read(self, ping_after: float | None) -> bytes | None:
        stream = self.stream
        assert stream is not None, "ReadUpstream without an open upstream"
        if self.reader is None:
            assert self.tg is not None, "ReadUpstream outside streaming_steps"
            self.reader = ChunkReader(stream, self.tg)
        provider = stream.provider
        # Until the first chunk the wait is first_byte_timeout from sending the
        # request (time to first token); after it, idle_timeout between chunks.
        if self.last_chunk is None:
            quiet_until = self.opened_at + provider.first_byte_timeout
        else:
            quiet_until = self.last_chunk + provider.idle_timeout
        now = time.monotonic()
        wait = min(ping_after or math.inf, quiet_until - now, self.deadline - now)
        item = await self.reader.next(max(wait, 0))
        if isinstance(item, errors.UpstreamError):
            raise item
        now = time.monotonic()
        if item is None:
            if now >= self.deadline:
                raise errors.UpstreamTimeout(f"provider '{provider.name}': reply not finished within {provider.total_timeout:g}s")
            if now >= quiet_until:
                if self.last_chunk is None:
                    raise errors.UpstreamTimeout(f"provider '{provider.name}': no first chunk within {provider.first_byte_timeout:g}s")
                raise errors.UpstreamTimeout(f"provider '{provider.name}': no data for {provider.idle_timeout:g}s")
            return None
        self.last_chunk = now
        return item

    async def read_body(self, limit: int) -> bytes:
        stream = self.stream
        assert stream is not None, "ReadUpstreamBody without an open upstream"
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + max(self.deadline - time.monotonic(), 0)):
                return await stream.read_all(limit)
            raise errors.UpstreamTimeout(  # only reached when the deadline cancelled the read
                f"provider '{stream.provider.name}': reply not finished within {stream.provider.total_timeout:g}s"
            )
        finally:
            await self.release()

    async def release(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await stream.aclose()
