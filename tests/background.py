"""Run async services in a background thread, for tests whose client blocks.

The official SDKs' sync clients block the calling thread, so the servers they
talk to (fake upstreams, the router) need an event loop of their own:

    with BackgroundLoop() as loop:
        port = loop.start(serve, config)       # returns what task_status.started() got
        ...                                     # blocking client code
        stats = loop.call(some_coroutine_fn)   # run a coroutine there, get its result

`start` is the readiness handshake: it returns only once the service has called
`task_status.started(value)`, so tests never sleep waiting for a port. On exit
every task is cancelled and the thread joined; an exception that escaped a
started task is raised there, so a crashed service cannot go unnoticed.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Awaitable, Callable

import anyio
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal

__all__ = ["BackgroundLoop"]


class BackgroundLoop:
    """An anyio (asyncio backend) event loop with a task group, in its own thread."""

    def __init__(self, *, start_timeout: float = 10.0, stop_timeout: float = 5.0) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._group: TaskGroup | None = None
        self._crash: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> BackgroundLoop:
        ready: Future[BlockingPortal] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="background-loop", daemon=True
        )
        self._thread.start()
        self._portal = ready.result(timeout=self.start_timeout)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._portal is not None and self._thread is not None
        try:
            self._portal.call(self._portal.stop, True)
        except RuntimeError:
            pass  # the loop already ended (a task crashed it)
        self._thread.join(self.stop_timeout)
        if self._thread.is_alive():
            raise RuntimeError(
                f"background loop still running {self.stop_timeout}s after cancellation"
            )
        if self._crash is not None and exc_type is None:
            raise _unwrap(self._crash)

    def _run(self, ready: Future[BlockingPortal]) -> None:
        try:
            anyio.run(self._main, ready, backend="asyncio")
        except BaseException as exc:  # reported to the test thread, not lost
            if not ready.done():
                ready.set_exception(exc)
            else:
                self._crash = exc

    async def _main(self, ready: Future[BlockingPortal]) -> None:
        async with BlockingPortal() as portal:
            async with anyio.create_task_group() as group:
                self._group = group
                ready.set_result(portal)
                await portal.sleep_until_stopped()
                group.cancel_scope.cancel()

    # -- use from the test thread ------------------------------------------

    def start(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Like `TaskGroup.start`: run `async_fn(*args, task_status=...)` in the
        loop's task group and return the value it passes to `started()`."""
        return self.call(self._start, async_fn, args)

    def start_soon(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Like `TaskGroup.start_soon`: fire and forget (errors still surface on exit)."""
        self.call(self._start_soon, async_fn, args)

    def call(self, async_fn: Callable[..., Any], *args: Any) -> Any:
        """Run `async_fn(*args)` (or a plain function) in the loop; return its result."""
        if self._portal is None:
            raise RuntimeError("BackgroundLoop is not entered")
        try:
            return self._portal.call(async_fn, *args)
        except RuntimeError as exc:
            if self._crash is not None:
                raise RuntimeError("the background loop crashed") from self._crash
            raise exc

    async def _start(self, async_fn: Callable[..., Awaitable[Any]], args: tuple) -> Any:
        assert self._group is not None
        with anyio.fail_after(self.start_timeout):
            return await self._group.start(async_fn, *args)

    async def _start_soon(self, async_fn: Callable[..., Awaitable[Any]], args: tuple) -> None:
        assert self._group is not None
        self._group.start_soon(async_fn, *args)


def _unwrap(exc: BaseException) -> BaseException:
    """The one real error inside task-group wrappers, so tests can match it."""
    while len(getattr(exc, "exceptions", ())) == 1:
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc
