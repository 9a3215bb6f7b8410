"""Router rules: which provider, and which model, serves a request.

`decisions` yields every acceptable (provider, model) in preference order:
the first one is the route, each later one a fallback for when the previous
provider failed before anything reached the client. Rules are tried in config
order; inside a rule the order is the rule's own ranking (cheapest first,
fastest first, best score first, random draws without replacement). Only
active providers (those in `config.providers`) are ever yielded.

Pure: the caller passes the discovered model sets, the random generator and
the live measurements (`measure.Measurements`, or any mapping of provider name
to `measure.Stats`) that `measured` rules and `least_busy` rank by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Iterable, Iterator, Mapping, Protocol

from . import errors
from .canonical import Request
from .config import Config, Provider, Rule
from .measure import MIN_SAMPLES, Stats

FORCED = "forced"  # rule_type of a decision made by a plugin, not by a rule


@dataclass(frozen=True)
class Decision:
    provider: Provider
    model: str
    rule_index: int  # index in config.routers; -1 when forced by a plugin
    rule_type: str  # the rule's type, or FORCED


class UnknownProvider(errors.RouterError):
    """A plugin forced providers of which none is active."""

    status = 500
    code = "unknown_provider"


def _candidates(rule: Rule, active: Mapping[str, Provider]) -> list[str]:
    """The rule's active provider names: its list in order, or all in config order."""
    names = rule.providers or tuple(active)
    return [n for n in dict.fromkeys(names) if n in active]


def _worst_last(value: float) -> tuple[bool, float]:
    # NaN (possible from a TOML `nan`) never wins; ties keep candidate order
    # because sorted() is stable.
    return (math.isnan(value), value)


def _ranked(names: list[str], metric: Mapping[str, float], *, highest: bool) -> list[str]:
    sign = -1.0 if highest else 1.0
    return sorted((n for n in names if n in metric), key=lambda n: _worst_last(sign * metric[n]))


def _discovered_name(model: str, names: Collection[str]) -> str | None:
    if model in names:
        return model
    # Ollama lists untagged pulls as "<name>:latest" and serves them by either name.
    if ":" not in model and f"{model}:latest" in names:
        return f"{model}:latest"
    return None


class Rng(Protocol):
    """What the random rule draws with; the caller owns the randomness
    (app.py passes a random.Random)."""

    def randrange(self, stop: int, /) -> int: ...


class Live(Protocol):
    """The live measurements the measured and least_busy rules rank by
    (a measure.Measurements, or any mapping of provider name to Stats)."""

    def get(self, provider: str) -> Stats | None: ...


def _draw(pool: list, rng: Rng) -> Iterator:
    """Uniform draws without replacement, made only as the caller asks for more."""
    pool = list(pool)
    while pool:
        yield pool.pop(rng.randrange(len(pool)))


def _rule_decisions(
    rule: Rule,
    req: Request,
    active: Mapping[str, Provider],
    discovered: Mapping[str, Collection[str]],
    rng: Rng,
    measured: Live,
) -> Iterator[tuple[str, str]]:
    """(provider name, model) pairs for one rule, best first; names are active."""
    model = req.model
    target = rule.rewrite_model or model
    kind = rule.type
    if kind in ("prefix", "tag", "discover") and rule.provider not in active:
        return
    if kind == "prefix":
        prefix = rule.model_prefix or ""
        if model.startswith(prefix):
            if rule.rewrite_model is None and rule.strip_prefix:
                target = model[len(prefix):]
            if target:
                yield rule.provider, target
    elif kind == "tag":
        if rule.tag in req.tags:
            yield rule.provider, target
    elif kind == "discover":
        found = _discovered_name(model, discovered.get(rule.provider, ()))
        if found is not None:
            yield rule.provider, found
    elif kind == "random":
        if rule.candidates:
            pool = [(c.provider, c.model) for c in rule.candidates if c.provider in active]
            yield from _draw(pool, rng)
        else:
            names = rule.providers or tuple(active)
            pool = [n for n in names if n in active]  # repeats weight the draw
            seen: set[str] = set()
            for name in _draw(pool, rng):
                if name not in seen:
                    seen.add(name)
                    yield name, target
    else:
        names = _candidates(rule, active)
        # Ranked once, when the rule is reached: its fallbacks keep that order.
        if kind == "least_busy":
            order = sorted(names, key=lambda n: _in_flight(measured.get(n)))
        elif rule.measured:
            order = _live_order(rule, names, active, measured)
        else:
            order = _metric_order(rule, names, active)
        for name in order:
            yield name, target if kind == "fallback" else model


def _in_flight(stats: Stats | None) -> int:
    return 0 if stats is None else stats.in_flight


# The live figure of each measured rule, the declared one that stands in for
# it until samples exist, and whether higher is better.
_LIVE = {
    "latency": ("ttft_ms", "latency_ms", False),
    "throughput": ("tokens_per_sec", "throughput_tokens_per_sec", True),
}


def _live_order(rule: Rule, names: list[str], active: Mapping[str, Provider], measured: Live) -> list[str]:
    """Candidates with fewer than MIN_SAMPLES samples first (list order), so
    that each gets measured; then the measured ones, best live figure first.
    Thresholds apply to the live figure, or to the declared one until then."""
    live_key, declared_key, highest = _LIVE[rule.type]
    fresh: list[str] = []
    figure: dict[str, float] = {}
    for name in names:
        stats = measured.get(name)
        value = None
        if stats is None or stats.samples < MIN_SAMPLES:
            fresh.append(name)
        else:
            value = getattr(stats, live_key)  # None: measured, but the upstream reports no usage
        if value is None:
            value = getattr(active[name], declared_key)
        if value is not None:
            figure[name] = value
    passing = [n for n in names if n not in figure or _within(rule, figure[n])]
    known = [n for n in passing if n not in fresh]
    return [n for n in passing if n in fresh] + _ranked(known, figure, highest=highest) + [n for n in known if n not in figure]


def _within(rule: Rule, value: float) -> bool:
    if rule.max_latency_ms is not None and not value <= rule.max_latency_ms:
        return False
    return rule.min_tokens_per_sec is None or value >= rule.min_tokens_per_sec


def _metric_order(rule: Rule, names: list[str], active: Mapping[str, Provider]) -> list[str]:
    kind = rule.type
    if kind == "price":
        # Undeclared cost counts as free, as in the original (see docs/routers.md).
        cost = {n: _num(active[n].cost_per_1m_tokens) for n in names}
        cap = rule.max_cost_per_1m_tokens
        return _ranked([n for n in names if cap is None or cost[n] <= cap], cost, highest=False)
    if kind == "latency":
        ms = {n: active[n].latency_ms for n in names if active[n].latency_ms is not None}
        cap = rule.max_latency_ms
        return _ranked([n for n in names if cap is None or (n in ms and ms[n] <= cap)], ms, highest=False)
    if kind == "throughput":
        tps = {
            n: active[n].throughput_tokens_per_sec
            for n in names
            if active[n].throughput_tokens_per_sec is not None
        }
        low = rule.min_tokens_per_sec
        return _ranked([n for n in names if low is None or (n in tps and tps[n] >= low)], tps, highest=True)
    if kind == "fallback":
        bias = rule.quality_bias
        score = {
            n: bias * _num(active[n].quality) - (1 - bias) * _num(active[n].cost_per_1m_tokens)
            for n in names
        }
        return _ranked(names, score, highest=True)
    raise ValueError(f"unknown router type {kind!r}")


def _num(value: float | None) -> float:
    return 0.0 if value is None else value


def _active(config: Config) -> dict[str, Provider]:
    # dict keeps config order; a repeated name keeps its first position, last config.
    return {p.name: p for p in config.providers}


def _forced(req: Request, active: Mapping[str, Provider]) -> list[Decision]:
    names = list(req.forced_providers) or ([req.forced_provider] if req.forced_provider else [])
    chosen = [Decision(active[n], req.model, -1, FORCED) for n in dict.fromkeys(names) if n in active]
    if not chosen:
        listed = ", ".join(f"'{n}'" for n in names)
        raise UnknownProvider(
            f"a plugin forced provider {listed}, but no active provider has that name "
            f"(active providers: {', '.join(active) or 'none'})"
        )
    return chosen


def decisions(
    req: Request,
    config: Config,
    discovered: Mapping[str, Collection[str]],
    rng: Rng,
    measured: Live | None = None,
) -> Iterator[Decision]:
    """Yield the routes for `req`, best first, lazily.

    `req.tags` must already hold the classifier tags. When a plugin forced
    providers (`req.forced_providers`, else `req.forced_provider`), the rules
    are skipped: the active ones among them are yielded in order with
    `req.model`; inactive names are skipped, and if none is active
    `UnknownProvider` is raised. When no rule yields anything, `errors.NoRoute`
    is raised (on the first `next()`); running out after at least one
    decision just ends the iteration.
    """
    active = _active(config)
    if req.forced_providers or req.forced_provider:
        yield from _forced(req, active)
        return
    routed = False
    live = measured if measured is not None else {}
    for index, rule in enumerate(config.routers):
        for name, model in _rule_decisions(rule, req, active, discovered, rng, live):
            routed = True
            yield Decision(active[name], model, index, rule.type)
    if not routed:
        raise errors.NoRoute(f"no provider configured for model '{req.model}'", param="model")


def available_models(config: Config, discovered: Mapping[str, Collection[str]]) -> list[tuple[str, str]]:
    """(model id, provider name) pairs a client can ask for, for GET /v1/models.

    Order: models declared on providers (config order), then rule targets
    (rewrite targets and random candidates, rule order), then discovered
    models (provider config order, names sorted). Only active providers;
    each pair appears once.
    """
    active = _active(config)
    pairs: list[tuple[str, str]] = []
    for p in active.values():
        pairs.extend((m, p.name) for m in p.models)
    for rule in config.routers:
        pairs.extend(_rule_targets(rule, active))
    for name in active:
        pairs.extend((m, name) for m in sorted(discovered.get(name, ())))
    return list(dict.fromkeys(pairs))


def _rule_targets(rule: Rule, active: Mapping[str, Provider]) -> Iterable[tuple[str, str]]:
    if rule.type == "random" and rule.candidates:
        return [(c.model, c.provider) for c in rule.candidates if c.provider in active]
    if not rule.rewrite_model:
        return []
    if rule.type in ("prefix", "tag"):
        return [(rule.rewrite_model, rule.provider)] if rule.provider in active else []
    if rule.type in ("random", "fallback"):
        return [(rule.rewrite_model, n) for n in _candidates(rule, active)]
    return []


def check_rules(config: Config) -> list[str]:
    """Startup warnings about rules that will not behave as their author may think."""
    active = _active(config)
    out = []
    for index, rule in enumerate(config.routers):
        where = f"routers[{index}] ({rule.type})"
        single = [rule.provider] if rule.type in ("prefix", "tag", "discover") else []
        listed = [c.provider for c in rule.candidates] if rule.type == "random" else list(rule.providers)
        for name in dict.fromkeys(single + listed):
            if name not in active:
                out.append(f"{where}: provider '{name}' is not active (unknown, or dropped at startup); skipped")
        names = _candidates(rule, active)
        if rule.type == "price":
            free = [n for n in names if active[n].cost_per_1m_tokens is None]
            if free:
                out.append(f"{where}: {', '.join(free)} declare no cost_per_1m_tokens and count as free")
        metric = {"latency": "latency_ms", "throughput": "throughput_tokens_per_sec"}.get(rule.type)
        if metric and not rule.measured and names and all(getattr(active[n], metric) is None for n in names):
            out.append(f"{where}: no candidate declares {metric}; this rule never matches")
    return out
