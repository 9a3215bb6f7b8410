"""What one upstream exchange costs the router's upstream layer alone:
Python calls and event-loop iterations per fetch (Upstreams.open, read_all,
aclose) of a small JSON reply, over plain HTTP and over TLS, on one kept-alive
pooled connection. The canned upstream runs in the same process and thread
(an asyncio protocol answering each request), so its calls are counted too:
compare commits with it, not with bench/hotpath.py's counts.

    python3 bench/upstream_fetch.py [--fetches 1000] [--src DIR]

--src DIR measures another copy of the package (say, an older commit's).
TLS needs the openssl command (a throwaway self-signed certificate).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_src = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else str(ROOT)
sys.path.insert(0, _src)

from llmrouter.config import Provider  # noqa: E402
from llmrouter.formats import UpstreamCall  # noqa: E402
from llmrouter.upstream import Upstreams  # noqa: E402

BODY = b'{"id":"x","object":"chat.completion","choices":[]}'
REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
CALL = UpstreamCall("/chat/completions", [("content-type", "application/json"), ("authorization", "Bearer k")], b'{"model":"m","messages":[]}')


class Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if data.endswith(CALL.body):  # head and body come in one write
            self.transport.write(REPLY)


def certificate(directory: str) -> tuple[str, str]:
    cert, key = f"{directory}/cert.pem", f"{directory}/key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def measure(scheme: str, fetches: int, cert: str, key: str) -> None:
    loop = asyncio.get_running_loop()
    context = None
    if scheme == "https":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    server = await loop.create_server(Canned, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    provider = Provider(name="p", format="openai", base_url=f"{scheme}://127.0.0.1:{port}/v1", ca_bundle=cert if context else None)  # type: ignore[arg-type]
    upstreams = Upstreams((provider,))

    async def fetch() -> None:
        stream = await upstreams.open(provider, CALL)
        try:
            assert await stream.read_all(1 << 20) == BODY
        finally:
            await stream.aclose()

    for _ in range(50):  # warm up: the connection, caches
        await fetch()
    selector = loop._selector  # type: ignore[attr-defined]  # counting iterations only
    real_select, iterations = selector.select, 0

    def counting_select(timeout: float | None = None):  # type: ignore[no-untyped-def]
        nonlocal iterations
        iterations += 1
        return real_select(timeout)

    selector.select = counting_select
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(fetches):
        await fetch()
    prof.disable()
    selector.select = real_select
    calls = pstats.Stats(prof).total_calls / fetches  # type: ignore[attr-defined]
    print(f"{scheme}: {calls:,.0f} calls, {iterations / fetches:.1f} event-loop iterations per fetch; pool {upstreams.pool_stats('p')}")
    await upstreams.aclose()
    server.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        cert, key = certificate(directory)
        for scheme in ("http", "https"):
            await measure(scheme, args.fetches, cert, key)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fetches", type=int, default=1000)
    ap.add_argument("--src", help="directory holding the llmrouter package to measure (default: this checkout)")
    asyncio.run(main(ap.parse_args()))
