"""The event bus: fan-out of lifecycle events to live subscribers.

`publish` is synchronous and never waits. It encodes an event once (for the
feed: one SSE frame), however many subscribers get it. Each subscriber has its
own bounded queue, and a subscriber that falls behind loses events (counted, and told
with a `dropped` event once it catches up) instead of slowing requests.

A subscription is a plain queue and one future for its reader, not a memory
stream with a cancel scope per wait: with a dashboard open, every request's
events wake its feed (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class Subscription:
    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.frames: collections.deque[bytes] = collections.deque()
        self.closed = False
        self.dropped = 0  # events lost since the subscriber last caught up
        self.dropped_total = 0
        self._reader: asyncio.Future[None] | None = None

    def put(self, frame: bytes) -> bool:
        """Queues a frame; False when the queue is full (the frame is lost)."""
        if len(self.frames) >= self.buffer:
            self.dropped += 1
            self.dropped_total += 1
            return False
        self.frames.append(frame)
        self.wake()
        return True

    def take(self, most: int) -> list[bytes]:
        """Up to `most` queued frames, oldest first."""
        frames = self.frames
        if len(frames) <= most:
            out = list(frames)
            frames.clear()
            return out
        return [frames.popleft() for _ in range(most)]

    async def wait(self) -> None:
        """Returns once frames are queued, the subscription is closed, or
        `wake()` was called (the feed's keep-alive timer does)."""
        if self.frames or self.closed:
            return
        self._reader = asyncio.get_running_loop().create_future()
        try:
            await self._reader
        finally:
            self._reader = None

    def wake(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def close(self) -> None:
        self.closed = True
        self.wake()

    def take_dropped(self) -> int:
        count, self.dropped = self.dropped, 0
        return count


class EventBus:
    def __init__(self, encode: Callable[[dict[str, Any], str | None], bytes]) -> None:
        self._encode = encode
        self._subscribers: list[Subscription] = []
        self.published = 0
        # Subscribers, and in-process listeners (the tests' harness counts
        # itself here): while there are none, requests build no events but
        # their `complete` record (app.py).
        self.listeners = 0
        self.dropped_total = 0  # events lost by any subscriber, ever (the metrics counter)

    def publish(self, event: dict[str, Any], text: str | None = None) -> None:
        """`text`: the event's JSON (events.dumps), when the caller has it already."""
        self.published += 1
        if not self._subscribers:
            return
        data = self._encode(event, text)
        for sub in self._subscribers:
            if not sub.closed and not sub.put(data):
                self.dropped_total += 1

    @contextlib.contextmanager
    def subscribe(self, buffer: int = 1024) -> Iterator[Subscription]:
        sub = Subscription(buffer)
        self._subscribers.append(sub)
        self.listeners += 1
        try:
            yield sub
        finally:
            self._subscribers.remove(sub)
            self.listeners -= 1
            sub.close()

    def close_all(self) -> None:
        """Ends every subscription (graceful shutdown): their readers see `closed`."""
        for sub in self._subscribers:
            sub.close()

    def statistics(self) -> dict[str, int]:
        return {
            "subscribers": len(self._subscribers),
            "published": self.published,
            "dropped": sum(s.dropped_total for s in self._subscribers),
        }
