"""The browser dashboard, in a real headless Chromium driven over the DevTools protocol.

Two kinds of feed: the real router (a request made during the test must appear
with its provider, model and tags), and a scripted stand-in server that serves
the same page with exactly the events a test needs (dropped events, prices,
hostile prompts, the feed going away).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from fakes import FakeUpstream, Reply
from harness import provider_config, running_router
from tiers import need_tool

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "llmrouter" / "dashboard.html"


def chromium() -> str:
    return need_tool("chromium", "chromium-browser", "google-chrome", hint="CI installs Debian's `chromium`")


# --- a minimal DevTools-protocol client (stdlib websocket) -------------------------------


class WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: masked text frames out, frames in."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        assert url.startswith("ws://")
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            piece = self.sock.recv(1)
            if not piece:
                raise ConnectionError("DevTools closed the websocket handshake")
            head += piece
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            piece = self.sock.recv(n - len(out))
            if not piece:
                raise ConnectionError("DevTools closed the websocket")
            out += piece
        return out

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._exact(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            opcode = first & 0x0F
            if opcode in (0x9, 0xA):  # ping / pong: not part of a message
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


class Browser:
    """Headless Chromium with one page, driven through its DevTools websocket."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900, args: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", f"--window-size={width},{height}", *args, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        # Chromium prints its DevTools address once it listens: the readiness handshake.
        address = None
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        while address is None:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if line.startswith("DevTools listening on "):
                address = line.split(" on ", 1)[1].strip()
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools server")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep its pipe drained
        port = address.split(":")[2].split("/")[0]
        self.ws = WebSocket(self._page_socket(int(port)))
        self._ids = 0
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    @staticmethod
    def _page_socket(port: int) -> str:
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            if time.monotonic() > deadline:
                raise RuntimeError("chromium opened no page")
            time.sleep(0.1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._ids += 1
        self.ws.send(json.dumps({"id": self._ids, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.receive())
            if message.get("id") == self._ids:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Polls a JS expression until it is truthy (with a deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                body = self.js("document.body ? document.body.innerText : ''")
                raise AssertionError(f"timed out waiting for {expression!r}; the page shows:\n{body}")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def card_texts(browser: Browser, section: str = "done") -> list[str]:
    return browser.js(f"[...document.querySelectorAll('#{section} .card')].map(c => c.innerText)")


def wait_subscribers(url: str, count: int = 1, timeout: float = 15.0) -> None:
    """The router reports its feed's subscribers: the page is listening once it counts."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url + "/health?verbose", timeout=5) as r:
            if json.load(r)["events"]["subscribers"] >= count:
                return
        if time.monotonic() > deadline:
            raise AssertionError("the page never subscribed to the event feed")
        time.sleep(0.05)


# --- against the real router --------------------------------------------------------------

ROUTER_CONFIG = """
[server]
port = 0
max_attempts = 2
[classifiers.keyword]
enabled = true
tags = {{ code = ["python", "function"], math = ["integral"] }}
{local}{cloud}
[[routers]]
type = "prefix"
model_prefix = "gpt-"
provider = "cloud"
[[routers]]
type = "fallback"
providers = ["local", "cloud"]
"""


def test_requests_appear_on_the_page_with_provider_model_and_tags(browser, tmp_path):
    with FakeUpstream() as local, FakeUpstream() as cloud:
        text = ROUTER_CONFIG.format(local=provider_config(local.url, name="local", extra="cost_per_1m_tokens = 0.0"),
                                    cloud=provider_config(cloud.url, name="cloud", extra="cost_per_1m_tokens = 2.5"))
        with running_router(text) as router:
            browser.open(router.url + "/dashboard")
            browser.wait_for("document.getElementById('status').textContent === 'live'")
            wait_subscribers(router.url)
            client = openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0)

            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "write a python function that adds"}])
            browser.wait_for("document.querySelectorAll('#done .card').length === 1")
            (card,) = card_texts(browser)
            assert "cloud" in card and "gpt-4o-mini" in card
            assert "code" in browser.js("[...document.querySelectorAll('#done .card .tag')].map(t => t.textContent).join(',')")
            assert "write a python function that adds" in card
            assert "echo: write a python function that adds" in card
            assert "ms" in card and "tokens" in card

            # A streamed request whose first provider fails: the fallback and both attempts show.
            local.enqueue(Reply.error(503, "overloaded"))
            for _ in client.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "solve this integral"}], stream=True):
                pass
            browser.wait_for("document.querySelectorAll('#done .card').length === 2")
            newest = card_texts(browser)[0]
            assert "cloud" in newest and "llama3" in newest and "math" in newest and "stream" in newest
            attempts = browser.js("document.querySelector('#done .card .attempts').innerText")
            assert "local/llama3" in attempts and "503" in attempts and "cloud/llama3" in attempts

            client.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "what is the capital of France?"}])
            browser.wait_for("document.querySelectorAll('#done .card').length === 3")
            assert card_texts(browser)[0].split()[1] == "local"

            # A failed request: an error card, counted as an error for its provider.
            local.enqueue(Reply.error(500, "boom"))
            cloud.enqueue(Reply.error(500, "boom too"))
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "hello"}])
            browser.wait_for("document.querySelectorAll('#done .card.error').length === 1")
            assert "provider 'cloud' returned 500: boom too" in card_texts(browser)[0]

            rows = browser.js("Object.fromEntries([...document.querySelectorAll('#providers tbody tr')].map(r => [r.dataset.provider, [...r.cells].map(c => c.textContent)]))")
            assert rows["cloud"][1:3] == ["3", "1"]  # requests, errors
            assert rows["local"][1:3] == ["1", "0"]
            assert browser.js("document.getElementById('requests').textContent") == "4"
            browser.screenshot(tmp_path / "dashboard.png")
            if os.environ.get("LLMROUTER_UPDATE_DOCS"):  # refresh the README's picture on request
                shutil.copyfile(tmp_path / "dashboard.png", ROOT / "docs" / "img" / "dashboard.png")
    assert (tmp_path / "dashboard.png").read_bytes().startswith(b"\x89PNG")


def test_in_flight_card_until_complete_and_reconnect_after_restart(browser):
    with FakeUpstream() as fake:
        port = free_port()
        text = f"[server]\nport = {port}\n" + provider_config(fake.url) + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'
        with running_router(text) as router:
            browser.open(router.url + "/dashboard")
            browser.wait_for("document.getElementById('status').textContent === 'live'")
            wait_subscribers(router.url)
            fake.enqueue(Reply.text("slow answer").delayed(1.5))
            done = threading.Event()
            client = openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0)
            worker = threading.Thread(target=lambda: (client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}]), done.set()))
            worker.start()
            inflight = browser.wait_for("(() => { const c = document.querySelector('#inflight .card'); return c && c.innerText.includes('fake') && c.innerText; })()")
            assert "⋯" in inflight and "m1" in inflight and "1 in flight" in inflight
            assert browser.js("document.getElementById('inflight-count').textContent") == "1"
            worker.join(15)
            assert done.is_set()
            browser.wait_for("document.querySelectorAll('#inflight .card').length === 0 && document.querySelectorAll('#done .card').length === 1")
            router.shutdown()
            browser.wait_for("document.getElementById('status').textContent.startsWith('disconnected')")
        with running_router(text) as router:
            browser.wait_for("document.getElementById('status').textContent === 'live'", timeout=30)
            wait_subscribers(router.url)
            openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0).chat.completions.create(model="m2", messages=[{"role": "user", "content": "again"}])
            browser.wait_for("document.querySelectorAll('#done .card').length === 2")
            assert "m2" in card_texts(browser)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- against a scripted feed ---------------------------------------------------------------


class ScriptedFeed:
    """Serves the real page, a /health?verbose with prices, and events the test pushes."""

    def __init__(self, prices: dict[str, float | None]) -> None:
        self.prices = prices
        self.events: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.connections = 0
        self.hold_prices, self.prices_ready = threading.Event(), threading.Event()  # to delay /health
        feed = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/dashboard/events"):
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("cache-control", "no-cache")
                    self.end_headers()
                    self.wfile.write(b": connected\n\n")
                    self.wfile.flush()
                    feed.connections += 1
                    while (frame := feed.events.get()) is not None:
                        self.wfile.write(frame)
                        self.wfile.flush()
                    self.close_connection = True  # None: end this stream, as a restarting router does
                    return
                if self.path == "/dashboard":
                    body, ctype = PAGE.read_bytes(), "text/html; charset=utf-8"
                elif self.path == "/health?verbose":
                    if feed.hold_prices.is_set():
                        feed.prices_ready.wait(30)
                    providers = [{"name": n, "format": "openai", "cost_per_1m_tokens": p} for n, p in feed.prices.items()]
                    body, ctype = json.dumps({"providers": providers, "events": {"subscribers": feed.connections}}).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def send(self, event: dict[str, Any]) -> None:
        self.events.put(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())

    def end_stream(self) -> None:
        self.events.put(None)

    def close(self) -> None:
        self.end_stream()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    feed = ScriptedFeed({"paid": 3.0, "local": 0.0, "mystery": None})
    try:
        yield feed
    finally:
        feed.close()


def complete(id: int, provider: str, tokens: tuple[int, int], **extra: Any) -> dict[str, Any]:
    record = {
        "type": "complete", "v": 1, "id": id, "ts_ms": 1_700_000_000_000, "request_id": f"req-{id}", "client_format": "openai",
        "provider": provider, "requested_model": "m", "sent_model": "m", "duration_ms": 120, "first_byte_ms": None, "status": 200,
        "stream": False, "tags": [], "plugins": [], "system": None, "messages": [{"role": "user", "content": "q"}],
        "response": {"id": "r", "model": "m", "content": "a", "stop_reason": "end_turn", "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]}},
        "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]}, "attempts": [{"provider": provider, "model": "m", "outcome": "ok", "status": 200, "duration_ms": 100, "error": None}],
        "error": None, "error_code": None,
    }
    record.update(extra)
    return record


def test_cost_dropped_events_local_time_and_untrusted_text(browser, scripted):
    scripted.hold_prices.set()  # the prices arrive after the events: the cards catch up
    browser.open(scripted.url + "/dashboard")
    browser.wait_for("document.getElementById('status').textContent === 'live'")
    hostile = '<img src=x onerror="window.__owned = 1"><script>window.__owned = 2</script>'
    scripted.send(complete(1, "paid", (600_000, 400_000), requested_model="smart", sent_model="gpt-x",
                           messages=[{"role": "user", "content": hostile}], plugins=["response-healing"], tags=["<b>tag</b>"]))
    scripted.send(complete(2, "local", (10, 20)))
    scripted.send({"type": "dropped", "v": 1, "count": 7})
    browser.wait_for("document.querySelectorAll('#done .card').length === 2")
    assert "cost ?" in card_texts(browser)[1]
    scripted.prices_ready.set()
    browser.wait_for("document.getElementById('cost').textContent === '$3.00'")
    paid = card_texts(browser)[1]
    assert hostile in paid  # shown as the text it is
    assert "smart → gpt-x" in paid and "response-healing" in paid and "<b>tag</b>" in paid
    assert "cost $3.00" in paid  # 1M tokens at $3 per 1M
    expected_time = browser.js("(() => { const d = new Date(1700000000000); const p = n => String(n).padStart(2, '0'); return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()); })()")
    assert paid.startswith(expected_time)
    assert browser.js("window.__owned === undefined && document.querySelectorAll('#done img, #done script, #done b').length === 0")
    browser.wait_for("document.getElementById('dropped').textContent.startsWith('7 events dropped') && !document.getElementById('dropped').hidden")
    assert browser.js("document.getElementById('cost').textContent") == "$3.00"
    # A provider without a declared price makes its cost, and so the total, unknown.
    scripted.send(complete(3, "mystery", (5, 5)))
    browser.wait_for("document.querySelectorAll('#done .card').length === 3")
    assert browser.js("document.getElementById('cost').textContent") == "?"
    rows = browser.js("Object.fromEntries([...document.querySelectorAll('#providers tbody tr')].map(r => [r.dataset.provider, r.cells[5].textContent]))")
    assert rows == {"paid": "$3.00", "local": "$0", "mystery": "?"}


def test_stream_end_clears_stale_in_flight_cards_and_reconnects(browser, scripted):
    browser.open(scripted.url + "/dashboard")
    browser.wait_for("document.getElementById('status').textContent === 'live'")
    scripted.send({"type": "start", "v": 1, "id": 5, "ts_ms": 1_700_000_000_000, "model": "m", "in_flight": 1, "request_id": "r", "client_format": "openai", "stream": False})
    scripted.send({"type": "classified", "v": 1, "id": 5, "ts_ms": 1_700_000_000_001, "tags": ["code"]})
    scripted.send({"type": "routed", "v": 1, "id": 5, "ts_ms": 1_700_000_000_002, "provider": "paid", "model": "m-big", "attempt": 2})
    text = browser.wait_for("(() => { const c = document.querySelector('#inflight .card'); return c && c.innerText.includes('fallback') && c.innerText; })()")
    assert "paid" in text and "m-big" in text and "code" in text and "attempt 2" in text
    scripted.end_stream()  # the router went away mid-request: its `complete` will never come
    browser.wait_for("document.getElementById('status').textContent.startsWith('disconnected')")
    browser.wait_for("document.getElementById('status').textContent === 'live'", timeout=20)
    assert browser.js("document.querySelectorAll('#inflight .card').length") == 0
    scripted.send(complete(6, "local", (1, 1)))
    browser.wait_for("document.querySelectorAll('#done .card').length === 1")


def test_provider_table_shows_live_measurements(browser, scripted):
    browser.open(scripted.url + "/dashboard")
    browser.wait_for("document.getElementById('status').textContent === 'live'")
    scripted.send(complete(1, "paid", (10, 20)))
    measured = {"type": "measured", "v": 1, "ts_ms": 1_700_000_000_000, "samples": 3, "in_flight": 2, "ttft_ms": 412.4, "duration_ms": 900.0, "tokens_per_sec": 55.6, "error_rate": 0.25}
    scripted.send({**measured, "provider": "paid"})
    scripted.send({**measured, "provider": "spare", "in_flight": 0, "ttft_ms": None, "tokens_per_sec": None, "error_rate": 1.0})
    browser.wait_for("document.querySelectorAll('#providers tbody tr').length === 2")
    rows = browser.js("Object.fromEntries([...document.querySelectorAll('#providers tbody tr')].map(r => [r.dataset.provider, [...r.cells].slice(7).map(c => c.textContent)]))")
    assert rows == {"paid": ["2", "412 ms", "56", "25%"], "spare": ["0", "–", "–", "100%"]}


# --- DNS rebinding and other origins (issue 10) ------------------------------------------

# What a hostile page's script tries: read the event feed (fetch and
# EventSource) and post a chat. `base` is "" for the page's own origin.
ATTACK = """(async (base) => {
  const out = {};
  try {
    const r = await fetch(base + '/dashboard/events');
    const first = await r.body.getReader().read();
    out.feed = r.status + ' ' + new TextDecoder().decode(first.value || new Uint8Array());
  } catch (e) { out.feed = 'blocked ' + e.name; }
  out.eventsource = await new Promise(resolve => {
    const es = new EventSource(base + '/dashboard/events');
    es.onopen = () => { es.close(); resolve('open'); };
    es.onerror = () => { es.close(); resolve('error'); };
  });
  try {
    const r = await fetch(base + '/v1/chat/completions', {method: 'POST', headers: {'content-type': 'application/json'},
      body: JSON.stringify({model: 'm', messages: [{role: 'user', content: 'spend their keys'}]})});
    out.chat = r.status + ' ' + await r.text();
  } catch (e) { out.chat = 'blocked ' + e.name; }
  try {  // a "simple" request: no preflight, the reply is opaque
    await fetch(base + '/v1/chat/completions', {method: 'POST', mode: 'no-cors', headers: {'content-type': 'text/plain'},
      body: JSON.stringify({model: 'm', messages: [{role: 'user', content: 'spend their keys'}]})});
    out.simple = 'sent';
  } catch (e) { out.simple = 'blocked ' + e.name; }
  return out;
})(%s)"""


def test_pages_from_other_origins_cannot_read_the_feed_or_post_a_chat(tmp_path):
    """A page on another local port (a cross-origin page), and a page whose
    name resolves to 127.0.0.1 (DNS rebinding: Chromium maps evil.example to
    127.0.0.1, so `http://evil.example:PORT` is the router's own origin for
    the browser), try to read the feed and to post a chat."""
    with FakeUpstream() as fake, running_router(provider_config(fake.url) + ROUTER_FALLBACK) as router, \
            http.server.ThreadingHTTPServer(("127.0.0.1", 0), AttackerPage) as other:
        threading.Thread(target=other.serve_forever, daemon=True).start()
        browser = Browser(tmp_path / "profile", args=("--host-resolver-rules=MAP evil.example 127.0.0.1",))
        try:
            browser.open(f"http://127.0.0.1:{other.server_address[1]}/")
            assert browser.js("document.title") == "not the router"
            got = browser.js(ATTACK % json.dumps(router.url))
            assert got["feed"].startswith("blocked") and got["chat"].startswith("blocked"), got  # CORS: no reading
            assert got["eventsource"] == "error" and got["simple"] == "sent", got

            rebound = f"http://evil.example:{router.port}"
            browser.open(rebound + "/dashboard")
            assert "dashboard" not in browser.js("document.title").lower()
            assert "allowed_hosts" in browser.js("document.body.innerText")  # the 403, not the page
            got = browser.js(ATTACK % '""')
            assert got["feed"].startswith("403 ") and "event:" not in got["feed"] and "connected" not in got["feed"], got
            assert got["chat"].startswith("403 ") and "permission_error" in got["chat"], got
            assert got["eventsource"] == "error" and got["simple"] == "sent", got
        finally:
            browser.close()
        other.shutdown()
        # Every chat the pages sent was refused before routing; none reached the upstream.
        assert len(fake.requests) == 0
        refused = [r for r in router.records if r["status"] != 200]
        assert {(r["status"], r["error_code"]) for r in refused} <= {(403, "forbidden"), (415, "unsupported_media_type"), (405, "method_not_allowed")}


def test_with_a_client_key_the_page_gets_its_feed_and_prices(browser):
    """The key in the page's address opens the feed (?api_key=) and, as a
    header, /health?verbose, which needs it too: costs are known."""
    key = "rk-dashboard-5d2e8a1c"
    text = '[server]\nport = 0\napi_key_env = "ROUTER_KEY"\n[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'
    with FakeUpstream() as fake, running_router(provider_config(fake.url, extra="cost_per_1m_tokens = 2.5") + text, {"ROUTER_KEY": key}) as router:
        browser.open(f"{router.url}/dashboard?api_key={key}")
        browser.wait_for("document.getElementById('status').textContent === 'live'")
        client = openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "one two three"}])
        browser.wait_for("document.querySelectorAll('#done .card').length === 1")
        browser.wait_for("document.querySelector('#done .cost').textContent.startsWith('cost $')")


ROUTER_FALLBACK = '[server]\nport = 0\n[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'


class AttackerPage(http.server.BaseHTTPRequestHandler):
    """Any page that is not the router's."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = b"<!doctype html><title>not the router</title><p>hello"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
