"""`llmrouter tui [URL]`: the curses front end of tui_state.

Threads feed one queue that the curses loop drains: the event feed
(watch.Feed), the provider prices (GET /health?verbose, each time the feed
comes up: the router may have restarted with a new config) and the chat
reply being streamed. Only the main thread touches the state and the screen.
"""

from __future__ import annotations

import json
import locale
import os
import queue
import sys
import threading
import time
from typing import Any

import httpcore

try:
    import curses
except ImportError:  # Windows without the windows-curses package
    curses = None  # type: ignore[assignment]

from llmrouter.sse import SSESplitter
from llmrouter.tui_state import QUIT, Send, State, chat_frame, http_error, on_key, reduce, render, text_width
from llmrouter.watch import Feed, FeedRefused, auth_headers, describe

TICK_MS = 100  # redraw at least this often, for the in-flight timers
CHAT_TIMEOUTS = {"connect": 5.0, "read": 300.0, "write": 30.0, "pool": 5.0}  # a local model may think long
HTTP_ERRORS = (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError)


def run(base_url: str, model: str) -> int:
    if curses is None:
        print("llmrouter tui: this Python has no curses module; use `llmrouter watch` instead", file=sys.stderr)
        return 2
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("llmrouter tui: needs a terminal; use `llmrouter watch` to print events instead", file=sys.stderr)
        return 2
    try:
        locale.setlocale(locale.LC_ALL, "")  # curses draws UTF-8 only under a UTF-8 locale
    except locale.Error:
        pass  # an unknown $LANG: the ASCII fallback below takes over
    os.environ.setdefault("ESCDELAY", "25")  # Esc is a key here, not only a prefix
    inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    threading.Thread(target=pump_feed, args=(base_url, inbox.put), name="feed", daemon=True).start()
    try:
        curses.wrapper(_main, base_url, model, inbox)
    except KeyboardInterrupt:
        pass
    return 0


# --- background threads ---------------------------------------------------------------


def pump_feed(base_url: str, put) -> None:
    try:
        for event in Feed(base_url):
            put(event)
            if event.get("type") == "feed" and event.get("state") == "live":
                threading.Thread(target=fetch_prices, args=(base_url, put), name="prices", daemon=True).start()
    except FeedRefused as exc:
        put({"type": "feed", "state": "refused", "error": str(exc)})
    except Exception as exc:  # a thread's last word: show it rather than a silently frozen feed
        put({"type": "feed", "state": "refused", "error": f"internal error: {exc!r}"})


def fetch_prices(base_url: str, put) -> None:
    """Each provider's cost_per_1m_tokens, as GET /health?verbose reports it."""
    try:
        with httpcore.ConnectionPool() as pool:
            response = pool.request("GET", base_url.rstrip("/") + "/health?verbose", headers=auth_headers(), extensions={"timeout": {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}})
        info = json.loads(response.content)
        prices = {}
        for p in info.get("providers", []):
            price = p.get("cost_per_1m_tokens")
            prices[p["name"]] = float(price) if isinstance(price, (int, float)) else None
    except (*HTTP_ERRORS, ValueError, KeyError, TypeError, AttributeError):
        return  # costs show as unknown: a cosmetic loss, not worth an error
    put({"type": "prices", "prices": prices})


def stream_chat(base_url: str, send: Send, put) -> None:
    """POSTs the conversation with stream=true and reports the reply as chat events."""

    def report(**fields: Any) -> None:
        put({"type": "chat", "seq": send.seq, **fields})

    body = json.dumps({"model": send.model, "messages": send.messages, "stream": True}).encode()
    headers = [(b"content-type", b"application/json"), (b"accept", b"text/event-stream"), *auth_headers()]
    try:
        with httpcore.ConnectionPool() as pool:
            url = base_url.rstrip("/") + "/v1/chat/completions"
            with pool.stream("POST", url, headers=headers, content=body, extensions={"timeout": CHAT_TIMEOUTS}) as response:
                if response.status >= 400:
                    report(error=http_error(response.status, response.read()))
                    return
                ctype = {k.lower(): v for k, v in response.headers}.get(b"content-type", b"").decode("latin-1")
                if "event-stream" not in ctype:
                    report(error=f"expected a streamed reply, got {ctype or 'no content-type'}")
                    return
                splitter = SSESplitter()
                for chunk in response.iter_stream():
                    for frame in splitter.feed(chunk):
                        event = chat_frame(frame.data)
                        if event is not None:
                            put({**event, "seq": send.seq})
                            if "delta" not in event:
                                return
        report(error="the reply ended before it was complete")
    except HTTP_ERRORS as exc:
        report(error=describe(exc))
    except Exception as exc:  # a thread's last word: the chat must not wait forever
        report(error=f"internal error: {exc!r}")


# --- the curses loop -----------------------------------------------------------------

STYLE_COLORS = {"cyan": 6, "blue": 4, "yellow": 3, "magenta": 5, "red": 1, "green": 2, "border_focus": 6}


def _main(stdscr, base_url: str, model: str, inbox: queue.SimpleQueue) -> None:
    curses.raw()  # Ctrl-C arrives as a key: quitting restores the terminal the same way as q
    curses.noecho()
    stdscr.keypad(True)
    stdscr.timeout(TICK_MS)
    try:
        curses.curs_set(0)
    except curses.error:
        pass  # a terminal that cannot hide its cursor
    styles = _styles()
    ascii_only = "utf" not in (locale.getpreferredencoding(False) or "").lower()
    state = State(model=model)
    while True:
        while True:
            try:
                state = reduce(state, inbox.get_nowait())
            except queue.Empty:
                break
        height, width = stdscr.getmaxyx()
        now = time.time()
        # The zone's offset now (a feed spanning a DST change shows older times an hour off).
        _draw(stdscr, render(state, height, width, int(now * 1000), time.localtime(now).tm_gmtoff), styles, ascii_only)
        try:
            key = stdscr.get_wch()
        except curses.error:
            continue  # no key within the tick
        name = key_name(key)
        if name is None:
            continue
        if name == "resize":
            curses.update_lines_cols()
            continue
        state, effect = on_key(state, name)
        if effect == QUIT:
            return
        if isinstance(effect, Send):
            threading.Thread(target=stream_chat, args=(base_url, effect, inbox.put), name="chat", daemon=True).start()


def _styles() -> dict[str, int]:
    styles = {"bold": curses.A_BOLD, "dim": curses.A_DIM, "border": curses.A_DIM}
    if curses.has_colors():
        try:
            curses.start_color()
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        for pair, (name, color) in enumerate(STYLE_COLORS.items(), start=1):
            try:
                curses.init_pair(pair, color, background)
            except curses.error:
                continue
            styles[name] = curses.color_pair(pair)
        styles["blue"] = styles.get("blue", 0) | curses.A_BOLD  # the bright blue of watch
    return styles


ASCII = str.maketrans({"─": "-", "│": "|", "┌": "+", "┐": "+", "└": "+", "┘": "+", "⋯": ".", "●": "*", "▸": ">", "█": "_", "→": ">", "…": ".", "✗": "x", "↑": "^", "↓": "v", "·": "-", "—": "-"})


def _draw(stdscr, rows: list, styles: dict[str, int], ascii_only: bool) -> None:
    stdscr.erase()
    for y, row in enumerate(rows):
        x = 0
        for text, style in row:
            if ascii_only:
                text = text.translate(ASCII).encode("ascii", "replace").decode()
            try:
                stdscr.addstr(y, x, text, styles.get(style, 0))
            except curses.error:
                pass  # the bottom-right cell cannot be written without scrolling; the rest was
            x += text_width(text)
    stdscr.noutrefresh()
    curses.doupdate()


def key_name(key: Any) -> str | None:
    """curses' key (a str, or an int for special keys) as tui_state names it."""
    if isinstance(key, int):
        return {
            curses.KEY_UP: "up",
            curses.KEY_DOWN: "down",
            curses.KEY_BACKSPACE: "backspace",
            curses.KEY_ENTER: "enter",
            curses.KEY_RESIZE: "resize",
            curses.KEY_BTAB: "tab",
        }.get(key)
    return {"\t": "tab", "\n": "enter", "\r": "enter", "\x1b": "esc", "\x7f": "backspace", "\x08": "backspace", "\x03": "ctrl-c"}.get(key, key if key.isprintable() else None)

