"""GET /metrics: the Prometheus text exposition format 0.0.4. Pure.

`Metrics.observe` takes each request's `complete` record (the log line);
`Metrics.render` writes every series, with the gauges' current values passed
in. The names, labels and outcome values are pinned in docs/metrics.md.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDPOINTS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "responses": "/v1/responses"}
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

# A record's error_code -> its outcome label (docs/metrics.md). Codes not
# listed (a newer one) count as "error".
OUTCOMES = {
    None: "ok",
    "invalid_request_error": "invalid_request",
    "payload_too_large": "invalid_request",
    "request_timeout": "invalid_request",
    "headers_too_large": "invalid_request",
    "unauthorized": "refused",
    "forbidden": "refused",
    "method_not_allowed": "refused",
    "unsupported_media_type": "refused",
    "model_not_found": "no_route",
    "unsupported_kind": "no_route",
    "unknown_provider": "no_route",
    "not_found": "no_route",
    "upstream_connect_error": "upstream_error",
    "upstream_status_error": "upstream_error",
    "upstream_protocol_error": "upstream_error",
    "upstream_error": "upstream_error",
    "upstream_timeout": "timeout",
    "circuit_open": "circuit_open",
    "client_disconnected": "client_closed",
    "plugin_error": "plugin_error",
    "internal_error": "internal_error",
}

Labels = tuple[tuple[str, str], ...]


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.sum += value
        self.count += 1


class Metrics:
    def __init__(self, model_label: bool = False) -> None:
        self.model_label = model_label
        self.requests: dict[Labels, int] = {}
        self.tokens: dict[Labels, int] = {}
        self.attempts: dict[Labels, int] = {}
        self.durations: dict[Labels, _Histogram] = {}
        self.ttfts: dict[Labels, _Histogram] = {}

    def observe(self, record: Mapping[str, Any]) -> None:
        """Counts one request from its `complete` record."""
        provider = record.get("provider") or ""  # "" = not routed
        by_provider = self._labels(provider, record.get("sent_model"))
        endpoint = record.get("endpoint") or ENDPOINTS.get(record.get("client_format") or "", "")  # older records lack it
        outcome = OUTCOMES.get(record.get("error_code"), "error")
        _add(self.requests, (*by_provider, ("endpoint", endpoint), ("outcome", outcome)), 1)
        duration = record.get("duration_ms")
        if isinstance(duration, (int, float)):
            _histogram(self.durations, by_provider, DURATION_BUCKETS).observe(duration / 1000)
        usage = record.get("usage") or {}
        for direction, key in (("in", "input_tokens"), ("out", "output_tokens")):
            count = usage.get(key)
            if isinstance(count, int) and count > 0:
                _add(self.tokens, (*by_provider, ("direction", direction)), count)
        for attempt in record.get("attempts") or ():
            result = attempt.get("outcome")
            result = result if result in ("ok", "error") else "abandoned"
            _add(self.attempts, (*self._labels(attempt.get("provider") or "", attempt.get("model")), ("result", result)), 1)
            if record.get("stream") and result == "ok" and isinstance(attempt.get("first_token_ms"), (int, float)):
                _histogram(self.ttfts, by_provider, TTFT_BUCKETS).observe(attempt["first_token_ms"] / 1000)

    def _labels(self, provider: str, model: Any) -> Labels:
        if self.model_label:
            return (("provider", provider), ("model", model if isinstance(model, str) else ""))
        return (("provider", provider),)

    def render(
        self, *, in_flight: int, circuits: Mapping[str, bool], events_dropped: int, gc_collections: Sequence[int] = (), gc_frozen: int = 0
    ) -> str:
        """All series; `circuits` maps every provider to whether its circuit is
        open; `gc_collections` counts the collector's runs per generation."""
        out: list[str] = []
        _family(out, "llmrouter_requests_total", "counter", "Requests by provider, endpoint and outcome.", self.requests.items())
        _histograms(out, "llmrouter_request_duration_seconds", "Time from a request's arrival to its end.", self.durations)
        _histograms(out, "llmrouter_time_to_first_token_seconds", "Streamed requests: from sending to the provider to its first chunk.", self.ttfts)
        _family(out, "llmrouter_tokens_total", "counter", "Tokens by provider and direction, as the upstream reported them.", self.tokens.items())
        _family(out, "llmrouter_attempts_total", "counter", "Provider attempts by result; more than one per request means fallbacks.", self.attempts.items())
        _family(out, "llmrouter_in_flight_requests", "gauge", "Requests in progress (chat, completions, embeddings).", [((), in_flight)])
        _family(out, "llmrouter_circuit_open", "gauge", "1 while a provider's circuit breaker is open or half-open.",
                [((("provider", name),), int(is_open)) for name, is_open in circuits.items()])
        _family(out, "llmrouter_events_dropped_total", "counter", "Events live feed subscribers lost because they fell behind.", [((), events_dropped)])
        # prometheus_client's name for the same counter, so existing dashboards find it.
        _family(out, "python_gc_collections_total", "counter", "Garbage collector runs per generation.",
                [((("generation", str(generation)),), count) for generation, count in enumerate(gc_collections)])
        _family(out, "llmrouter_gc_frozen_objects", "gauge", "Objects frozen out of garbage collection at startup.", [((), gc_frozen)])
        return "\n".join(out) + "\n"


def _add(series: dict[Labels, int], labels: Labels, amount: int) -> None:
    series[labels] = series.get(labels, 0) + amount


def _histogram(series: dict[Labels, _Histogram], labels: Labels, buckets: tuple[float, ...]) -> _Histogram:
    histogram = series.get(labels)
    if histogram is None:
        histogram = series[labels] = _Histogram(buckets)
    return histogram


def _family(out: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    out.extend(f"{name}{_label_text(labels)} {_number(value)}" for labels, value in samples)


def _histograms(out: list[str], name: str, help_text: str, series: Mapping[Labels, _Histogram]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} histogram")
    for labels, h in series.items():
        running = 0
        for bound, count in zip(h.bounds, h.counts):
            running += count
            out.append(f"{name}_bucket{_label_text((*labels, ('le', _number(bound))))} {running}")
        out.append(f"{name}_bucket{_label_text((*labels, ('le', '+Inf')))} {h.count}")
        out.append(f"{name}_sum{_label_text(labels)} {_number(h.sum)}")
        out.append(f"{name}_count{_label_text(labels)} {h.count}")


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in labels) + "}"


def escape(value: str) -> str:
    """A label value as the format requires: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
