"""Text completions to Ollama upstreams: POST /api/generate. Upstream side. Pure.

A completion goes out as /api/generate with `suffix` for fill-in-the-middle
(Ollama applies the model's FIM template, or refuses a model without one).
Without a suffix or system prompt the prompt is sent `raw`: a text completion
continues the text as given, with no chat template around it. A request from
an Ollama client is forwarded as it came (same-format passthrough). Replies
carry no id: the client side makes one from the request's id seed.
"""

from __future__ import annotations

from typing import Any

from llmrouter import canonical as c
from llmrouter.config import Provider
from llmrouter.formats import UpstreamCall, dumps, forwardable_body, ollama, passthrough
from llmrouter.formats.ollama import _stop, _usage

FORMAT, KIND = "ollama", c.COMPLETION
error_message = ollama.error_message
# The fields of an OpenAI /v1/completions body that reach /api/generate.
_OPENAI_MAPPED = frozenset(
    ("model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "plugins")
)


def build_request(req: c.Request, model: str, provider: Provider) -> UpstreamCall:
    warnings: list[str] = []
    if passthrough(req, FORMAT):
        body = forwardable_body(req, model)
    else:
        if req.client_format == "openai" and req.raw is not None:
            warnings = [f"dropped completion field {k!r} for an ollama upstream" for k in req.raw if k not in _OPENAI_MAPPED]
        body = {"model": model, "prompt": req.prompt, "stream": req.stream}
        if req.suffix is not None:
            body["suffix"] = req.suffix
        if req.system:
            body["system"] = req.system
        if req.suffix is None and not req.system:
            body["raw"] = True
        options = {"num_predict": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p,
                   "seed": req.seed, "stop": list(req.stop) or None}
        options = {k: v for k, v in options.items() if v is not None}
        if options:
            body["options"] = options
    headers = {"content-type": "application/json"}
    if provider.api_key:
        headers["authorization"] = f"Bearer {provider.api_key}"
    for name, value in provider.headers:
        headers[name.lower()] = value
    return UpstreamCall("/api/generate", list(headers.items()), dumps(body).encode(), warnings)


def _text(data: dict[str, Any]) -> str:
    text = data.get("response")
    return text if isinstance(text, str) else ""


def parse_response(data: bytes, req: c.Request) -> c.Response:
    body = ollama.reply_object(data)
    return c.Response(
        id="",
        model=str(body.get("model") or ""),
        content=[c.Text(_text(body))],
        stop_reason=_stop(body.get("done_reason"), tool_calls=False),
        usage=_usage(body),
    )


class Decoder(ollama.Decoder):
    """/api/generate NDJSON -> canonical text events, one Frame per line: a
    line carries text as `response`, never tool calls."""

    def _reply_id(self) -> str:
        return ""  # the client side makes one from the request's id seed

    def _content(self, data: dict[str, Any], out: list[c.StreamEvent]) -> None:
        text = _text(data)
        if text:
            out.append(c.TextDelta(text))
