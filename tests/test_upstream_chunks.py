"""The upstream reader's plain-chunk path (llmrouter/upstream.py `_feed`):
whole plain chunks of a chunked body are read without h11's per-chunk
machinery where h11 stands between chunks, and h11 reads everything else.
Whatever the body and however it is split into reads, the bytes and the
errors must be h11's own."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrouter.upstream import NO_LIMIT, _feed

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def client() -> h11.Connection:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=[("host", "up"), ("content-length", "0")]))
    conn.send(h11.EndOfMessage())
    return conn


def read_body(pieces: list[bytes], *, fast: bool, limit: int = NO_LIMIT) -> tuple[bytes, str]:
    """Feeds the response in `pieces` as reads and returns (body, how it ended):
    "end", "error" or "incomplete". `fast` takes the plain-chunk path wherever
    the router may: with each read, and before each of h11's events (the
    router does at the start of a read, for what came with the head)."""
    conn = client()
    body = bytearray()
    try:
        for piece in pieces:
            out: list[bytes] = []
            if fast:
                _feed(conn, piece, out, limit)
            else:
                conn.receive_data(piece)
            while True:
                if fast:
                    _feed(conn, None, out, limit)  # the fairness slices too: the rest stays for the next call
                body += b"".join(out)
                out.clear()
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body), "end"
    except h11.ProtocolError:
        return bytes(body), "error"
    return bytes(body), "incomplete"


def test_the_installed_h11_reads_plain_chunks_without_its_reader():
    """Fails when h11's private reader state changes: then every chunk would
    silently go through h11 again, at several times the cost."""
    conn = client()
    conn.receive_data(HEAD)
    assert isinstance(conn.next_event(), h11.Response)
    out: list[bytes] = []
    assert _feed(conn, b"5\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n", out, NO_LIMIT) is True
    assert out == [b"hello", b" ", b"0123456789"]
    assert not conn.trailing_data[0]
    _feed(conn, b"0\r\n\r\n", out, NO_LIMIT)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    assert conn.their_state is h11.DONE  # so the connection goes back to the pool


def test_a_fairness_slice_leaves_the_rest_to_the_next_read():
    conn = client()
    conn.receive_data(HEAD)
    conn.next_event()
    out: list[bytes] = []
    _feed(conn, b"".join(b"1\r\n%d\r\n" % i for i in range(5)) + b"0\r\n\r\n", out, 2)
    assert out == [b"0", b"1"]
    rest: list[bytes] = []
    _feed(conn, None, rest, NO_LIMIT)  # the next read takes up the chunks h11 kept
    assert rest == [b"2", b"3", b"4"]
    assert isinstance(conn.next_event(), h11.EndOfMessage)


chunk = st.one_of(
    st.binary(min_size=1, max_size=40).map(lambda d: b"%x\r\n%s\r\n" % (len(d), d)),  # plain
    st.binary(min_size=1, max_size=40).map(lambda d: b"%X\r\n%s\r\n" % (len(d), d)),  # upper-case size
    st.binary(min_size=1, max_size=20).map(lambda d: b"%x;ext=1\r\n%s\r\n" % (len(d), d)),  # an extension
    st.binary(min_size=1, max_size=20).map(lambda d: b"00%x\r\n%s\r\n" % (len(d), d)),  # leading zeros
    st.binary(min_size=1, max_size=20).map(lambda d: b"%x\r\n%sXY" % (len(d), d)),  # a bad footer
    st.binary(min_size=1, max_size=20).map(lambda d: b"%x\r\n%s" % (len(d) + 3, d)),  # shorter than it says
    st.sampled_from([b"zz\r\n", b" 5\r\nhello\r\n", b"+5\r\nhello\r\n", b"5_0\r\n", b"\r\n", b"-1\r\n"]),  # bad size lines
)
ending = st.sampled_from([b"0\r\n\r\n", b"0\r\nx-trailer: 1\r\n\r\n", b"000\r\n\r\n", b"", b"0\r\n"])


@settings(max_examples=400, deadline=None)
@given(st.lists(chunk, max_size=12), ending, st.lists(st.integers(0, 400), max_size=10), st.integers(1, 4))
def test_any_body_in_any_reads_gives_h11s_own_bytes_and_errors(chunks, end, cuts, limit):
    whole = HEAD + b"".join(chunks) + end
    points = sorted({min(c, len(whole)) for c in cuts})
    pieces = [whole[a:b] for a, b in zip([0, *points], [*points, len(whole)]) if b > a]
    expected = read_body(pieces, fast=False)
    assert read_body(pieces, fast=True) == expected
    assert read_body(pieces, fast=True, limit=limit) == expected


@pytest.mark.parametrize("split", [1, 7, 64])
def test_a_stream_split_anywhere_reads_whole(split):
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(30)]
    whole = HEAD + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    pieces = [whole[i : i + split] for i in range(0, len(whole), split)]
    assert read_body(pieces, fast=True) == (b"".join(events), "end")


def test_many_streams_written_whole_arrive_whole_and_in_order_through_the_fairness_slices():
    """16 streams of 200 events, each written by the upstream in one write, at
    once: the router hands each over in slices while others are ready (the
    rest waits in h11's buffer and is read as plain chunks again next time).
    Every client gets every event, in order, and its stream's end."""
    import asyncio
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import httpcore

    from harness import provider_config, running_router

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from fake_upstream import FakeProtocol, FakeServer

    events = 200
    started, holder = threading.Event(), {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(loop.create_server(lambda: FakeProtocol(FakeServer(events, 0.0, 0.0)), "127.0.0.1", 0))
        holder.update(loop=loop, port=server.sockets[0].getsockname()[1])
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    config = "[server]\nport = 0\n" + provider_config(f"http://127.0.0.1:{holder['port']}/v1") + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'
    try:
        with running_router(config) as router, httpcore.ConnectionPool(max_connections=16) as http:
            def stream(_: int) -> list[int]:
                body = b'{"model":"mock-fast","stream":true,"messages":[{"role":"user","content":"hi"}]}'
                reply = http.request("POST", f"http://127.0.0.1:{router.port}/v1/chat/completions", content=body,
                                     headers={"content-type": "application/json"})
                assert reply.status == 200, reply.content[:300]
                assert reply.content.endswith(b"data: [DONE]\n\n")
                return [int(line.split(b'"content":"tok ', 1)[1].split(b" ")[0]) for line in reply.content.split(b"\n\n") if b'"content":"' in line]

            with ThreadPoolExecutor(16) as pool:
                for numbers in pool.map(stream, range(32)):
                    assert numbers == list(range(events))
    finally:
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        thread.join(10)
