"""Ollama's own client API, client side: POST /api/chat and POST /api/generate. Pure.

Two client endpoints share this module: `CHAT` (/api/chat) and `GENERATE`
(/api/generate: a one-turn chat, or with `suffix` or `raw` a text
completion). Each exposes the client contract of llmrouter.formats
(parse_request, render_response, error_body, Encoder); both log as the
wire format "ollama". The upstream side of Ollama lives in
formats/ollama.py; the mapping tables in docs/formats.md.

Ollama streams by default (NDJSON, `application/x-ndjson`), and its tool
calls carry no ids in older clients: ids are made up from the conversation
(`call_<message index>_<call index>`), so the same history always gets the
same ids, and tool results are paired with the calls of the assistant turn
before them (by `tool_call_id`, else by `tool_name`, else in order).

Options with no canonical field ride in `Request.extras[<upstream format>]`,
top-level fields merged into that upstream's body: `extras["ollama"]` keeps
every Ollama field and option for Ollama upstreams (keep_alive, think,
num_ctx, ...), `extras["openai"]` / `extras["anthropic"]` get the options
those APIs have (seed, top_k, penalties, reasoning).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.formats import dumps
from llmrouter.formats.openai import append_tool_result
from llmrouter.formats.validate import bad, body_object, object_at, parse_plugins, take

STREAM_CONTENT_TYPE = "application/x-ndjson"
STREAMS_BY_DEFAULT = True

_THINK_LEVELS = ("low", "medium", "high", "max")
# think -> Anthropic thinking budget (tokens) and OpenAI reasoning_effort.
_THINK_BUDGET = {"low": 1024, "medium": 4096, "high": 16384, "max": 32000}
_REASONING_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high"}
_DONE_REASON = {"end_turn": "stop", "max_tokens": "length", "tool_use": "stop", "stop_sequence": "stop"}
# Image media types by the first bytes of their base64 text (Ollama sends no type).
_IMAGE_MAGIC = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


# --- reading -------------------------------------------------------------------------


def _media_type(data: str) -> str:
    return next((kind for magic, kind in _IMAGE_MAGIC if data.startswith(magic)), "image/png")


def _images(obj: dict[str, Any], path: str = "") -> list[c.Image]:
    out = []
    for data in take(obj, "images", "strings", path) or []:
        if data.startswith("data:"):  # lenient: a data URL instead of bare base64
            data = data.partition(",")[2]
        out.append(c.Image(media_type=_media_type(data), data=data))
    return out


def _arguments(value: object, path: str) -> str:
    if value is None:
        return "{}"
    if isinstance(value, dict):
        return dumps(value)
    if isinstance(value, str):  # lenient: JSON text instead of an object
        return value
    raise bad(path, "an object")


def _tool_calls(message: dict[str, Any], index: int, path: str) -> list[c.ToolCall]:
    calls = []
    for j, item in enumerate(take(message, "tool_calls", "array", path) or []):
        at = f"{path}.tool_calls[{j}]"
        fn = take(object_at(item, at), "function", "object", at, required=True)
        name = take(fn, "name", "name", f"{at}.function", required=True)
        call_id = take(item, "id", "string", at) or f"call_{index}_{j}"
        calls.append(c.ToolCall(call_id, name, _arguments(fn.get("arguments"), f"{at}.function.arguments")))
    return calls


@dataclass
class _Pending:
    """The calls of the latest assistant turn that no tool result answered yet."""

    calls: list[c.ToolCall]

    def answer(self, call_id: str | None, name: str | None) -> c.ToolCall | None:
        """The call a result answers: by id, else by name, else the next one in order."""
        match = next((call for call in self.calls if call.id == call_id), None) if call_id else None
        if match is None and name:
            match = next((call for call in self.calls if call.name == name), None)
        if match is None and self.calls:
            match = self.calls[0]
        if match is not None:
            self.calls.remove(match)
        return match


def _messages(body: dict[str, Any]) -> tuple[str | None, list[c.Message]]:
    items = take(body, "messages", "array", required=True)
    if not items:
        raise bad("messages", "a non-empty array")
    systems: list[str] = []
    messages: list[c.Message] = []
    pending = _Pending([])
    for i, item in enumerate(items):
        path = f"messages[{i}]"
        role = take(object_at(item, path), "role", "string", path, required=True)
        text = take(item, "content", "string", path) or ""
        images = _images(item, path)
        if role == "system":
            systems.append(text)
        elif role == "user":
            messages.append(c.Message("user", [*([c.Text(text)] if text or not images else []), *images]))
        elif role == "assistant":
            calls = _tool_calls(item, i, path)
            pending = _Pending(list(calls))
            messages.append(c.Message("assistant", [*([c.Text(text)] if text or not calls else []), *calls]))
        elif role == "tool":
            name = take(item, "tool_name", "string", path)
            call = pending.answer(take(item, "tool_call_id", "string", path), name)
            if call is None:
                # No call to pair it with: upstreams refuse orphan results, so it goes as text.
                label = f"Result of tool {name}" if name else "Tool result"
                messages.append(c.Message("user", [c.Text(f"{label}: {text}"), *images]))
            else:
                append_tool_result(messages, c.ToolResult(call.id, [*([c.Text(text)] if text else []), *images]))
        else:
            raise bad(f"{path}.role", "one of system, user, assistant, tool")
    return ("\n\n".join(systems) if systems else None), messages


def _tools(body: dict[str, Any]) -> list[c.Tool]:
    tools = []
    for i, item in enumerate(take(body, "tools", "array") or []):
        path = f"tools[{i}]"
        fn = take(object_at(item, path), "function", "object", path, required=True)
        at = f"{path}.function"
        parameters = take(fn, "parameters", "object", at) or {"type": "object", "properties": {}}
        tools.append(c.Tool(take(fn, "name", "name", at, required=True), take(fn, "description", "string", at), parameters))
    return tools


def _response_format(value: object) -> dict[str, Any] | None:
    """`format`: "json" or a JSON schema. Strict: an upstream that cannot honour
    it refuses the request instead of answering free text."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object", "strict": True}
    if isinstance(value, dict):
        return {"type": "json_schema", "name": "response", "schema": value, "strict": True}
    raise bad("format", '"json" or a JSON schema object')


@dataclass
class _Options:
    """`options` and the other sampling fields, split by where they can go."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None


def _options(body: dict[str, Any], extras: dict[str, Any]) -> _Options:
    options = take(body, "options", "object") or {}
    out = _Options(
        temperature=take(options, "temperature", "number", "options"),
        top_p=take(options, "top_p", "number", "options"),
    )
    num_predict = take(options, "num_predict", "integer", "options")
    if num_predict is not None and num_predict > 0:  # -1 (no limit) and -2 (fill the context) set none
        out.max_tokens = num_predict
    stop = options.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise bad("options.stop", "a string or an array of strings")
    out.stop = stop
    top_k = take(options, "top_k", "integer", "options")
    out.seed = take(options, "seed", "integer", "options")
    openai: dict[str, Any] = {}
    for key in ("frequency_penalty", "presence_penalty"):
        value = take(options, key, "number", "options")
        if value is not None:
            openai[key] = value
    if openai:
        extras["openai"] = openai
    if top_k is not None:
        extras["anthropic"] = {"top_k": top_k}
    return out


def _think(body: dict[str, Any], extras: dict[str, Any]) -> None:
    think = body.get("think")
    if think is None or think is False:
        return
    if think is not True and think not in _THINK_LEVELS:
        raise bad("think", 'a boolean or one of "low", "medium", "high", "max"')
    level = "medium" if think is True else think
    extras.setdefault("anthropic", {})["thinking"] = {"type": "enabled", "budget_tokens": _THINK_BUDGET[level]}
    extras.setdefault("openai", {})["reasoning_effort"] = _REASONING_EFFORT[level]


def _common(value: object) -> tuple[dict[str, Any], str, bool]:
    body = body_object(value)
    model = take(body, "model", "name", required=True)
    stream = take(body, "stream", "boolean")
    keep_alive = body.get("keep_alive")
    if keep_alive is not None and (isinstance(keep_alive, bool) or not isinstance(keep_alive, (str, int, float))):
        raise bad("keep_alive", "a duration string or a number of seconds")
    return body, model, stream is not False


def _request(body: dict[str, Any], model: str, stream: bool, system: str | None, messages: list[c.Message],
             client_format: str, translated: frozenset[str], tools: list[c.Tool], kind: str = c.CHAT) -> c.Request:
    extras: dict[str, Any] = {}
    options = _options(body, extras)
    _think(body, extras)
    # Every field an Ollama upstream understands but the canonical model does not.
    extras["ollama"] = {k: v for k, v in body.items() if k not in translated}
    return c.Request(
        model=model,
        messages=messages,
        system=system,
        tools=tools,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed,
        stop=list(options.stop or []),
        stream=stream,
        response_format=_response_format(body.get("format")),
        plugins=parse_plugins(body),
        extras=extras,
        client_format=client_format,
        raw=body,
        kind=kind,
        suffix=take(body, "suffix", "string") if kind == c.COMPLETION else None,
    )


# Top-level fields the canonical request carries (the others go to extras["ollama"]).
_CHAT_FIELDS = frozenset(("model", "messages", "tools", "stream", "format", "plugins"))
_GENERATE_FIELDS = frozenset(("model", "prompt", "system", "images", "stream", "format", "plugins", "suffix", "raw", "context", "template"))


def parse_chat(body: object) -> c.Request:
    body, model, stream = _common(body)
    system, messages = _messages(body)
    return _request(body, model, stream, system, messages, "ollama", _CHAT_FIELDS, _tools(body))


def parse_generate(body: object) -> c.Request:
    """A one-turn chat, or, with a `suffix` (fill-in-the-middle) or `raw: true`,
    a text completion: then an Ollama upstream gets the body as it came
    (passthrough to its /api/generate) and an openai one a /completions request."""
    body, model, stream = _common(body)
    if body.get("context"):
        raise errors.BadRequest("context (a deprecated token array) is not supported by llmrouter: use /api/chat for conversations", param="context")
    if body.get("template"):
        raise errors.BadRequest("template is not supported by llmrouter: the upstream applies its own", param="template")
    prompt = take(body, "prompt", "string")
    if not prompt:
        raise bad("prompt", "a non-empty string (llmrouter does not load or unload models)")
    system = take(body, "system", "string") or None
    raw = take(body, "raw", "boolean")
    if take(body, "suffix", "string") or raw:
        if body.get("images"):
            raise errors.BadRequest("images cannot be sent with a suffix or raw: a text completion takes text only", param="images")
        # client_format "ollama": the same format as an Ollama upstream's /api/generate, so it is passed through.
        return _request(body, model, stream, system, [c.Message("user", [c.Text(prompt)])], "ollama", _GENERATE_FIELDS, [], c.COMPLETION)
    messages = [c.Message("user", [c.Text(prompt), *_images(body)])]
    return _request(body, model, stream, system, messages, "ollama-generate", _GENERATE_FIELDS, [])


# --- writing -------------------------------------------------------------------------


def _created_at(now: float) -> str:
    """`now` (epoch seconds) in RFC 3339, UTC. Computed here: formats import
    no datetime (it can read the clock). Days to a civil date: Howard
    Hinnant's `civil_from_days`."""
    seconds, micro = divmod(round(now * 1_000_000), 1_000_000)
    days, rest = divmod(seconds, 86400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    era, day_of_era = divmod(days + 719468, 146097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153  # March = 0
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    year = year_of_era + era * 400 + (month <= 2)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{micro:06d}Z"


def _call_json(index: int, call: c.ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}}


def _thinking(parts: list[c.Part]) -> str:
    """Anthropic thinking blocks as Ollama's `thinking` text."""
    return "".join(
        str(p.data.get("thinking", "")) for p in parts if isinstance(p, c.Opaque) and p.data.get("type") == "thinking"
    )


def _nanoseconds(seconds: float) -> int:
    return max(round(seconds * 1e9), 0)


def _final(req: c.Request, usage: c.Usage, stop_reason: str) -> dict[str, Any]:
    """The fields of the last object: why it ended, token counts, durations.
    Durations are what the router measured (time to first byte as prompt
    evaluation, the rest as generation); the model's load time is unknown (0)."""
    first_byte, total = req.timing or (0.0, 0.0)
    return {
        "done": True,
        "done_reason": _DONE_REASON.get(stop_reason, "stop"),
        "total_duration": _nanoseconds(total),
        "load_duration": 0,
        "prompt_eval_count": usage.input_tokens,
        "prompt_eval_duration": _nanoseconds(first_byte),
        "eval_count": usage.output_tokens,
        "eval_duration": _nanoseconds(total - first_byte),
    }


def error_body(err: errors.RouterError) -> dict[str, Any]:
    return {"error": err.message}


class _Client:
    """One of the two Ollama client formats (chat or generate)."""

    STREAM_CONTENT_TYPE = STREAM_CONTENT_TYPE
    STREAMS_BY_DEFAULT = STREAMS_BY_DEFAULT
    error_body = staticmethod(error_body)

    FORMAT = "ollama"  # the wire format the log and live views show, for both endpoints

    def __init__(self, generate: bool) -> None:
        self.generate = generate
        self.parse_request = parse_generate if generate else parse_chat

    def head(self, req: c.Request, model: str) -> dict[str, Any]:
        """The fields every object starts with. `model` is the one that answered
        (as with the other client formats, and as a passthrough reply has it)."""
        return {"model": model or req.model, "created_at": _created_at(req.now)}

    def message(self, text: str, thinking: str = "", calls: list[c.ToolCall] | None = None) -> dict[str, Any]:
        """The reply fields of one object: `response` (generate) or `message` (chat)."""
        if self.generate:
            out: dict[str, Any] = {"response": text}
            if thinking:
                out["thinking"] = thinking
            return out
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [_call_json(i, call) for i, call in enumerate(calls)]
        return {"message": message}

    def render_response(self, resp: c.Response, req: c.Request) -> dict[str, Any]:
        body = {**self.head(req, resp.model), **self.message(resp.text, _thinking(resp.content), resp.tool_calls)}
        return {**body, **_final(req, resp.usage, resp.stop_reason)}

    def Encoder(self, req: c.Request, model: str) -> _Encoder:  # noqa: N802 (the contract's name)
        return _Encoder(self, req, model)


class _Encoder:
    """Canonical stream events -> Ollama NDJSON lines. Text goes out as it
    comes; Ollama sends each tool call whole, so calls are collected and sent
    in one line when the reply stops."""

    end_after_error = True  # Ollama's error line is the last line of a stream that ends normally

    def __init__(self, client: _Client, req: c.Request, model: str) -> None:
        self.client = client
        self.req = req
        self.head = client.head(req, model)
        self.calls: dict[int, c.ToolCall] = {}
        self.usage = c.Usage()
        self.stop_reason = "end_turn"
        self.done = False

    def _line(self, obj: dict[str, Any]) -> bytes:
        return dumps({**self.head, **obj}).encode() + b"\n"

    def _flush_calls(self) -> bytes:
        if not self.calls:
            return b""
        calls, self.calls = list(self.calls.values()), {}
        return self._line({**self.client.message("", calls=calls), "done": False})

    def encode(self, event: c.StreamEvent) -> bytes:
        if self.done:
            return b""
        if isinstance(event, c.TextDelta) and event.text:
            return self._line({**self.client.message(event.text), "done": False})
        if isinstance(event, c.ToolCallStart):
            self.calls[event.index] = c.ToolCall(event.id, event.name, "")
        elif isinstance(event, c.ToolCallDelta) and event.index in self.calls:
            self.calls[event.index].arguments += event.arguments
        elif isinstance(event, c.OpaqueBlock):
            thinking = _thinking([event.part])
            if thinking:
                return self._line({**self.client.message("", thinking), "done": False})
        elif isinstance(event, c.UsageUpdate):
            self.usage.merge(event.usage)
        elif isinstance(event, c.MessageStart) and event.usage:
            self.usage.merge(event.usage)
        elif isinstance(event, c.Stop):
            self.stop_reason = event.stop_reason
            return self._flush_calls()
        elif isinstance(event, c.StreamError):
            return self.error(event)
        return b""

    def finish(self) -> bytes:
        if self.done:
            return b""
        self.done = True
        out = self._flush_calls()
        return out + self._line({**self.client.message(""), **_final(self.req, self.usage, self.stop_reason)})

    def error(self, err: c.StreamError) -> bytes:
        if self.done:
            return b""
        self.done = True
        return dumps({"error": err.message}).encode() + b"\n"

    def ping(self) -> bytes:
        # NDJSON has no comments: an empty, unfinished object keeps the connection busy.
        return b"" if self.done else self._line({**self.client.message(""), "done": False})


CHAT = _Client(generate=False)  # client format "ollama"
GENERATE = _Client(generate=True)  # client format "ollama-generate"
