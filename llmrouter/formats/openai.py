"""OpenAI chat-completions wire format, client side and upstream side. Pure.

Client: POST /v1/chat/completions bodies in, chat.completion objects and
chat.completion.chunk SSE out. Upstream: canonical requests out to
{base_url}/chat/completions, replies and SSE streams back in. The mapping
tables live in docs/formats.md. The readers at the top (images, tool_choice)
are shared with the Responses format.
"""

from __future__ import annotations

import json
from typing import Any

from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import Frame, UpstreamCall, forwardable_body, passthrough
from llmrouter.formats.validate import bad, body_object, object_at, parse_plugins, take
from llmrouter.sse import SSESplitter

# ensure_ascii keeps lone surrogates a client may send encodable as UTF-8.
dumps = json.JSONEncoder(separators=(",", ":")).encode

# --- readers shared with formats.responses -------------------------------------


def image_from_url(url: str, path: str) -> c.Image:
    """A `data:<type>;base64,<data>` URL becomes inline data; anything else a remote URL."""
    if not url.startswith("data:"):
        return c.Image(url=url)
    header, comma, data = url[5:].partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad(path, "a base64 data URL (data:<type>;base64,...) or an http(s) URL")
    return c.Image(media_type=header[: -len(";base64")] or None, data=data)


def image_to_url(image: c.Image) -> str:
    if image.data is not None:
        return f"data:{image.media_type or 'image/png'};base64,{image.data}"
    return image.url or ""


def parse_tool_choice(value: Any, warnings: list[str], path: str = "tool_choice") -> str | dict[str, str] | None:
    """OpenAI-style tool_choice in either API's spelling; forms we cannot route
    are dropped (noted in `warnings`)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise bad(path, 'one of "auto", "none", "required" or a function object')
        return value
    choice = object_at(value, path)
    if choice.get("type") != "function":
        warnings.append(f"dropped tool_choice of type {choice.get('type')!r}")
        return None
    # Chat completions nest the name under `function`; the Responses API does not.
    fn = take(choice, "function", "object", path)
    if fn is not None:
        return {"name": take(fn, "name", "string", f"{path}.function", required=True)}
    return {"name": take(choice, "name", "string", path, required=True)}


# --- client side: requests -------------------------------------------------------

def parse_request(body: object) -> c.Request:
    """A chat-completions body as a canonical Request. Raises BadRequest only."""
    body = body_object(body)
    model = take(body, "model", "string", required=True)
    items = take(body, "messages", "array", required=True)
    if not items:
        raise errors.BadRequest("messages must be a non-empty array", param="messages")
    warnings: list[str] = []
    system, messages = _parse_messages(items, warnings)
    max_tokens = take(body, "max_tokens", "count")
    max_completion = take(body, "max_completion_tokens", "count")
    stream_options = take(body, "stream_options", "object") or {}
    return c.Request(
        model=model,
        messages=messages,
        system=system,
        tools=_parse_tools(take(body, "tools", "array") or [], warnings),
        tool_choice=parse_tool_choice(body.get("tool_choice"), warnings),
        max_tokens=max_completion if max_completion is not None else max_tokens,
        temperature=take(body, "temperature", "number"),
        top_p=take(body, "top_p", "number"),
        stop=_parse_stop(body.get("stop")),
        stream=bool(take(body, "stream", "boolean")),
        response_format=_parse_response_format(body.get("response_format")),
        include_usage=bool(take(stream_options, "include_usage", "boolean", "stream_options")),
        plugins=parse_plugins(body),
        client_format="openai",
        raw=body,
        warnings=warnings,
    )


def _parse_messages(items: list[Any], warnings: list[str]) -> tuple[str | None, list[c.Message]]:
    systems: list[str] = []
    messages: list[c.Message] = []
    for i, item in enumerate(items):
        path = f"messages[{i}]"
        message = object_at(item, path)
        role = take(message, "role", "string", path, required=True)
        content = message.get("content")
        if role in ("system", "developer"):
            systems.append(_system_text(content, f"{path}.content"))
        elif role == "user":
            messages.append(c.Message("user", _parse_content(content, f"{path}.content")))
        elif role == "assistant":
            parts = _parse_content(content, f"{path}.content")
            parts.extend(_parse_tool_calls(message.get("tool_calls"), f"{path}.tool_calls", warnings))
            messages.append(c.Message("assistant", parts))
        elif role in ("tool", "function"):
            # `function` is the deprecated predecessor of `tool`, keyed by name.
            key = "tool_call_id" if role == "tool" else "name"
            call_id = take(message, key, "string", path, required=True)
            parts = _parse_content(content, f"{path}.content")
            result = c.ToolResult(call_id, [p for p in parts if isinstance(p, (c.Text, c.Image))])
            append_tool_result(messages, result)
        else:
            raise bad(f"{path}.role", "one of system, developer, user, assistant, tool")
    return ("\n\n".join(systems) if systems else None), messages


def append_tool_result(messages: list[c.Message], result: c.ToolResult) -> None:
    """Consecutive tool results share one user message, as Anthropic requires."""
    last = messages[-1] if messages else None
    if last and last.role == "user" and last.content and all(isinstance(p, c.ToolResult) for p in last.content):
        last.content.append(result)
    else:
        messages.append(c.Message("user", [result]))


def _system_text(content: Any, path: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    return "\n\n".join(p.text for p in _parse_content(content, path) if isinstance(p, c.Text))


def _parse_content(content: Any, path: str) -> list[c.Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [c.Text(content)]
    if not isinstance(content, list):
        raise bad(path, "a string, an array of content parts or null")
    parts: list[c.Part] = []
    for j, item in enumerate(content):
        where = f"{path}[{j}]"
        part = object_at(item, where)
        kind = take(part, "type", "string", where, required=True)
        if kind == "text":
            parts.append(c.Text(take(part, "text", "string", where, required=True)))
        elif kind == "refusal":
            parts.append(c.Text(take(part, "refusal", "string", where, required=True)))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image if isinstance(image, str) else take(object_at(image, f"{where}.image_url"), "url", "string", f"{where}.image_url", True)
            parts.append(image_from_url(url, f"{where}.image_url.url"))
        else:
            # input_audio, file, …: only an OpenAI upstream can use them.
            parts.append(c.Opaque("openai", dict(part)))
    return parts


def _parse_tool_calls(value: Any, path: str, warnings: list[str]) -> list[c.Part]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad(path, "an array")
    calls: list[c.Part] = []
    for k, item in enumerate(value):
        where = f"{path}[{k}]"
        call = object_at(item, where)
        if call.get("type", "function") != "function":
            warnings.append(f"dropped assistant tool call of type {call.get('type')!r}")
            continue
        call_id = take(call, "id", "string", where, required=True)
        fn = take(call, "function", "object", where, required=True)
        name = take(fn, "name", "string", f"{where}.function", required=True)
        args = fn.get("arguments")
        if isinstance(args, dict):
            args = dumps(args)  # lenient: some clients send the object itself
        elif args is None:
            args = "{}"
        elif not isinstance(args, str):
            raise bad(f"{where}.function.arguments", "a JSON string")
        calls.append(c.ToolCall(call_id, name, args))
    return calls


def _parse_tools(items: list[Any], warnings: list[str]) -> list[c.Tool]:
    tools: list[c.Tool] = []
    for i, item in enumerate(items):
        path = f"tools[{i}]"
        tool = object_at(item, path)
        if tool.get("type", "function") != "function":
            warnings.append(f"dropped tool of type {tool.get('type')!r}")
            continue
        fn = take(tool, "function", "object", path, required=True)
        where = f"{path}.function"
        tools.append(
            c.Tool(
                name=take(fn, "name", "name", where, required=True),
                description=take(fn, "description", "string", where),
                parameters=take(fn, "parameters", "object", where) or {"type": "object", "properties": {}},
            )
        )
    return tools


def _parse_stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise bad("stop", "a string or an array of strings")


def _parse_response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    fmt = object_at(value, "response_format")
    kind = take(fmt, "type", "string", "response_format", required=True)
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = take(fmt, "json_schema", "object", "response_format", required=True)
        where = "response_format.json_schema"
        return {
            "type": "json_schema",
            "name": take(spec, "name", "string", where) or "response",
            "schema": take(spec, "schema", "object", where) or {},
            "strict": take(spec, "strict", "boolean", where),
        }
    raise bad("response_format.type", 'one of "text", "json_object", "json_schema"')


# --- client side: replies ---------------------------------------------------------

FINISH_REASONS = {
    "end_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "stop_sequence": "stop",
    "other": "stop",  # OpenAI has no generic value; content_filter would claim too much
}


def _client_id(upstream_id: str, req: c.Request) -> str:
    return upstream_id if upstream_id.startswith("chatcmpl-") else req.new_id("chatcmpl-")


def prompt_tokens(usage: c.Usage) -> int:
    """OpenAI counts cached prompt tokens inside prompt_tokens; canonical
    input_tokens (Anthropic's meaning) counts only the uncached ones."""
    return usage.input_tokens + (usage.cache_read_tokens or 0) + (usage.cache_write_tokens or 0)


def usage_json(usage: c.Usage) -> dict[str, Any]:
    prompt = prompt_tokens(usage)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
    }
    if usage.cache_read_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    return out


def _tool_call_json(call: c.ToolCall, req: c.Request) -> dict[str, Any]:
    return {
        "id": call.id or req.new_id("call_"),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments or "{}"},
    }


def render_response(resp: c.Response, req: c.Request) -> dict[str, Any]:
    calls = resp.tool_calls
    text = resp.text
    message: dict[str, Any] = {
        "role": "assistant",
        # null, not "", when the reply is only tool calls (what OpenAI sends)
        "content": text if text or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = [_tool_call_json(call, req) for call in calls]
    return {
        "id": _client_id(resp.id, req),
        "object": "chat.completion",
        "created": int(req.now),
        "model": resp.model or req.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(resp.stop_reason, "stop"),
            }
        ],
        "usage": usage_json(resp.usage),
    }


def error_body(err: errors.RouterError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}


class Encoder:
    """Canonical stream events as chat.completion.chunk SSE frames."""

    end_after_error = False  # an error chunk is no terminal event: the body is cut short

    def __init__(self, req: c.Request, model: str) -> None:
        self._req = req
        self._include_usage = req.include_usage
        self._id = ""  # the upstream's chatcmpl- id, else one of ours, fixed by the first chunk
        self._model = model
        self._created = int(req.now)
        self._head = b""  # every chunk's shared opening, fixed by the first one
        self._tools: dict[int, int] = {}  # canonical index -> OpenAI index
        self._usage = c.Usage()
        self._stopped = False

    def _start(self, upstream_id: str = "", model: str = "") -> bytes:
        self._id = _client_id(upstream_id, self._req)
        self._model = model or self._model
        self._head = (
            b'data: {"id":' + dumps(self._id).encode() + b',"object":"chat.completion.chunk","created":'
            + str(self._created).encode() + b',"model":' + dumps(self._model).encode() + b',"choices":'
        )
        return self._chunk({"role": "assistant", "content": ""})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return self._head + b"[" + dumps(choice).encode() + b"]}\n\n"

    def encode(self, event: c.StreamEvent) -> bytes:
        if not self._head:  # the role chunk goes first, whatever the first event is
            if isinstance(event, c.MessageStart):
                if event.usage:  # Anthropic reports input tokens only here
                    self._usage.merge(event.usage)
                return self._start(event.id, event.model)
            return self._start() + self.encode(event)
        if isinstance(event, c.TextDelta):
            return self._chunk({"content": event.text}) if event.text else b""
        if isinstance(event, c.ToolCallDelta):
            index = self._tools.get(event.index)
            if index is None or not event.arguments:
                return b""
            return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": event.arguments}}]})
        if isinstance(event, c.ToolCallStart):
            index = self._tools.setdefault(event.index, len(self._tools))
            call = {
                "index": index,
                "id": event.id or self._req.new_id("call_"),
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, c.UsageUpdate):
            self._usage.merge(event.usage)
            return b""
        if isinstance(event, c.Stop):
            if self._stopped:
                return b""
            self._stopped = True
            return self._chunk({}, FINISH_REASONS.get(event.stop_reason, "stop"))
        if isinstance(event, c.StreamError):
            return self.error(event)
        return b""  # a second MessageStart, or an OpaqueBlock chat completions cannot carry

    def finish(self) -> bytes:
        out = b"" if self._head else self._start()
        if not self._stopped:
            self._stopped = True
            out += self._chunk({}, "stop")
        if self._include_usage:
            out += self._head + b"[],\"usage\":" + dumps(usage_json(self._usage)).encode() + b"}\n\n"
        return out + b"data: [DONE]\n\n"

    def error(self, err: c.StreamError) -> bytes:
        body = {"error": {"message": err.message, "type": err.kind, "param": None, "code": None}}
        return b"data: " + dumps(body).encode() + b"\n\n"

    def ping(self) -> bytes:
        return b": ping\n\n"


# --- upstream side: requests -------------------------------------------------------

# Fields this module renders itself; any other field of an OpenAI client's body
# (seed, n, logprobs, user, …) is copied through even when a plugin changed the request.
_RENDERED = frozenset(
    ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
     "stream_options", "tools", "tool_choice", "response_format", "plugins")
)


def build_request(req: c.Request, model: str, provider: Provider) -> UpstreamCall:
    warnings: list[str] = []
    if passthrough(req, "openai"):
        body = forwardable_body(req, model)
    else:
        body = _render_body(req, model, provider, warnings)
    return upstream_call("/chat/completions", body, req.stream, provider, warnings)


def upstream_call(
    path: str, body: dict[str, Any], stream: bool, provider: Provider, warnings: list[str] | None = None
) -> UpstreamCall:
    """`body` POSTed to an OpenAI-style upstream (chat, completions, embeddings);
    a stream asks for the usage chunk at its end."""
    headers = [("content-type", "application/json")]
    if stream:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        headers.append(("accept", "text/event-stream"))
    if provider.api_key:
        headers.append(("authorization", f"Bearer {provider.api_key}"))
    headers.extend(provider.headers)
    return UpstreamCall(path, headers, dumps(body).encode(), [] if warnings is None else warnings)


def _render_body(req: c.Request, model: str, provider: Provider, warnings: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if req.client_format == "openai" and req.raw is not None:
        body.update((k, v) for k, v in req.raw.items() if k not in _RENDERED)
    body["model"] = model
    body["messages"] = _render_messages(req, warnings)
    body["stream"] = req.stream
    if req.max_tokens is not None:
        body[_max_tokens_key(req, provider)] = req.max_tokens
    for key in ("temperature", "top_p", "seed"):
        if getattr(req, key) is not None:
            body[key] = getattr(req, key)
    if req.stop:
        body["stop"] = list(req.stop)
    if req.tools:
        body["tools"] = [_tool_json(tool) for tool in req.tools]
    if req.tool_choice is not None:
        choice = req.tool_choice
        body["tool_choice"] = choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice["name"]}}
    if req.response_format is not None:
        body["response_format"] = _response_format_json(req.response_format)
    for key, value in req.extras.get("openai", {}).items():  # e.g. an Ollama client's penalties, reasoning_effort
        body.setdefault(key, value)
    return body


def _max_tokens_key(req: c.Request, provider: Provider) -> str:
    # OpenAI's own newer models refuse `max_tokens`; most compatible servers
    # (llama.cpp, vLLM, Ollama) know only `max_tokens`.
    if req.client_format == "openai" and req.raw is not None and "max_completion_tokens" in req.raw:
        return "max_completion_tokens"
    return "max_completion_tokens" if "//api.openai.com" in provider.base_url else "max_tokens"


def _tool_json(tool: c.Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        fn["description"] = tool.description
    fn["parameters"] = tool.parameters
    return {"type": "function", "function": fn}


def _response_format_json(fmt: dict[str, Any]) -> dict[str, Any]:
    if fmt.get("type") != "json_schema":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}
    if fmt.get("strict") is not None:
        spec["strict"] = fmt["strict"]
    return {"type": "json_schema", "json_schema": spec}


def _render_messages(req: c.Request, warnings: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": req.system})
    for message in req.messages:
        if message.role == "assistant":
            out.append(_assistant_json(message, req))
        else:
            out.extend(_user_json(message, warnings))
    return out


def _assistant_json(message: c.Message, req: c.Request) -> dict[str, Any]:
    text = "".join(p.text for p in message.content if isinstance(p, c.Text))
    calls = [p for p in message.content if isinstance(p, c.ToolCall)]
    # A call-only turn's content is "", not the `null` OpenAI also takes:
    # llama-cpp-python's server refuses null, and its chat templates read
    # `message.content`, so the key cannot be left out either.
    out: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        out["tool_calls"] = [_tool_call_json(call, req) for call in calls]
    return out


def _user_json(message: c.Message, warnings: list[str]) -> list[dict[str, Any]]:
    """One `tool` message per tool result (they must follow the assistant turn
    directly), then the user's own parts. Images a tool returned go into a user
    message, since tool messages carry text only."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, c.ToolResult):
            out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": part.text})
            parts.extend(_image_part(p) for p in part.content if isinstance(p, c.Image))
        elif isinstance(part, c.Text):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, c.Image):
            parts.append(_image_part(part))
        elif isinstance(part, c.Opaque) and part.format == "openai":
            parts.append(part.data)
        else:
            warnings.append(f"dropped {type(part).__name__} part for an openai upstream")
    if parts or not out:
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts or ""})
    return out


def _image_part(image: c.Image) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image_to_url(image)}}


# --- upstream side: replies --------------------------------------------------------

def _stop_reason(finish: Any, has_calls: bool) -> str:
    if finish in ("tool_calls", "function_call") or (has_calls and finish in ("stop", None)):
        return "tool_use"  # some servers say "stop" after tool calls
    if finish == "length":
        return "max_tokens"
    if finish == "stop" or finish is None:
        return "end_turn"
    return "other"  # content_filter and anything unknown


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_usage(usage: Any) -> c.Usage:
    if not isinstance(usage, dict):
        return c.Usage()
    out = c.Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    if isinstance(details, dict) and "cached_tokens" in details:
        out.cache_read_tokens = min(cached, out.input_tokens)
        out.input_tokens -= out.cache_read_tokens
    return out


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "{}" if value is None else dumps(value)


def reply_json(data: bytes) -> Any:
    """A non-streamed upstream reply's JSON (chat, completions, embeddings)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise errors.UpstreamProtocolError(f"upstream reply is not valid JSON: {exc}") from None


def parse_response(data: bytes, req: c.Request) -> c.Response:
    obj = reply_json(data)
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        raise errors.UpstreamProtocolError("upstream reply has no choices")
    choices = obj["choices"]
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    parts: list[c.Part] = []
    content = message.get("content")
    if isinstance(content, str) and content:
        parts.append(c.Text(content))
    elif isinstance(content, list):  # a few servers answer with parts
        text = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if text:
            parts.append(c.Text(text))
    if not parts and isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append(c.Text(message["refusal"]))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        call_id = call.get("id")
        name = fn.get("name")
        parts.append(
            c.ToolCall(
                call_id if isinstance(call_id, str) and call_id else req.new_id("call_"),
                name if isinstance(name, str) else "",
                _arguments(fn.get("arguments")),
            )
        )
    has_calls = any(isinstance(p, c.ToolCall) for p in parts)
    return c.Response(
        id=obj["id"] if isinstance(obj.get("id"), str) else "",
        model=obj["model"] if isinstance(obj.get("model"), str) else "",
        content=parts,
        stop_reason=_stop_reason(choice.get("finish_reason"), has_calls),
        usage=parse_usage(obj.get("usage")),
    )


def error_message(status: int, data: bytes) -> str:
    """The upstream's own error message, or its body text."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"]:
            return err["message"]
        if isinstance(err, str) and err:
            return err  # llama.cpp, Ollama's compat layer
        if isinstance(obj.get("message"), str) and obj["message"]:
            return obj["message"]
    text = data.decode("utf-8", "replace").strip()
    return text[:500] if text else f"HTTP {status} with an empty body"


def _stream_error(err: Any) -> c.StreamError:
    if not isinstance(err, dict):
        return c.StreamError(err if isinstance(err, str) and err else "upstream stream error")
    message = err.get("message")
    kind = err.get("type")
    code = err.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502
    return c.StreamError(
        message if isinstance(message, str) and message else dumps(err),
        status,
        kind if isinstance(kind, str) and kind else "api_error",
    )


_SCAN = json.JSONDecoder().scan_once  # the C scanner alone: one call, no whitespace around the value


class Decoder:
    """chat.completion.chunk SSE as canonical events, one Frame per SSE event.

    /v1/completions' decoder (openai_completions.py) shares the framing, the
    error and usage handling, and differs in what a chunk's choice carries
    (`_choice`) and how its finish reads (`_stop`).
    """

    def __init__(self, req: c.Request) -> None:
        self._req = req  # makes the ids of tool calls that come without one
        self._sse = SSESplitter()
        self._started = False
        self._done = False  # data: [DONE] seen
        self._finished = False  # a finish_reason seen
        self._calls: dict[Any, int] = {}  # upstream index (or id) -> canonical index
        self._last_call: Any = None

    def feed(self, data: bytes) -> list[Frame]:
        return [self._frame(event.data, event.raw) for event in self._sse.feed(data)]

    def close(self) -> list[Frame]:
        frames = self.feed(b"\n\n") if self._sse.pending else []  # a last event with no blank line
        if not (self._done or self._finished):
            raise errors.UpstreamProtocolError("upstream stream ended before completion")
        return frames

    def _frame(self, data: str, raw: bytes) -> Frame:
        if not data or self._done:
            return Frame(raw)  # comments, keep-alives, anything after [DONE]
        if data == "[DONE]":
            self._done = True
            return Frame(raw)
        try:
            chunk, end = _SCAN(data, 0)
            if data[end:]:
                raise StopIteration  # more after the value: json.loads tells what
        except StopIteration:  # whitespace around the value, or not JSON
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError) as exc:
                raise errors.UpstreamProtocolError(f"upstream stream sent invalid JSON: {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise errors.UpstreamProtocolError(f"upstream stream sent invalid JSON: {exc}") from None
        if self._started:
            # The common chunk, read without a call per field: one choice whose
            # delta is a piece of text, no finish, no usage, no error. Anything
            # else (or a field of another type) takes the general path below.
            try:
                choice = chunk["choices"][0]
                delta = choice["delta"]
                text = delta["content"]
                if (
                    text.__class__ is str
                    and choice["finish_reason"] is None
                    and choice["index"] == 0
                    and ("refusal" not in delta or delta["refusal"] is None)
                    and ("tool_calls" not in delta or delta["tool_calls"] is None)
                    and ("usage" not in chunk or chunk["usage"] is None)
                    and "error" not in chunk
                ):
                    return Frame(raw, [c.TextDelta(text)] if text else [])
            except (KeyError, IndexError, TypeError):
                pass
        if not isinstance(chunk, dict):
            raise errors.UpstreamProtocolError("upstream stream sent a chunk that is not a JSON object")
        if chunk.get("error") is not None:
            return Frame(raw, [_stream_error(chunk["error"])])
        events: list[c.StreamEvent] = []
        if not self._started:
            self._started = True
            cid, model = chunk.get("id"), chunk.get("model")
            events.append(c.MessageStart(cid if isinstance(cid, str) else "", model if isinstance(model, str) else ""))
        finish = self._choice(chunk, events)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            events.append(c.UsageUpdate(parse_usage(usage)))
        if finish and not self._finished:
            self._finished = True
            events.append(c.Stop(self._stop(finish)))
        return Frame(raw, events)

    def _choice(self, chunk: dict[str, Any], events: list[c.StreamEvent]) -> Any:
        """Adds the first choice's events; returns its finish_reason."""
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                # only the first choice (n > 1 is forwarded raw, never translated)
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        self._delta(delta, events)
                    return choice.get("finish_reason")
        return None

    def _stop(self, finish: Any) -> str:
        return _stop_reason(finish, bool(self._calls))

    def _delta(self, delta: dict[str, Any], events: list[c.StreamEvent]) -> None:
        text = delta.get("content")
        if isinstance(text, str) and text:
            events.append(c.TextDelta(text))
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            events.append(c.TextDelta(refusal))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_delta(call, events)

    def _tool_delta(self, call: dict[str, Any], events: list[c.StreamEvent]) -> None:
        up, call_id = call.get("index"), call.get("id")
        # The index says which call a delta extends; a few servers omit it and
        # repeat the id instead, or send neither on continuation deltas.
        if isinstance(up, int) and not isinstance(up, bool):
            key = up
        elif isinstance(call_id, str) and call_id:
            key = call_id
        else:
            key = self._last_call
        fn = call.get("function")
        fn = fn if isinstance(fn, dict) else {}
        index = self._calls.get(key)
        if index is None:
            if key is None:
                return
            index = self._calls[key] = len(self._calls)
            name = fn.get("name")
            events.append(
                c.ToolCallStart(
                    index,
                    call_id if isinstance(call_id, str) and call_id else self._req.new_id("call_"),
                    name if isinstance(name, str) else "",
                )
            )
        self._last_call = key
        args = fn.get("arguments")
        if args is not None and not isinstance(args, str):
            args = dumps(args)
        if args:
            events.append(c.ToolCallDelta(index, args))
