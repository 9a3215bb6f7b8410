"""The Ollama chat wire format (POST /api/chat, NDJSON streams), upstream side.
(The client side, Ollama's API served to apps, is formats/ollama_client.py.)

Pure: values in, values out. Mapping tables: docs/formats-anthropic-ollama.md.

What Ollama cannot express is dropped on purpose: remote image URLs (Ollama
takes base64 only), tool_choice (except "none", which sends no tools), opaque
parts such as Anthropic thinking, and the streamed `thinking` text of reasoning
models. Ollama gives tool calls no ids (older versions) and replies no id at
all, so both are made here from the request's id seed, unique per reply.
"""

from __future__ import annotations

import json
from typing import Any

from llmrouter import canonical as c
from llmrouter import errors, sse
from llmrouter.config import Provider
from llmrouter.formats import Frame, UpstreamCall, forwardable_body, passthrough
from llmrouter.formats import dumps as _dumps  # compact; lone surrogates stay escaped



# --- requests ---------------------------------------------------------------------


def _arguments(text: str) -> Any:
    """Tool-call arguments as the JSON object Ollama expects; invalid JSON becomes {}."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _images(parts: list[Any]) -> list[str]:
    return [p.data for p in parts if isinstance(p, c.Image) and p.data is not None]


def _messages(req: c.Request) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": req.system})
    names: dict[str, str] = {}  # tool call id -> tool name, for tool results
    for message in req.messages:
        # Tool results are messages of their own in Ollama, and come first:
        # they answer the previous assistant turn.
        for part in message.content:
            if isinstance(part, c.ToolResult):
                result: dict[str, Any] = {"role": "tool", "content": part.text}
                if part.tool_call_id in names:
                    result["tool_name"] = names[part.tool_call_id]
                images = _images(part.content)
                if images:
                    result["images"] = images
                out.append(result)
        entry: dict[str, Any] = {"role": message.role, "content": message.text}
        images = _images(message.content)
        if images:
            entry["images"] = images
        calls = [p for p in message.content if isinstance(p, c.ToolCall)]
        if calls:
            entry["tool_calls"] = [{"function": {"name": p.name, "arguments": _arguments(p.arguments)}} for p in calls]
            names.update((p.id, p.name) for p in calls)
        if entry["content"] or images or calls or not any(isinstance(p, c.ToolResult) for p in message.content):
            out.append(entry)
    return out


def build_request(req: c.Request, model: str, provider: Provider) -> UpstreamCall:
    body = forwardable_body(req, model) if passthrough(req, "ollama") else _body(req, model)
    headers = {"content-type": "application/json"}
    if provider.api_key:
        headers["authorization"] = f"Bearer {provider.api_key}"
    for name, value in provider.headers:
        headers[name.lower()] = value
    return UpstreamCall("/api/chat", list(headers.items()), _dumps(body).encode())


def _body(req: c.Request, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": _messages(req), "stream": req.stream}
    if req.tools and req.tool_choice != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.parameters,
                },
            }
            for t in req.tools
        ]
    options: dict[str, Any] = {}
    if req.temperature is not None:
        options["temperature"] = req.temperature
    if req.top_p is not None:
        options["top_p"] = req.top_p
    if req.seed is not None:
        options["seed"] = req.seed
    if req.max_tokens is not None:
        options["num_predict"] = req.max_tokens
    if req.stop:
        options["stop"] = list(req.stop)
    # An Ollama client's own fields and options (keep_alive, think, num_ctx, ...);
    # the canonical values above win, since a plugin may have changed them.
    kept = dict(req.extras.get("ollama", {}))
    kept_options = kept.pop("options", None)
    if isinstance(kept_options, dict):
        options = {**kept_options, **options}
    if options:
        body["options"] = options
    fmt = req.response_format or {}
    if fmt.get("type") == "json_object":
        body["format"] = "json"
    elif fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        body["format"] = fmt["schema"]
    for key, value in kept.items():
        body.setdefault(key, value)
    return body


# --- replies ----------------------------------------------------------------------


def _load(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.UpstreamProtocolError(f"ollama upstream sent invalid JSON in {what}: {exc}") from None


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(data: dict[str, Any]) -> c.Usage:
    return c.Usage(_count(data, "prompt_eval_count"), _count(data, "eval_count"))


def _stop(done_reason: object, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_use"
    if done_reason in (None, "", "stop"):
        return "end_turn"
    return "max_tokens" if done_reason == "length" else "other"


class _CallIds:
    """Tool-call ids for one reply: Ollama's own when it sends them, else one
    made from the request's id seed."""

    def __init__(self, req: c.Request) -> None:
        self.req = req
        self.count = 0

    def calls(self, message: dict[str, Any]) -> list[c.ToolCall]:
        raw = message.get("tool_calls")
        if not isinstance(raw, list):
            return []
        out = []
        for call in raw:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise errors.UpstreamProtocolError("ollama upstream sent a tool call without a function")
            arguments = function.get("arguments")
            text = arguments if isinstance(arguments, str) else _dumps(arguments if arguments is not None else {})
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = self.req.new_id("call_")
            self.count += 1
            out.append(c.ToolCall(call_id, str(function.get("name") or ""), text))
        return out


def _message(data: dict[str, Any]) -> dict[str, Any]:
    message = data.get("message")
    return message if isinstance(message, dict) else {}


def reply_object(data: bytes) -> dict[str, Any]:
    """A non-streamed ollama reply (chat, generate, embed) as an object; an
    `error` field in it is the upstream's failure."""
    body = _load(data, "its reply")
    if not isinstance(body, dict):
        raise errors.UpstreamProtocolError("ollama upstream sent a non-object reply")
    if isinstance(body.get("error"), str):
        raise errors.UpstreamProtocolError(f"ollama upstream error: {body['error']}")
    return body


def parse_response(data: bytes, req: c.Request) -> c.Response:
    body = reply_object(data)
    message = _message(body)
    content: list[c.Part] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append(c.Text(text))
    calls = _CallIds(req).calls(message)
    content.extend(calls)
    return c.Response(
        id=req.new_id("ollama-"),
        model=str(body.get("model") or ""),
        content=content or [c.Text("")],
        stop_reason=_stop(body.get("done_reason"), bool(calls)),
        usage=_usage(body),
    )


def error_message(status: int, data: bytes) -> str:
    try:
        error = json.loads(data).get("error")
        if isinstance(error, str) and error:
            return error
    except (ValueError, UnicodeDecodeError, AttributeError):
        pass
    text = data.decode("utf-8", "replace").strip()
    return text[:500] if text else f"upstream returned HTTP {status}"


def parse_tags(data: bytes) -> list[str]:
    """Model names from GET /api/tags, in the order Ollama lists them."""
    body = _load(data, "its model list")
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise errors.UpstreamProtocolError("ollama /api/tags reply has no models array")
    names = []
    for entry in models:
        name = entry.get("name") or entry.get("model") if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            names.append(name)
    return names


class Decoder:
    """Ollama NDJSON -> canonical events, one Frame per line.

    Ollama sends each tool call whole in one line, so a call becomes a
    ToolCallStart and a single ToolCallDelta carrying all its arguments. The
    `done: true` line carries usage and the stop reason. /api/generate's
    decoder (ollama_generate.py) differs only in what a line carries.
    """

    def __init__(self, req: c.Request) -> None:
        self.req = req
        self.splitter = sse.NDJSONSplitter()
        self.ids = _CallIds(req)
        self.started = False
        self.finished = False  # a done line or an error line seen

    def feed(self, data: bytes) -> list[Frame]:
        return [Frame(line, self._events(line)) for line in self.splitter.feed(data)]

    def close(self) -> list[Frame]:
        frames = [Frame(line, self._events(line)) for line in self.splitter.close()]
        if not self.finished:
            raise errors.UpstreamProtocolError("ollama upstream stream ended without a done line")
        return frames

    def _events(self, line: bytes) -> list[c.StreamEvent]:
        data = _load(line, "a stream line")
        if not isinstance(data, dict):
            raise errors.UpstreamProtocolError("ollama upstream sent a non-object stream line")
        if "error" in data:
            self.finished = True
            return [c.StreamError(str(data["error"]), 502, "api_error")]
        out: list[c.StreamEvent] = []
        if not self.started:
            self.started = True
            out.append(c.MessageStart(self._reply_id(), str(data.get("model") or "")))
        self._content(data, out)
        if data.get("done") is True:
            self.finished = True
            out.append(c.UsageUpdate(_usage(data)))
            out.append(c.Stop(_stop(data.get("done_reason"), self.ids.count > 0)))
        return out

    def _reply_id(self) -> str:
        return self.req.new_id("ollama-")

    def _content(self, data: dict[str, Any], out: list[c.StreamEvent]) -> None:
        """A chat line's message: its text, then its whole tool calls."""
        message = _message(data)
        text = message.get("content")
        if isinstance(text, str) and text:
            out.append(c.TextDelta(text))
        first = self.ids.count
        for offset, call in enumerate(self.ids.calls(message)):
            out.append(c.ToolCallStart(first + offset, call.id, call.name))
            out.append(c.ToolCallDelta(first + offset, call.arguments))
