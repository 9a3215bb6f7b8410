"""Router rules (SPEC 4 and 14.5): each rule's decision, its fallback order,
active-provider filtering, discovery matching, forced providers and /v1/models."""

from __future__ import annotations

import itertools
import random
import tomllib

import pytest

from llmrouter import config as config_module
from llmrouter import errors
from llmrouter.canonical import Message, Request, Text
from llmrouter.config import Candidate, Config, Provider, Rule
from llmrouter.router import FORCED, Decision, UnknownProvider, available_models, check_rules, decisions


def prov(name: str, fmt: str = "openai", **metrics) -> Provider:
    return Provider(name=name, format=fmt, base_url=f"http://{name}.test", **metrics)


def req(model: str = "test-model", tags=(), **kw) -> Request:
    return Request(model=model, messages=[Message("user", [Text("hi")])], tags=list(tags), **kw)


def routes(cfg: Config, r: Request | str = "test-model", discovered=None, seed: int = 0) -> list[tuple[str, str]]:
    r = req(r) if isinstance(r, str) else r
    return [(d.provider.name, d.model) for d in decisions(r, cfg, discovered or {}, random.Random(seed))]


def first(cfg: Config, r: Request | str = "test-model", discovered=None, seed: int = 0) -> tuple[str, str] | None:
    r = req(r) if isinstance(r, str) else r
    try:
        d = next(decisions(r, cfg, discovered or {}, random.Random(seed)))
    except errors.NoRoute:
        return None
    return d.provider.name, d.model


# --- SPEC 14.5 ------------------------------------------------------------------

VISION_CONFIG = Config(
    providers=(
        prov("local", cost_per_1m_tokens=0.0, quality=40.0),
        prov("vision-provider", cost_per_1m_tokens=5.0, quality=80.0),
    ),
    routers=(
        Rule("tag", provider="vision-provider", tag="vision", rewrite_model="vision-model"),
        Rule("tag", provider="vision-provider", tag="video", rewrite_model="video-model"),
        Rule("fallback"),
    ),
)

DISCOVER_CONFIG = Config(
    providers=(prov("ollama", "ollama"), prov("openai", cost_per_1m_tokens=5.0, quality=80.0)),
    routers=(Rule("discover", provider="ollama"), Rule("fallback")),
)


def check_vision(cfg: Config) -> None:
    assert first(cfg, req("gpt-4", ["vision"])) == ("vision-provider", "vision-model")
    assert first(cfg, req("gpt-4", ["video"])) == ("vision-provider", "video-model")
    assert first(cfg, req("gpt-4")) == ("vision-provider", "gpt-4")  # scores: local 20, vision 37.5


def check_discover(cfg: Config) -> None:
    assert first(cfg, "llama3:8b") == ("openai", "llama3:8b")  # fallback: ollama 0 vs openai 37.5
    found = {"ollama": ["llama3:8b"]}
    assert first(cfg, "llama3:8b", found) == ("ollama", "llama3:8b")
    assert first(cfg, "gpt-4", found) == ("openai", "gpt-4")


def test_tag_rule_routes_image_and_video_requests_to_vision_provider():
    check_vision(VISION_CONFIG)


def test_discover_rule_routes_to_provider_with_matching_model():
    check_discover(DISCOVER_CONFIG)


VISION_TOML = """
[[providers]]
name = "local"
format = "openai"
base_url = "http://localhost:8080/v1"
cost_per_1m_tokens = 0.0
quality = 40.0

[[providers]]
name = "vision-provider"
format = "openai"
base_url = "http://vision.test/v1"
cost_per_1m_tokens = 5.0
quality = 80.0

[[routers]]
type = "tag"
tag = "vision"
provider = "vision-provider"
rewrite_model = "vision-model"

[[routers]]
type = "tag"
tag = "video"
provider = "vision-provider"
rewrite_model = "video-model"

[[routers]]
type = "fallback"
"""

DISCOVER_TOML = """
[[providers]]
name = "ollama"
format = "ollama"
base_url = "http://localhost:11434"

[[providers]]
name = "openai"
format = "openai"
base_url = "https://api.openai.com/v1"
cost_per_1m_tokens = 5.0
quality = 80.0

[[routers]]
type = "discover"
provider = "ollama"

[[routers]]
type = "fallback"
"""


def parsed(text: str) -> Config:
    return config_module.parse(tomllib.loads(text), source="test.toml", environ={})


def test_tag_rule_from_toml():
    check_vision(parsed(VISION_TOML))


def test_discover_rule_from_toml():
    check_discover(parsed(DISCOVER_TOML))


# --- resolution -----------------------------------------------------------------


def test_no_rules_or_no_match_raises_no_route_naming_the_model():
    for cfg in (Config(providers=(prov("a"),)), Config(providers=(prov("a"),), routers=(Rule("tag", provider="a", tag="x"),))):
        with pytest.raises(errors.NoRoute, match="no provider configured for model 'gpt-4'") as info:
            next(decisions(req("gpt-4"), cfg, {}, random.Random(0)))
        assert info.value.status == 404


def test_rules_in_order_then_later_rules_as_fallbacks():
    cfg = Config(
        providers=(prov("a"), prov("b"), prov("c")),
        routers=(
            Rule("prefix", provider="b", model_prefix="gpt", rewrite_model="m-b"),
            Rule("tag", provider="c", tag="t"),
            Rule("prefix", provider="a", model_prefix=""),
        ),
    )
    got = list(decisions(req("gpt-4", ["t"]), cfg, {}, random.Random(0)))
    assert got == [
        Decision(cfg.providers[1], "m-b", 0, "prefix"),
        Decision(cfg.providers[2], "gpt-4", 1, "tag"),
        Decision(cfg.providers[0], "gpt-4", 2, "prefix"),
    ]


def test_decisions_are_lazy():
    """Later rules are not evaluated until the pipeline asks for a fallback."""
    cfg = Config(providers=(prov("a"),), routers=(Rule("prefix", provider="a", model_prefix=""), Rule("bogus")))
    it = decisions(req(), cfg, {}, random.Random(0))
    assert next(it).provider.name == "a"
    with pytest.raises(ValueError, match="unknown router type 'bogus'"):
        next(it)


def test_running_out_after_a_decision_just_stops():
    cfg = Config(providers=(prov("a"),), routers=(Rule("prefix", provider="a", model_prefix=""),))
    assert routes(cfg) == [("a", "test-model")]


def test_inactive_provider_passes_to_next_rule():
    cfg = Config(
        providers=(prov("a"),),
        routers=(
            Rule("prefix", provider="dropped", model_prefix=""),
            Rule("tag", provider="dropped", tag="t"),
            Rule("discover", provider="dropped"),
            Rule("prefix", provider="a", model_prefix=""),
        ),
    )
    assert routes(cfg, req(tags=["t"]), {"dropped": ["test-model"]}) == [("a", "test-model")]


# --- prefix / tag ---------------------------------------------------------------


def test_prefix_rule():
    cfg = Config(providers=(prov("a"),), routers=(Rule("prefix", provider="a", model_prefix="gpt-"),))
    assert first(cfg, "gpt-4o") == ("a", "gpt-4o")  # prefix not stripped
    assert first(cfg, "GPT-4o") is None  # case-sensitive
    assert first(cfg, "xgpt-4") is None


def test_prefix_rule_rewrite_and_empty_prefix():
    cfg = Config(providers=(prov("a"),), routers=(Rule("prefix", provider="a", model_prefix="", rewrite_model="m"),))
    assert first(cfg, "anything") == ("a", "m")


def test_prefix_rule_strip_prefix():
    rule = Rule("prefix", provider="a", model_prefix="local/", strip_prefix=True)
    cfg = Config(providers=(prov("a"),), routers=(rule, Rule("prefix", provider="a", model_prefix="", rewrite_model="z")))
    assert first(cfg, "local/llama3") == ("a", "llama3")
    assert routes(cfg, "local/") == [("a", "z")]  # nothing left to send: the rule passes


def test_tag_rule_is_exact_and_case_sensitive():
    cfg = Config(providers=(prov("a"),), routers=(Rule("tag", provider="a", tag="vision"),))
    assert first(cfg, req(tags=["vision"])) == ("a", "test-model")
    assert first(cfg, req(tags=["Vision", "visions"])) is None


# --- metric rules ---------------------------------------------------------------


def test_price_picks_cheapest_then_next_cheapest():
    cfg = Config(
        providers=(prov("a", cost_per_1m_tokens=3.0), prov("b", cost_per_1m_tokens=1.0), prov("c", cost_per_1m_tokens=2.0)),
        routers=(Rule("price", rewrite_model="ignored"),),
    )
    assert routes(cfg) == [("b", "test-model"), ("c", "test-model"), ("a", "test-model")]


def test_price_threshold_and_ties():
    ps = (prov("a", cost_per_1m_tokens=2.0), prov("b", cost_per_1m_tokens=1.0), prov("c", cost_per_1m_tokens=1.0))
    cfg = Config(providers=ps, routers=(Rule("price", max_cost_per_1m_tokens=1.0),))
    assert routes(cfg) == [("b", "test-model"), ("c", "test-model")]  # <= max; tie -> config order
    cfg = Config(providers=ps, routers=(Rule("price", providers=("c", "b"), max_cost_per_1m_tokens=2.0),))
    assert routes(cfg) == [("c", "test-model"), ("b", "test-model")]  # tie -> listed order
    assert first(Config(providers=ps, routers=(Rule("price", max_cost_per_1m_tokens=0.5),))) is None


def test_price_undeclared_cost_counts_as_free():
    """Kept from the original (and warned about by check_rules)."""
    ps = (prov("paid", cost_per_1m_tokens=0.5), prov("unknown"), prov("zero", cost_per_1m_tokens=0.0))
    cfg = Config(providers=ps, routers=(Rule("price", max_cost_per_1m_tokens=0.0),))
    assert routes(cfg) == [("unknown", "test-model"), ("zero", "test-model")]
    assert check_rules(cfg) == ["routers[0] (price): unknown declare no cost_per_1m_tokens and count as free"]


def test_explicit_providers_list_skips_inactive_and_unknown():
    ps = (prov("a", cost_per_1m_tokens=1.0), prov("b", cost_per_1m_tokens=2.0))
    cfg = Config(providers=ps, routers=(Rule("price", providers=("ghost", "b")),))
    assert routes(cfg) == [("b", "test-model")]
    assert first(Config(providers=ps, routers=(Rule("price", providers=("ghost",)),))) is None


def test_latency_rule():
    ps = (prov("slow", latency_ms=900.0), prov("none"), prov("fast", latency_ms=400.0), prov("fast2", latency_ms=400.0))
    cfg = Config(providers=ps, routers=(Rule("latency"),))
    assert routes(cfg) == [("fast", "test-model"), ("fast2", "test-model"), ("slow", "test-model")]
    cfg = Config(providers=ps, routers=(Rule("latency", max_latency_ms=400.0),))
    assert routes(cfg) == [("fast", "test-model"), ("fast2", "test-model")]
    assert first(Config(providers=ps, routers=(Rule("latency", max_latency_ms=100.0),))) is None
    assert first(Config(providers=(prov("none"),), routers=(Rule("latency"),))) is None


def test_throughput_rule():
    ps = (prov("t20", throughput_tokens_per_sec=20.0), prov("none"), prov("t80", throughput_tokens_per_sec=80.0),
          prov("t80b", throughput_tokens_per_sec=80.0))
    cfg = Config(providers=ps, routers=(Rule("throughput"),))
    assert routes(cfg) == [("t80", "test-model"), ("t80b", "test-model"), ("t20", "test-model")]
    cfg = Config(providers=ps, routers=(Rule("throughput", min_tokens_per_sec=20.0),))
    assert [n for n, _ in routes(cfg)] == ["t80", "t80b", "t20"]  # >= min
    assert first(Config(providers=ps, routers=(Rule("throughput", min_tokens_per_sec=81.0),))) is None


def test_fallback_scores_and_bias():
    ps = (prov("cheap", cost_per_1m_tokens=0.0, quality=40.0), prov("good", cost_per_1m_tokens=5.0, quality=80.0))
    cfg = Config(providers=ps, routers=(Rule("fallback", rewrite_model="m"),))
    assert routes(cfg) == [("good", "m"), ("cheap", "m")]  # 37.5 vs 20
    cfg = Config(providers=ps, routers=(Rule("fallback", quality_bias=0.0),))
    assert routes(cfg) == [("cheap", "test-model"), ("good", "test-model")]  # -0 vs -5
    cfg = Config(providers=ps, routers=(Rule("fallback", quality_bias=2.0),))  # not clamped: 80 vs 155
    assert routes(cfg) == [("good", "test-model"), ("cheap", "test-model")]


def test_fallback_ties_keep_candidate_order_and_undeclared_is_zero():
    ps = (prov("x"), prov("y"), prov("z", quality=1.0))
    assert routes(Config(providers=ps, routers=(Rule("fallback", providers=("y", "x")),))) == [
        ("y", "test-model"), ("x", "test-model")]
    assert [n for n, _ in routes(Config(providers=ps, routers=(Rule("fallback"),)))] == ["z", "x", "y"]


def test_nan_metrics_never_win():
    ps = (prov("nan", cost_per_1m_tokens=float("nan")), prov("ok", cost_per_1m_tokens=9.0))
    assert first(Config(providers=ps, routers=(Rule("fallback"),))) == ("ok", "test-model")
    assert routes(Config(providers=ps, routers=(Rule("price"),))) == [("ok", "test-model"), ("nan", "test-model")]


def test_empty_providers_means_all_active_in_config_order():
    ps = tuple(prov(n, cost_per_1m_tokens=0.0) for n in "dcab")
    assert [n for n, _ in routes(Config(providers=ps, routers=(Rule("price"),)))] == list("dcab")


# --- discover -------------------------------------------------------------------


def test_discover_matches_latest_and_returns_discovered_name():
    cfg = Config(providers=(prov("o", "ollama"),), routers=(Rule("discover", provider="o"),))
    found = {"o": {"llama3:latest", "mistral:7b"}}
    assert first(cfg, "llama3", found) == ("o", "llama3:latest")
    assert first(cfg, "llama3:latest", found) == ("o", "llama3:latest")
    assert first(cfg, "mistral:7b", found) == ("o", "mistral:7b")
    assert first(cfg, "mistral", found) is None  # only ":latest" is implied
    assert first(cfg, "llama3:8b", found) is None
    assert first(cfg, "llama3", {"o": {"llama3"}}) == ("o", "llama3")
    assert first(cfg, "llama3", {}) is None


# --- random ---------------------------------------------------------------------

RANDOM_PROVIDERS = (prov("a"), prov("b"), prov("c"))


def test_random_candidates_only_return_listed_pairs():
    pairs = (Candidate("a", "m1"), Candidate("b", "m2"), Candidate("a", "m3"), Candidate("dropped", "m4"))
    cfg = Config(providers=RANDOM_PROVIDERS, routers=(Rule("random", candidates=pairs, rewrite_model="x"),))
    listed = {("a", "m1"), ("b", "m2"), ("a", "m3")}
    firsts = set()
    for seed in range(60):
        got = routes(cfg, "client-model", seed=seed)
        assert sorted(got) == sorted(listed)  # every active pair once, never the dropped one
        firsts.add(got[0])
    assert firsts == listed  # each pair can come first


def test_random_is_reproducible_with_a_seeded_rng():
    cfg = Config(providers=RANDOM_PROVIDERS, routers=(Rule("random"),))
    assert routes(cfg, seed=7) == routes(cfg, seed=7)
    assert {routes(cfg, seed=s)[0][0] for s in range(40)} == {"a", "b", "c"}


def test_random_redraws_instead_of_passing_on_inactive_provider():
    """Fixed gap 18: a draw never lands on an inactive provider."""
    cfg = Config(providers=(prov("b"),), routers=(Rule("random", providers=("ghost1", "b", "ghost2")),))
    for seed in range(20):
        assert routes(cfg, seed=seed) == [("b", "test-model")]


def test_random_providers_rewrite_and_each_name_once():
    cfg = Config(providers=RANDOM_PROVIDERS, routers=(Rule("random", providers=("a", "a", "b"), rewrite_model="m"),))
    for seed in range(20):
        got = routes(cfg, seed=seed)
        assert sorted(got) == [("a", "m"), ("b", "m")]


def test_random_empty_pool_passes():
    cfg = Config(providers=(prov("a"),), routers=(Rule("random", providers=("ghost",)), Rule("random", candidates=(Candidate("ghost", "m"),))))
    assert first(cfg) is None


def test_random_draws_only_when_asked():
    cfg = Config(providers=RANDOM_PROVIDERS, routers=(Rule("prefix", provider="a", model_prefix=""), Rule("random")))
    rng = random.Random(3)
    state = rng.getstate()
    it = decisions(req(), cfg, {}, rng)
    next(it)
    assert rng.getstate() == state


# --- forced ---------------------------------------------------------------------


def test_forced_providers_skip_rules_in_order():
    cfg = Config(providers=RANDOM_PROVIDERS, routers=(Rule("prefix", provider="a", model_prefix=""),))
    r = req("m", forced_providers=["c", "ghost", "b", "c"])
    got = list(decisions(r, cfg, {}, random.Random(0)))
    assert [(d.provider.name, d.model, d.rule_index, d.rule_type) for d in got] == [
        ("c", "m", -1, FORCED), ("b", "m", -1, FORCED)]
    assert routes(cfg, req("m", forced_provider="b")) == [("b", "m")]


def test_forced_unknown_provider_error_is_clear():
    cfg = Config(providers=RANDOM_PROVIDERS)
    with pytest.raises(UnknownProvider) as info:
        next(decisions(req("m", forced_providers=["nope", "nada"]), cfg, {}, random.Random(0)))
    assert info.value.message == (
        "a plugin forced provider 'nope', 'nada', but no active provider has that name "
        "(active providers: a, b, c)"
    )
    assert "no provider configured" not in info.value.message
    assert isinstance(info.value, errors.RouterError) and info.value.status == 500


# --- available_models / check_rules ----------------------------------------------


def test_available_models_sources_order_and_dedup():
    ps = (prov("a", models=("a-1", "shared")), prov("o", "ollama"), prov("b"))
    cfg = Config(
        providers=ps,
        routers=(
            Rule("prefix", provider="b", model_prefix="x", rewrite_model="b-rw"),
            Rule("tag", provider="ghost", tag="t", rewrite_model="nope"),
            Rule("random", candidates=(Candidate("a", "shared"), Candidate("o", "o-1"), Candidate("ghost", "g"))),
            Rule("fallback", providers=("a", "ghost"), rewrite_model="fb"),
            Rule("price"),
        ),
    )
    assert available_models(cfg, {"o": ["zz", "llama3:latest", "o-1"], "ghost": ["g2"]}) == [
        ("a-1", "a"), ("shared", "a"),
        ("b-rw", "b"), ("o-1", "o"), ("fb", "a"),
        ("llama3:latest", "o"), ("zz", "o"),
    ]


def test_check_rules_reports_inactive_references_and_unusable_metric_rules():
    cfg = Config(providers=(prov("a"),), routers=(Rule("tag", provider="gone", tag="t"), Rule("latency")))
    assert check_rules(cfg) == [
        "routers[0] (tag): provider 'gone' is not active (unknown, or dropped at startup); skipped",
        "routers[1] (latency): no candidate declares latency_ms; this rule never matches",
    ]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_price_first_decision_is_the_minimum_whatever_the_order(order):
    costs = [2.0, 0.5, 1.0]
    ps = tuple(prov(f"p{i}", cost_per_1m_tokens=costs[i]) for i in order)
    assert first(Config(providers=ps, routers=(Rule("price"),))) == ("p1", "test-model")
