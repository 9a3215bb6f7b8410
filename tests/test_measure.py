"""Live measurements (llmrouter/measure.py) and the rules that rank by them:
`measured = true` latency/throughput rules and `least_busy`. Pure: the
measurements are injected."""

from __future__ import annotations

import random

import pytest

from llmrouter import config as config_module
from llmrouter import errors, events
from llmrouter.canonical import Message, Request, Text
from llmrouter.config import Config, Provider, Rule
from llmrouter.measure import ALPHA, MAX_MODELS, Measurements
from llmrouter.router import decisions

from harness import make_config


def prov(name: str, **metrics) -> Provider:
    return Provider(name=name, format="openai", base_url=f"http://{name}.test", **metrics)


def order(cfg: Config, measured: Measurements) -> list[str]:
    r = Request(model="m", messages=[Message("user", [Text("hi")])])
    return [d.provider.name for d in decisions(r, cfg, {}, random.Random(0), measured)]


def record(*attempts: dict, stream: bool = False, output_tokens: int | None = None) -> dict:
    usage = {"input_tokens": 3, "output_tokens": output_tokens} if output_tokens is not None else None
    return {"stream": stream, "usage": usage, "attempts": list(attempts)}


def ok(provider: str, duration_ms: int, first_token_ms: int | None = None, model: str = "m") -> dict:
    return {"provider": provider, "model": model, "outcome": "ok", "status": 200, "duration_ms": duration_ms, "first_token_ms": first_token_ms}


def failed(provider: str, model: str = "m") -> dict:
    return {"provider": provider, "model": model, "outcome": "error", "status": 502, "duration_ms": 5, "first_token_ms": None}


def with_samples(**figures: tuple[int, int]) -> Measurements:
    """provider=(time to first token ms, output tokens over a 1 s reply): one streamed sample each."""
    m = Measurements()
    for name, (ttft, tokens) in figures.items():
        m.observe(record(ok(name, 1000, ttft), stream=True, output_tokens=tokens))
    return m


# --- the measurements ----------------------------------------------------------------


def test_averages_are_exponentially_weighted_and_per_model():
    m = Measurements()
    m.observe(record(ok("a", 1000, 100), stream=True, output_tokens=50))
    m.observe(record(ok("a", 2000, 300, model="big"), stream=True, output_tokens=50))
    a = m.get("a")
    assert a.samples == 2
    assert a.ttft_ms == pytest.approx(100 + ALPHA * (300 - 100))
    assert a.duration_ms == pytest.approx(1000 + ALPHA * (2000 - 1000))
    assert a.tokens_per_sec == pytest.approx(50 + ALPHA * (25 - 50))
    assert a.models["m"].ttft_ms == 100 and a.models["big"].ttft_ms == 300
    assert a.error_rate == 0


def test_errors_move_the_error_rate_only_and_abandoned_attempts_count_nothing():
    m = Measurements()
    assert m.observe(record(failed("a"), ok("b", 400), output_tokens=8)) == ["a", "b"]
    # Still reported: its in-flight count changed.
    assert m.observe(record({"provider": "a", "model": "m", "outcome": "pending", "status": None, "duration_ms": 0})) == ["a"]
    a, b = m.get("a"), m.get("b")
    assert (a.attempts, a.samples, a.error_rate, a.ttft_ms) == (1, 0, 1.0, None)
    # Without a stream the first token comes with the whole reply.
    assert (b.samples, b.error_rate, b.ttft_ms, b.tokens_per_sec) == (1, 0.0, 400, 20.0)


def test_in_flight_counts_attempts_started_and_not_ended():
    m = Measurements()
    m.started("a", "x")
    m.started("a", "y")
    assert m.get("a").in_flight == 2 and m.get("a").models["x"].in_flight == 1
    m.ended("a", "x")
    assert m.get("a").in_flight == 1 and m.get("a").models["x"].in_flight == 0
    m.ended("a", "y")
    m.ended("a", "y")  # never below zero
    assert m.get("a").in_flight == 0 and m.get("a").models["y"].in_flight == 0


def test_the_measured_event_carries_a_providers_figures_and_parses():
    m = with_samples(a=(120, 30))
    event = events.measured(5, "a", m.get("a").to_json())
    assert events.parse(events.dumps(event)) == event
    assert event == {"type": "measured", "v": 1, "ts_ms": 5, "provider": "a", "samples": 1, "in_flight": 0,
                     "ttft_ms": 120, "duration_ms": 1000, "tokens_per_sec": 30.0, "error_rate": 0.0}
    assert m.to_json()["a"]["models"]["m"]["samples"] == 1


def test_models_kept_per_provider_are_bounded():
    m = Measurements()
    for i in range(MAX_MODELS + 10):
        m.observe(record(ok("a", 10, model=f"model-{i}")))
    models = m.get("a").models
    assert len(models) == MAX_MODELS and f"model-{MAX_MODELS + 9}" in models and "model-0" not in models


# --- measured latency / throughput rules -----------------------------------------------

LATENCY = Config(
    providers=(prov("slow", latency_ms=50.0), prov("fast", latency_ms=900.0), prov("mid")),
    routers=(Rule("latency", providers=("slow", "fast", "mid"), measured=True),),
)


def test_unmeasured_candidates_come_first_in_list_order():
    assert order(LATENCY, Measurements()) == ["slow", "fast", "mid"]
    # Measured ones follow the unmeasured, best live figure first.
    assert order(LATENCY, with_samples(slow=(800, 10))) == ["fast", "mid", "slow"]


def test_measured_candidates_rank_by_live_figures_not_declared_ones():
    assert order(LATENCY, with_samples(slow=(800, 10), fast=(100, 10), mid=(300, 10))) == ["fast", "mid", "slow"]
    throughput = Config(providers=LATENCY.providers, routers=(Rule("throughput", measured=True),))
    assert order(throughput, with_samples(slow=(800, 90), fast=(100, 10), mid=(300, 40))) == ["slow", "mid", "fast"]


def test_thresholds_apply_to_live_figures_and_to_declared_ones_until_measured():
    capped = Config(providers=LATENCY.providers, routers=(Rule("latency", max_latency_ms=500.0, measured=True),))
    # Unmeasured: "fast" declares 900 ms (beyond the cap), "mid" declares nothing (tried).
    assert order(capped, Measurements()) == ["slow", "mid"]
    # Measured: "fast" now answers in 100 ms, "slow" in 800 ms.
    assert order(capped, with_samples(slow=(800, 10), fast=(100, 10), mid=(300, 10))) == ["fast", "mid"]
    floor = Config(providers=LATENCY.providers, routers=(Rule("throughput", min_tokens_per_sec=20.0, measured=True),))
    assert order(floor, with_samples(slow=(1, 90), fast=(1, 10), mid=(1, 40))) == ["slow", "mid"]


def test_ties_keep_list_order_and_a_measured_rule_with_no_passing_candidate_passes():
    assert order(LATENCY, with_samples(slow=(200, 10), fast=(200, 10), mid=(200, 10))) == ["slow", "fast", "mid"]
    cfg = Config(providers=LATENCY.providers, routers=(Rule("latency", max_latency_ms=10.0, measured=True), Rule("fallback", providers=("mid",))))
    assert order(cfg, with_samples(slow=(800, 10), fast=(100, 10), mid=(300, 10))) == ["mid"]


def test_a_measured_provider_whose_upstream_reports_no_usage_ranks_last():
    m = with_samples(slow=(800, 10), mid=(300, 40))
    m.observe(record(ok("fast", 1000, 5), stream=True))  # no usage: no tokens/s figure
    throughput = Config(providers=(prov("slow"), prov("fast"), prov("mid")), routers=(Rule("throughput", measured=True),))
    assert order(throughput, m) == ["mid", "slow", "fast"]


def test_without_measured_the_declared_figures_rank_as_before():
    cfg = Config(providers=LATENCY.providers, routers=(Rule("latency"),))
    assert order(cfg, with_samples(slow=(800, 10), fast=(100, 10), mid=(300, 10))) == ["slow", "fast"]


# --- least_busy ------------------------------------------------------------------------

BUSY = Config(providers=(prov("a"), prov("b"), prov("c")), routers=(Rule("least_busy", providers=("a", "b", "c")),))


def test_least_busy_picks_the_fewest_in_flight_ties_by_list_order():
    m = Measurements()
    assert order(BUSY, m) == ["a", "b", "c"]
    for name, count in (("a", 2), ("b", 1), ("c", 1)):
        for _ in range(count):
            m.started(name, "m")
    assert order(BUSY, m) == ["b", "c", "a"]
    m.ended("a", "m")
    m.ended("a", "m")
    assert order(BUSY, m) == ["a", "b", "c"]


def test_least_busy_ranks_once_so_fallbacks_keep_that_order():
    m = Measurements()
    m.started("a", "m")
    routes = decisions(Request(model="m", messages=[]), BUSY, {}, random.Random(0), m)
    assert next(routes).provider.name == "b"
    m.started("b", "m")  # the first attempt is now in flight
    assert [d.provider.name for d in routes] == ["c", "a"]


def test_rules_without_measurements_work_as_before():
    assert order(BUSY, None) == ["a", "b", "c"]
    with pytest.raises(errors.NoRoute):
        order(Config(providers=(prov("a"),), routers=()), Measurements())


# --- config --------------------------------------------------------------------------


def test_config_accepts_measured_and_least_busy_and_refuses_misplaced_keys():
    base = '[[providers]]\nname = "a"\nformat = "openai"\nbase_url = "http://a.test"\n'
    cfg = make_config(base + '[[routers]]\ntype = "latency"\nmeasured = true\n[[routers]]\ntype = "least_busy"\nproviders = ["a"]\n[metrics]\nmodel_label = true\n')
    assert cfg.routers[0].measured and cfg.routers[1].type == "least_busy" and cfg.metrics.model_label
    with pytest.raises(errors.ConfigError) as info:
        make_config(base + '[[routers]]\ntype = "price"\nmeasured = true\n[[routers]]\ntype = "least_busy"\nmeasured = "yes"\n[metrics]\nmodel_labels = true\n')
    problems = info.value.problems
    assert any("routers[0].measured: not used by 'price' rules" in p for p in problems)
    assert any("routers[1].measured: not used by 'least_busy' rules" in p for p in problems)
    assert any("metrics.model_labels: unknown key (did you mean 'model_label'?)" in p for p in problems)
    described = config_module.describe(cfg)
    assert "latency: fastest to answer (measured live) over all providers" in described
    assert "least_busy: fewest requests in flight over a" in described and "/metrics (with model labels)" in described
    with pytest.raises(errors.ConfigError, match=r"metrics.model_label: expected a boolean"):
        make_config(base + '[metrics]\nmodel_label = 1\n')
