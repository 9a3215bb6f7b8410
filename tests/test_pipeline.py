"""The pure pipeline, driven by hand: every command it yields, no sockets, no event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness import make_config
from llmrouter import errors, events, formats
from llmrouter.canonical import Request
from llmrouter.commands import (
    AbortResponse,
    EndResponse,
    Log,
    OpenUpstream,
    Publish,
    ReadUpstream,
    ReadUpstreamBody,
    SendBody,
    StartResponse,
    UpstreamHead,
)
from llmrouter.pipeline import CLIENT_FORMATS, KIND_UPSTREAMS, Context, Exchange, handle

CONFIG = """
[[providers]]
name = "a"
format = "openai"
base_url = "http://a.invalid/v1"
cost_per_1m_tokens = 1.0
[[providers]]
name = "b"
format = "anthropic"
base_url = "http://b.invalid"
cost_per_1m_tokens = 2.0
[[routers]]
type = "price"
[classifiers.keyword]
enabled = true
[classifiers.keyword.tags]
code = ["python"]
"""

OPENAI_REPLY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()


class Playbook:
    """Steps a pipeline through every command it yields, in order, as
    mitmproxy's playbooks do: the test names each one — `publish` an event,
    `log` a line, `expect` (or `fail`) any other command, answering it as the
    driver would — and `finish` checks that the pipeline has ended. A command
    the test did not name is a failure, so no event or log line goes unchecked."""

    def __init__(self, body: dict[str, Any] | bytes, config_text: str = CONFIG, client_format: str = "openai", listened: bool = True) -> None:
        self.ctx = Context(config=make_config(config_text), clock_ms=lambda: 1000, monotonic=lambda: 0.0, new_seed=lambda: "5eed")
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.ex = Exchange(0, "req-1", client_format, {}, raw, events.Record(0, "req-1", client_format), listened=listened)
        self.gen = handle(self.ctx, self.ex)
        self.pending: Any = next(self.gen)
        self.done = False

    def _take(self, kind: type, reply: Any = None, throw: BaseException | None = None) -> Any:
        command = self.pending
        assert not self.done, f"expected {kind.__name__}, but the pipeline has ended"
        assert isinstance(command, kind), f"expected {kind.__name__}, got {command!r}"
        try:
            self.pending = self.gen.throw(throw) if throw else self.gen.send(reply)
        except StopIteration:
            self.done = True
        return command

    def expect(self, kind: type, reply: Any = None) -> Any:
        """The next command is a `kind`; `reply` is what the driver answers."""
        return self._take(kind, reply)

    def fail(self, kind: type, error: errors.RouterError) -> Any:
        """The next command is a `kind`, and the driver raises `error` for it."""
        return self._take(kind, throw=error)

    def publish(self, type: str, **fields: Any) -> dict[str, Any]:
        """The next command publishes a `type` event. Only the fields given are
        compared: the others (ids, times) are volatile."""
        event = self._take(Publish).event
        assert event["type"] == type, f"expected a {type!r} event, got {event!r}"
        assert {k: event.get(k) for k in fields} == fields, f"{type!r} event {event!r} differs from {fields!r}"
        return event

    def log(self, level: str, text: str) -> str:
        """The next command logs a line at `level` that contains `text`."""
        line = self._take(Log)
        assert (line.level, text in line.message) == (level, True), f"expected a {level} line with {text!r}, got {line!r}"
        return line.message

    def routed(self, provider: str, tags: list[str] | None = None) -> None:
        """The opening every routed request shares: start, classified, routed."""
        self.publish("start", model="m", request_id="req-1")
        self.publish("classified", tags=["code"] if tags is None else tags)
        self.publish("routed", provider=provider, attempt=1)

    def finish(self) -> None:
        assert self.done, f"the pipeline still yields {self.pending!r}"


BODY = {"model": "m", "messages": [{"role": "user", "content": "write python"}]}


def test_success_event_sequence_and_record():
    p = Playbook(BODY)
    p.routed("a")  # cheapest first
    opened = p.expect(OpenUpstream, UpstreamHead(200, []))
    assert opened.provider.name == "a"
    p.expect(ReadUpstreamBody, OPENAI_REPLY)
    start = p.expect(StartResponse)
    assert start.status == 200 and ("x-router-tags", "code") in start.headers
    body = p.expect(SendBody)
    assert body.data == OPENAI_REPLY  # same format: the upstream's bytes, untouched
    p.expect(EndResponse)
    p.finish()  # the `complete` event is the driver's, once the response is out
    rec = p.ex.record
    assert (rec.status, rec.provider, rec.tags, rec.error) == (200, "a", ["code"], None)
    assert rec.response["content"] == "hello" and rec.usage == {"input_tokens": 3, "output_tokens": 1}


def test_with_nobody_listening_no_event_is_built_and_the_record_is_the_same():
    records = []
    for listened in (True, False):
        p = Playbook(BODY, listened=listened)
        if listened:
            p.routed("a")
        p.expect(OpenUpstream, UpstreamHead(200, []))  # nobody listening: the first command
        p.expect(ReadUpstreamBody, OPENAI_REPLY)
        p.expect(StartResponse)
        p.expect(SendBody)
        p.expect(EndResponse)
        p.finish()
        records.append(p.ex.record.complete(1000, 5))
    assert records[0] == records[1] and records[1]["tags"] == ["code"] and records[1]["provider"] == "a"


def test_falls_back_before_the_first_byte():
    p = Playbook(BODY)
    p.routed("a")
    first = p.fail(OpenUpstream, errors.UpstreamConnectError("refused"))
    assert first.provider.name == "a"
    p.log("warning", "request req-1: refused; trying provider 'b'")
    p.publish("routed", provider="b", attempt=2)
    second = p.expect(OpenUpstream, UpstreamHead(200, []))
    assert second.provider.name == "b" and second.call.path == "/v1/messages"
    p.expect(ReadUpstreamBody, json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}).encode())
    p.expect(StartResponse)
    reply = json.loads(p.expect(SendBody).data)
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"] == "hi"
    p.expect(EndResponse)
    p.finish()
    assert [(a.provider, a.outcome) for a in p.ex.record.attempts] == [("a", "error"), ("b", "ok")]


def test_non_retryable_error_is_not_retried():
    p = Playbook(BODY)
    p.routed("a")
    p.expect(OpenUpstream, UpstreamHead(400, [], b'{"error": {"message": "bad tools"}}'))
    start = p.expect(StartResponse)  # no log line, no second `routed`: the client's mistake is not retried
    assert start.status == 400
    assert "bad tools" in json.loads(p.expect(SendBody).data)["error"]["message"]
    p.expect(EndResponse)
    p.finish()
    assert len(p.ex.record.attempts) == 1


def test_no_fallback_after_the_stream_started():
    p = Playbook({**BODY, "stream": True})
    p.routed("a")
    p.expect(OpenUpstream, UpstreamHead(200, []))
    first = p.expect(ReadUpstream, b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"par"},"finish_reason":null}]}\n\n')
    assert first.ping == b""  # no keep-alive before the head
    p.expect(StartResponse)  # after the first frame (the first-chunk gate)
    p.expect(SendBody)
    assert p.fail(ReadUpstream, errors.UpstreamTimeout("no data")).ping == b": ping\n\n"  # once started, keep-alives
    error = p.expect(SendBody)
    assert b'"error"' in error.data and b"[DONE]" not in error.data
    p.expect(AbortResponse)
    p.finish()
    assert len(p.ex.record.attempts) == 1
    assert p.ex.record.error == "no data" and p.ex.record.response["content"] == "par"


def test_stream_failing_before_its_first_frame_falls_back():
    """First-chunk gate: the status line waits for the first frame, so a stall
    or an error event before it is a pre-stream failure with fallback."""
    p = Playbook({**BODY, "stream": True})
    p.routed("a")
    assert p.expect(OpenUpstream, UpstreamHead(200, [])).provider.name == "a"
    assert p.expect(ReadUpstream, b'data: {"id":"c","object":"chat.completion.chunk","crea').ping == b""  # no keep-alive before the head...
    assert p.expect(ReadUpstream, b'"created":1,').ping == b""  # ...nor after half a frame
    p.fail(ReadUpstream, errors.UpstreamTimeout("no first chunk"))
    p.log("warning", "request req-1: no first chunk; trying provider 'b'")
    p.publish("routed", provider="b", attempt=2)
    assert p.expect(OpenUpstream, UpstreamHead(200, [])).provider.name == "b"
    p.expect(ReadUpstream, b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n')
    start = p.expect(StartResponse)  # no "trying" line: no provider is left
    assert start.status == 529  # the error event's status, in the client's shape
    assert "busy" in json.loads(p.expect(SendBody).data)["error"]["message"]
    p.expect(EndResponse)
    p.finish()
    assert [a.outcome for a in p.ex.record.attempts] == ["error", "error"]
    assert p.ex.record.status == 529


def test_no_route_is_404_in_the_client_format():
    config = CONFIG.replace('type = "price"', 'type = "prefix"\nmodel_prefix = "x/"\nprovider = "a"')
    p = Playbook({**BODY, "max_tokens": 5}, config, client_format="anthropic")
    p.publish("start", model="m", client_format="anthropic")
    p.publish("classified", tags=["code"])  # and no `routed`
    start = p.expect(StartResponse)
    assert start.status == 404
    body = json.loads(p.expect(SendBody).data)
    assert body["type"] == "error" and "no provider configured for model 'm'" in body["error"]["message"]
    p.expect(EndResponse)
    p.finish()
    assert p.ex.record.error_code == "model_not_found"


def test_invalid_json_still_publishes_start():
    p = Playbook(b"{oops")
    p.publish("start", request_id="req-1")
    start = p.expect(StartResponse)
    assert start.status == 400
    p.expect(SendBody)
    p.expect(EndResponse)
    p.finish()


@pytest.mark.parametrize("attempts, expected", [(1, ["a"]), (2, ["a", "b"])])
def test_max_attempts_bounds_fallback(attempts, expected):
    p = Playbook(BODY, CONFIG + f"\n[server]\nmax_attempts = {attempts}\n")
    p.publish("start")
    p.publish("classified")
    for n, provider in enumerate(expected, 1):
        if n > 1:  # said once the next provider is known, not after the last attempt
            p.log("warning", f"request req-1: busy; trying provider '{provider}'")
        p.publish("routed", provider=provider, attempt=n)
        p.fail(OpenUpstream, errors.UpstreamStatusError("busy", status=503))
    start = p.expect(StartResponse)
    assert start.status == 503
    p.expect(SendBody)
    p.expect(EndResponse)
    p.finish()
    assert [a.provider for a in p.ex.record.attempts] == expected


def test_plugin_answer_skips_providers():
    config = CONFIG + '\n[plugins.pareto-router]\nenabled = true\ndefault_tier = "low"\n[plugins.pareto-router.tiers]\nlow = ["b", "a"]\n'
    p = Playbook(BODY, config)
    p.routed("b")  # the tier's order, not the price rule's
    opened = p.expect(OpenUpstream, UpstreamHead(503, [], b"{}"))
    assert opened.provider.name == "b"
    p.log("warning", "provider 'b' returned 503: {}; trying provider 'a'")
    p.publish("routed", provider="a", attempt=2)
    opened = p.expect(OpenUpstream, UpstreamHead(200, []))
    assert opened.provider.name == "a"
    p.expect(ReadUpstreamBody, OPENAI_REPLY)
    p.expect(StartResponse)
    p.expect(SendBody)
    p.expect(EndResponse)
    p.finish()
    assert "pareto-router" in p.ex.record.plugins


@pytest.mark.parametrize("text", ["\ud800 lone", "emoji 😀 and \u2028 separator"])
def test_translated_bodies_stay_valid_utf8_json(text):
    """A lone surrogate (valid JSON, invalid UTF-8) must not break a translated upstream body."""
    config = CONFIG.replace('type = "price"', 'type = "prefix"\nmodel_prefix = ""\nprovider = "b"')
    p = Playbook({"model": "m", "messages": [{"role": "user", "content": text}]}, config)
    p.routed("b", tags=[])
    opened = p.expect(OpenUpstream, UpstreamHead(200, []))
    sent = json.loads(opened.call.body.decode("utf-8"))
    assert sent["messages"][0]["content"] in (text, [{"type": "text", "text": text}])


def test_formats_get_the_time_and_ids_from_the_context_and_warnings_are_logged():
    """Formats read no clock and no randomness: the pipeline gives the request the
    time and an id seed, and logs at debug level what a format dropped."""
    body = {"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}
    p = Playbook(body, client_format="responses")
    p.publish("start", model="m", ts_ms=1000)
    p.log("debug", "dropped built-in tool 'web_search'")
    p.publish("classified", tags=[])
    p.publish("routed", provider="a", attempt=1)
    p.expect(OpenUpstream, UpstreamHead(200, []))
    p.expect(ReadUpstreamBody, OPENAI_REPLY)
    p.expect(StartResponse)
    reply = json.loads(p.expect(SendBody).data)
    p.expect(EndResponse)
    p.finish()
    assert reply["id"] == "resp_5eed1" and reply["created_at"] == 1  # clock_ms 1000
    assert reply["output"][0]["id"] == "msg_5eed2"


def test_every_format_module_fulfils_its_protocol():
    """The pipeline knows formats only through formats.ClientFormat / UpstreamFormat
    (Embedding* for embeddings, which never stream)."""
    req = Request("m", [])
    for name, module in CLIENT_FORMATS.items():
        if getattr(module, "KIND", "chat") == "embedding":
            assert isinstance(module, formats.EmbeddingClientFormat), name
            continue
        assert isinstance(module, formats.ClientFormat), name
        assert isinstance(module.Encoder(req, "m"), formats.ClientEncoder), name
    for kind, table in KIND_UPSTREAMS.items():
        for module in table.values():
            if kind == "embedding":
                assert isinstance(module, formats.EmbeddingUpstreamFormat), module.__name__
                continue
            assert isinstance(module, formats.UpstreamFormat), module.__name__
            assert isinstance(module.Decoder(req), formats.UpstreamDecoder), module.__name__


def test_a_stream_is_recorded_before_it_ends():
    """The attempt's outcome is settled before the terminating chunk goes
    out: a client that hangs up at that point (the driver then closes the
    pipeline) still leaves an `ok` attempt with its time to first token."""
    p = Playbook({**BODY, "stream": True})
    p.routed("a")
    p.expect(OpenUpstream, UpstreamHead(200, []))
    p.expect(ReadUpstream, b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    p.expect(StartResponse)
    p.expect(SendBody)  # the head's first frame alone
    p.expect(SendBody)  # then the rest of that read
    p.expect(ReadUpstream, b"")
    p.expect(EndResponse)
    (attempt,) = p.ex.record.attempts
    assert (attempt.outcome, attempt.status) == ("ok", 200) and attempt.first_token_ms is not None
    assert p.ex.record.status == 200
    p.finish()
