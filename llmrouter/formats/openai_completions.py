"""OpenAI legacy text completions (`/completions`), client side and upstream side. Pure.

Client: POST /v1/completions bodies in, `text_completion` objects and SSE
chunks out. Upstream: completion requests out to {base_url}/completions
(OpenAI, llama.cpp, vLLM; `suffix` for fill-in-the-middle where the server
takes it), replies and SSE streams back in. A completion reply is a canonical
Response with one text part, its stream the canonical text events, so the
pipeline relays it as it relays chat. The mapping table is in docs/formats.md.
"""

from __future__ import annotations

from typing import Any

from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall, forwardable_body, openai, passthrough
from llmrouter.formats.openai import dumps
from llmrouter.formats.validate import bad, body_object, parse_plugins, take

FORMAT, KIND = "openai", c.COMPLETION
error_body = openai.error_body
error_message = openai.error_message

# --- client side -------------------------------------------------------------------


def parse_request(body: object) -> c.Request:
    """A /v1/completions body as a canonical completion request. Raises BadRequest only."""
    body = body_object(body)
    model = take(body, "model", "string", required=True)
    stream_options = take(body, "stream_options", "object") or {}
    return c.completion_request(
        model,
        _prompt(body.get("prompt")),
        suffix=take(body, "suffix", "string"),
        max_tokens=take(body, "max_tokens", "count"),
        temperature=take(body, "temperature", "number"),
        top_p=take(body, "top_p", "number"),
        stop=openai._parse_stop(body.get("stop")),
        seed=take(body, "seed", "integer"),
        stream=bool(take(body, "stream", "boolean")),
        include_usage=bool(take(stream_options, "include_usage", "boolean", "stream_options")),
        plugins=parse_plugins(body),
        client_format=FORMAT,
        raw=body,
    )


def _prompt(value: Any) -> str:
    # One completion per request: a string, or an array holding one string.
    # Token arrays cannot be translated for other upstreams.
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if value is None:
        raise errors.BadRequest("prompt is required", param="prompt")
    raise bad("prompt", "a string or an array of one string (token arrays and batches are not supported)")


def _reply_id(req: c.Request, upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("cmpl-") else req.new_id("cmpl-")


def _choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


def render_response(resp: c.Response, req: c.Request) -> dict[str, Any]:
    return {
        "id": _reply_id(req, resp.id),
        "object": "text_completion",
        "created": int(req.now),
        "model": resp.model or req.model,
        "choices": [_choice(resp.text, openai.FINISH_REASONS.get(resp.stop_reason, "stop"))],
        "usage": openai.usage_json(resp.usage),
    }


class Encoder:
    """Canonical text events as `text_completion` SSE chunks (no role chunk:
    the first chunk carries the first text, so the first-chunk gate waits for it)."""

    end_after_error = False  # an error chunk is no terminal event: the body is cut short

    def __init__(self, req: c.Request, model: str) -> None:
        self._req = req
        self._id = _reply_id(req, "")
        self._model = model
        self._usage = c.Usage()
        self._stopped = False

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self._id, "object": "text_completion", "created": int(self._req.now),
            "model": self._model, "choices": choices,
        }
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + dumps(obj).encode() + b"\n\n"

    def encode(self, event: c.StreamEvent) -> bytes:
        if isinstance(event, c.TextDelta):
            return self._chunk([_choice(event.text, None)]) if event.text else b""
        if isinstance(event, c.MessageStart):
            if event.id.startswith("cmpl-"):  # an OpenAI upstream's own id
                self._id = event.id
            self._model = event.model or self._model
            if event.usage:
                self._usage.merge(event.usage)
        elif isinstance(event, c.UsageUpdate):
            self._usage.merge(event.usage)
        elif isinstance(event, c.Stop) and not self._stopped:
            self._stopped = True
            return self._chunk([_choice("", openai.FINISH_REASONS.get(event.stop_reason, "stop"))])
        elif isinstance(event, c.StreamError):
            return self.error(event)
        return b""

    def finish(self) -> bytes:
        out = b""
        if not self._stopped:
            self._stopped = True
            out += self._chunk([_choice("", "stop")])
        if self._req.include_usage:
            out += self._chunk([], openai.usage_json(self._usage))
        return out + b"data: [DONE]\n\n"

    # Errors and keep-alives are framed as chat completions frames them.
    error = openai.Encoder.error
    ping = openai.Encoder.ping


# --- upstream side -------------------------------------------------------------------


def build_request(req: c.Request, model: str, provider: Provider) -> UpstreamCall:
    if passthrough(req, FORMAT):
        body = forwardable_body(req, model)
    else:
        body = {"model": model, "prompt": req.prompt, "stream": req.stream}
        fields = {"suffix": req.suffix, "max_tokens": req.max_tokens, "temperature": req.temperature,
                  "top_p": req.top_p, "seed": req.seed, "stop": list(req.stop) or None}
        body.update((k, v) for k, v in fields.items() if v is not None)
    return openai.upstream_call("/completions", body, req.stream, provider)


def _first_choice(obj: dict[str, Any]) -> dict[str, Any]:
    choices = obj.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return {}


def _stop_reason(finish: Any) -> str:
    if finish == "length":
        return "max_tokens"
    return "end_turn" if finish in ("stop", None) else "other"


def parse_response(data: bytes, req: c.Request) -> c.Response:
    obj = openai.reply_json(data)
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        raise errors.UpstreamProtocolError("upstream completion reply has no choices")
    choice = _first_choice(obj)
    text = choice.get("text")
    return c.Response(
        id=obj["id"] if isinstance(obj.get("id"), str) else "",
        model=obj["model"] if isinstance(obj.get("model"), str) else "",
        content=[c.Text(text if isinstance(text, str) else "")],
        stop_reason=_stop_reason(choice.get("finish_reason")),
        usage=openai.parse_usage(obj.get("usage")),
    )


class Decoder(openai.Decoder):
    """`text_completion` SSE chunks as canonical text events, one Frame per SSE event."""

    def _choice(self, chunk: dict[str, Any], events: list[c.StreamEvent]) -> Any:
        choice = _first_choice(chunk)
        text = choice.get("text")
        if isinstance(text, str) and text:
            events.append(c.TextDelta(text))
        return choice.get("finish_reason")

    def _stop(self, finish: Any) -> str:
        return _stop_reason(finish)
