"""Ollama's own client API, client side: POST /api/chat and POST /api/generate. Pure.

Two client formats share this module: `CHAT` ("ollama", /api/chat) and
`GENERATE` ("ollama-generate", /api/generate, a one-turn request). Each
exposes the client contract of llmrouter.formats (parse_request,
render_response, error_body, Encoder). The upstream side of Ollama lives in
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


def _bad(param: str, expected: str) -> errors.BadRequest:
    return errors.BadRequest(f"{param} must be {expected}", param=param)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _get(obj: dict[str, Any], key: str, check: Any, expected: str, param: str) -> Any:
    """obj[key] when present and of the right kind; None when absent or null."""
    value = obj.get(key)
    if value is not None and not check(value):
        raise _bad(param, expected)
    return value


def _string(obj: dict[str, Any], key: str, param: str) -> str | None:
    return _get(obj, key, lambda v: isinstance(v, str), "a string", param)


def _media_type(data: str) -> str:
    return next((kind for magic, kind in _IMAGE_MAGIC if data.startswith(magic)), "image/png")


def _images(value: object, param: str) -> list[c.Image]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(param, "an array of base64 strings")
    out = []
    for data in value:
        if data.startswith("data:"):  # lenient: a data URL instead of bare base64
            data = data.partition(",")[2]
        out.append(c.Image(media_type=_media_type(data), data=data))
    return out


def _arguments(value: object, param: str) -> str:
    if value is None:
        return "{}"
    if isinstance(value, dict):
        return dumps(value)
    if isinstance(value, str):  # lenient: JSON text instead of an object
        return value
    raise _bad(param, "an object")


def _tool_calls(value: object, index: int, param: str) -> list[c.ToolCall]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(param, "an array")
    calls = []
    for j, item in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(item, dict) or not isinstance(item.get("function"), dict):
            raise _bad(where, "an object with a function object")
        fn = item["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.function.name", "a non-empty string")
        call_id = _string(item, "id", f"{where}.id") or f"call_{index}_{j}"
        calls.append(c.ToolCall(call_id, name, _arguments(fn.get("arguments"), f"{where}.function.arguments")))
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


def _tool_result(messages: list[c.Message], result: c.ToolResult) -> None:
    """Consecutive tool results share one user message (as Anthropic requires)."""
    last = messages[-1] if messages else None
    if last and last.role == "user" and last.content and all(isinstance(p, c.ToolResult) for p in last.content):
        last.content.append(result)
    else:
        messages.append(c.Message("user", [result]))


def _messages(items: object) -> tuple[str | None, list[c.Message]]:
    if not isinstance(items, list) or not items:
        raise _bad("messages", "a non-empty array")
    systems: list[str] = []
    messages: list[c.Message] = []
    pending = _Pending([])
    for i, item in enumerate(items):
        param = f"messages[{i}]"
        if not isinstance(item, dict):
            raise _bad(param, "an object")
        role = item.get("role")
        text = _string(item, "content", f"{param}.content") or ""
        images = _images(item.get("images"), f"{param}.images")
        if role == "system":
            systems.append(text)
        elif role == "user":
            messages.append(c.Message("user", [*([c.Text(text)] if text or not images else []), *images]))
        elif role == "assistant":
            calls = _tool_calls(item.get("tool_calls"), i, f"{param}.tool_calls")
            pending = _Pending(list(calls))
            messages.append(c.Message("assistant", [*([c.Text(text)] if text or not calls else []), *calls]))
        elif role == "tool":
            name = _string(item, "tool_name", f"{param}.tool_name")
            call = pending.answer(_string(item, "tool_call_id", f"{param}.tool_call_id"), name)
            if call is None:
                # No call to pair it with: upstreams refuse orphan results, so it goes as text.
                label = f"Result of tool {name}" if name else "Tool result"
                messages.append(c.Message("user", [c.Text(f"{label}: {text}"), *images]))
            else:
                _tool_result(messages, c.ToolResult(call.id, [*([c.Text(text)] if text else []), *images]))
        else:
            raise _bad(f"{param}.role", "one of system, user, assistant, tool")
    return ("\n\n".join(systems) if systems else None), messages


def _tools(value: object) -> list[c.Tool]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("tools", "an array")
    tools = []
    for i, item in enumerate(value):
        param = f"tools[{i}]"
        fn = item.get("function") if isinstance(item, dict) else None
        if not isinstance(fn, dict):
            raise _bad(param, "an object with a function object")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{param}.function.name", "a non-empty string")
        description = _string(fn, "description", f"{param}.function.description")
        parameters = _get(fn, "parameters", lambda v: isinstance(v, dict), "an object", f"{param}.function.parameters")
        tools.append(c.Tool(name, description, parameters or {"type": "object", "properties": {}}))
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
    raise _bad("format", '"json" or a JSON schema object')


@dataclass
class _Options:
    """`options` and the other sampling fields, split by where they can go."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None


def _options(body: dict[str, Any], extras: dict[str, Any]) -> _Options:
    options = _get(body, "options", lambda v: isinstance(v, dict), "an object", "options") or {}
    out = _Options(
        temperature=_get(options, "temperature", _is_number, "a number", "options.temperature"),
        top_p=_get(options, "top_p", _is_number, "a number", "options.top_p"),
    )
    num_predict = _get(options, "num_predict", _is_int, "an integer", "options.num_predict")
    if num_predict is not None and num_predict > 0:  # -1 (no limit) and -2 (fill the context) set none
        out.max_tokens = num_predict
    stop = options.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _bad("options.stop", "a string or an array of strings")
    out.stop = stop
    top_k = _get(options, "top_k", _is_int, "an integer", "options.top_k")
    seed = _get(options, "seed", _is_int, "an integer", "options.seed")
    openai: dict[str, Any] = {}
    if seed is not None:
        openai["seed"] = seed
    for key in ("frequency_penalty", "presence_penalty"):
        value = _get(options, key, _is_number, "a number", f"options.{key}")
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
        raise _bad("think", 'a boolean or one of "low", "medium", "high", "max"')
    level = "medium" if think is True else think
    extras.setdefault("anthropic", {})["thinking"] = {"type": "enabled", "budget_tokens": _THINK_BUDGET[level]}
    extras.setdefault("openai", {})["reasoning_effort"] = _REASONING_EFFORT[level]


def _plugins(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = _get(body, "plugins", lambda v: isinstance(v, list), "an array", "plugins") or []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise _bad(f"plugins[{i}]", "an object with a string id")
    return [dict(item) for item in items]


def _common(body: object) -> tuple[dict[str, Any], str, bool]:
    if not isinstance(body, dict):
        raise errors.BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "a non-empty string")
    stream = _get(body, "stream", lambda v: isinstance(v, bool), "a boolean", "stream")
    _get(body, "keep_alive", lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool), "a duration string or a number of seconds", "keep_alive")
    return body, model, stream is not False


def _request(body: dict[str, Any], model: str, stream: bool, system: str | None, messages: list[c.Message],
             client_format: str, translated: frozenset[str], tools: list[c.Tool]) -> c.Request:
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
        stop=list(options.stop or []),
        stream=stream,
        response_format=_response_format(body.get("format")),
        plugins=_plugins(body),
        extras=extras,
        client_format=client_format,
        raw=body,
    )


# Top-level fields the canonical request carries (the others go to extras["ollama"]).
_CHAT_FIELDS = frozenset(("model", "messages", "tools", "stream", "format", "plugins"))
_GENERATE_FIELDS = frozenset(("model", "prompt", "system", "images", "stream", "format", "plugins", "suffix", "raw", "context", "template"))


def parse_chat(body: object) -> c.Request:
    body, model, stream = _common(body)
    system, messages = _messages(body.get("messages"))
    return _request(body, model, stream, system, messages, "ollama", _CHAT_FIELDS, _tools(body.get("tools")))


def parse_generate(body: object) -> c.Request:
    body, model, stream = _common(body)
    if body.get("suffix"):
        raise errors.BadRequest("suffix: fill-in-the-middle is not supported by llmrouter's /api/generate yet", param="suffix")
    if body.get("raw") is True:
        raise errors.BadRequest("raw: raw prompts are not supported by llmrouter; send the prompt without raw", param="raw")
    if body.get("context"):
        raise errors.BadRequest("context: conversation context arrays are not supported by llmrouter; use /api/chat", param="context")
    if body.get("template"):
        raise errors.BadRequest("template: prompt templates are not supported by llmrouter", param="template")
    prompt = _string(body, "prompt", "prompt")
    if not prompt:
        raise _bad("prompt", "a non-empty string (llmrouter does not load or unload models)")
    images = _images(body.get("images"), "images")
    messages = [c.Message("user", [c.Text(prompt), *images])]
    return _request(body, model, stream, _string(body, "system", "system") or None, messages, "ollama-generate", _GENERATE_FIELDS, [])


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
