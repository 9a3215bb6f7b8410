"""Live measurements of each provider (and provider + model). Pure.

What a provider does now, for the `measured = true` latency and throughput
rules, the `least_busy` rule and the live views:

- exponentially weighted moving averages (EWMA, weight ALPHA for the newest
  sample) of the time to first token, the total duration and the generated
  tokens per second of successful attempts;
- the error rate: the same average over attempts, 1 for a failed one, 0 for
  a successful one;
- the requests in flight (attempts started and not yet ended).

The pipeline counts attempts in and out (`started` / `ended`); samples come
from the request's `complete` record (`observe`), so every figure is derived
from what the log says. Times are passed in: nothing here reads a clock.

State is per provider name (`Measurements.providers`), so a config reload can
hand the entries of unchanged providers to a new `Measurements`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

ALPHA = 0.3  # weight of the newest sample: about the last 5 samples matter
MIN_SAMPLES = 1  # successful samples before a measured rule ranks a provider by them
MAX_MODELS = 64  # per provider; the least recently measured model is forgotten first


def _ewma(average: float | None, sample: float) -> float:
    return sample if average is None else average + ALPHA * (sample - average)


@dataclass
class Stats:
    """The figures of one provider, or of one model on one provider."""

    samples: int = 0  # successful attempts measured
    attempts: int = 0  # attempts that ended with an outcome (ok or error)
    ttft_ms: float | None = None
    duration_ms: float | None = None
    tokens_per_sec: float | None = None
    error_rate: float | None = None
    in_flight: int = 0

    def add(self, ok: bool, ttft_ms: float | None, duration_ms: float | None, tokens_per_sec: float | None) -> None:
        self.attempts += 1
        self.error_rate = _ewma(self.error_rate, 0.0 if ok else 1.0)
        if not ok:
            return
        self.samples += 1
        if ttft_ms is not None:
            self.ttft_ms = _ewma(self.ttft_ms, ttft_ms)
        if duration_ms is not None:
            self.duration_ms = _ewma(self.duration_ms, duration_ms)
        if tokens_per_sec is not None:
            self.tokens_per_sec = _ewma(self.tokens_per_sec, tokens_per_sec)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "in_flight": self.in_flight,
            "ttft_ms": _round(self.ttft_ms),
            "duration_ms": _round(self.duration_ms),
            "tokens_per_sec": _round(self.tokens_per_sec),
            "error_rate": None if self.error_rate is None else round(self.error_rate, 3),
        }


@dataclass
class ProviderStats(Stats):
    models: OrderedDict[str, Stats] = field(default_factory=OrderedDict)

    def model(self, name: str) -> Stats:
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = Stats()
            if len(self.models) > MAX_MODELS:
                # Model names come from clients: bound what they can make us keep.
                for old, entry in self.models.items():
                    if entry.in_flight == 0:
                        del self.models[old]
                        break
        self.models.move_to_end(name)
        return stats


class Measurements:
    def __init__(self, providers: dict[str, ProviderStats] | None = None) -> None:
        self.providers: dict[str, ProviderStats] = providers if providers is not None else {}

    def get(self, provider: str) -> ProviderStats | None:
        return self.providers.get(provider)

    def _stats(self, provider: str) -> ProviderStats:
        stats = self.providers.get(provider)
        if stats is None:
            stats = self.providers[provider] = ProviderStats()
        return stats

    def started(self, provider: str, model: str) -> None:
        stats = self._stats(provider)
        stats.in_flight += 1
        stats.model(model).in_flight += 1

    def ended(self, provider: str, model: str) -> None:
        stats = self._stats(provider)
        stats.in_flight = max(0, stats.in_flight - 1)
        per_model = stats.models.get(model)
        if per_model is not None:
            per_model.in_flight = max(0, per_model.in_flight - 1)

    def observe(self, record: dict[str, Any]) -> list[str]:
        """Takes the samples of a `complete` record's attempts; returns the
        providers it tried (their in-flight counts changed, at least)."""
        usage = record.get("usage") or {}
        out_tokens = usage.get("output_tokens")
        tried = []
        for attempt in record.get("attempts") or ():
            name = attempt.get("provider") or ""
            tried.append(name)
            outcome = attempt.get("outcome")
            if outcome not in ("ok", "error"):
                continue  # abandoned (the client left): it says nothing about the provider
            ok = outcome == "ok"
            duration = attempt.get("duration_ms")
            # Without a stream, the first token arrives with the whole reply.
            # An embedding has no tokens to generate: its quick reply would
            # flatter the provider's time to first token for chat routing.
            if record.get("kind") == "embedding":
                ttft = None
            else:
                ttft = attempt.get("first_token_ms") if record.get("stream") else duration
            tps = out_tokens / (duration / 1000) if ok and out_tokens and duration else None
            stats = self._stats(name)
            stats.add(ok, ttft, duration, tps)
            stats.model(attempt.get("model") or "").add(ok, ttft, duration, tps)
        return list(dict.fromkeys(tried))

    def to_json(self) -> dict[str, Any]:
        out = {name: stats.to_json() for name, stats in self.providers.items()}
        for name, stats in self.providers.items():
            out[name]["models"] = {m: s.to_json() for m, s in stats.models.items()}
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
