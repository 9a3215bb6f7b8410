"""The Anthropic Messages wire format (POST /v1/messages), client and upstream side.

Pure: values in, values out. Mapping tables: docs/formats-anthropic-ollama.md.

Fields this module does not translate into canonical ones (thinking, metadata,
context_management, top_k, output_config.effort, service_tier, ...) ride along
in `Request.extras["anthropic"]`, a dict of top-level body fields that is merged
back into the body when the request is rebuilt for an Anthropic upstream (and
ignored by every other format). Server tools (`web_search`, ...) ride in
`extras["anthropic_tools"]` the same way.
"""

from __future__ import annotations

import json
from typing import Any

from llmrouter import canonical as c
from llmrouter import errors, sse
from llmrouter.config import Provider
from llmrouter.formats import Frame, UpstreamCall, forwardable_body, passthrough
from llmrouter.formats import dumps as _dumps  # compact; lone surrogates stay escaped
from llmrouter.formats.validate import bad, body_object, object_at, parse_plugins, take

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

# Top-level body fields turned into canonical fields; every other one is kept
# verbatim in extras["anthropic"].
_TRANSLATED = frozenset(
    "model max_tokens messages system tools tool_choice temperature top_p "
    "stop_sequences stream plugins output_config output_format".split()
)
_STOP_IN = {
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_use",
}
_TOOL_CHOICE_IN = {"auto": "auto", "any": "required", "none": "none"}
_TOOL_CHOICE_OUT = {"auto": "auto", "required": "any", "none": "none"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    504: "api_error",
    529: "overloaded_error",
}
_STATUS_BY_TYPE = {kind: status for status, kind in _ERROR_TYPES.items() if status not in (502, 504)}
_STATUS_BY_TYPE["timeout_error"] = 504



def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status."""
    return _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


# --- client side: parsing -------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image(block: dict, param: str) -> c.Image | None:
    """An image block as a canonical Image, or None for sources we cannot express."""
    source = take(block, "source", "object", param, required=True)
    at = f"{param}.source"
    kind = source.get("type")
    if kind == "base64":
        media_type = take(source, "media_type", "string", at, required=True)
        return c.Image(media_type=media_type, data=take(source, "data", "string", at, required=True))
    if kind == "url":
        return c.Image(url=take(source, "url", "string", at, required=True))
    return None  # file ids and future source kinds stay opaque


def _block_type(block: object, param: str) -> str:
    return take(object_at(block, param), "type", "string", param, required=True)


def _tool_result(block: dict, param: str) -> c.ToolResult:
    tool_use_id = take(block, "tool_use_id", "string", param, required=True)
    is_error = take(block, "is_error", "boolean", param)
    content = block.get("content")
    parts: list[c.Text | c.Image] = []
    if isinstance(content, str):
        parts.append(c.Text(content))
    elif isinstance(content, list):
        for j, inner in enumerate(content):
            at = f"{param}.content[{j}]"
            kind = _block_type(inner, at)
            if kind == "text":
                parts.append(c.Text(take(inner, "text", "string", at, required=True)))
            elif kind == "image":
                image = _image(inner, at)
                if image is not None:
                    parts.append(image)
            # other blocks (search results, documents) cannot be carried in a
            # canonical tool result; same-format passthrough keeps them.
    elif content is not None:
        raise bad(f"{param}.content", "a string or an array of content blocks")
    return c.ToolResult(tool_use_id, parts, bool(is_error))


def _block(block: object, param: str) -> c.Part:
    kind = _block_type(block, param)
    assert isinstance(block, dict)
    if kind == "text":
        return c.Text(take(block, "text", "string", param, required=True))
    if kind == "image":
        return _image(block, param) or c.Opaque("anthropic", block)
    if kind == "tool_use":
        call_id = take(block, "id", "string", param, required=True)
        name = take(block, "name", "string", param, required=True)
        arguments = block.get("input", {})
        if not isinstance(arguments, dict):
            raise bad(f"{param}.input", "an object")
        return c.ToolCall(call_id, name, _dumps(arguments))
    if kind == "tool_result":
        return _tool_result(block, param)
    # thinking, redacted_thinking, document, server tool blocks, future kinds
    return c.Opaque("anthropic", block)


def _content(value: object, param: str) -> list[c.Part]:
    if isinstance(value, str):
        return [c.Text(value)]
    if isinstance(value, list):
        return [_block(block, f"{param}[{j}]") for j, block in enumerate(value)]
    raise bad(param, "a string or an array of content blocks")


def _system(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise bad("system", "a string or an array of text blocks")
    texts = []
    for j, block in enumerate(value):
        if _block_type(block, f"system[{j}]") == "text":
            texts.append(take(block, "text", "string", f"system[{j}]", required=True))
    return texts


def _tools(value: list[Any] | None, extras: dict[str, Any]) -> list[c.Tool]:
    tools: list[c.Tool] = []
    for j, item in enumerate(value or []):
        param = f"tools[{j}]"
        tool = object_at(item, param)
        if tool.get("type") not in (None, "custom"):
            # A server tool (web_search, code_execution, ...): only Anthropic runs it.
            extras.setdefault("anthropic_tools", []).append(tool)
            continue
        name = take(tool, "name", "name", param, required=True)  # Anthropic (and every other upstream) refuses ""
        description = take(tool, "description", "string", param)
        schema = take(tool, "input_schema", "object", param) or {"type": "object", "properties": {}}
        tools.append(c.Tool(name, description, schema))
    return tools


def _tool_choice(value: dict[str, Any] | None, extras: dict[str, Any]) -> str | dict[str, str] | None:
    if value is None:
        return None
    if value.get("disable_parallel_tool_use") is True:
        extras["parallel_tool_calls"] = False
    kind = value.get("type")
    if isinstance(kind, str) and kind in _TOOL_CHOICE_IN:
        return _TOOL_CHOICE_IN[kind]
    if kind == "tool":
        return {"name": take(value, "name", "string", "tool_choice", required=True)}
    raise bad("tool_choice.type", "one of auto, any, tool, none")


def _response_format(body: dict, kept: dict[str, Any]) -> dict[str, Any] | None:
    """output_config.format (or the older beta `output_format`) -> response_format."""
    config = take(body, "output_config", "object")
    fmt, param = None, "output_format"
    if config is not None:
        rest = {k: v for k, v in config.items() if k != "format"}
        if rest:
            kept["output_config"] = rest  # effort, task_budget, ...
        fmt, param = config.get("format"), "output_config.format"
    if fmt is None:
        fmt, param = body.get("output_format"), "output_format"
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise bad(param, "an object with type json_schema")
    schema = take(fmt, "schema", "object", param, required=True)
    return {"type": "json_schema", "name": "response", "schema": schema, "strict": True}


def parse_request(body: object) -> c.Request:
    """A /v1/messages body as a canonical Request; BadRequest names the bad field."""
    body = body_object(body)
    model = take(body, "model", "name", required=True)
    max_tokens = take(body, "max_tokens", "positive", required=True)
    raw_messages = take(body, "messages", "array", required=True)

    system = _system(body.get("system"))
    messages: list[c.Message] = []
    for i, raw in enumerate(raw_messages):
        param = f"messages[{i}]"
        role = object_at(raw, param).get("role")
        if role not in ("user", "assistant", "system"):
            raise bad(f"{param}.role", "user or assistant")
        parts = _content(raw.get("content"), f"{param}.content")
        if role == "system":  # Claude Code sends these: they join the system prompt
            system.append("".join(p.text for p in parts if isinstance(p, c.Text)))
        else:
            messages.append(c.Message(role, parts))

    for key in ("metadata", "thinking", "context_management"):
        take(body, key, "object")
    take(body, "top_k", "integer")
    stop = take(body, "stop_sequences", "strings")

    extras: dict[str, Any] = {}
    kept = {k: v for k, v in body.items() if k not in _TRANSLATED}
    response_format = _response_format(body, kept)
    tools = _tools(take(body, "tools", "array"), extras)
    tool_choice = _tool_choice(take(body, "tool_choice", "object"), extras)
    if kept:
        extras["anthropic"] = kept
    return c.Request(
        model=model,
        messages=messages,
        system="\n\n".join(s for s in system if s) or None,
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=max_tokens,
        temperature=take(body, "temperature", "number"),
        top_p=take(body, "top_p", "number"),
        stop=list(stop or []),
        stream=bool(take(body, "stream", "boolean")),
        response_format=response_format,
        plugins=parse_plugins(body),
        extras=extras,
        client_format="anthropic",
        raw=body,
    )


# --- client side: replies ---------------------------------------------------------


def _message_id(raw_id: str, req: c.Request) -> str:
    if raw_id.startswith("msg_"):
        return raw_id
    return "msg_" + raw_id if raw_id else req.new_id("msg_")


def _input(arguments: str) -> dict[str, Any]:
    """Tool arguments as Anthropic's `input` object; invalid JSON becomes {}."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _stop_out(reason: str) -> str:
    return reason if reason in ("end_turn", "max_tokens", "tool_use", "stop_sequence") else "end_turn"


def _usage_out(usage: c.Usage, *, delta: bool = False) -> dict[str, int]:
    out = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if delta and not usage.input_tokens:
        del out["input_tokens"]  # unknown: let the client keep message_start's figure
    if usage.cache_write_tokens is not None:
        out["cache_creation_input_tokens"] = usage.cache_write_tokens
    if usage.cache_read_tokens is not None:
        out["cache_read_input_tokens"] = usage.cache_read_tokens
    return out


def render_response(resp: c.Response, req: c.Request) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for part in resp.content:
        if isinstance(part, c.Text) and part.text:
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, c.ToolCall):
            content.append({"type": "tool_use", "id": part.id, "name": part.name, "input": _input(part.arguments)})
        elif isinstance(part, c.Opaque) and part.format == "anthropic":
            content.append(part.data)
    return {
        "id": _message_id(resp.id, req),
        "type": "message",
        "role": "assistant",
        "model": resp.model or req.model,
        "content": content or [{"type": "text", "text": ""}],
        "stop_reason": _stop_out(resp.stop_reason),
        "stop_sequence": resp.stop_sequence,
        "usage": _usage_out(resp.usage),
    }


def error_body(err: errors.RouterError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(err.status), "message": err.message}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return sse.encode_event(_dumps(data), name)


_PING = b'event: ping\ndata: {"type": "ping"}\n\n'


class Encoder:
    """Canonical stream events -> Anthropic SSE, with one content block open at a time.

    States: before message_start, streaming (a text / tool_use block open or
    none), done (after finish() or error(): nothing more is written).
    """

    end_after_error = False  # clients wait for message_stop: the body is cut short

    def __init__(self, req: c.Request, model: str) -> None:
        self.req = req
        self.model = model or req.model
        self.started = False
        self.done = False
        self.block_index = -1  # index of the latest content block
        self.open: tuple[str, int] | None = None  # ("text", -1) or ("tool", canonical index)
        self.usage = c.Usage()
        self.stop: c.Stop | None = None

    def _start(self, message_id: str = "", model: str = "", usage: c.Usage | None = None) -> bytes:
        self.started = True
        if usage:
            self.usage = c.Usage(**vars(usage))
        message = {
            "id": _message_id(message_id, self.req),
            "type": "message",
            "role": "assistant",
            "model": model or self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage_out(self.usage),
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.block_index})

    def _open(self, block: dict[str, Any], kind: tuple[str, int] | None) -> bytes:
        out = self._close()
        self.block_index += 1
        self.open = kind
        return out + _event(
            "content_block_start", {"type": "content_block_start", "index": self.block_index, "content_block": block}
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.block_index, "delta": delta})

    def encode(self, event: c.StreamEvent) -> bytes:
        if self.done:
            return b""
        if isinstance(event, c.StreamError):
            return self.error(event)
        if isinstance(event, c.MessageStart):
            return b"" if self.started else self._start(event.id, event.model, event.usage)
        out = b"" if self.started else self._start()
        if isinstance(event, c.TextDelta):
            if not event.text:
                return out
            if self.open != ("text", -1):
                out += self._open({"type": "text", "text": ""}, ("text", -1))
            return out + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, c.ToolCallStart):
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            return out + self._open(block, ("tool", event.index))
        if isinstance(event, c.ToolCallDelta):
            # Upstreams send one call's arguments before the next call starts; a
            # delta for a call whose block is already closed cannot be placed.
            if event.arguments and self.open == ("tool", event.index):
                out += self._delta({"type": "input_json_delta", "partial_json": event.arguments})
            return out
        if isinstance(event, c.OpaqueBlock):
            if event.part.format != "anthropic":
                return out
            return out + self._open(event.part.data, ("opaque", -1)) + self._close()
        if isinstance(event, c.UsageUpdate):
            self.usage.merge(event.usage)
            return out
        if isinstance(event, c.Stop):
            self.stop = event
            return out + self._close()
        return out

    def finish(self) -> bytes:
        if self.done:
            return b""
        out = b"" if self.started else self._start()
        out += self._close()
        self.done = True
        stop = self.stop or c.Stop("end_turn")
        delta = {"stop_reason": _stop_out(stop.stop_reason), "stop_sequence": stop.stop_sequence}
        out += _event("message_delta", {"type": "message_delta", "delta": delta, "usage": _usage_out(self.usage, delta=True)})
        return out + _event("message_stop", {"type": "message_stop"})

    def error(self, err: c.StreamError) -> bytes:
        if self.done:
            return b""
        self.done = True
        kind = err.kind if err.kind in _STATUS_BY_TYPE else error_type(err.status)
        return _event("error", {"type": "error", "error": {"type": kind, "message": err.message}})

    def ping(self) -> bytes:
        return b"" if self.done else _PING


# --- upstream side: requests ------------------------------------------------------


def _image_block(image: c.Image) -> dict[str, Any] | None:
    if image.data is not None:
        source = {"type": "base64", "media_type": image.media_type or "image/png", "data": image.data}
    elif image.url:
        source = {"type": "url", "url": image.url}
    else:
        return None
    return {"type": "image", "source": source}


def _result_block(result: c.ToolResult) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": result.tool_call_id}
    if any(isinstance(p, c.Image) for p in result.content):
        inner = [_part_block(p) for p in result.content]
        block["content"] = [b for b in inner if b is not None]
    elif result.text:
        block["content"] = result.text
    if result.is_error:
        block["is_error"] = True
    return block


def _part_block(part: c.Part) -> dict[str, Any] | None:
    if isinstance(part, c.Text):
        return {"type": "text", "text": part.text} if part.text else None  # Anthropic rejects empty text
    if isinstance(part, c.Image):
        return _image_block(part)
    if isinstance(part, c.ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": _input(part.arguments)}
    if isinstance(part, c.ToolResult):
        return _result_block(part)
    return part.data if part.format == "anthropic" else None


def _messages(messages: list[c.Message]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for message in messages:
        blocks = [b for b in map(_part_block, message.content) if b is not None]
        if not blocks:
            continue
        if merged and merged[-1]["role"] == message.role:
            merged[-1]["content"].extend(blocks)  # Anthropic requires alternating roles
        else:
            merged.append({"role": message.role, "content": blocks})
    for message in merged:
        blocks = message["content"]
        if message["role"] == "user":  # tool results must lead their user turn
            blocks.sort(key=lambda b: b["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text" and len(blocks[0]) == 2:
            message["content"] = blocks[0]["text"]  # a lone plain text block (no cache_control)
    return merged


def _body(req: c.Request, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": _messages(req.messages),
    }
    if req.system:
        body["system"] = req.system
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    tools: list[dict[str, Any]] = [
        {"name": t.name, **({"description": t.description} if t.description else {}), "input_schema": t.parameters}
        for t in req.tools
    ]
    tools += req.extras.get("anthropic_tools", [])
    if tools:
        body["tools"] = tools
        choice = req.tool_choice
        if isinstance(choice, dict):
            body["tool_choice"] = {"type": "tool", "name": choice["name"]}
        elif choice in _TOOL_CHOICE_OUT:
            body["tool_choice"] = {"type": _TOOL_CHOICE_OUT[choice]}
        if req.extras.get("parallel_tool_calls") is False and choice != "none":
            body.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    for key, value in req.extras.get("anthropic", {}).items():
        body.setdefault(key, value)
    budget = body.get("thinking", {}).get("budget_tokens") if isinstance(body.get("thinking"), dict) else None
    if req.max_tokens is None and _is_int(budget) and body["max_tokens"] <= budget:
        body["max_tokens"] = budget + DEFAULT_MAX_TOKENS  # thinking needs room for the answer too
    fmt = req.response_format
    if fmt and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        body["output_config"] = {**body.get("output_config", {}), "format": {"type": "json_schema", "schema": fmt["schema"]}}
    body["stream"] = req.stream
    return body


def build_request(req: c.Request, model: str, provider: Provider) -> UpstreamCall:
    fmt = req.response_format or {}
    if fmt.get("type") == "json_object" and fmt.get("strict"):
        # Anthropic has no schemaless JSON mode; a client that insists (Ollama's
        # format: "json") is told so rather than answered in free text.
        raise errors.BadRequest(
            f"provider '{provider.name}' (anthropic format) has no JSON mode: send a JSON schema as the format, or route to another provider",
            param="format",
        )
    body = forwardable_body(req, model) if passthrough(req, "anthropic") else _body(req, model)
    headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
    if provider.api_key:
        headers["x-api-key"] = provider.api_key
    beta = req.extras.get("headers", {}).get("anthropic-beta")
    if beta:
        headers["anthropic-beta"] = beta
    for name, value in provider.headers:
        headers[name.lower()] = value
    path = "/messages" if provider.base_url.rstrip("/").endswith("/v1") else "/v1/messages"
    return UpstreamCall(path, list(headers.items()), _dumps(body).encode())


# --- upstream side: replies -------------------------------------------------------


def _usage_in(data: object) -> c.Usage:
    if not isinstance(data, dict):
        return c.Usage()

    def count(key: str) -> int:
        value = data.get(key)
        return value if _is_int(value) else 0

    def maybe(key: str) -> int | None:
        value = data.get(key)
        return value if _is_int(value) else None

    return c.Usage(
        count("input_tokens"),
        count("output_tokens"),
        cache_read_tokens=maybe("cache_read_input_tokens"),
        cache_write_tokens=maybe("cache_creation_input_tokens"),
    )


def _stop_in(reason: object) -> str:
    return _STOP_IN.get(reason, "other") if isinstance(reason, str) else "end_turn"


def _load(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.UpstreamProtocolError(f"anthropic upstream sent invalid JSON in {what}: {exc}") from None
    if not isinstance(value, dict):
        raise errors.UpstreamProtocolError(f"anthropic upstream sent a non-object {what}")
    return value


def parse_response(data: bytes, req: c.Request) -> c.Response:
    body = _load(data, "its reply")
    blocks = body.get("content")
    if not isinstance(blocks, list):
        raise errors.UpstreamProtocolError("anthropic upstream reply has no content array")
    parts: list[c.Part] = []
    for block in blocks:
        if not isinstance(block, dict):
            raise errors.UpstreamProtocolError("anthropic upstream reply has a non-object content block")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(c.Text(block["text"]))
        elif kind == "tool_use":
            arguments = block.get("input")
            parts.append(c.ToolCall(str(block.get("id", "")), str(block.get("name", "")), _dumps(arguments if isinstance(arguments, dict) else {})))
        else:
            parts.append(c.Opaque("anthropic", block))
    stop_sequence = body.get("stop_sequence")
    return c.Response(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        content=parts,
        stop_reason=_stop_in(body.get("stop_reason")),
        usage=_usage_in(body.get("usage")),
        stop_sequence=stop_sequence if isinstance(stop_sequence, str) else None,
    )


def error_message(status: int, data: bytes) -> str:
    try:
        error = json.loads(data).get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    except (ValueError, UnicodeDecodeError, AttributeError):
        pass
    text = data.decode("utf-8", "replace").strip()
    return text[:500] if text else f"upstream returned HTTP {status}"


class Decoder:
    """Anthropic SSE -> canonical events, one Frame per SSE event.

    Blocks are tracked by their stream index: text blocks yield TextDelta,
    tool_use blocks ToolCallStart/ToolCallDelta (numbered among tool_use blocks
    only), and every other block (thinking, redacted_thinking, server tools) is
    reassembled from its deltas and yielded whole as an OpaqueBlock at its stop.
    """

    def __init__(self, req: c.Request) -> None:
        self.splitter = sse.SSESplitter()
        self.blocks: dict[int, Any] = {}  # stream index -> "text" | tool index | opaque state
        self.tools = 0
        self.finished = False  # message_stop or an error event seen

    def feed(self, data: bytes) -> list[Frame]:
        return [Frame(event.raw, self._events(event)) for event in self.splitter.feed(data)]

    def close(self) -> list[Frame]:
        if not self.finished:
            raise errors.UpstreamProtocolError("anthropic upstream stream ended before message_stop")
        return []

    def _events(self, event: sse.SSEEvent) -> list[c.StreamEvent]:
        name = event.event
        if name in ("", "ping") or not event.data:
            return []
        data = _load(event.data, f"its {name} event")
        kind = data.get("type", name)
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_start":
            return self._start(data)
        if kind == "content_block_stop":
            return self._stop(data)
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, dict):
                raise errors.UpstreamProtocolError("anthropic message_start without a message")
            usage = _usage_in(message.get("usage"))
            return [c.MessageStart(str(message.get("id") or ""), str(message.get("model") or ""), usage)]
        if kind == "message_delta":
            out: list[c.StreamEvent] = []
            if isinstance(data.get("usage"), dict):
                out.append(c.UsageUpdate(_usage_in(data["usage"])))
            delta = data.get("delta") or {}
            if isinstance(delta, dict) and delta.get("stop_reason"):
                sequence = delta.get("stop_sequence")
                out.append(c.Stop(_stop_in(delta["stop_reason"]), sequence if isinstance(sequence, str) else None))
            return out
        if kind == "message_stop":
            self.finished = True
            return []
        if kind == "error":
            self.finished = True
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            error_kind = str(error.get("type") or "api_error")
            message = str(error.get("message") or "upstream stream error")
            return [c.StreamError(message, _STATUS_BY_TYPE.get(error_kind, 502), error_kind)]
        return []  # unknown event kinds are forwarded raw and otherwise ignored

    def _start(self, data: dict[str, Any]) -> list[c.StreamEvent]:
        index, block = _index(data), data.get("content_block")
        if not isinstance(block, dict):
            raise errors.UpstreamProtocolError("anthropic content_block_start without a content_block")
        kind = block.get("type")
        if kind == "text":
            self.blocks[index] = "text"
            text = block.get("text")
            return [c.TextDelta(text)] if isinstance(text, str) and text else []
        if kind == "tool_use":
            tool = self.tools
            self.tools += 1
            self.blocks[index] = tool
            out: list[c.StreamEvent] = [c.ToolCallStart(tool, str(block.get("id", "")), str(block.get("name", "")))]
            if block.get("input"):
                out.append(c.ToolCallDelta(tool, _dumps(block["input"])))
            return out
        self.blocks[index] = [dict(block), ""]  # the block so far, its partial input JSON
        return []

    def _delta(self, data: dict[str, Any]) -> list[c.StreamEvent]:
        state, delta = self.blocks.get(_index(data)), data.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if state == "text":
            text = delta.get("text") if kind == "text_delta" else None
            return [c.TextDelta(text)] if isinstance(text, str) and text else []
        if isinstance(state, int):
            partial = delta.get("partial_json") if kind == "input_json_delta" else None
            return [c.ToolCallDelta(state, partial)] if isinstance(partial, str) and partial else []
        if isinstance(state, list):
            block = state[0]
            if kind == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
            elif kind == "signature_delta":
                block["signature"] = str(delta.get("signature", ""))
            elif kind == "input_json_delta":
                state[1] += str(delta.get("partial_json", ""))
            elif kind == "citations_delta":
                block.setdefault("citations", []).append(delta.get("citation"))
        return []

    def _stop(self, data: dict[str, Any]) -> list[c.StreamEvent]:
        state = self.blocks.pop(_index(data), None)
        if not isinstance(state, list):
            return []
        block, partial = state
        if partial:
            try:
                block["input"] = json.loads(partial)
            except ValueError:
                raise errors.UpstreamProtocolError("anthropic upstream sent invalid block input JSON") from None
        return [c.OpaqueBlock(c.Opaque("anthropic", block))]


def _index(data: dict[str, Any]) -> int:
    index = data.get("index")
    if not _is_int(index):
        raise errors.UpstreamProtocolError(f"anthropic {data.get('type')} event without an integer index")
    return index
