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
from llmrouter import errors, sse
from llmrouter.config import Provider
from llmrouter.formats import Frame, UpstreamCall, dumps, forwardable_body, ollama, passthrough
from llmrouter.formats.ollama import _load, _usage

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


def _stop(done_reason: object) -> str:
    if done_reason in (None, "", "stop"):
        return "end_turn"
    return "max_tokens" if done_reason == "length" else "other"


def _text(data: dict[str, Any]) -> str:
    text = data.get("response")
    return text if isinstance(text, str) else ""


def parse_response(data: bytes, req: c.Request) -> c.Response:
    body = _load(data, "its reply")
    if not isinstance(body, dict):
        raise errors.UpstreamProtocolError("ollama upstream sent a non-object reply")
    if isinstance(body.get("error"), str):
        raise errors.UpstreamProtocolError(f"ollama upstream error: {body['error']}")
    return c.Response(
        id="",
        model=str(body.get("model") or ""),
        content=[c.Text(_text(body))],
        stop_reason=_stop(body.get("done_reason")),
        usage=_usage(body),
    )


class Decoder:
    """/api/generate NDJSON -> canonical text events, one Frame per line."""

    def __init__(self, req: c.Request) -> None:
        self.splitter = sse.NDJSONSplitter()
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
            out.append(c.MessageStart("", str(data.get("model") or "")))
        text = _text(data)
        if text:
            out.append(c.TextDelta(text))
        if data.get("done") is True:
            self.finished = True
            out.append(c.UsageUpdate(_usage(data)))
            out.append(c.Stop(_stop(data.get("done_reason"))))
        return out
