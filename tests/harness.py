"""Run the real router on loopback for a test, in its own background loop.

    with running_router(CONFIG_TOML.format(upstream=fake.url)) as router:
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="x")

`router.events` collects every event the router published (through the real
bus, as a subscriber would see them) and `router.records` the `complete` ones.
The harness counts as a listener to the feed, so the router builds every
event; with `listen=False` it sees only what the router publishes with
nobody listening (the `complete` records).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from background import BackgroundLoop
from fakes import FakeUpstream
from llmrouter import config as config_module
from llmrouter.app import App

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def make_config(toml_text: str, environ: Mapping[str, str] | None = None, base_dir: str | None = None) -> config_module.Config:
    return config_module.parse(tomllib.loads(toml_text), source="test.toml", environ=environ or {}, base_dir=base_dir)


@dataclass
class RunningRouter:
    app: App
    port: int
    loop: BackgroundLoop
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def records(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "complete"]

    def wait_records(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The `complete` records, once at least `count` have been published."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} complete records, got {len(self.records)}: {self.records}")
            time.sleep(0.005)
        return self.records

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Returns once no request is in flight: every record of the requests
        made so far has been published (a check for a second one can follow)."""
        deadline = time.monotonic() + timeout
        while self.app.ctx.in_flight:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.app.ctx.in_flight} request(s) still in flight after {timeout}s")
            time.sleep(0.005)

    def shutdown(self) -> None:
        self.loop.call(_shutdown, self.app)


async def _shutdown(app: App) -> None:
    app.shutdown()


@contextlib.contextmanager
def running_router(
    toml_text: str | config_module.Config, environ: Mapping[str, str] | None = None, *, listen: bool = True
) -> Iterator[RunningRouter]:
    cfg = toml_text if isinstance(toml_text, config_module.Config) else make_config(toml_text, environ)
    events: list[dict[str, Any]] = []
    with BackgroundLoop() as loop:
        holder: list[Any] = [None, events, listen]
        port = loop.start(_run_with_events, cfg, holder)
        yield RunningRouter(holder[0], port, loop, events)


async def _run_with_events(cfg: config_module.Config, holder: list, *, task_status: anyio.abc.TaskStatus[int]) -> None:
    app = App(cfg)
    holder[0] = app
    events: list[dict[str, Any]] = holder[1]
    original = app.bus.publish

    def publish(event: dict[str, Any], text: str | None = None) -> None:
        events.append(event)
        original(event, text)

    app.driver.publish = publish
    if holder[2]:
        app.bus.listeners += 1  # the harness hears every event, as a feed subscriber would
    await app.run(task_status=task_status)


# Three fake upstreams, one per format, behind one router; a model's prefix
# (`oa/…`, `an/…`, `ol/…`, stripped) picks the upstream. Serves test_matrix.py
# and test_ollama_client.py.
UPSTREAMS = ("openai", "anthropic", "ollama")
MODEL = {"openai": "oa/gpt-x", "anthropic": "an/claude-x", "ollama": "ol/llama3.2:latest"}
SENT = {"openai": "gpt-x", "anthropic": "claude-x", "ollama": "llama3.2:latest"}  # the model each upstream sees
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="  # 1×1

_THREE_UPSTREAMS = """
[server]
port = 0
# The tests share one router and script many upstream failures on purpose;
# circuit breaking (tested in test_breaker.py) must not turn them into 503s.
breaker_failures = 1000000

[[providers]]
name = "oa"
format = "openai"
base_url = "{oa}/v1"

[[providers]]
name = "an"
format = "anthropic"
base_url = "{an}"
models = ["claude-declared"]

[[providers]]
name = "ol"
format = "ollama"
base_url = "{ol}"

[[routers]]
type = "prefix"
model_prefix = "oa/"
provider = "oa"
strip_prefix = true

[[routers]]
type = "prefix"
model_prefix = "an/"
provider = "an"
strip_prefix = true

[[routers]]
type = "prefix"
model_prefix = "ol/"
provider = "ol"
strip_prefix = true
"""


@contextlib.contextmanager
def three_upstreams(more_routers: str = "") -> Iterator[tuple[RunningRouter, dict[str, FakeUpstream]]]:
    """The router and its fakes by upstream format; `more_routers` (TOML)
    follows the prefix routers. Fails if a fake recorded an error."""
    with FakeUpstream() as oa, FakeUpstream() as an, FakeUpstream() as ol:
        with running_router(_THREE_UPSTREAMS.format(oa=oa.url, an=an.url, ol=ol.url) + more_routers) as router:
            yield router, {"openai": oa, "anthropic": an, "ollama": ol}
        for fake in (oa, an, ol):
            assert not fake.errors, fake.errors


def raw_http(port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True) -> bytes:
    """Sends raw bytes and returns what came back before the router closed
    (or, with read_until_close=False, the first piece that came back)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close:
                    break
        return b"".join(chunks)


def raw_request(port: int, method: str, path: str, *, host: str | None = "127.0.0.1", headers: dict[str, str] | None = None,
                body: bytes = b"", version: str = "HTTP/1.1", timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own, written by hand (any Host, or
    none); returns the status, the response headers (lower-case names) and the body."""
    head = [f"{method} {path} {version}", "connection: close"]
    if host is not None:
        head.append(f"host: {host}")
    if body:
        head.append(f"content-length: {len(body)}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    raw = raw_http(port, ("\r\n".join(head) + "\r\n\r\n").encode() + body, timeout=timeout)
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    got = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), got, rest


class FeedReader:
    """A /dashboard/events subscriber on a raw socket, read by a thread that
    never stops (a subscriber that stops reading is cut off); `data` grows
    as the feed delivers."""

    def __init__(self, port: int, headers: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"GET /dashboard/events HTTP/1.1\r\nhost: 127.0.0.1\r\n" + headers + b"\r\n")
        self.sock.settimeout(10)
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(1 << 20):
                self.data.extend(chunk)

    def until(self, marker: bytes, timeout: float = 10.0, count: int = 1) -> None:
        """Waits until the feed has sent `marker` `count` times (or more)."""
        deadline = time.monotonic() + timeout
        while self.data.count(marker) < count:
            seen = self.data.count(marker)
            assert self.thread.is_alive(), f"the feed closed after {seen} of {count} {marker!r}"
            assert time.monotonic() < deadline, f"the feed sent {seen} of {count} {marker!r} in {timeout}s"
            time.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def provider_config(url: str, name: str = "fake", fmt: str = "openai", extra: str = "") -> str:
    base = url + "/v1" if fmt == "openai" else url
    return f'[[providers]]\nname = "{name}"\nformat = "{fmt}"\nbase_url = "{base}"\n{extra}\n'
