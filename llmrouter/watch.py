"""`llmrouter watch [URL]`: the router's live event feed, printed as it happens.

Two halves: `format_event` (an event in, the lines to print out; the text
helpers it shares with the TUI are in eventtext.py) and `Feed` (a synchronous
SSE client that reconnects with capped backoff, which the TUI reuses).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpcore

from llmrouter.eventtext import (
    attempts_text,
    clean,
    clip,
    clock_text,
    error_text,
    is_error,
    kind_text,
    measured_text,
    model_text,
    prompt_of,
    reload_text,
    reply_text,
    tokens_of,
)
from llmrouter.sse import SSESplitter

DEFAULT_URL = "http://127.0.0.1:8090"
API_KEY_ENV = "LLMROUTER_API_KEY"  # the variable config.example.toml suggests for server.api_key_env
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
BACKOFF_CAP = 10.0
# The router sends a keep-alive comment every 15 s: three missed means the link is dead.
READ_TIMEOUT = 45.0
CONNECT_TIMEOUT = 5.0

def local_time(ts_ms: Any) -> str:
    """HH:MM:SS in the viewer's local time zone (at that moment: DST included)."""
    offset = time.localtime(ts_ms / 1000).tm_gmtoff if isinstance(ts_ms, (int, float)) else 0
    return clock_text(ts_ms, offset)


# --- watch's layout (pure) -----------------------------------------------------------

RESET, BOLD, DIM = "\x1b[0m", "\x1b[1m", "\x1b[2m"
CYAN, BLUE, YELLOW, MAGENTA, RED, GREEN = "\x1b[36m", "\x1b[94m", "\x1b[33m", "\x1b[35m", "\x1b[31m", "\x1b[32m"
WATCH_CLIP = 120


def format_event(event: dict[str, Any], color: bool = False, stats: bool = False) -> str | None:
    """The text watch prints for one event (no trailing newline), or None.
    `measured` events are printed only with `stats` (watch --stats)."""

    def c(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if color else text

    def text(value: Any) -> str:
        return clip(clean(value), WATCH_CLIP)

    kind = event.get("type")
    if kind == "start":
        extra = "  (stream)" if event.get("stream") else ""
        request_kind = kind_text(event)
        label = c(BOLD, f"  {request_kind}") if request_kind else ""
        api = f"  [{text(event['client_format'])}]" if event.get("client_format") else ""  # the API the client used
        return c(DIM, f"{local_time(event.get('ts_ms'))}  ⋯  ") + c(BLUE, text(event.get("model"))) + label + c(DIM, f"{api}  ({event.get('in_flight', 0)} in flight){extra}")
    if kind == "classified":
        tags = event.get("tags") or []
        return c(DIM, f"  → classified: [{', '.join(clean(t) for t in tags)}]") if tags else None
    if kind == "routed":
        attempt = event.get("attempt") or 1
        label = "  → routed: " if attempt <= 1 else f"  → fallback (attempt {attempt}): "
        return c(DIM if attempt <= 1 else YELLOW, label) + c(BLUE, text(event.get("provider"))) + c(DIM, "/") + c(BLUE, text(event.get("model")))
    if kind == "dropped":
        return c(YELLOW, f"  ! {event.get('count', '?')} events dropped: this watcher fell behind the router")
    if kind == "reload":
        style = RED if not event.get("ok") else YELLOW if event.get("restart_needed") else GREEN
        return c(DIM, f"{local_time(event.get('ts_ms'))}  ⟳  ") + c(style, reload_text(event)) + "\n"
    if kind == "measured":
        if not stats:
            return None
        return c(DIM, f"{local_time(event.get('ts_ms'))}  ≈  ") + c(CYAN, text(event.get("provider"))) + c(DIM, "  " + measured_text(event))
    if kind != "complete":
        return None  # a newer router's event type: ignore it

    failed = is_error(event)
    line = c(DIM, local_time(event.get("ts_ms"))) + "  " + c(BOLD + CYAN, text(event.get("provider") or "(no provider)"))
    first, rewritten = model_text(event)
    if rewritten is not None:
        line += "  " + c(DIM, text(first)) + " " + c(DIM, "→") + " " + c(BLUE, text(rewritten))
    elif first:
        line += "  " + c(BLUE, text(first))
    request_kind = kind_text(event)
    if request_kind:
        line += "  " + c(BOLD, request_kind)
    for tag in event.get("tags") or []:
        line += "  " + c(YELLOW, f"[{clean(tag)}]")
    for plugin in event.get("plugins") or []:
        line += "  " + c(MAGENTA, f"({clean(plugin)})")
    line += "  " + c(RED if failed else DIM, f"{event.get('duration_ms', 0)}ms")
    lines = [line]
    prompt = prompt_of(event.get("messages"))
    if prompt:
        lines.append("  " + c(DIM, "prompt:") + "  " + text(prompt))
    response = event.get("response") if isinstance(event.get("response"), dict) else None
    if failed:
        lines.append("  " + c(RED, "error:") + "   " + clip(error_text(event), WATCH_CLIP))
    elif response is not None:
        reply = clip(reply_text(response), WATCH_CLIP)
        calls = [clean(t.get("name")) for t in response.get("tool_calls") or [] if isinstance(t, dict)]
        if calls:
            reply = (reply + "  " if reply else "") + "tool calls: " + ", ".join(calls)
        lines.append("  " + c(DIM, "reply:") + "   " + reply)
    if not failed:
        tin, tout = tokens_of(event)
        facts = [f"{tin} in / {tout} out"]
        if response is not None and response.get("stop_reason"):
            facts.append(clean(response["stop_reason"]))
        if event.get("stream"):
            facts.append("stream")
        if isinstance(event.get("first_byte_ms"), int):
            facts.append(f"first byte {event['first_byte_ms']}ms")
        lines.append("  " + c(DIM, " · ".join(facts)))
    tried = attempts_text(event)
    if tried:
        lines.append("  " + c(YELLOW, "attempts:") + " " + tried)
    return "\n".join(lines) + "\n"


# --- the feed client -----------------------------------------------------------------


def feed_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/dashboard/events"


def auth_headers() -> list[tuple[bytes, bytes]]:
    key = os.environ.get(API_KEY_ENV)
    return [(b"authorization", b"Bearer " + key.encode())] if key else []


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    # httpcore wraps the OSError: it is the ConnectError's argument and context.
    if isinstance(exc, httpcore.ConnectError) and any(
        isinstance(cause, ConnectionRefusedError) for cause in (*exc.args, exc.__cause__, exc.__context__)
    ):
        return "connection refused"
    if isinstance(exc, httpcore.TimeoutException):
        return f"timed out ({text})" if text else "timed out"
    return text or type(exc).__name__


class FeedRefused(Exception):
    """The router answered but will not serve the feed (404, 401, ...): retrying cannot help."""


def status_problem(status: int, body: bytes) -> str:
    hint = {404: " (is [server] dashboard enabled?)", 401: f" (set ${API_KEY_ENV} to the router's key)", 403: ""}.get(status, "")
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace").strip()
    return f"server returned {status}{': ' + message if message else ''}{hint}"


class Feed:
    """Yields the router's events forever, reconnecting with capped backoff.

    Besides the router's own events it yields `{"type": "feed", "state": ...}`
    markers: `connecting`, `live` (the feed answered), `retrying` (with `error`
    and `delay`), and raises FeedRefused for a 4xx answer.
    """

    def __init__(self, base_url: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = feed_url(base_url)
        self.sleep = sleep

    def __iter__(self) -> Iterator[dict[str, Any]]:
        failures = 0
        while True:
            yield {"type": "feed", "state": "connecting", "url": self.url}
            try:
                for event in self._connect():
                    failures = 0  # it answered: the next outage starts the backoff afresh
                    yield event
                error = "the router closed the feed"
            except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
                error = describe(exc)
            delay = BACKOFF[failures] if failures < len(BACKOFF) else BACKOFF_CAP
            failures += 1
            yield {"type": "feed", "state": "retrying", "error": error, "delay": delay}
            self.sleep(delay)

    def _connect(self) -> Iterator[dict[str, Any]]:
        timeouts = {"connect": CONNECT_TIMEOUT, "read": READ_TIMEOUT, "write": CONNECT_TIMEOUT, "pool": CONNECT_TIMEOUT}
        headers = [(b"accept", b"text/event-stream"), *auth_headers()]
        with httpcore.ConnectionPool() as pool:
            with pool.stream("GET", self.url, headers=headers, extensions={"timeout": timeouts}) as response:
                if 400 <= response.status < 500:
                    raise FeedRefused(status_problem(response.status, response.read()))
                if response.status != 200:
                    raise httpcore.NetworkError(status_problem(response.status, response.read()))
                yield {"type": "feed", "state": "live", "url": self.url}
                splitter = SSESplitter()
                for chunk in response.iter_stream():
                    for frame in splitter.feed(chunk):
                        event = parse_frame(frame.data)
                        if event is not None:
                            yield event


def parse_frame(data: str) -> dict[str, Any] | None:
    """An SSE frame's JSON object, or None (a comment, or data we cannot read)."""
    if not data:
        return None
    try:
        event = json.loads(data)
    except ValueError:
        return {"type": "feed", "state": "garbled", "data": data[:200]}
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


# --- the command -----------------------------------------------------------------------


def run(base_url: str, color: bool, raw_json: bool, out=None, err=None, stats: bool = False) -> int:
    out = out or sys.stdout
    err = err or sys.stderr

    def note(text: str) -> None:
        print(text, file=err, flush=True)  # plain: stderr may be a log file even when stdout is a terminal

    last_error = None
    was_live = False
    try:
        for event in Feed(base_url):
            if event.get("type") == "feed":
                state = event["state"]
                if state == "connecting" and last_error is None and not was_live:
                    note(f"connecting to {event['url']} …")
                elif state == "live":
                    note(f"reconnected to {event['url']}" if was_live else "connected — waiting for requests\n")
                    was_live, last_error = True, None
                elif state == "retrying" and event["error"] != last_error:
                    # Said once per distinct problem, not once per try.
                    what = "feed lost" if was_live else "cannot reach the router"
                    note(f"{what}: {event['error']}; reconnecting (a try every {BACKOFF_CAP:g}s at most) …")
                    last_error = event["error"]
                elif state == "garbled":
                    note(f"[unreadable event: {event['data']!r}]")
                continue
            if raw_json:
                print(json.dumps(event, ensure_ascii=False, separators=(",", ":")), file=out, flush=True)
                continue
            text = format_event(event, color, stats)
            if text is not None:
                print(text, file=out, flush=True)
    except FeedRefused as exc:
        print(f"llmrouter watch: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # `llmrouter watch | head`: the reader left. Point stdout at /dev/null so
        # that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    return 0


def use_color(force: bool | None, stream=None) -> bool:
    """--color / --no-color win; else colour only on a terminal, and never with $NO_COLOR."""
    if force is not None:
        return force
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR")
