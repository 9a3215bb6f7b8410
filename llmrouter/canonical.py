"""The canonical model: one shape for every request, reply and stream event.

Client formats parse into these types and upstream formats are built from
them, so each wire format is translated once, to and from this module, instead
of once per pair. Pure data: no I/O, no logging.

Parts of a message:
  Text       plain text
  Image      base64 `data` with `media_type`, or a remote `url`
  ToolCall   a call the assistant made; `arguments` is the JSON text, kept as
             text so that streamed argument deltas reassemble byte for byte
  ToolResult the answer to a tool call, as text and/or images
  Opaque     a block only its own format understands (Anthropic `thinking`,
             `redacted_thinking`, …): kept when client and upstream share that
             format, dropped (with a debug line) otherwise
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

STOP_REASONS = ("end_turn", "max_tokens", "tool_use", "stop_sequence", "other")

# Request kinds. A completion's prompt is its one user message; each
# embedding input is a user message of its own (so classifiers and plugins
# see their text as they see a chat's).
CHAT, COMPLETION, EMBEDDING = "chat", "completion", "embedding"
KINDS = (CHAT, COMPLETION, EMBEDDING)


@dataclass
class Text:
    text: str


@dataclass
class Image:
    media_type: str | None = None
    data: str | None = None  # base64, without the data: prefix
    url: str | None = None  # a remote URL (only passed to upstreams that accept URLs)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = "{}"  # JSON text


@dataclass
class ToolResult:
    tool_call_id: str
    content: list[Text | Image] = field(default_factory=list)
    is_error: bool = False

    @property
    def text(self) -> str:
        return "".join([p.text for p in self.content if isinstance(p, Text)])


@dataclass
class Opaque:
    format: str  # the wire format that produced it, e.g. "anthropic"
    data: dict[str, Any]


Part = Union[Text, Image, ToolCall, ToolResult, Opaque]


@dataclass
class Message:
    role: str  # "user" | "assistant"
    content: list[Part]

    @property
    def text(self) -> str:
        return "".join([p.text for p in self.content if isinstance(p, Text)])


@dataclass
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None

    def merge(self, other: Usage) -> None:
        """Providers report usage in pieces (Anthropic: input at the start,
        output at the end); a later non-zero figure wins."""
        self.input_tokens = other.input_tokens or self.input_tokens
        self.output_tokens = other.output_tokens or self.output_tokens
        if other.cache_read_tokens is not None:
            self.cache_read_tokens = other.cache_read_tokens
        if other.cache_write_tokens is not None:
            self.cache_write_tokens = other.cache_write_tokens

    def to_json(self) -> dict[str, int]:
        out = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cache_read_tokens is not None:
            out["cache_read_tokens"] = self.cache_read_tokens
        if self.cache_write_tokens is not None:
            out["cache_write_tokens"] = self.cache_write_tokens
        return out


@dataclass
class Request:
    """A request of any kind (chat, text completion, embedding), whatever
    format it arrived in."""

    model: str
    messages: list[Message]
    system: str | None = None
    tools: list[Tool] = field(default_factory=list)
    # "auto" | "none" | "required" | {"name": tool name}; None = not given
    tool_choice: str | dict[str, str] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    # None, {"type": "json_object"} or {"type": "json_schema", "name", "schema", "strict"}
    response_format: dict[str, Any] | None = None
    include_usage: bool = False  # OpenAI stream_options.include_usage
    # Seconds from sending the upstream request to its first byte and to the
    # end of its reply; set by the pipeline before the reply is rendered
    # (Ollama clients are told durations).
    timing: tuple[float, float] | None = None
    plugins: list[dict[str, Any]] = field(default_factory=list)  # never forwarded
    # Format-specific fields kept only for an upstream of the same format,
    # e.g. Anthropic thinking / output_config / metadata, forwarded headers.
    extras: dict[str, Any] = field(default_factory=dict)
    client_format: str = "openai"
    raw: dict[str, Any] | None = None  # the client's body, for same-format passthrough
    tags: list[str] = field(default_factory=list)
    forced_provider: str | None = None
    forced_providers: list[str] = field(default_factory=list)  # tried in order
    modified: bool = False  # a plugin changed it: passthrough must re-render
    kind: str = CHAT  # one of KINDS
    suffix: str | None = None  # completion: the text after the cursor (fill-in-the-middle)
    seed: int | None = None
    dimensions: int | None = None  # embedding: the vector length asked for
    encoding_format: str = "float"  # embedding: what the client wants back, "float" | "base64"
    # Set by the pipeline right after parsing, so that formats stay pure:
    now: float = 0.0  # wall clock, epoch seconds (`created` timestamps)
    id_seed: str = ""  # hex, unique per request: every id a format makes derives from it
    # What a format dropped or ignored while parsing; the pipeline logs it (debug).
    warnings: list[str] = field(default_factory=list)
    ids_made: int = field(default=0, compare=False)  # by new_id, so that each id differs

    def new_id(self, prefix: str) -> str:
        """`prefix` + the request's seed + a counter: unique within the request
        (the counter) and across requests (the seed), with no randomness here."""
        self.ids_made += 1
        return f"{prefix}{self.id_seed}{self.ids_made:x}"

    @property
    def prompt(self) -> str:
        """A completion's prompt: the text of its messages, in order."""
        return "".join(m.text for m in self.messages)

    @property
    def inputs(self) -> list[str]:
        """An embedding request's texts, one per message."""
        return [m.text for m in self.messages]

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user" and message.text:
                return message.text
        return ""


@dataclass
class Response:
    """A complete (non-streamed, or reassembled) reply."""

    id: str
    model: str
    content: list[Part]
    stop_reason: str = "end_turn"
    usage: Usage = field(default_factory=Usage)
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join([p.text for p in self.content if isinstance(p, Text)])

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [p for p in self.content if isinstance(p, ToolCall)]


def completion_request(model: str, prompt: str, **fields: Any) -> Request:
    """A text-completion request (any other Request field by keyword)."""
    return Request(model=model, messages=[Message("user", [Text(prompt)])], kind=COMPLETION, **fields)


def embedding_request(model: str, inputs: list[str], **fields: Any) -> Request:
    return Request(model=model, messages=[Message("user", [Text(t)]) for t in inputs], kind=EMBEDDING, **fields)


@dataclass
class Embeddings:
    """An embeddings reply: one vector per input, in input order."""

    model: str
    vectors: list[list[float]]
    usage: Usage = field(default_factory=Usage)
    # Ollama's timings (nanoseconds: total_duration, load_duration) when the upstream sent them.
    durations: dict[str, int] = field(default_factory=dict)


# --- stream events -------------------------------------------------------------
# A decoder turns upstream bytes into these; an encoder turns them into client
# bytes. Tool calls are keyed by `index` (their order in the reply).


@dataclass
class MessageStart:
    id: str
    model: str
    usage: Usage | None = None  # Anthropic sends input tokens up front


@dataclass
class TextDelta:
    text: str


@dataclass
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass
class ToolCallDelta:
    index: int
    arguments: str


@dataclass
class OpaqueBlock:
    """A whole opaque block (e.g. Anthropic thinking) seen in a stream."""

    part: Opaque


@dataclass
class UsageUpdate:
    usage: Usage


@dataclass
class Stop:
    stop_reason: str
    stop_sequence: str | None = None


@dataclass
class StreamError:
    message: str
    status: int = 502
    kind: str = "api_error"


StreamEvent = Union[
    MessageStart, TextDelta, ToolCallStart, ToolCallDelta, OpaqueBlock, UsageUpdate, Stop, StreamError
]


class ResponseCollector:
    """Folds stream events into a Response, for logs and non-stream replies."""

    def __init__(self, model: str = "") -> None:
        self.id = ""
        self.model = model
        self.parts: list[Part] = []
        self._pieces: list[str] = []  # text deltas of the open text part, joined once
        self._arg_pieces: dict[int, list[str]] = {}
        self.calls: dict[int, ToolCall] = {}
        self.usage = Usage()
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.error: StreamError | None = None

    def add(self, event: StreamEvent) -> None:
        # Deltas are collected in lists: `part.text += delta` would copy the
        # whole text for every delta (quadratic on long replies).
        if event.__class__ is TextDelta:  # the commonest, tested without a call
            parts = self.parts
            if not parts or parts[-1].__class__ is not Text:
                self._close_text()
                parts.append(Text(""))
            self._pieces.append(event.text)
        elif isinstance(event, ToolCallDelta):
            if event.index in self.calls:
                self._arg_pieces[event.index].append(event.arguments)
        elif isinstance(event, ToolCallStart):
            self._close_text()
            call = ToolCall(event.id, event.name, "")
            self.calls[event.index] = call
            self._arg_pieces[event.index] = []
            self.parts.append(call)
        elif isinstance(event, OpaqueBlock):
            self._close_text()
            self.parts.append(event.part)
        elif isinstance(event, UsageUpdate):
            self.usage.merge(event.usage)
        elif isinstance(event, MessageStart):
            self.id = event.id or self.id
            self.model = event.model or self.model
            if event.usage:
                self.usage.merge(event.usage)
        elif isinstance(event, Stop):
            self.stop_reason = event.stop_reason
            self.stop_sequence = event.stop_sequence
        elif isinstance(event, StreamError):
            self.error = event

    def _close_text(self) -> None:
        if self._pieces:
            text = self.parts[-1] if self.parts and isinstance(self.parts[-1], Text) else None
            if text is not None:
                text.text += "".join(self._pieces)
            self._pieces = []

    def response(self) -> Response:
        """The reply so far (callable more than once, e.g. after a failure)."""
        self._close_text()
        for index, call in self.calls.items():
            call.arguments += "".join(self._arg_pieces[index])
            self._arg_pieces[index] = []
            if not call.arguments:
                call.arguments = "{}"
        return Response(
            id=self.id,
            model=self.model,
            content=self.parts,
            stop_reason=self.stop_reason or "end_turn",
            usage=self.usage,
            stop_sequence=self.stop_sequence,
        )


def response_events(response: Response) -> list[StreamEvent]:
    """The stream events that carry a complete reply, in order."""
    events: list[StreamEvent] = [MessageStart(response.id, response.model)]
    index = 0
    for part in response.content:
        if isinstance(part, Text):
            if part.text:
                events.append(TextDelta(part.text))
        elif isinstance(part, ToolCall):
            events.append(ToolCallStart(index, part.id, part.name))
            if part.arguments:
                events.append(ToolCallDelta(index, part.arguments))
            index += 1
        elif isinstance(part, Opaque):
            events.append(OpaqueBlock(part))
    events.append(UsageUpdate(response.usage))
    events.append(Stop(response.stop_reason, response.stop_sequence))
    return events


def part_to_json(part: Part) -> dict[str, Any]:
    """A part as plain JSON, for logs and events."""
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        out: dict[str, Any] = {"type": "image", "media_type": part.media_type}
        if part.url:
            out["url"] = part.url
        else:
            out["bytes"] = len(part.data or "") * 3 // 4  # the image itself is not logged
        return out
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "arguments": part.arguments}
    if isinstance(part, ToolResult):
        return {
            "type": "tool_result",
            "tool_use_id": part.tool_call_id,
            "content": part.text,
            "is_error": part.is_error,
        }
    return {"type": part.data.get("type", "opaque"), "format": part.format}


def message_to_json(message: Message) -> dict[str, Any]:
    """Plain-text messages log as a string (the original's shape); others as parts."""
    if all([isinstance(p, Text) for p in message.content]):  # a list: no generator resumed per part
        return {"role": message.role, "content": message.text}
    return {"role": message.role, "content": [part_to_json(p) for p in message.content]}


def response_to_json(response: Response | Embeddings) -> dict[str, Any]:
    if isinstance(response, Embeddings):  # the vectors are not logged, only their shape
        return {
            "model": response.model,
            "count": len(response.vectors),
            "dimensions": len(response.vectors[0]) if response.vectors else 0,
            "usage": response.usage.to_json(),
        }
    out: dict[str, Any] = {
        "id": response.id,
        "model": response.model,
        "content": response.text,
        "stop_reason": response.stop_reason,
        "usage": response.usage.to_json(),
    }
    calls = response.tool_calls
    if calls:
        out["tool_calls"] = [part_to_json(c) for c in calls]
    return out
