"""Upstream HTTP: one httpcore connection pool per provider.

This is the only module that imports httpcore for serving. httpcore's errors
are translated here into the router's UpstreamError family, so the pipeline
never sees a foreign exception.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterator

import anyio
import httpcore

from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall


@contextlib.contextmanager
def translate_errors(provider: Provider) -> Iterator[None]:
    name = provider.name
    try:
        yield
    except httpcore.ConnectTimeout as exc:
        raise errors.UpstreamTimeout(f"provider '{name}': connect timed out after {provider.connect_timeout:g}s") from exc
    except httpcore.TimeoutException as exc:
        raise errors.UpstreamTimeout(f"provider '{name}': timed out ({type(exc).__name__})") from exc
    except httpcore.ConnectError as exc:
        raise errors.UpstreamConnectError(f"provider '{name}': cannot connect to {provider.base_url}: {exc or 'connection refused'}") from exc
    except httpcore.UnsupportedProtocol as exc:
        raise errors.UpstreamConnectError(f"provider '{name}': unsupported URL {provider.base_url}") from exc
    except (httpcore.ProtocolError, httpcore.NetworkError) as exc:
        raise errors.UpstreamProtocolError(f"provider '{name}': connection failed: {exc or type(exc).__name__}") from exc


class UpstreamStream:
    """An open upstream response: its head, then body chunks as they arrive."""

    def __init__(self, provider: Provider, response: httpcore.Response) -> None:
        self.provider = provider
        self.status = response.status
        self.headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers]
        self._response = response
        self._chunks: AsyncIterator[bytes] = response.aiter_stream().__aiter__()
        self.done = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read(self) -> bytes:
        """The next body chunk, b"" at the end. Raises UpstreamError."""
        if self.done:
            return b""
        with translate_errors(self.provider):
            try:
                return await self._chunks.__anext__()
            except StopAsyncIteration:
                self.done = True
                return b""

    async def read_all(self, limit: int) -> bytes:
        body = bytearray()
        while chunk := await self.read():
            body += chunk
            if len(body) > limit:
                raise errors.UpstreamProtocolError(f"provider '{self.provider.name}': response larger than {limit} bytes")
        return bytes(body)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._response.aclose()


class Upstreams:
    def __init__(self, providers: tuple[Provider, ...]) -> None:
        self._pools = {
            p.name: httpcore.AsyncConnectionPool(
                max_connections=p.max_connections,
                max_keepalive_connections=p.max_connections,
                keepalive_expiry=30.0,
                retries=0,
            )
            for p in providers
        }

    async def open(self, provider: Provider, call: UpstreamCall, method: str = "POST") -> UpstreamStream:
        """Sends the request and waits for the response head (first_byte_timeout)."""
        read_timeout = max(provider.first_byte_timeout, provider.idle_timeout)
        url = httpcore.URL(provider.base_url + call.path)
        host = url.host if url.port is None else b"%b:%d" % (url.host, url.port)
        headers = [(b"host", host), (b"content-length", str(len(call.body)).encode())]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in call.headers]
        request = httpcore.Request(
            method,
            url,
            headers=headers,
            content=call.body,
            extensions={
                "timeout": {
                    "connect": provider.connect_timeout,
                    "read": read_timeout if math.isfinite(read_timeout) else None,
                    "write": max(provider.connect_timeout, 30.0),
                    "pool": provider.first_byte_timeout,
                }
            },
        )
        pool = self._pools[provider.name]
        with translate_errors(provider):
            try:
                with anyio.fail_after(provider.first_byte_timeout):
                    response = await pool.handle_async_request(request)
            except TimeoutError as exc:
                raise errors.UpstreamTimeout(
                    f"provider '{provider.name}': no response within {provider.first_byte_timeout:g}s"
                ) from exc
        return UpstreamStream(provider, response)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            with contextlib.suppress(Exception):
                await pool.aclose()
