"""Floors for the router, measured beside it by bench/run.py so that a run
on a slow or busy machine still shows how far the router is from them:

- canned: a bare anyio + h11 server answering every request with a canned
  chat.completion (the floor for any server on these two libraries);
- relay (--relay PORT): the same server forwarding each request body to the
  fake upstream over one httpcore AsyncHTTP11Connection per client connection
  and returning the reply (the floor for a proxy on h11 in, httpcore out:
  no routing, no pipeline, no pool, no timeouts, no logging); streamed
  replies are forwarded chunk by chunk as they arrive;
- wire relay (--relay PORT --wire): that relay with both sockets on the
  router's own transport (llmrouter/wire.py, asyncio transports) instead of
  anyio's socket streams: the floor for any proxy on these libraries.

    python3 bench/bare_server.py [--relay 18080 [--wire]] --port 18081
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
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fake_upstream import COMPLETION  # noqa: E402

HEADERS = [("content-type", "application/json"), ("content-length", str(len(COMPLETION)))]


RELAY_PORT = 0


URL = "/v1/chat/completions"


async def relay(conn: h11.Connection, upstream: httpcore.AsyncHTTP11Connection, body: bytes, send) -> None:  # type: ignore[no-untyped-def]
    """Forwards one request; a JSON reply whole, a stream chunk by chunk as it
    arrives (the head goes out with the first chunk, as the router does)."""
    url = httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=RELAY_PORT, target=URL.encode())
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    response = await upstream.handle_async_request(httpcore.Request("POST", url, content=body, headers=headers))
    if any(k.lower() == b"content-length" for k, _ in response.headers):
        reply = b"".join([chunk async for chunk in response.aiter_stream()])
        head = [("content-type", "application/json"), ("content-length", str(len(reply)))]
        await send(conn.send(h11.Response(status_code=200, headers=head)) + conn.send(h11.Data(data=reply)) + conn.send(h11.EndOfMessage()))
    else:
        held = conn.send(h11.Response(status_code=200, headers=[("content-type", "text/event-stream")]))
        async for chunk in response.aiter_stream():
            await send(held + conn.send(h11.Data(data=chunk)))
            held = b""
        await send(held + conn.send(h11.EndOfMessage()))
    await response.aclose()


async def serve(receive, send, upstream: httpcore.AsyncHTTP11Connection | None) -> None:  # type: ignore[no-untyped-def]
    """One client connection: `receive()` gives bytes (b"" at the end), `send(data)` writes them."""
    conn = h11.Connection(h11.SERVER)
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await receive()
            if not data:
                return
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            body.clear()
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            if upstream is not None:
                await relay(conn, upstream, bytes(body), send)
            else:
                data = conn.send(h11.Response(status_code=200, headers=HEADERS))
                await send(data + conn.send(h11.Data(data=COMPLETION)) + conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # connection: close, or a broken exchange
            conn.start_next_cycle()
        else:
            return


async def handle(stream: anyio.abc.SocketStream) -> None:
    async def receive() -> bytes:
        try:
            return await stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return b""

    upstream = None
    if RELAY_PORT:
        origin = httpcore.Origin(b"http", b"127.0.0.1", RELAY_PORT)
        upstream = httpcore.AsyncHTTP11Connection(origin, await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", RELAY_PORT))
    async with stream:
        try:
            await serve(receive, stream.send, upstream)
        except Exception:  # one broken connection must not stop the listener
            pass


class WireStream(httpcore.AsyncNetworkStream):
    """A wire as httpcore's network stream (the router's `_Socket` without its extras)."""

    def __init__(self, wire) -> None:  # type: ignore[no-untyped-def]
        self.wire = wire

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.wire.read()

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            await self.wire.write(buffer)

    async def aclose(self) -> None:
        self.wire.close()


async def handle_wire(wire) -> None:  # type: ignore[no-untyped-def]
    from llmrouter.wire import connect

    origin = httpcore.Origin(b"http", b"127.0.0.1", RELAY_PORT)
    upstream = httpcore.AsyncHTTP11Connection(origin, WireStream(await connect("127.0.0.1", RELAY_PORT)))
    try:
        await serve(wire.read, wire.write, upstream)
    except Exception:  # one broken connection must not stop the listener
        pass
    finally:
        wire.close()
        await upstream.aclose()


async def main_wire(port: int) -> None:
    import asyncio

    from llmrouter.wire import Wire

    async with anyio.create_task_group() as tg:
        server = await asyncio.get_running_loop().create_server(lambda: Wire(lambda w: tg.start_soon(handle_wire, w)), "127.0.0.1", port)
        print(f"ready {server.sockets[0].getsockname()[1]} pid {os.getpid()}", flush=True)
        await anyio.sleep_forever()


async def main(port: int) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    print(f"ready {listener.extra(SocketAttribute.local_port)} pid {os.getpid()}", flush=True)
    await listener.serve(handle)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--relay", type=int, default=0, help="forward to the fake upstream on this port instead of answering")
    ap.add_argument("--wire", action="store_true", help="with --relay: both sockets on llmrouter's wires instead of anyio streams")
    args = ap.parse_args()
    RELAY_PORT = args.relay
    try:
        anyio.run(main_wire if args.wire and args.relay else main, args.port)
    except KeyboardInterrupt:
        pass
