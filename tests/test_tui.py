"""The TUI: its state machine and drawing as pure functions, then the real
program against a real router: in a pseudo-terminal read by pyte, and in a
real tmux (the terminal multiplexer users run it in)."""

from __future__ import annotations

import fcntl
import os
import pty
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import openai
import pyte
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import FakeUpstream
from harness import provider_config, running_router
from tiers import need_tool
from llmrouter import tui_state as ts
from llmrouter.tui_state import QUIT, Send, State, chat_frame, http_error, on_key, plain, reduce, render, text_width, wrap

ROOT = Path(__file__).resolve().parent.parent
TS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
KATHMANDU = "Asia/Kathmandu"  # UTC+05:45
KATHMANDU_OFFSET = (5 * 60 + 45) * 60


def complete(id, provider="ollama", ts=TS, **extra):
    event = {
        "type": "complete", "id": id, "ts_ms": ts, "provider": provider, "requested_model": "llama3", "sent_model": "llama3",
        "duration_ms": 100, "status": 200, "stream": False, "tags": [], "plugins": [], "messages": [{"role": "user", "content": f"question {id}"}],
        "response": {"content": f"answer {id}", "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 30}},
        "usage": {"input_tokens": 10, "output_tokens": 30}, "attempts": [], "error": None, "error_code": None,
    }
    event.update(extra)
    return event


def screen(state, height=30, width=110, now=TS + 1500):
    return "\n".join(plain(render(state, height, width, now, KATHMANDU_OFFSET)))


# --- events --------------------------------------------------------------------------


def test_a_request_moves_from_in_flight_to_the_feed_and_the_stats():
    s = State()
    reduce(s, {"type": "start", "id": 7, "ts_ms": TS, "model": "smart", "in_flight": 1})
    reduce(s, {"type": "classified", "id": 7, "ts_ms": TS, "tags": ["code"]})
    assert "03:58:20  ⋯  smart  [code]  1500ms" in screen(s)
    reduce(s, {"type": "routed", "id": 7, "ts_ms": TS, "provider": "cloud", "model": "gpt-x", "attempt": 2})
    assert "03:58:20  ⋯  cloud  gpt-x  (fallback, attempt 2)  [code]  1500ms" in screen(s)
    assert "1 in flight" in screen(s)
    reduce(s, complete(7, "cloud", requested_model="smart", sent_model="gpt-x", tags=["code"], plugins=["response-healing"], duration_ms=420,
                       attempts=[{"provider": "local", "outcome": "error"}, {"provider": "cloud", "outcome": "ok"}]))
    assert s.pending == {} and len(s.entries) == 1
    text = screen(s)
    assert "03:58:20  cloud  smart → gpt-x  [code]  (response-healing)  420ms  10→30 tok" in text
    assert "  prompt: question 7" in text and "  reply: answer 7" in text and "  tried: local ✗ → cloud" in text
    assert "in flight" not in text
    assert "1 requests  0 errors  420ms avg" in text
    assert " cloud  1 (100%)  last ok 1s ago" in text
    assert " [code]  1 (100%)" in text
    assert "─ cloud / gpt-x [code] ─" in text  # the chat's rule: where the last request went


def test_stats_per_provider_and_tag_with_errors_tokens_and_cost():
    s = State()
    reduce(s, {"type": "prices", "prices": {"paid": 2.0, "local": 0.0, "mystery": None}})
    reduce(s, complete(1, "paid", tags=["code"], duration_ms=100, usage={"input_tokens": 300_000, "output_tokens": 200_000}))
    reduce(s, complete(2, "paid", tags=["code", "math"], duration_ms=300, status=502, error="boom", response=None, usage=None))
    reduce(s, complete(3, "local", tags=["math"], duration_ms=50))
    assert (s.total.count, s.total.errors, s.total.avg_ms) == (3, 1, 150)
    paid, local = s.providers["paid"], s.providers["local"]
    assert (paid.count, paid.errors, paid.avg_ms, paid.tokens_in, paid.tokens_out) == (2, 1, 200, 300_000, 200_000)
    assert paid.cost(s.prices) == pytest.approx(1.0) and local.cost(s.prices) == 0
    assert s.tags["code"].count == 2 and s.tags["code"].errors == 1 and s.tags["math"].cost(s.prices) == 0
    assert s.total.cost(s.prices) == pytest.approx(1.0)
    text = screen(s, width=160)
    assert "1 errors" in text and "   1 err · 200ms · 500.0k tok · $1.00" in text
    reduce(s, complete(4, "mystery"))
    assert s.total.cost(s.prices) is None and "cost ?" in screen(s, width=160)


def test_feed_keeps_200_entries_and_scrolling_holds_the_viewed_item():
    s = State()
    for i in range(205):
        reduce(s, complete(i))
    assert len(s.entries) == 200 and s.entries[0]["id"] == 204 and s.total.count == 205
    on_key(s, "k")
    on_key(s, "up")
    assert s.scroll == 2 and "question 202" in screen(s).split("\n")[2]
    reduce(s, complete(205))
    assert s.scroll == 3 and "question 202" in screen(s).split("\n")[2]  # still the same request on top
    for _ in range(5):
        on_key(s, "j")
    assert s.scroll == 0
    for _ in range(300):
        on_key(s, "up")
    assert s.scroll == len(s.entries) - 1  # the oldest stays in view


def test_feed_connection_states():
    s = State()
    assert "connecting…" in screen(s)
    reduce(s, {"type": "start", "id": 1, "ts_ms": TS, "model": "m", "in_flight": 1})
    reduce(s, {"type": "feed", "state": "retrying", "error": "connection refused", "delay": 2.0})
    assert "reconnecting: connection refused · retry in 2s" in screen(s)
    reduce(s, {"type": "feed", "state": "live"})
    assert s.pending == {}  # what was in flight may have completed unseen
    assert "● live" in screen(s)
    reduce(s, {"type": "dropped", "count": 3})
    assert "3 dropped" in screen(s)
    reduce(s, {"type": "feed", "state": "refused", "error": "server returned 404"})
    assert "error: server returned 404" in screen(s)


# --- keys and the chat --------------------------------------------------------------------


def type_text(s, text):
    for ch in text:
        on_key(s, ch)


def test_focus_and_quit_keys():
    s = State()
    assert on_key(s, "q")[1] == QUIT
    assert on_key(s, "ctrl-c")[1] == QUIT
    on_key(s, "i")
    assert s.focus == "chat"
    type_text(s, "qi")  # typed, not commands, in the chat
    assert s.input == "qi" and on_key(s, "ctrl-c")[1] == QUIT
    on_key(s, "tab")
    assert s.focus == "feed" and s.input == "qi"  # Tab keeps what was typed
    on_key(s, "tab")
    on_key(s, "backspace")
    assert s.input == "q"
    on_key(s, "esc")
    assert s.focus == "feed" and s.input == ""  # Esc drops it
    assert "↑/↓ scroll  Tab/i → chat  q quit" in screen(s)
    on_key(s, "tab")
    assert "Enter send  Esc back" in screen(s)


def test_chat_commands_and_a_streamed_reply():
    s = State(focus="chat")
    assert on_key(s, "enter")[1] is None  # nothing typed
    type_text(s, ":model   qwen2.5:0.5b ")
    assert on_key(s, "enter")[1] is None and s.model == "qwen2.5:0.5b" and s.input == ""
    assert "model: qwen2.5:0.5b" in screen(s)
    type_text(s, ":model")
    on_key(s, "enter")
    assert s.model == "qwen2.5:0.5b" and "usage: :model NAME" in screen(s)
    type_text(s, "hello")
    _, effect = on_key(s, "enter")
    assert effect == Send("qwen2.5:0.5b", [{"role": "user", "content": "hello"}], s.chat_seq)
    assert s.sending and "(waiting for the reply…)" in screen(s)
    type_text(s, "more")
    assert on_key(s, "enter")[1] is None  # one request at a time
    reduce(s, {"type": "chat", "seq": effect.seq, "delta": "Hi "})
    reduce(s, {"type": "chat", "seq": effect.seq, "delta": "there\nsecond line"})
    assert "     Hi there" in screen(s) and "     second line" in screen(s)
    reduce(s, {"type": "chat", "seq": effect.seq, "done": True})
    assert not s.sending and [t.role for t in s.turns] == ["user", "assistant"]
    _, again = on_key(s, "enter")  # "more" was kept while the reply streamed
    assert again.messages == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi there\nsecond line"}, {"role": "user", "content": "more"}]


def test_http_errors_are_shown_and_keep_the_users_turn():
    s = State(focus="chat")
    type_text(s, "hi")
    _, send = on_key(s, "enter")
    reduce(s, {"type": "chat", "seq": send.seq, "error": http_error(404, b'{"error":{"message":"no provider configured for model \'x\'","type":"invalid_request_error"}}')})
    assert [(t.role, t.text) for t in s.turns] == [("user", "hi"), ("error", "HTTP 404: no provider configured for model 'x'")]
    text = screen(s)
    assert "you: hi" in text and "error: HTTP 404: no provider configured for model 'x'" in text and "(empty response)" not in text
    type_text(s, "again")
    _, retry = on_key(s, "enter")
    assert retry.messages == [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]  # errors are not sent back
    # A reply cut short keeps what arrived, then says why.
    reduce(s, {"type": "chat", "seq": retry.seq, "delta": "partial"})
    reduce(s, {"type": "chat", "seq": retry.seq, "error": "timed out"})
    assert [(t.role, t.text) for t in s.turns[-2:]] == [("assistant", "partial"), ("error", "timed out")]


def test_clear_forgets_the_conversation_and_ignores_a_late_reply():
    s = State(focus="chat")
    type_text(s, "one")
    _, send = on_key(s, "enter")
    reduce(s, {"type": "chat", "seq": send.seq, "done": True})
    assert s.turns[-1].text == "(empty reply)"
    type_text(s, " :clear ")
    on_key(s, "enter")
    assert s.turns == [] and "(no messages yet" in screen(s)
    reduce(s, {"type": "chat", "seq": send.seq, "delta": "late"})
    assert s.turns == [] and s.partial == ""


def test_reading_the_routers_stream_and_error_bodies():
    assert chat_frame("[DONE]") == {"type": "chat", "done": True}
    assert chat_frame('{"choices":[{"index":0,"delta":{"content":"Hel"}}]}') == {"type": "chat", "delta": "Hel"}
    assert chat_frame('{"choices":[{"index":0,"delta":{"role":"assistant"}}]}') is None
    assert chat_frame('{"choices":[],"usage":{"prompt_tokens":1}}') is None
    assert chat_frame('{"error":{"message":"upstream died","type":"api_error"}}') == {"type": "chat", "error": "upstream died"}
    assert chat_frame("not json") is None
    assert http_error(529, b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}') == "HTTP 529: busy"
    assert http_error(502, b"<html>Bad Gateway</html>") == "HTTP 502: <html>Bad Gateway</html>"
    assert http_error(500, b"") == "HTTP 500: no details"


def test_curses_keys_get_their_names():
    import curses

    from llmrouter.tui import key_name

    assert [key_name(k) for k in ("\t", "\r", "\n", "\x1b", "\x7f", "\x03", "q", "é", "\x01")] == ["tab", "enter", "enter", "esc", "backspace", "ctrl-c", "q", "é", None]
    assert [key_name(k) for k in (curses.KEY_UP, curses.KEY_DOWN, curses.KEY_BACKSPACE, curses.KEY_RESIZE, curses.KEY_F1)] == ["up", "down", "backspace", "resize", None]


# --- drawing --------------------------------------------------------------------------------


def busy_state():
    s = State(focus="chat", input="typed text " * 20)
    reduce(s, {"type": "feed", "state": "live"})
    reduce(s, {"type": "start", "id": 99, "ts_ms": TS, "model": "宽字符模型", "in_flight": 1})
    for i in range(6):
        reduce(s, complete(i, tags=["code", "长"], messages=[{"role": "user", "content": "emoji 🎉 and 中文 " * 20 + "\x1b[31m"}]))
    s.turns = [ts.Turn("user", "x" * 500), ts.Turn("assistant", "y " * 300 + "\n" + "中" * 100), ts.Turn("error", "HTTP 502: z")]
    return s


@pytest.mark.parametrize("height, width", [(h, w) for h in (0, 1, 2, 5, 7, 8, 9, 12, 24, 50) for w in (0, 1, 3, 10, 29, 30, 31, 45, 80, 203)])
def test_every_size_draws_exactly_the_window(height, width):
    rows = render(busy_state(), height, width, TS)
    assert len(rows) == height
    for line in plain(rows):
        assert text_width(line) == width and "\x1b" not in line


def test_every_glyph_of_the_frame_has_an_ascii_stand_in():
    from llmrouter.tui import ASCII

    s = State(focus="chat")
    reduce(s, {"type": "feed", "state": "live"})
    reduce(s, {"type": "start", "id": 9, "ts_ms": TS, "model": "m", "in_flight": 1})
    reduce(s, complete(1, attempts=[{"provider": "a", "outcome": "error"}, {"provider": "b", "outcome": "ok"}], requested_model="x"))
    for focus in ("chat", "feed"):
        s.focus = focus
        drawn = screen(s).translate(ASCII)
        assert drawn.isascii(), sorted({c for c in drawn if not c.isascii()})


def test_without_a_terminal_the_tui_points_to_watch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "llmrouter", "tui", "http://127.0.0.1:9"], stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=30)
    assert done.returncode == 2 and b"llmrouter watch" in done.stderr


def test_small_windows_say_so():
    assert plain(render(State(), 7, 80, TS))[0].startswith("window too small")
    assert plain(render(State(), 24, 29, TS))[0].startswith("window too small")
    assert plain(render(State(), 3, 5, TS))[0] == "windo"


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(min_value=1, max_value=40))
def test_wrap_never_overflows_or_loses_words(text, width):
    lines = wrap(text, width)
    assert all(text_width(line) <= max(width, 2) for line in lines)  # 2: one wide character
    if width >= 2:
        assert all(text_width(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == ts.clean(text).replace(" ", "")


def test_long_conversations_scroll_to_the_latest_lines():
    s = State(focus="chat")
    for i in range(40):
        s.turns.append(ts.Turn("user", f"message number {i}"))
    text = screen(s, height=30, width=110)
    assert "message number 39" in text and "message number 0\n" not in text


# --- end to end: the real program in a pseudo-terminal -------------------------------------------


class Screen:
    """Waiting for text, for both terminals: `text()` is what shows, `ended()`
    says how the program ended (None while it runs)."""

    def wait(self, *needles: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            ended = self.ended()
            if ended or time.monotonic() > deadline:
                raise AssertionError(f"waiting for {needles}; {ended or 'still running'}; the screen shows:\n{text}")
            time.sleep(0.05)


class Terminal(Screen):
    """Runs a program on a pty and keeps a pyte screen of what it drew."""

    def __init__(self, args: list[str], rows: int, cols: int, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self._winsize(rows, cols)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, start_new_session=True)
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _winsize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the program closed the terminal
                return
            if not data:
                return
            with self.lock:
                self.raw += data
                self.stream.feed(data)

    def text(self) -> str:
        with self.lock:
            return "\n".join(line.rstrip() for line in self.screen.display)

    def ended(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"exit code {code}"

    def keys(self, data: str) -> None:
        os.write(self.master, data.encode())

    def resize(self, rows: int, cols: int) -> None:
        with self.lock:
            self.screen.resize(rows, cols)
            self.screen.erase_in_display(2)  # what shows next was drawn after the resize
        self._winsize(rows, cols)
        os.kill(self.proc.pid, signal.SIGWINCH)  # no controlling terminal here, so the kernel will not

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        os.close(self.master)


def tui(url: str, *extra: str, rows: int = 32, cols: int = 112) -> Terminal:
    # xterm-color: a real xterm description, without the few sequences pyte does not
    # emulate (REP, SU/SD), which would make pyte's screen differ from a real one.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TZ": KATHMANDU, "TERM": "xterm-color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    return Terminal([sys.executable, "-m", "llmrouter", "tui", url, *extra], rows, cols, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_hms(ts_ms: int) -> str:
    old = os.environ.get("TZ")
    os.environ["TZ"] = KATHMANDU
    time.tzset()
    try:
        return time.strftime("%H:%M:%S", time.localtime(ts_ms / 1000))
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def first_request_shown(term: Screen, router) -> tuple[str, dict]:
    """Once the tui is live, one chat request through the router; the screen
    once its reply shows, and the request's record."""
    term.wait("● live", "Chat  model: gpt-chat")
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "write python to sort a list"}])
    (record,) = router.wait_records(1)
    return term.wait("reply: echo: write python to sort a list"), record


CONFIG = """
[server]
port = {port}
[classifiers.keyword]
enabled = true
tags = {{ code = ["python"], greeting = ["hello"] }}
{provider}
[[routers]]
type = "prefix"
model_prefix = "gpt-"
provider = "fake"
"""


def test_tui_shows_requests_chats_survives_resizes_and_restarts(tmp_path):
    port = free_port()
    with FakeUpstream() as fake:
        text = CONFIG.format(port=port, provider=provider_config(fake.url, extra="cost_per_1m_tokens = 1.5"))
        term = tui(f"http://127.0.0.1:{port}", "--model", "gpt-chat")
        try:
            with running_router(text) as router:
                screen, record = first_request_shown(term, router)
                assert f"{local_hms(record['ts_ms'])}  fake  gpt-4o-mini  [code]  {record['duration_ms']}ms" in screen
                assert "prompt: write python to sort a list" in screen
                assert "1 requests  0 errors" in screen and " fake  1 (100%)  last ok" in screen

                # The chat: a reply streamed through the router, which the feed shows too.
                term.keys("\t")
                term.wait("Enter send  Esc back")
                term.keys("hello from the tui\r")
                screen = term.wait("     echo: hello from the tui", "2 requests")
                assert "you: hello from the tui" in screen
                assert "prompt: write python to sort a list" in screen  # the earlier request, now second
                assert "─ fake / gpt-chat [greeting] ─" in screen
                assert fake.requests[-1].json["messages"] == [{"role": "user", "content": "hello from the tui"}]
                assert fake.requests[-1].json.get("stream") is True
                (tmp_path / "tui.txt").write_text(screen + "\n", encoding="utf-8")
                if os.environ.get("LLMROUTER_UPDATE_DOCS"):  # refresh the README's capture on request
                    (ROOT / "docs" / "img" / "tui.txt").write_text(screen + "\n", encoding="utf-8")

                # An HTTP error is an error, and the user's turn stays.
                term.keys(":model nowhere\r")
                term.wait("Chat  model: nowhere")
                term.keys("anyone there?\r")
                screen = term.wait("error: HTTP 404: no provider configured for model 'nowhere'")
                assert "you: anyone there?" in screen and "you: hello from the tui" in screen

                # Down to a single cell (where ncurses itself cannot draw: the next size
                # shows it lived through it), and back.
                for rows, cols, shows in ((12, 40, "Pipeline"), (6, 20, "window too small"), (2, 8, "window t"), (1, 1, ""), (1, 3, "win"), (9, 31, "Chat")):
                    term.resize(rows, cols)
                    term.wait(shows)
                    assert term.proc.poll() is None
                term.resize(32, 112)
                term.wait("● live", "you: anyone there?")

                router.shutdown()
                term.wait("reconnecting")
            with running_router(text) as router:
                term.wait("● live")
                openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "after the restart"}])
                term.wait("prompt: after the restart")
            term.keys("\x1b")  # Esc: back to the feed, where q quits
            term.wait("↑/↓ scroll  Tab/i → chat  q quit")
            term.keys("q")
            assert term.proc.wait(10) == 0
            term.reader.join(5)
            assert b"\x1b[?47l" in term.raw[-200:]  # the terminal's own screen is back (xterm-color's rmcup)
            assert b"Traceback" not in term.raw
        finally:
            term.close()


def test_tui_waits_for_a_missing_router_and_quits_on_ctrl_c():
    term = tui(f"http://127.0.0.1:{free_port()}")
    try:
        term.wait("reconnecting: connection refused", "Chat  model: llama3.1:8b")
        term.keys("\t")
        term.keys("hi\r")  # the chat fails like any request to a router that is not there
        term.wait("error: connection refused")
        term.keys("\x03")
        assert term.proc.wait(10) == 0
    finally:
        term.close()


def test_completions_and_embeddings_show_their_kind():
    s = State()
    reduce(s, {"type": "start", "id": 8, "ts_ms": TS, "model": "coder", "in_flight": 1, "kind": "completion"})
    assert "03:58:20  ⋯  coder  completion  1500ms" in screen(s)
    reduce(s, complete(9, kind="embedding", inputs={"count": 2, "chars": [3, 4]}, messages=[],
                       response={"model": "e", "count": 2, "dimensions": 384, "usage": {"input_tokens": 5, "output_tokens": 0}}))
    text = screen(s)
    assert "03:58:20  ollama  llama3  embedding ×2  100ms" in text and "  reply: 2 vectors × 384 dimensions" in text


def test_stats_show_each_providers_live_measurements():
    s = State()
    reduce(s, complete(1, "paid"))
    measured = {"type": "measured", "v": 1, "ts_ms": TS, "samples": 4, "in_flight": 2, "ttft_ms": 412.4, "duration_ms": 900.0, "tokens_per_sec": 55.6, "error_rate": 0.25}
    reduce(s, {**measured, "provider": "paid"})
    reduce(s, {**measured, "provider": "down", "in_flight": 0, "ttft_ms": None, "tokens_per_sec": None, "error_rate": 1.0, "samples": 0})
    text = screen(s, width=200)
    assert "   now: 2 in flight · ttft 412ms · 56 tok/s · 25% err · 4 samples" in text
    # A provider that never answered still shows how it is doing.
    assert " down  0 (0%)" in text and "   now: 0 in flight · ttft – · – · 100% err · 0 samples" in text


# --- end to end: the real program in a real tmux ---------------------------------------------


class Tmux(Screen):
    """A private tmux server (its own socket, no user config) running one
    program in a detached 120×40 session; the screen is read with capture-pane."""

    def __init__(self, tmp_path: Path, command: list[str], env: dict[str, str]) -> None:
        self.binary = need_tool("tmux", hint="CI installs Debian's tmux")
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\n")  # the pane stays, so its last screen can be read
        self.base = [self.binary, "-S", str(tmp_path / "tmux.sock"), "-f", str(conf)]
        self.env = env
        # The program's exit status goes to a file: tmux's own pane_dead_status
        # is sometimes still empty long after the pane died (seen under load).
        self.status_file = tmp_path / "exit-status"
        script = f"{shlex.join(command)}; echo $? > {shlex.quote(str(self.status_file))}"
        self.run("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", script)

    def exit_status(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while not (self.status_file.exists() and self.status_file.read_text().strip()):
            assert time.monotonic() < deadline, f"the program did not exit; the screen shows:\n{self.screen()}"
            time.sleep(0.05)
        return int(self.status_file.read_text())

    def run(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def pane(self, field: str) -> str:
        return self.run("display-message", "-p", "-t", "t", "#{" + field + "}").strip()

    text = screen

    def ended(self) -> str | None:
        return "the pane is dead" if self.pane("pane_dead") == "1" else None

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "t", *(["-l"] if literal else []), *keys)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], env=self.env, capture_output=True, timeout=10)


def test_tui_in_a_real_tmux_shows_a_request_and_chats(tmp_path):
    port = free_port()
    with FakeUpstream() as fake:
        text = CONFIG.format(port=port, provider=provider_config(fake.url))
        with running_router(text) as router:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
            term = Tmux(tmp_path, [sys.executable, "-m", "llmrouter", "tui", router.url, "--model", "gpt-chat"], env)
            try:
                screen, record = first_request_shown(term, router)
                assert f"fake  gpt-4o-mini  [code]  {record['duration_ms']}ms" in screen
                assert "1 requests  0 errors" in screen

                term.keys("Tab")
                term.wait("Enter send  Esc back")
                term.keys("hello from tmux", literal=True)
                term.keys("Enter")
                screen = term.wait("echo: hello from tmux", "2 requests")
                assert "you: hello from tmux" in screen
                assert fake.requests[-1].json["messages"] == [{"role": "user", "content": "hello from tmux"}]

                term.keys("Escape")
                term.wait("q quit")
                term.keys("q")
                assert term.exit_status() == 0
                assert "Traceback" not in term.screen()
            finally:
                term.close()
