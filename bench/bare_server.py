"""Floors for the router, measured beside it by bench/run.py so that a run
on a slow or busy machine still shows how far the router is from them:

- canned: a bare anyio + h11 server answering every request with a canned
  chat.completion (the floor for any server on these two libraries);
- relay (--relay PORT): the same server forwarding each request body to the
  fake upstream over one httpcore AsyncHTTP11Connection per client connection
  and returning the reply (the floor for a proxy on h11 in, httpcore out:
  no routing, no pipeline, no pool, no timeouts, no logging).

    python3 bench/bare_server.py [--relay 18080] --port 18081
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
import h11
import httpcore
from anyio.abc import SocketAttribute

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_upstream import COMPLETION  # noqa: E402

HEADERS = [("content-type", "application/json"), ("content-length", str(len(COMPLETION)))]


RELAY_PORT = 0


async def handle(stream: anyio.abc.SocketStream) -> None:
    try:
        await serve_connection(stream)
    except Exception:  # one broken connection must not stop the listener
        await stream.aclose()


async def serve_connection(stream: anyio.abc.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    upstream = None
    if RELAY_PORT:
        origin = httpcore.Origin(b"http", b"127.0.0.1", RELAY_PORT)
        upstream = httpcore.AsyncHTTP11Connection(origin, await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", RELAY_PORT))
        url = httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=RELAY_PORT, target=b"/v1/chat/completions")
    body = bytearray()
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive(65536))
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                continue
            if isinstance(event, h11.Request):
                body.clear()
                continue
            if isinstance(event, h11.EndOfMessage):
                reply, headers = COMPLETION, HEADERS
                if upstream is not None:
                    request = httpcore.Request(
                        "POST", url, content=bytes(body),
                        headers=[(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                    )
                    response = await upstream.handle_async_request(request)
                    reply = b"".join([chunk async for chunk in response.aiter_stream()])
                    await response.aclose()
                    headers = [("content-type", "application/json"), ("content-length", str(len(reply)))]
                data = conn.send(h11.Response(status_code=200, headers=headers))
                data += conn.send(h11.Data(data=reply)) + conn.send(h11.EndOfMessage())
                await stream.send(data)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # connection: close, or a broken exchange
                conn.start_next_cycle()
                continue
            if isinstance(event, h11.Data):
                body += event.data
                continue
            return


async def main(port: int) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    print(f"ready {listener.extra(SocketAttribute.local_port)} pid {os.getpid()}", flush=True)
    await listener.serve(handle)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--relay", type=int, default=0, help="forward to the fake upstream on this port instead of answering")
    args = ap.parse_args()
    RELAY_PORT = args.relay
    try:
        anyio.run(main, args.port)
    except KeyboardInterrupt:
        pass
