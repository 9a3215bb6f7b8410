"""The TUI's state and drawing, as pure functions (no terminal, no sockets, no clock).

    state = reduce(state, event)          # a router event, or one of ours (below)
    state, effect = on_key(state, key)    # effect: None, QUIT or a Send
    rows = render(state, height, width, now_ms, utc_offset_s)

Our own events, from the TUI's threads: {"type": "feed", "state": ...}
(see watch.Feed), {"type": "prices", "prices": {provider: $/1M tokens}},
and {"type": "chat", "delta" | "done" | "error": ...} for the reply being
streamed. `reduce` and `on_key` update the state in place and return it.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from llmrouter.eventtext import (
    clean, clock_text, error_text, is_error, kind_text, measured_text, model_text, prompt_of, reload_text, reply_text, tokens_of,
)

DEFAULT_MODEL = "llama3.1:8b"
MAX_ENTRIES = 200
FEED_CLIP = 90
QUIT = "quit"


@dataclass
class Send:
    """Effect of Enter in the chat: stream this conversation through the router."""

    model: str
    messages: list[dict[str, str]]
    seq: int  # tags the reply's events, so a late one from an earlier send is ignored


@dataclass
class Pending:
    id: Any
    ts_ms: int
    model: str
    tags: list[str] = field(default_factory=list)
    provider: str | None = None
    attempt: int = 1
    kind: str = ""  # "completion", "embedding ×N"; "" for chat


@dataclass
class Bucket:
    """Totals over `complete` records: all of them, one provider's or one tag's."""

    count: int = 0
    errors: int = 0
    duration_ms: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_by_provider: dict[str, int] = field(default_factory=dict)  # for the cost
    last_ok_ms: int | None = None

    def add(self, event: dict[str, Any]) -> None:
        self.count += 1
        duration = event.get("duration_ms")
        self.duration_ms += duration if isinstance(duration, int) else 0
        tin, tout = tokens_of(event)
        self.tokens_in += tin
        self.tokens_out += tout
        provider = event.get("provider")
        if provider and tin + tout:
            self.tokens_by_provider[provider] = self.tokens_by_provider.get(provider, 0) + tin + tout
        if is_error(event):
            self.errors += 1
        elif isinstance(event.get("ts_ms"), int):
            self.last_ok_ms = event["ts_ms"]

    @property
    def avg_ms(self) -> int:
        return self.duration_ms // self.count if self.count else 0

    def cost(self, prices: dict[str, float | None]) -> float | None:
        """Tokens × each provider's price per million; None if a price is unknown."""
        total = 0.0
        for provider, tokens in self.tokens_by_provider.items():
            price = prices.get(provider)
            if price is None:
                return None
            total += tokens * price / 1_000_000
        return total


@dataclass
class Turn:
    role: str  # user | assistant | error (errors are shown, never sent back)
    text: str


@dataclass
class State:
    focus: str = "feed"  # feed | chat
    feed: str = "connecting"  # connecting | live | retrying | refused
    feed_detail: str = ""
    dropped: int = 0
    pending: dict[Any, Pending] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)  # newest first
    scroll: int = 0
    total: Bucket = field(default_factory=Bucket)
    providers: dict[str, Bucket] = field(default_factory=dict)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # provider -> its latest `measured` event
    tags: dict[str, Bucket] = field(default_factory=dict)
    prices: dict[str, float | None] = field(default_factory=dict)
    last_route: dict[str, Any] | None = None  # the latest `complete`, from any client
    model: str = DEFAULT_MODEL
    turns: list[Turn] = field(default_factory=list)
    input: str = ""
    sending: bool = False
    partial: str = ""
    chat_seq: int = 0
    notice: str = ""


# --- events ------------------------------------------------------------------------


def reduce(state: State, event: dict[str, Any]) -> State:
    kind = event.get("type")
    if kind == "start":
        state.pending[event.get("id")] = Pending(
            event.get("id"), _int(event.get("ts_ms")), clean(event.get("model")), kind=kind_text(event) or ""
        )
    elif kind == "classified":
        if event.get("id") in state.pending:
            state.pending[event["id"]].tags = [clean(t) for t in event.get("tags") or []]
    elif kind == "routed":
        pending = state.pending.get(event.get("id"))
        if pending is not None:
            pending.provider, pending.model = clean(event.get("provider")), clean(event.get("model"))
            pending.attempt = _int(event.get("attempt")) or 1
    elif kind == "complete":
        _complete(state, event)
    elif kind == "reload":  # shown among the requests, where it happened
        state.entries.insert(0, event)
        del state.entries[MAX_ENTRIES:]
    elif kind == "dropped":
        state.dropped += _int(event.get("count"))
    elif kind == "measured":
        state.live[clean(event.get("provider"))] = event
    elif kind == "feed":
        _feed(state, event)
    elif kind == "prices":
        state.prices = dict(event.get("prices") or {})
    elif kind == "chat":
        _chat(state, event)
    return state


def _complete(state: State, event: dict[str, Any]) -> None:
    state.pending.pop(event.get("id"), None)
    state.total.add(event)
    state.providers.setdefault(event.get("provider") or "(none)", Bucket()).add(event)
    for tag in event.get("tags") or []:
        state.tags.setdefault(clean(tag), Bucket()).add(event)
    state.last_route = event
    state.entries.insert(0, event)
    del state.entries[MAX_ENTRIES:]
    if state.scroll > 0:
        state.scroll = min(state.scroll + 1, len(state.entries) - 1)  # the viewed item stays put


def _feed(state: State, event: dict[str, Any]) -> None:
    new = event.get("state")
    if new == "garbled":
        return
    if new == "live" and state.feed != "live":
        # Events may have been missed while away: these may never complete.
        state.pending.clear()
    state.feed = new if new in ("connecting", "live", "retrying", "refused") else state.feed
    if new == "retrying":
        state.feed_detail = f"{event.get('error')} · retry in {event.get('delay', 0):g}s"
    elif new == "refused":
        state.feed_detail = str(event.get("error") or "")
    elif new == "live":
        state.feed_detail = ""


def _chat(state: State, event: dict[str, Any]) -> None:
    if not state.sending or event.get("seq") != state.chat_seq:
        return  # from a send that was abandoned (the conversation was cleared)
    if "delta" in event:
        state.partial += event["delta"]
        return
    if state.partial:
        state.turns.append(Turn("assistant", state.partial))
    if "error" in event:
        state.turns.append(Turn("error", str(event["error"])))
    elif not state.partial:
        state.turns.append(Turn("assistant", "(empty reply)"))
    state.partial, state.sending = "", False


def chat_frame(data: str) -> dict[str, Any] | None:
    """One `data:` payload of the router's streamed reply, as a chat event."""
    if data.strip() == "[DONE]":
        return {"type": "chat", "done": True}
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("error"), dict):
        return {"type": "chat", "error": str(body["error"].get("message") or body["error"])}
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str) and text:
            return {"type": "chat", "delta": text}
    return None


def http_error(status: int, body: bytes) -> str:
    """An error reply's message, whatever format it came in."""
    try:
        err = json.loads(body).get("error")
        message = err.get("message") if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        message = None
    if not message:
        message = body[:300].decode("utf-8", "replace").strip() or "no details"
    return f"HTTP {status}: {clean(message)}"


# --- keys --------------------------------------------------------------------------
# Keys arrive as names: "tab", "up", "down", "enter", "esc", "backspace",
# "ctrl-c", "resize", or the typed character itself.


def on_key(state: State, key: str) -> tuple[State, Any]:
    if key == "ctrl-c":
        return state, QUIT
    if state.focus == "feed":
        if key == "q":
            return state, QUIT
        if key in ("tab", "i"):
            state.focus = "chat"
        elif key in ("up", "k"):
            state.scroll = max(0, min(state.scroll + 1, len(state.entries) - 1))
        elif key in ("down", "j"):
            state.scroll = max(0, state.scroll - 1)
        return state, None
    if key == "esc":
        state.input, state.focus = "", "feed"
    elif key == "tab":
        state.focus = "feed"
    elif key == "backspace":
        state.input = state.input[:-1]
    elif key == "enter":
        return _submit(state)
    elif len(key) == 1 and key.isprintable():
        state.input += key
        state.notice = ""
    return state, None


def _submit(state: State) -> tuple[State, Any]:
    text = state.input.strip()
    if not text or state.sending:
        return state, None
    if text == ":clear":
        state.turns, state.input, state.partial, state.sending, state.notice = [], "", "", False, "conversation cleared"
        state.chat_seq += 1
        return state, None
    if text == ":model" or text.startswith(":model "):
        name = text[len(":model") :].strip()
        state.input = ""
        if name:
            state.model, state.notice = name, f"model set to {name}"
        else:
            state.notice = "usage: :model NAME"
        return state, None
    state.turns.append(Turn("user", state.input))
    state.input, state.sending, state.partial, state.notice = "", True, "", ""
    state.chat_seq += 1
    messages = [{"role": t.role, "content": t.text} for t in state.turns if t.role in ("user", "assistant")]
    return state, Send(state.model, messages, state.chat_seq)


# --- drawing -------------------------------------------------------------------------

Row = list  # of (text, style) runs covering exactly the width


def cell_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(cell_width(c) for c in text)


class Canvas:
    """A grid of cells; every write is clipped to it, so no size can break a draw."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = max(0, height), max(0, width)
        self.cells = [[(" ", "") for _ in range(self.width)] for _ in range(self.height)]

    def put(self, y: int, x: int, text: str, style: str = "", limit: int | None = None) -> int:
        """Writes text at (y, x), at most `limit` columns; returns the columns used."""
        if not 0 <= y < self.height:
            return 0
        end = self.width if limit is None else min(self.width, x + max(0, limit))
        col = x
        for ch in clean(text):
            w = cell_width(ch)
            if w == 0:
                if col > x and 0 <= col - 1 < self.width:  # a combining mark joins its base
                    base, st = self.cells[y][col - 1]
                    self.cells[y][col - 1] = (base + ch, st)
                continue
            if col + w > end:
                break
            if col >= 0:
                self.cells[y][col] = (ch, style)
                if w == 2:
                    self.cells[y][col + 1] = ("", style)  # covered by the wide character
            col += w
        return col - x

    def runs(self, segments: list[tuple[str, str]], y: int, x: int, limit: int) -> None:
        for text, style in segments:
            used = self.put(y, x, text, style, limit)
            x, limit = x + used, limit - used
            if limit <= 0 or used < text_width(clean(text)):
                break

    def box(self, y: int, x: int, h: int, w: int, style: str, title: list[tuple[str, str]] = (), footer: list[tuple[str, str]] = ()) -> None:
        if h < 2 or w < 2:
            return
        self.put(y, x, "┌" + "─" * (w - 2) + "┐", style)
        for row in range(y + 1, y + h - 1):
            self.put(row, x, "│", style)
            self.put(row, x + w - 1, "│", style)
        self.put(y + h - 1, x, "└" + "─" * (w - 2) + "┘", style)
        self.runs(list(title), y, x + 1, w - 2)
        self.runs(list(footer), y + h - 1, x + 1, w - 2)

    def rows(self) -> list[Row]:
        out = []
        for line in self.cells:
            row: Row = []
            for ch, style in line:
                if row and row[-1][1] == style:
                    row[-1] = (row[-1][0] + ch, style)
                else:
                    row.append((ch, style))
            out.append(row)
        return out


def plain(rows: list[Row]) -> list[str]:
    return ["".join(text for text, _ in row) for row in rows]


def render(state: State, height: int, width: int, now_ms: int, utc_offset_s: int = 0) -> list[Row]:
    """The screen as rows; times shown `utc_offset_s` east of UTC (the viewer's zone)."""
    canvas = Canvas(height, width)
    if height < 8 or width < 30:
        canvas.put(0, 0, "window too small", "yellow")
        canvas.put(1, 0, "q quits", "dim")
        return canvas.rows()
    top = height * 60 // 100
    left = max(width * 35 // 100, min(38, width // 2))  # the stats need ~36 columns to say much
    _feed_pane(canvas, state, 0, 0, top, width, now_ms, utc_offset_s)
    _stats_pane(canvas, state, top, 0, height - top, left, now_ms)
    _chat_pane(canvas, state, top, left, height - top, width - left)
    return canvas.rows()


FEED_STATES = {"connecting": ("connecting…", "yellow"), "live": ("● live", "green"), "retrying": ("reconnecting", "red"), "refused": ("error", "red")}


def _feed_pane(cv: Canvas, s: State, y: int, x: int, h: int, w: int, now_ms: int, utc_offset_s: int) -> None:
    label, style = FEED_STATES.get(s.feed, (s.feed, "red"))
    title = [(" Pipeline  ", "bold"), (label, style)]
    if s.feed_detail:
        title.append((f": {s.feed_detail}", style))
    title.append((f"  {len(s.entries)} events", ""))
    if s.pending:
        title.append((f"  {len(s.pending)} in flight", "cyan"))
    if s.dropped:
        title.append((f"  {s.dropped} dropped", "yellow"))
    title.append((" ", ""))
    focused = s.focus == "feed"
    footer = [(" ↑/↓ scroll  Tab/i → chat  q quit ", "dim")] if focused else [(" Tab/i to focus ", "dim")]
    cv.box(y, x, h, w, "border_focus" if focused else "border", title, footer)
    lines: list[list[tuple[str, str]]] = []
    for p in reversed(list(s.pending.values())):
        line = [(f"{clock_text(p.ts_ms, utc_offset_s)}  ⋯  ", "dim")]
        if p.provider:
            line.append((f"{p.provider}  {p.model}", "cyan"))
            if p.attempt > 1:
                line.append((f"  (fallback, attempt {p.attempt})", "yellow"))
        else:
            line.append((p.model, "dim"))
        if p.kind:
            line.append((f"  {p.kind}", "bold"))
        line += [(f"  [{t}]", "yellow") for t in p.tags]
        line.append((f"  {_elapsed(now_ms - p.ts_ms)}", "dim"))
        lines += [line, []]
    for event in s.entries[s.scroll :]:
        lines += _entry_lines(event, s.prices, utc_offset_s)
        if len(lines) >= h:
            break
    for i, line in enumerate(lines[: h - 2]):
        cv.runs([(" ", "")] + line, y + 1 + i, x + 1, w - 3)


def _entry_lines(e: dict[str, Any], prices: dict[str, float | None], utc_offset_s: int) -> list[list[tuple[str, str]]]:
    if e.get("type") == "reload":
        style = "red" if not e.get("ok") else "yellow" if e.get("restart_needed") else "green"
        return [[(clock_text(e.get("ts_ms"), utc_offset_s) + "  ⟳  ", "dim"), (reload_text(e), style)], []]
    failed = is_error(e)
    head = [(clock_text(e.get("ts_ms"), utc_offset_s) + "  ", "dim"), (clean(e.get("provider") or "(no provider)"), "bold")]
    first, rewritten = model_text(e)
    head.append((f"  {first} → {rewritten}" if rewritten else f"  {first}", "blue"))
    request_kind = kind_text(e)
    if request_kind:
        head.append((f"  {request_kind}", "bold"))
    head += [(f"  [{clean(t)}]", "yellow") for t in e.get("tags") or []]
    head += [(f"  ({clean(p)})", "magenta") for p in e.get("plugins") or []]
    head.append((f"  {e.get('duration_ms', 0)}ms", "red" if failed else "dim"))
    tin, tout = tokens_of(e)
    if tin or tout:
        head.append((f"  {tin}→{tout} tok", "dim"))
        price = prices.get(e.get("provider") or "")
        if price is not None:
            head.append((f"  {money((tin + tout) * price / 1_000_000)}", "dim"))
    lines = [head]
    prompt = prompt_of(e.get("messages"))
    if prompt:
        lines.append([("  prompt: ", "dim"), (_clip(prompt), "")])
    response = e.get("response") if isinstance(e.get("response"), dict) else None
    if failed:
        lines.append([("  error: ", "red"), (_clip(error_text(e)), "red")])
    elif response is not None:
        lines.append([("  reply: ", "dim"), (_clip(reply_text(response)), "")])
    else:
        lines.append([])
    attempts = [a for a in e.get("attempts") or [] if isinstance(a, dict)]
    if len(attempts) > 1:
        tried = " → ".join(f"{a.get('provider')}{'' if a.get('outcome') == 'ok' else ' ✗'}" for a in attempts)
        lines.append([("  tried: ", "yellow"), (tried, "yellow")])
    return lines + [[]]


def _stats_pane(cv: Canvas, s: State, y: int, x: int, h: int, w: int, now_ms: int) -> None:
    cv.box(y, x, h, w, "border", [(" Stats ", "bold")])
    t = s.total
    lines: list[list[tuple[str, str]]] = [
        [(f"{t.count} requests  ", ""), (f"{t.errors} errors", "red" if t.errors else ""), (f"  {t.avg_ms}ms avg", "")],
        [(f"tokens {_tokens(t.tokens_in)} in / {_tokens(t.tokens_out)} out  ", "dim"), (_cost(t, s.prices), "dim")],
    ]
    if s.pending:
        lines.append([(f"{len(s.pending)} in flight", "cyan")])
    # A provider that only failed (another answered) shows up through its measurements.
    providers = {**{name: Bucket() for name in s.live}, **s.providers}
    for heading, buckets, fmt in (("providers", providers, "{}"), ("tags", s.tags, "[{}]")):
        if not buckets:
            continue
        lines += [[], [(heading, "bold")]]
        for name, b in sorted(buckets.items(), key=lambda kv: (-kv[1].count, kv[0])):
            row = [(" " + fmt.format(name), "yellow" if heading == "tags" else "cyan"), (f"  {b.count} ({b.count * 100 // max(t.count, 1)}%)", "")]
            if heading == "providers":
                row.append(("  last ok " + _ago(now_ms, b.last_ok_ms), "red" if b.last_ok_ms is None else "dim"))
            lines.append(row)
            lines.append([(f"   {b.errors} err", "red" if b.errors else "dim"), (f" · {b.avg_ms}ms · {_tokens(b.tokens_in + b.tokens_out)} tok · {_cost(b, s.prices)}", "dim")])
            if heading == "providers" and name in s.live:
                lines.append([("   now: " + measured_text(s.live[name]), "dim")])
    for i, line in enumerate(lines[: h - 2]):
        cv.runs([(" ", "")] + line, y + 1 + i, x + 1, w - 3)


def _chat_pane(cv: Canvas, s: State, y: int, x: int, h: int, w: int) -> None:
    focused = s.focus == "chat"
    footer = [(" Enter send  Esc back  :model  :clear ", "dim")] if focused else [(" Tab/i to focus ", "dim")]
    cv.box(y, x, h, w, "border_focus" if focused else "border", [(" Chat  ", "bold"), (f"model: {s.model} ", "cyan")], footer)
    inner_y, inner_x, inner_h, inner_w = y + 1, x + 1, h - 2, w - 2
    if inner_h < 3 or inner_w < 4:
        return
    # The input box: 3 rows at the bottom.
    box_y = inner_y + inner_h - 3
    cv.box(box_y, inner_x, 3, inner_w, "border_focus" if focused else "border", [(" ▸ ", "bold")])
    field_w = inner_w - 3
    if s.sending:
        cv.put(box_y + 1, inner_x + 2, "(waiting for the reply…)", "dim", field_w)
    else:
        shown = s.input + ("█" if focused else "")
        while text_width(shown) > field_w and shown:
            shown = shown[1:]  # keep the end, where the cursor is, in view
        cv.put(box_y + 1, inner_x + 2, shown, "", field_w)
    convo_h = inner_h - 3
    if convo_h < 1:
        return
    # The conversation's bottom rule names where the last request (of any client) went.
    rule_y = inner_y + convo_h - 1
    cv.put(rule_y, inner_x, "─" * inner_w, "border")
    r = s.last_route
    if r is not None:
        label = [(f" {clean(r.get('provider') or '(no provider)')} / {clean(r.get('sent_model') or r.get('requested_model') or '')} ", "cyan")]
        label += [(f"[{clean(t)}] ", "yellow") for t in r.get("tags") or []]
    else:
        label = [(" conversation ", "dim")]
    cv.runs(label, rule_y, inner_x + 1, inner_w - 2)
    lines = _conversation(s, inner_w - 2)
    visible = lines[-(convo_h - 1) :] if convo_h > 1 else []
    for i, (text, style) in enumerate(visible):
        cv.put(inner_y + i, inner_x + 1, text, style, inner_w - 2)


def _conversation(s: State, width: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if s.notice:
        out.append((s.notice, "dim"))
    if not s.turns and not s.sending:
        return out + [("(no messages yet — type below and press Enter)", "dim")]
    for turn in s.turns:
        if turn.role == "user":
            out += [(line, "bold") for line in wrap("you: " + turn.text, width)]
        elif turn.role == "error":
            out += [(line, "red") for line in wrap("     error: " + turn.text, width)]
            out.append(("", ""))
        else:
            for para in turn.text.split("\n"):
                out += [(line, "") for line in wrap("     " + para, width)]
            out.append(("", ""))
    if s.sending:
        for para in (s.partial or "…").split("\n"):
            out += [(line, "") for line in wrap("     " + para, width)]
    return out


def wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap to `width` columns; leading indentation is kept on every
    line, and a word longer than a line is cut. (A wide character still takes
    two columns on a one-column line; the canvas clips it.)"""
    text = clean(text)
    body = text.lstrip(" ")
    indent = text[: len(text) - len(body)]
    if width < 1:
        return []
    if width - len(indent) < 2:
        indent = ""  # too narrow to indent (a wide character needs 2): the words matter more
    room = width - len(indent)
    lines: list[str] = []
    line = ""
    for word in body.split(" "):
        joined = f"{line} {word}" if line else word
        if text_width(joined) <= room:
            line = joined
            continue
        if line:
            lines.append(line)
        while text_width(word) > room:
            piece = _prefix(word, room)
            lines.append(piece)
            word = word[len(piece) :]
        line = word
    lines.append(line)
    return [indent + line for line in lines]


def _prefix(word: str, room: int) -> str:
    """The longest start of `word` that fits in `room` columns (one character at least)."""
    used = 0
    for i, ch in enumerate(word):
        used += cell_width(ch)
        if used > room:
            return word[: max(i, 1)]
    return word


# --- small formats -------------------------------------------------------------------


def _clip(value: Any) -> str:
    text = clean(value)
    return text if len(text) <= FEED_CLIP else text[:FEED_CLIP] + "…"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _elapsed(ms: int) -> str:
    ms = max(0, ms)
    return f"{ms}ms" if ms < 10_000 else f"{ms / 1000:.0f}s"


def _ago(now_ms: int, then_ms: int | None) -> str:
    if then_ms is None:
        return "never"
    secs = max(0, now_ms - then_ms) // 1000
    if secs < 60:
        return f"{secs}s ago"
    return f"{secs // 60}m ago" if secs < 3600 else f"{secs // 3600}h ago"


def _tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def money(cost: float) -> str:
    if cost == 0:
        return "$0"
    return f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


def _cost(bucket: Bucket, prices: dict[str, float | None]) -> str:
    cost = bucket.cost(prices)
    return "cost ?" if cost is None else money(cost)
