"""What llmrouter/upstream.py assumes about httpcore's and h11's insides.

upstream.py hands httpcore a Request it filled in itself (`_Request`, with
h11's own `Headers`, checked once per distinct header set), reads the body
from httpcore's h11 connection, settles a response through its stream's
aclose and replaces httpcore's per-connection locks. Each assumption has a
quiet fallback or none; these tests fail loudly when a new httpcore or h11
(pyproject.toml names only the lowest versions) changes what they rely on.
"""

from __future__ import annotations

import contextlib
import socket

import anyio
import anyio.abc
import h11
import httpcore
import pytest
from anyio.abc import SocketAttribute

from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall
from llmrouter.upstream import Upstreams, _h11_of, _Pool, _Unshared

pytestmark = pytest.mark.anyio

CALL = UpstreamCall("/chat/completions", [("content-type", "application/json"), ("Authorization", "Bearer k")], b'{"model":"m"}')
PROVIDER = Provider(name="p", format="openai", base_url="http://127.0.0.1:8/v1")  # type: ignore[arg-type]


def httpcores_own() -> httpcore.Request:
    """The request as httpcore's own __init__ builds it from what the pool used to pass."""
    pool = _Pool(PROVIDER)
    headers = [(b"host", pool.host_header), (b"content-length", b"%d" % len(CALL.body))]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in CALL.headers]
    url = httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=8, target=b"/v1" + CALL.path.encode())
    return httpcore.Request("POST", url, headers=headers, content=CALL.body, extensions={"timeout": {"connect": PROVIDER.connect_timeout}})


async def body_of(request: httpcore.Request) -> bytes:
    return b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]


async def test_the_pools_request_is_what_httpcore_builds() -> None:
    ours, theirs = _Pool(PROVIDER).request("POST", CALL), httpcores_own()
    # The same attributes (a new one in httpcore's __init__ fails here) with the same values.
    assert sorted(vars(ours)) == sorted(vars(theirs))
    assert (ours.method, ours.url, ours.extensions) == (theirs.method, theirs.url, theirs.extensions)
    assert [(k.lower(), v) for k, v in theirs.headers] == list(ours.headers)
    assert await body_of(ours) == await body_of(theirs)
    assert isinstance(ours, httpcore.Request)


def test_h11_takes_the_pools_headers_as_they_are_and_checks_them_alike() -> None:
    ours, theirs = _Pool(PROVIDER).request("POST", CALL), httpcores_own()
    # httpcore turns a request into an h11.Request this way (_send_request_headers).
    event = h11.Request(method=ours.method, target=ours.url.target, headers=ours.headers)  # type: ignore[arg-type]
    assert event.headers is ours.headers  # not checked again
    checked = h11.Request(method=theirs.method, target=theirs.url.target, headers=theirs.headers)
    assert event.headers._full_items == checked.headers._full_items  # h11's layout: (raw name, name, value)
    conn = h11.Connection(h11.CLIENT)
    assert conn.send(event) == h11.Connection(h11.CLIENT).send(checked)


async def test_a_header_h11_refuses_is_an_upstream_protocol_error() -> None:
    with socket.socket() as s:  # refused before any connection: nothing listens here
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prov = Provider(name="p", format="openai", base_url=f"http://127.0.0.1:{port}/v1")  # type: ignore[arg-type]
    upstreams = Upstreams((prov,))
    with pytest.raises(errors.UpstreamProtocolError, match="Illegal header value"):
        await upstreams.open(prov, UpstreamCall("/x", [("x-bad", " leading space")], b""))
    assert upstreams.pool_stats("p")["opened"] == 0
    await upstreams.aclose()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https-branch"])
async def test_httpcores_connections_have_the_parts_the_pool_replaces_and_reads(tls: bool) -> None:
    """A real exchange on httpcore's connection, set up as the pool sets it
    up: an AsyncHTTP11Connection over our socket, or (the pool's https
    branch, here on plain http) an AsyncHTTPConnection that makes one."""
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(reply)
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await stream.receive()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        port = listener.extra(SocketAttribute.local_port)
        pool = _Pool(Provider(name="p", format="openai", base_url=f"http://127.0.0.1:{port}/v1"))  # type: ignore[arg-type]
        pool.tls = tls
        conn, response = await pool.send(pool.request("POST", CALL), None)
        http11 = conn.http
        if tls:
            assert isinstance(conn.http, httpcore.AsyncHTTPConnection)
            assert isinstance(conn.http._request_lock, _Unshared)  # replaced when the pool made it
            assert conn.socket is not None and conn.socket.sent > 0  # _TLSBackend handed over its socket
            conn.first_response()  # as UpstreamStream does
            http11 = conn.http._connection
        assert isinstance(http11, httpcore.AsyncHTTP11Connection)
        assert conn.unshared and isinstance(http11._state_lock, _Unshared)  # the pool replaced httpcore's lock
        h11_conn = _h11_of(conn.http)
        assert h11_conn is http11._h11_state and isinstance(h11_conn, h11.Connection)  # UpstreamStream reads the body from it
        assert h11_conn.next_event() == h11.Data(data=b"ok")
        assert type(h11_conn.next_event()) is h11.EndOfMessage
        # UpstreamStream._settle closes the response through its stream's aclose.
        await response.stream.aclose()  # type: ignore[union-attr]
        assert conn.http.is_idle()
        await pool.discard(conn)
        tg.cancel_scope.cancel()


async def test_without_h11s_private_headers_the_pool_falls_back_to_httpcores_request(monkeypatch) -> None:
    """Another h11 without `h11._headers`: the pool builds httpcore's own
    Request, which h11 turns into the same bytes."""
    import llmrouter.upstream as upstream

    fast = _Pool(PROVIDER).request("POST", CALL)
    monkeypatch.setattr(upstream, "Headers", None)
    plain = _Pool(PROVIDER).request("POST", CALL)
    assert type(plain) is httpcore.Request
    as_sent = [h11.Connection(h11.CLIENT).send(h11.Request(method=r.method, target=r.url.target, headers=r.headers)) for r in (fast, plain)]  # type: ignore[arg-type]
    assert as_sent[0].lower() == as_sent[1].lower()
    assert await body_of(plain) == await body_of(fast)
