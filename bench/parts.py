"""What the parts of one proxied request cost alone on this machine, with no
sockets and no event loop: h11's work on the server side (parse the bench's
request, serialize a reply), h11's work on the client side (serialize the
upstream request, parse its reply), the router's pure pipeline for that
request (decode, route, build the upstream call, parse the reply, the log
record), and a plain Python function call for scale.

    python3 bench/parts.py [--n 5000]

Pinned to core 1, like the load generator, when the machine has two cores.
The sum of the first three is a floor under the router's CPU per request.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import h11  # noqa: E402

from fake_upstream import COMPLETION  # noqa: E402
from loadgen import build_request  # noqa: E402


def per_call_us(fn: Callable[[], None], n: int) -> float:
    for _ in range(n // 10):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def h11_server_side() -> Callable[[], None]:
    conn = h11.Connection(h11.SERVER)
    request = build_request(8090, False)
    headers = [("content-type", "application/json"), ("content-length", str(len(COMPLETION)))]

    def once() -> None:
        conn.receive_data(request)
        while not isinstance(conn.next_event(), h11.EndOfMessage):
            pass
        conn.send(h11.Response(status_code=200, headers=headers))
        conn.send(h11.Data(data=COMPLETION))
        conn.send(h11.EndOfMessage())
        conn.start_next_cycle()

    return once


def h11_client_side() -> Callable[[], None]:
    conn = h11.Connection(h11.CLIENT)
    body = b'{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(COMPLETION), COMPLETION)
    headers = [("host", "127.0.0.1:8080"), ("content-type", "application/json"), ("content-length", str(len(body))), ("authorization", "Bearer x")]

    def once() -> None:
        conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=headers))
        conn.send(h11.Data(data=body))
        conn.send(h11.EndOfMessage())
        conn.receive_data(reply)
        while not isinstance(conn.next_event(), h11.EndOfMessage):
            pass
        conn.start_next_cycle()

    return once


def pure_pipeline() -> Callable[[], None]:
    from llmrouter import config, events
    from llmrouter.commands import OpenUpstream, ReadUpstreamBody, UpstreamHead
    from llmrouter.pipeline import Context, Exchange, handle

    cfg = config.parse(
        {
            "providers": [{"name": "fake", "format": "openai", "base_url": "http://127.0.0.1:1/v1"}],
            "routers": [{"type": "prefix", "model_prefix": "", "provider": "fake"}],
        },
        source="parts",
        environ={},
    )
    ctx = Context(config=cfg, clock_ms=lambda: 0, monotonic=time.monotonic)
    body = build_request(8090, False).partition(b"\r\n\r\n")[2]
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}
    head = UpstreamHead(200, [("content-type", "application/json")])

    def once() -> None:
        ex = Exchange(1, "id", "openai", headers, body, events.Record(1, "id", "openai"), listened=False)  # nobody on the feed
        gen = handle(ctx, ex)
        reply = None
        try:
            while True:
                cmd = gen.send(reply)
                reply = head if isinstance(cmd, OpenUpstream) else COMPLETION if isinstance(cmd, ReadUpstreamBody) else None
        except StopIteration:
            pass
        events.dumps(ex.record.complete(0, 1))

    return once


def noop() -> Callable[[], None]:
    def once() -> None:
        pass

    return once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    server, client, pure = (per_call_us(make(), args.n) for make in (h11_server_side, h11_client_side, pure_pipeline))
    call_ns = per_call_us(noop(), args.n * 100) * 1000
    print(f"h11, server side (request in, reply out):   {server:6.0f} µs")
    print(f"h11, client side (request out, reply in):   {client:6.0f} µs")
    print(f"router's pure pipeline (with the log line): {pure:6.0f} µs")
    print(f"sum, with no sockets, loop or httpcore:     {server + client + pure:6.0f} µs per request")
    print(f"one empty Python function call:             {call_ns:6.0f} ns")


if __name__ == "__main__":
    main()
