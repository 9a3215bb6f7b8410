"""OpenAI Responses API wire format (POST /v1/responses), client side only. Pure.

Shaped after what the Codex CLI sends and reads: `input` items in, `response.*`
SSE events out. Codex builds its history from `response.output_item.done` and
treats a stream without `response.completed` as failed, so a truncated reply
ends with `response.completed` carrying `status: "incomplete"` (the API itself
would send `response.incomplete`, which Codex 0.171 does not know).
"""

from __future__ import annotations

from typing import Any

from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.formats.openai import (
    append_tool_result,
    dumps,
    error_body,
    image_from_url,
    parse_tool_choice,
    prompt_tokens,
)
from llmrouter.formats.validate import bad, body_object, object_at, parse_plugins, take
from llmrouter.sse import encode_event

__all__ = ["parse_request", "render_response", "error_body", "Encoder"]

# Accepted and ignored: they tune OpenAI's hosted features (reasoning effort,
# storage, encrypted reasoning, caching hints) that no routed upstream has.
IGNORED_FIELDS = ("reasoning", "include", "store", "parallel_tool_calls", "prompt_cache_key", "metadata",
                  "service_tier", "truncation", "user", "safety_identifier", "stream_options", "background")


# --- requests ----------------------------------------------------------------------

def parse_request(body: object) -> c.Request:
    """A Responses API body as a canonical Request. Raises BadRequest only."""
    body = body_object(body)
    model = take(body, "model", "string", required=True)
    if body.get("previous_response_id") is not None:
        raise errors.BadRequest(
            "previous_response_id is not supported: the router stores no responses; send the whole conversation in input",
            param="previous_response_id",
        )
    instructions = take(body, "instructions", "string")
    warnings: list[str] = []
    ignored = [key for key in IGNORED_FIELDS if key in body]
    if ignored:
        warnings.append(f"ignored Responses fields {', '.join(ignored)}")
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    elif not isinstance(items, list) or not items:
        raise bad("input", "a string or a non-empty array of items")
    systems = [instructions] if instructions else []
    messages = _parse_items(items, systems, warnings)
    return c.Request(
        model=model,
        messages=messages,
        system="\n\n".join(systems) if systems else None,
        tools=_parse_tools(take(body, "tools", "array") or [], warnings),
        tool_choice=parse_tool_choice(body.get("tool_choice"), warnings),
        max_tokens=take(body, "max_output_tokens", "count"),
        temperature=take(body, "temperature", "number"),
        top_p=take(body, "top_p", "number"),
        stream=bool(take(body, "stream", "boolean")),
        response_format=_parse_text_format(take(body, "text", "object")),
        plugins=parse_plugins(body),
        client_format="responses",
        raw=body,
        warnings=warnings,
    )


def _parse_items(items: list[Any], systems: list[str], warnings: list[str]) -> list[c.Message]:
    messages: list[c.Message] = []
    for i, value in enumerate(items):
        path = f"input[{i}]"
        item = object_at(value, path)
        kind = take(item, "type", "string", path) or ("message" if "role" in item else None)
        if kind == "message":
            role = take(item, "role", "string", path, required=True)
            parts = _parse_content(item.get("content"), f"{path}.content", warnings)
            if role in ("system", "developer"):
                systems.append("\n\n".join(p.text for p in parts if isinstance(p, c.Text)))
            elif role in ("user", "assistant"):
                _append(messages, role, parts)
            else:
                raise bad(f"{path}.role", "one of user, assistant, system, developer")
        elif kind == "function_call":
            args = item.get("arguments")
            if args is not None and not isinstance(args, str):
                raise bad(f"{path}.arguments", "a JSON string")
            call = c.ToolCall(
                take(item, "call_id", "string", path, required=True),
                take(item, "name", "string", path, required=True),
                args or "{}",
            )
            _append(messages, "assistant", [call])
        elif kind == "function_call_output":
            call_id = take(item, "call_id", "string", path, required=True)
            output = item.get("output")
            parts = [] if output is None else _parse_content(output, f"{path}.output", warnings)
            append_tool_result(messages, c.ToolResult(call_id, [p for p in parts if isinstance(p, (c.Text, c.Image))]))
        else:
            # reasoning, item_reference, web_search_call, custom/local shell calls, …
            warnings.append(f"dropped input item of type {kind!r}")
    return messages


def _append(messages: list[c.Message], role: str, parts: list[c.Part]) -> None:
    # An assistant turn arrives as a message item plus function_call items;
    # they are one canonical message.
    if role == "assistant" and messages and messages[-1].role == "assistant":
        messages[-1].content.extend(parts)
    else:
        messages.append(c.Message(role, parts))


def _parse_content(content: Any, path: str, warnings: list[str]) -> list[c.Part]:
    if isinstance(content, str):
        return [c.Text(content)]
    if not isinstance(content, list):
        raise bad(path, "a string or an array of content parts")
    parts: list[c.Part] = []
    for j, value in enumerate(content):
        where = f"{path}[{j}]"
        part = object_at(value, where)
        kind = take(part, "type", "string", where, required=True)
        if kind in ("input_text", "output_text", "text"):
            parts.append(c.Text(take(part, "text", "string", where, required=True)))
        elif kind == "refusal":
            parts.append(c.Text(take(part, "refusal", "string", where, required=True)))
        elif kind == "input_image" and part.get("image_url") is not None:
            parts.append(image_from_url(take(part, "image_url", "string", where), f"{where}.image_url"))
        else:
            # input_file, images by file_id, audio: nothing routed can fetch them
            warnings.append(f"dropped content part of type {kind!r}")
    return parts


def _parse_tools(items: list[Any], warnings: list[str]) -> list[c.Tool]:
    tools: list[c.Tool] = []
    for i, value in enumerate(items):
        path = f"tools[{i}]"
        tool = object_at(value, path)
        kind = take(tool, "type", "string", path, required=True)
        if kind != "function":
            warnings.append(f"dropped built-in tool {kind!r}")  # web_search, local_shell, custom, …
            continue
        tools.append(
            c.Tool(
                name=take(tool, "name", "string", path, required=True),
                description=take(tool, "description", "string", path),
                parameters=take(tool, "parameters", "object", path) or {"type": "object", "properties": {}},
            )
        )
    return tools


def _parse_text_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` is the Responses spelling of response_format; verbosity is dropped."""
    fmt = take(text, "format", "object", "text") if text else None
    if not fmt:
        return None
    kind = take(fmt, "type", "string", "text.format", required=True)
    if kind == "json_schema":
        return {
            "type": "json_schema",
            "name": take(fmt, "name", "string", "text.format") or "response",
            "schema": take(fmt, "schema", "object", "text.format") or {},
            "strict": take(fmt, "strict", "boolean", "text.format"),
        }
    return {"type": "json_object"} if kind == "json_object" else None


# --- replies -----------------------------------------------------------------------

def _usage_json(usage: c.Usage) -> dict[str, Any]:
    prompt = prompt_tokens(usage)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens or 0,
            "cache_write_tokens": usage.cache_write_tokens or 0,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + usage.output_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _envelope(rid: str, created: int, model: str, req: c.Request) -> dict[str, Any]:
    """The response object's fields that do not change while it streams."""
    choice = req.tool_choice
    instructions = req.raw.get("instructions") if req.raw else None
    text_format: dict[str, Any] = {"type": "text"}
    if req.response_format and req.response_format.get("type") == "json_schema":
        fmt = req.response_format
        text_format = {"type": "json_schema", "name": fmt["name"], "schema": fmt["schema"], "strict": fmt["strict"]}
    elif req.response_format:
        text_format = {"type": "json_object"}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "model": model,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": req.max_tokens,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "store": False,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "text": {"format": text_format},
        "tool_choice": {"type": "function", "name": choice["name"]} if isinstance(choice, dict) else choice or "auto",
        "tools": [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters, "strict": False}
            for t in req.tools
        ],
        "truncation": "disabled",
        "metadata": {},
    }


def _status(stop_reason: str | None) -> tuple[str, dict[str, str] | None]:
    if stop_reason == "max_tokens":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def render_response(resp: c.Response, req: c.Request) -> dict[str, Any]:
    status, incomplete = _status(resp.stop_reason)
    rid = req.new_id("resp_")
    item_status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    text: list[str] = []

    def flush_text() -> None:
        if text:
            output.append(_message_item(req.new_id("msg_"), "".join(text), item_status))
            text.clear()

    for part in resp.content:
        if isinstance(part, c.Text):
            text.append(part.text)
        elif isinstance(part, c.ToolCall):
            flush_text()
            output.append(_call_item(req.new_id("fc_"), part.id or req.new_id("call_"), part.name, part.arguments or "{}", "completed"))
    flush_text()
    if not output:  # readers index output[0]; an empty reply is still a message
        output.append(_message_item(req.new_id("msg_"), "", item_status))
    out = _envelope(rid, int(req.now), resp.model or req.model, req)
    out.update(status=status, error=None, incomplete_details=incomplete, output=output, usage=_usage_json(resp.usage))
    return out


def _failure(err: c.StreamError) -> dict[str, Any]:
    # The SDK allows only a fixed set of codes here; the real kind rides in `type`.
    code = "rate_limit_exceeded" if err.status == 429 else "server_error"
    return {"code": code, "message": err.message, "type": err.kind}


class Encoder:
    """Canonical stream events as Responses API SSE events (`event:` + `data:`)."""

    # `response.failed` is the protocol's own terminal event, so the body then
    # ends normally: Codex reads it only from a cleanly ended body (on a cut-off
    # one it reports "error decoding response body" and loses the message).
    end_after_error = True

    def __init__(self, req: c.Request, model: str) -> None:
        self._req = req
        self._model = model
        self._id = req.new_id("resp_")
        self._created = int(req.now)
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # items by output_index, open or done
        self._text: dict[str, Any] | None = None  # the open message item
        self._text_chunks: list[str] = []
        self._calls: dict[int, int] = {}  # canonical index -> output_index of an open call
        self._usage = c.Usage()
        self._stop: str | None = None
        self._ended = False

    def _emit(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return encode_event(dumps(payload), kind)

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        out = _envelope(self._id, self._created, self._model, self._req)
        out.update(status=status, error=None, incomplete_details=None, output=self._output, usage=None)
        out.update(fields)
        return out

    def _start(self, model: str = "") -> bytes:
        self._started = True
        self._model = model or self._model
        envelope = self._response("in_progress", output=[])
        return self._emit("response.created", {"response": envelope}) + self._emit(
            "response.in_progress", {"response": envelope}
        )

    def encode(self, event: c.StreamEvent) -> bytes:
        if not self._started:
            if isinstance(event, c.MessageStart):
                if event.usage:  # Anthropic reports input tokens only here
                    self._usage.merge(event.usage)
                return self._start(event.model)
            return self._start() + self.encode(event)
        if self._ended:
            return b""
        if isinstance(event, c.TextDelta):
            return self._text_delta(event.text) if event.text else b""
        if isinstance(event, c.ToolCallDelta):
            index = self._calls.get(event.index)
            if index is None or not event.arguments:
                return b""
            item = self._output[index]
            item["arguments"] += event.arguments
            return self._emit(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": index, "delta": event.arguments},
            )
        if isinstance(event, c.ToolCallStart):
            out = self._close_text()
            index = len(self._output)
            item = _call_item(self._req.new_id("fc_"), event.id or self._req.new_id("call_"), event.name, "", "in_progress")
            self._output.append(item)
            self._calls[event.index] = index
            return out + self._emit("response.output_item.added", {"output_index": index, "item": dict(item)})
        if isinstance(event, c.UsageUpdate):
            self._usage.merge(event.usage)
            return b""
        if isinstance(event, c.Stop):
            self._stop = self._stop or event.stop_reason
            return self._close_all()
        if isinstance(event, c.StreamError):
            return self.error(event)
        return b""  # MessageStart again, or an OpaqueBlock the Responses API cannot carry

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self._text is None:
            out = self._close_calls()
            index = len(self._output)
            self._text = _message_item(self._req.new_id("msg_"), None, "in_progress")
            self._output.append(self._text)
            self._text_chunks = []
            ids = {"item_id": self._text["id"], "output_index": index}
            out += self._emit("response.output_item.added", {"output_index": index, "item": dict(self._text, content=[])})
            out += self._emit("response.content_part.added", {**ids, "content_index": 0, "part": _text_part("")})
        self._text_chunks.append(text)
        ids = {"item_id": self._text["id"], "output_index": len(self._output) - 1}
        return out + self._emit(
            "response.output_text.delta", {**ids, "content_index": 0, "delta": text, "logprobs": []}
        )

    def _close_text(self) -> bytes:
        item = self._text
        if item is None:
            return b""
        self._text = None
        index = self._output.index(item)
        text = "".join(self._text_chunks)
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        out = self._emit("response.output_text.done", {**ids, "text": text, "logprobs": []})
        out += self._emit("response.content_part.done", {**ids, "part": _text_part(text)})
        item["content"] = [_text_part(text)]
        item["status"] = "incomplete" if self._stop == "max_tokens" else "completed"
        return out + self._emit("response.output_item.done", {"output_index": index, "item": item})

    def _close_calls(self) -> bytes:
        # Calls stay open until something else starts, so deltas of parallel
        # calls may interleave; each is closed in output order.
        out = b""
        for index in sorted(self._calls.values()):
            item = self._output[index]
            item["arguments"] = item["arguments"] or "{}"
            item["status"] = "completed"
            out += self._emit(
                "response.function_call_arguments.done",
                {"item_id": item["id"], "output_index": index, "arguments": item["arguments"]},
            )
            out += self._emit("response.output_item.done", {"output_index": index, "item": item})
        self._calls.clear()
        return out

    def _close_all(self) -> bytes:
        return self._close_text() + self._close_calls()

    def finish(self) -> bytes:
        out = b"" if self._started else self._start()
        if self._ended:
            return out
        out += self._close_all()
        self._ended = True
        status, incomplete = _status(self._stop)
        response = self._response(status, incomplete_details=incomplete, usage=_usage_json(self._usage))
        return out + self._emit("response.completed", {"response": response})

    def error(self, err: c.StreamError) -> bytes:
        out = b"" if self._started else self._start()
        self._ended = True
        return out + self._emit("response.failed", {"response": self._response("failed", error=_failure(err))})

    def ping(self) -> bytes:
        return b": ping\n\n"
