"""`llmrouter watch`: the layout of each event (pure), the feed client, and the
command end to end against a real router that is restarted under it."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from fakes import FakeUpstream, Reply
from harness import provider_config, running_router
from llmrouter import watch
from llmrouter.watch import Feed, FeedRefused, format_event

ROOT = Path(__file__).resolve().parent.parent
TS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
KATHMANDU = "Asia/Kathmandu"  # UTC+05:45: no chance of matching UTC by accident


@pytest.fixture
def kathmandu(monkeypatch):
    monkeypatch.setenv("TZ", KATHMANDU)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def record(**extra):
    base = {
        "type": "complete", "v": 1, "id": 3, "ts_ms": TS, "request_id": "r3", "client_format": "openai",
        "provider": "ollama", "requested_model": "llama3", "sent_model": "llama3:8b", "duration_ms": 532,
        "first_byte_ms": None, "status": 200, "stream": False, "tags": ["code", "math"], "plugins": ["response-healing"],
        "system": None, "messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "add\ntwo"}],
        "response": {"id": "c", "model": "llama3:8b", "content": "def add(a, b):\n    return a + b", "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 40}},
        "usage": {"input_tokens": 12, "output_tokens": 40},
        "attempts": [{"provider": "ollama", "model": "llama3:8b", "outcome": "ok", "status": 200, "duration_ms": 500, "error": None}],
        "error": None, "error_code": None,
    }
    base.update(extra)
    return base


# --- layout --------------------------------------------------------------------------


def test_lifecycle_lines_in_local_time(kathmandu):
    start = {"type": "start", "id": 3, "ts_ms": TS, "model": "llama3", "in_flight": 2, "stream": False}
    assert format_event(start) == "03:58:20  ⋯  llama3  (2 in flight)"
    assert format_event({**start, "stream": True}).endswith("(2 in flight)  (stream)")
    assert format_event({**start, "client_format": "ollama"}) == "03:58:20  ⋯  llama3  [ollama]  (2 in flight)"
    assert format_event({"type": "classified", "id": 3, "ts_ms": TS, "tags": ["code", "math"]}) == "  → classified: [code, math]"
    assert format_event({"type": "classified", "id": 3, "ts_ms": TS, "tags": []}) is None
    assert format_event({"type": "routed", "id": 3, "provider": "ollama", "model": "llama3:8b", "attempt": 1}) == "  → routed: ollama/llama3:8b"
    assert format_event({"type": "routed", "id": 3, "provider": "cloud", "model": "m", "attempt": 2}) == "  → fallback (attempt 2): cloud/m"
    assert format_event(record()) == (
        "03:58:20  ollama  llama3 → llama3:8b  [code]  [math]  (response-healing)  532ms\n"
        "  prompt:  add two\n"
        "  reply:   def add(a, b):     return a + b\n"
        "  12 in / 40 out · end_turn\n"
    )


def test_errors_fallbacks_and_streams():
    failed = record(
        provider="cloud", requested_model="m", sent_model="m", tags=[], plugins=[], response=None, usage=None, status=502,
        error="provider 'cloud' returned 500: boom", error_code="upstream_status_error",
        attempts=[
            {"provider": "local", "model": "m", "outcome": "error", "status": 503, "duration_ms": 20, "error": "busy"},
            {"provider": "cloud", "model": "m", "outcome": "error", "status": 500, "duration_ms": 30, "error": "boom"},
        ],
    )
    lines = format_event(failed).splitlines()
    assert lines[0].endswith("cloud  m  532ms")
    assert lines[2] == "  error:   (502 upstream_status_error) provider 'cloud' returned 500: boom"
    assert lines[3] == "  attempts: local/m failed 503 (20ms) → cloud/m failed 500 (30ms)"
    streamed = record(stream=True, first_byte_ms=45, tags=[], plugins=[], requested_model="llama3:8b")
    assert "12 in / 40 out · end_turn · stream · first byte 45ms" in format_event(streamed)
    no_route = record(provider=None, response=None, usage=None, status=404, error="no route for model 'x'", error_code="model_not_found", attempts=[])
    assert format_event(no_route).splitlines()[0].split("  ")[1] == "(no provider)"


def test_untrusted_text_is_one_clipped_line_without_escape_sequences():
    evil = "\x1b[2J\x1b]0;pwned\x07" + "y" * 300
    text = format_event(record(messages=[{"role": "user", "content": evil}]), color=False)
    assert "\x1b" not in text and "\x07" not in text
    prompt = text.splitlines()[1]
    assert prompt == "  prompt:  " + (" [2J ]0;pwned " + "y" * 300)[:120] + "…"
    colored = format_event(record(messages=[{"role": "user", "content": evil}]), color=True)
    assert "\x1b[2J" not in colored and "\x1b]0" not in colored
    assert "\x1b[33m[code]\x1b[0m" in colored and "\x1b[1m\x1b[36mollama\x1b[0m" in colored


def test_message_parts_dropped_and_unknown_events():
    parts = [{"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "image"}, {"type": "text", "text": "this"}]}]
    assert "prompt:  what is [image] this" in format_event(record(messages=parts))
    assert format_event({"type": "dropped", "count": 7}) == "  ! 7 events dropped: this watcher fell behind the router"
    assert format_event({"type": "something_new", "id": 1}) is None


def test_color_choice(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert watch.use_color(None, Tty()) is True
    assert watch.use_color(None, open(os.devnull, "w")) is False
    assert watch.use_color(True, open(os.devnull, "w")) is True
    assert watch.use_color(False, Tty()) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert watch.use_color(None, Tty()) is False


# --- the feed client -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backoff_is_capped_while_the_router_is_down():
    slept = []
    feed = iter(Feed(f"http://127.0.0.1:{free_port()}", sleep=slept.append))
    retries = []
    while len(retries) < 7:
        event = next(feed)
        assert event["type"] == "feed"
        if event["state"] == "retrying":
            retries.append(event)
    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0] and [r["delay"] for r in retries] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert retries[0]["error"] == "connection refused"


def test_a_refused_feed_is_not_retried():
    with FakeUpstream() as fake:
        text = "[server]\nport = 0\ndashboard = false\n" + provider_config(fake.url) + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'
        with running_router(text) as router:
            feed = iter(Feed(router.url, sleep=lambda s: pytest.fail("retried a 404")))
            assert next(feed)["state"] == "connecting"
            with pytest.raises(FeedRefused, match="server returned 404.*dashboard enabled"):
                next(feed)


# --- end to end ----------------------------------------------------------------------------

CONFIG = """
[server]
port = {port}
[classifiers.keyword]
enabled = true
tags = {{ code = ["python"] }}
{provider}
[[routers]]
type = "prefix"
model_prefix = ""
provider = "fake"
"""


class Lines:
    """A pipe read line by line in a thread, for waiting on output with a deadline."""

    def __init__(self, pipe) -> None:
        self.queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe) -> None:
        for raw in pipe:
            self.queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.queue.put(None)

    def until(self, predicate, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; output so far: {self.seen}") from None
            if line is None:
                raise AssertionError(f"the output ended; it was: {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line


def spawn(*args: str, tz: str = KATHMANDU) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TZ": tz, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_COLOR", None)
    return subprocess.Popen([sys.executable, "-m", "llmrouter", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)


def local_hms(ts_ms: int, tz: str = KATHMANDU) -> str:
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        return time.strftime("%H:%M:%S", time.localtime(ts_ms / 1000))
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_watch_prints_requests_survives_a_restart_and_stops_on_ctrl_c():
    port = free_port()
    with FakeUpstream() as fake:
        text = CONFIG.format(port=port, provider=provider_config(fake.url))
        proc = spawn("watch", f"http://127.0.0.1:{port}/")
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            with running_router(text) as router:
                err.until(lambda l: l == "connected — waiting for requests")
                client = openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0)
                client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "write python please"}])
                router.wait_records(1)
                start, done = router.events[0], router.records[-1]
                assert out.until(lambda l: "⋯" in l) == f"{local_hms(start['ts_ms'])}  ⋯  gpt-test  [openai]  (1 in flight)"  # piped: no colour
                assert out.until(lambda l: "classified" in l) == "  → classified: [code]"
                assert out.until(lambda l: "routed" in l) == "  → routed: fake/gpt-test"
                head = out.until(lambda l: l.startswith(local_hms(done["ts_ms"]) + "  fake"))
                assert head == f"{local_hms(done['ts_ms'])}  fake  gpt-test  [code]  {done['duration_ms']}ms"
                assert out.until(lambda l: "prompt:" in l) == "  prompt:  write python please"
                assert out.until(lambda l: "reply:" in l) == "  reply:   echo: write python please"
                router.shutdown()
                err.until(lambda l: l.startswith("feed lost: the router closed the feed; reconnecting"))
            with running_router(text) as router:
                err.until(lambda l: l == f"reconnected to http://127.0.0.1:{port}/dashboard/events")
                fake.enqueue(Reply.error(500, "kaput"))
                with pytest.raises(openai.APIStatusError):
                    openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
                        model="other", messages=[{"role": "user", "content": "after the restart"}])
                (failed,) = router.wait_records(1)
                assert failed["error"] == "provider 'fake' returned 500: kaput"
                assert out.until(lambda l: "error:" in l) == f"  error:   ({failed['status']} {failed['error_code']}) {failed['error']}"
            assert proc.poll() is None  # still waiting for the router to come back
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
            rest = proc.stderr.read().decode() if proc.stderr else ""
            assert "Traceback" not in rest and not any("Traceback" in l for l in err.seen)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_json_and_forced_colour():
    with FakeUpstream() as fake:
        text = CONFIG.format(port=0, provider=provider_config(fake.url))
        with running_router(text) as router:
            raw = spawn("watch", "--json", router.url)
            colored = spawn("watch", "--color", router.url)
            stats = spawn("watch", "--stats", router.url)
            try:
                for proc in (raw, colored, stats):
                    proc.err = Lines(proc.stderr)
                    proc.out = Lines(proc.stdout)
                    proc.err.until(lambda l: l.startswith("connected"))
                openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi"}])
                router.wait_records(1)
                published = list(router.events)
                got = [json.loads(raw.out.until(lambda l: True)) for _ in published]
                assert got == published  # exactly what the router sent, one line each
                line = colored.out.until(lambda l: "⋯" in l)
                assert line.startswith("\x1b[2m") and "\x1b[94mgpt-test\x1b[0m" in line
                line = stats.out.until(lambda l: "≈" in l)
                assert "  fake  0 in flight · ttft " in line and " · 0% err · 1 samples" in line
            finally:
                for proc in (raw, colored, stats):
                    proc.send_signal(signal.SIGINT)
                    assert proc.wait(10) == 0


def test_completions_and_embeddings_show_their_kind(kathmandu):
    start = {"type": "start", "id": 4, "ts_ms": TS, "model": "coder", "in_flight": 1, "kind": "completion"}
    assert format_event(start) == "03:58:20  ⋯  coder  completion  (1 in flight)"
    assert "llama3:8b  completion  [code]" in format_event(record(kind="completion"))
    embedded = record(kind="embedding", inputs={"count": 3, "chars": [4, 5, 6]}, messages=[], tags=[], plugins=[],
                      response={"model": "e", "count": 3, "dimensions": 768, "usage": {"input_tokens": 9, "output_tokens": 0}})
    lines = format_event(embedded).splitlines()
    assert lines[0].endswith("llama3 → llama3:8b  embedding ×3  532ms")
    assert lines[1] == "  reply:   3 vectors × 768 dimensions"
    assert format_event(record(kind="chat")) == format_event(record())  # a chat shows no kind


def test_stats_lines_for_live_measurements_only_with_stats(kathmandu):
    measured = {"type": "measured", "v": 1, "ts_ms": TS, "provider": "ollama", "samples": 3, "in_flight": 1,
                "ttft_ms": 250.2, "duration_ms": 900.0, "tokens_per_sec": 41.7, "error_rate": 0.0}
    assert format_event(measured) is None
    assert format_event(measured, stats=True) == "03:58:20  ≈  ollama  1 in flight · ttft 250ms · 42 tok/s · 0% err · 3 samples"
    fresh = {**measured, "ttft_ms": None, "tokens_per_sec": None, "error_rate": None, "samples": 0}
    assert format_event(fresh, stats=True).endswith("ttft – · – · – err · 0 samples")
