"""The wire's time limits (llmrouter/wire.py) over real loopback sockets:
one watchdog timer per wire instead of one timer per wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmrouter.wire import Wire, connect


async def pair() -> tuple[Wire, Wire, asyncio.AbstractServer]:
    """A connected (server side, client side) pair of wires on 127.0.0.1."""
    accepted: asyncio.Future[Wire] = asyncio.get_running_loop().create_future()
    server = await asyncio.get_running_loop().create_server(lambda: Wire(accepted.set_result), "127.0.0.1", 0)
    client = await connect("127.0.0.1", server.sockets[0].getsockname()[1])
    return await accepted, client, server


async def waiting_read(ours: Wire, theirs: Wire, data: bytes, limit: float) -> None:
    """A read with time limit `limit` that waits until `data` comes."""
    reading = asyncio.ensure_future(ours.read(limit))
    await asyncio.sleep(0)  # the read waits, with its limit
    await theirs.write(data)
    assert await reading == data


async def read_times_out(wire: Wire, seconds: float) -> None:
    """A read with nothing to read ends in TimeoutError, not before `seconds`."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await wire.read(seconds)
    assert time.monotonic() - started >= seconds


def on_a_pair(test):  # type: ignore[no-untyped-def]
    """Runs `test(ours, theirs)` on a fresh pair of connected wires, bounded
    in time: a broken limit fails the test instead of hanging it."""

    def run() -> None:
        async def body() -> None:
            ours, theirs, server = await pair()
            try:
                await test(ours, theirs)
            finally:
                ours.abort()
                theirs.abort()
                server.close()

        asyncio.run(asyncio.wait_for(body(), 20))

    return run


@on_a_pair
async def test_waits_under_one_limit_share_one_timer(ours: Wire, theirs: Wire) -> None:
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    for i in range(50):
        await waiting_read(ours, theirs, b"%d" % i, 30)
    # One timer for the wire; a timer per wait would leave 50 cancelled ones in the loop's heap.
    assert len(loop._scheduled) - before == 1  # type: ignore[attr-defined]
    theirs.close()
    assert await ours.read(30) == b""
    ours.close()
    for _ in range(100):  # connection_lost comes a loop iteration or two after close()
        if ours.lost:
            break
        await asyncio.sleep(0.01)
    assert ours.lost and ours._watchdog is None  # a gone connection keeps no timer (it would hold the wire)


@on_a_pair
async def test_a_read_times_out_after_its_limit(ours: Wire, theirs: Wire) -> None:
    await read_times_out(ours, 0.05)
    await theirs.write(b"late")
    assert await ours.read(1) == b"late"  # the wire still works after a timed-out read


@on_a_pair
async def test_a_sooner_limit_moves_the_watchdog_and_a_later_one_waits_for_its_own_time(ours: Wire, theirs: Wire) -> None:
    await theirs.write(b"a")
    assert await ours.read(30) == b"a"  # no wait: no timer
    await waiting_read(ours, theirs, b"b", 30)  # the watchdog now stands at 30 s
    with pytest.raises(TimeoutError):
        await ours.read(0.05)  # sooner: the watchdog moves (without that, 30 s and the bound fails)
    await waiting_read(ours, theirs, b"c", 0.05)  # the watchdog stays at ~0.05 s from then
    await read_times_out(ours, 0.3)  # the watchdog goes off first and sets itself again for this read


@on_a_pair
async def test_a_write_to_a_reader_that_stopped_times_out(ours: Wire, theirs: Wire) -> None:
    ours.limit_write_buffer(1024)
    with pytest.raises(TimeoutError):
        for _ in range(1000):  # far more than the kernel's buffers take: the transport pauses
            await ours.write(b"x" * 1_000_000, timeout=0.1)
