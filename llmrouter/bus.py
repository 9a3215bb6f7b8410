"""The event bus: fan-out of lifecycle events to live subscribers.

`publish` is synchronous and never waits. It encodes an event once (for the
feed: one SSE frame), however many subscribers get it. Each subscriber has its
own bounded buffer, and a subscriber that falls behind loses events (counted, and told
with a `dropped` event once it catches up) instead of slowing requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream


class Subscription:
    def __init__(self, buffer: int) -> None:
        self.send: MemoryObjectSendStream[bytes]
        self.receive: MemoryObjectReceiveStream[bytes]
        self.send, self.receive = anyio.create_memory_object_stream[bytes](buffer)
        self.dropped = 0  # events lost since the subscriber last caught up
        self.dropped_total = 0

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
            try:
                sub.send.send_nowait(data)
            except anyio.WouldBlock:
                sub.dropped += 1
                sub.dropped_total += 1
                self.dropped_total += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # its reader is gone; unsubscribe() removes it

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
            sub.send.close()
            sub.receive.close()

    def close_all(self) -> None:
        """Ends every subscription's stream (graceful shutdown)."""
        for sub in self._subscribers:
            sub.send.close()

    def statistics(self) -> dict[str, int]:
        return {
            "subscribers": len(self._subscribers),
            "published": self.published,
            "dropped": sum(s.dropped_total for s in self._subscribers),
        }
