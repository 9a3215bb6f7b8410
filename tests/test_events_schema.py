"""The event schema: the original's records still parse (SPEC 14.3), ours round-trip."""

from __future__ import annotations

import json

import pytest

from llmrouter import events

ORIGINAL_COMPLETE = (
    '{"type":"complete","id":0,"ts_ms":1781573245225,"provider":"ollama","requested_model":"llama3.1:8b",'
    '"sent_model":"llama3.1:8b","duration_ms":5978,"tags":[],"plugins":[],"system":null,'
    '"messages":[{"role":"user","content":"hi"}],"response":null,"error":null}'
)
ORIGINAL_START = '{"type":"start","id":1,"ts_ms":1781573328452,"model":"llama3.1:8b","in_flight":2}'


def test_router_event_complete_roundtrip():
    event = events.parse(ORIGINAL_COMPLETE)
    assert event["type"] == "complete" and event["id"] == 0 and event["provider"] == "ollama"


def test_router_event_start_roundtrip():
    event = events.parse(ORIGINAL_START)
    assert event["type"] == "start" and event["id"] == 1


def test_our_events_keep_the_original_field_names_and_round_trip():
    record = events.Record(7, "rid", "openai", requested_model="a", sent_model="b", provider="p", tags=["code"])
    record.attempts.append(events.Attempt("p", "b", "ok", 200, 12))
    produced = [
        events.start(7, 1, "a", 1, "rid", "openai", False),
        events.classified(7, 2, ["code"]),
        events.routed(7, 3, "p", "b", 1),
        record.complete(4, 5),
    ]
    original_fields = {
        "start": {"type", "id", "ts_ms", "model", "in_flight"},
        "classified": {"type", "id", "ts_ms", "tags"},
        "routed": {"type", "id", "ts_ms", "provider", "model"},
        "complete": set(json.loads(ORIGINAL_COMPLETE)),
    }
    for event in produced:
        text = events.dumps(event)
        assert "\n" not in text
        assert events.parse(text) == event
        assert original_fields[event["type"]] <= set(event)


@pytest.mark.parametrize(
    "text",
    ["[]", '{"id": 1}', '{"type": "start", "id": "1", "ts_ms": 1, "model": "m", "in_flight": 1}', '{"type": "dropped", "count": true}'],
)
def test_malformed_events_are_rejected(text):
    with pytest.raises(ValueError):
        events.parse(text)


def test_unknown_event_types_pass_through():
    assert events.parse('{"type": "breaker", "provider": "x"}')["type"] == "breaker"
