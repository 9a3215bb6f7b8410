"""The documentation's configs are real: every ```toml block of docs/examples.md,
docs/providers.md and README.md parses with llmrouter.config.parse (a block whose
first line is a comment saying "fragment" is only checked as TOML), the recipes
route as their text says, and config.example.toml stays valid with every
commented-out line switched on."""

from __future__ import annotations

import random
import re
import tomllib
from pathlib import Path

import pytest

from llmrouter import config, router
from llmrouter.canonical import Message, Request, Text
from llmrouter.classifiers import classify
from llmrouter.measure import Measurements

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("docs/examples.md", "docs/providers.md", "README.md")


def toml_blocks(name: str) -> list[tuple[str, str]]:
    """(section heading, block text) for every ```toml block of a file."""
    path = ROOT / name
    if not path.exists():
        return []
    blocks, heading, fence, body = [], "", None, []
    for line in path.read_text().splitlines():
        if fence is None and line.startswith("```"):
            fence, body = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            if fence == "toml":
                blocks.append((heading, "\n".join(body) + "\n"))
            fence = None
        elif fence is not None:
            body.append(line)
        elif re.match(r"#{1,6} ", line):
            heading = line.lstrip("#").strip()
    return blocks


def is_fragment(block: str) -> bool:
    first = block.lstrip().splitlines()[0] if block.strip() else ""
    return first.startswith("#") and "fragment" in first


def key_env(block: str) -> dict[str, str]:
    """Every variable the block names in api_key_env, set, so strict providers stay active."""
    names = re.findall(r'api_key_env\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"', block)
    return {"HOME": "/home/test", **{n: "test-key" for n in names}}


def parse(block: str, environ: dict[str, str] | None = None) -> config.Config:
    return config.parse(tomllib.loads(block), source="snippet", environ=key_env(block) if environ is None else environ)


ALL_BLOCKS = [(name, i, heading, block) for name in DOCS for i, (heading, block) in enumerate(toml_blocks(name))]


def test_the_docs_have_toml_to_check():
    assert len([b for b in ALL_BLOCKS if b[0] == "docs/examples.md"]) >= 7
    assert len([b for b in ALL_BLOCKS if b[0] == "docs/providers.md"]) >= 5


@pytest.mark.parametrize(
    "name,index,heading,block", ALL_BLOCKS, ids=[f"{n}#{i}" for n, i, _, _ in ALL_BLOCKS]
)
def test_every_toml_block_parses(name, index, heading, block):
    if is_fragment(block):
        tomllib.loads(block)  # not an llmrouter config (or only part of one): TOML at least
        return
    try:
        cfg = parse(block)
    except config.ConfigError as exc:
        pytest.fail(f"{name}, block {index} (under '{heading}'):\n" + "\n".join(exc.problems))
    # Documentation shows configs that start without a warning; a snippet
    # showing only providers may lack rules.
    warnings = [w for w in cfg.warnings if not (cfg.routers == () and w.startswith("no [[routers]] rules"))]
    assert warnings == [] and router.check_rules(cfg) == [], (cfg.warnings, router.check_rules(cfg))


# --- The recipes do what docs/examples.md says ---------------------------------------


def recipe(heading_start: str, index: int = 0) -> str:
    blocks = [b for h, b in toml_blocks("docs/examples.md") if h.startswith(heading_start) and not is_fragment(b)]
    return blocks[index]


def request(model: str, text: str = "Hello!") -> Request:
    return Request(model=model, messages=[Message("user", [Text(text)])])


def routes(cfg: config.Config, req: Request | str, seed: int = 0) -> list[tuple[str, str]]:
    req = request(req) if isinstance(req, str) else req
    req.tags = classify(req, cfg.classifiers)[0]
    return [(d.provider.name, d.model) for d in router.decisions(req, cfg, {}, random.Random(seed))]


def test_local_first_falls_back_to_the_cloud():
    block = recipe("Local first")
    cfg = parse(block)
    assert cfg.server.max_attempts == 2
    assert routes(cfg, "smollm2") == [("local", "smollm2"), ("openai", "gpt-4o-mini")]
    # Without the key, OpenAI is dropped (strict): local only.
    assert routes(parse(block, {"HOME": "/h"}), "smollm2") == [("local", "smollm2")]


def test_code_requests_go_to_the_local_model():
    cfg = parse(recipe("Code requests"))
    code = request("claude-sonnet-4-5", "Write a Python function that reverses a list.")
    assert routes(cfg, code) == [("ollama", "qwen2.5-coder:7b"), ("anthropic", "claude-sonnet-4-5")]
    assert code.tags == ["code"]
    for text in ("What is the capital of France?", "I trust you."):
        assert routes(cfg, request("claude-sonnet-4-5", text)) == [("anthropic", "claude-sonnet-4-5")]


def test_price_ceiling_picks_the_cheapest_and_never_the_dear_one():
    cfg = parse(recipe("The cheapest provider"))
    model = "meta-llama/llama-3.1-8b-instruct"
    assert routes(cfg, model) == [("gpu-box", model), ("openrouter", model)]


def test_ab_test_splits_between_both_models():
    cfg = parse(recipe("A/B testing"))
    firsts = {routes(cfg, "assistant", seed)[0] for seed in range(40)}
    assert firsts == {("ollama", "llama3.2:3b"), ("ollama", "qwen2.5:3b")}
    assert sorted(routes(cfg, "assistant", 1)) == [("ollama", "llama3.2:3b"), ("ollama", "qwen2.5:3b")]
    assert routes(cfg, "ollama/llama3.2:3b")[0] == ("ollama", "llama3.2:3b")


def test_two_servers_recipe_ranks_by_live_measurements():
    cfg = parse(recipe("Two servers"))
    assert routes(cfg, "llama3") == [("desk", "llama3"), ("gpu-box", "llama3")]  # neither measured yet
    live = Measurements()
    for provider, ttft in (("desk", 900), ("gpu-box", 200), ("desk", 20000)):
        live.observe({"stream": True, "attempts": [{"provider": provider, "model": "llama3", "outcome": "ok", "duration_ms": 9000, "first_token_ms": ttft}]})
    ranked = [d.provider.name for d in router.decisions(request("llama3"), cfg, {}, random.Random(0), live)]
    assert ranked == ["gpu-box"]  # desk now averages beyond max_latency_ms
    text = recipe("Two servers")
    busy_rule = '[[routers]]\ntype = "least_busy"\nproviders = ["desk", "gpu-box"]'
    assert "\n".join("# " + line for line in busy_rule.splitlines()) in text  # the commented alternative
    busy = parse(text[: text.index("[[routers]]")] + busy_rule + "\n")
    live.started("desk", "llama3")
    assert [d.provider.name for d in router.decisions(request("llama3"), busy, {}, random.Random(0), live)] == ["gpu-box", "desk"]


def test_claude_code_recipe_routes_background_models_locally():
    cfg = parse(recipe("Claude Code"))
    assert routes(cfg, "claude-sonnet-4-5") == [("anthropic", "claude-sonnet-4-5")]
    for haiku in ("claude-haiku-4-5-20251001", "claude-3-5-haiku-20241022"):
        assert routes(cfg, haiku) == [("ollama", "qwen2.5-coder:7b"), ("anthropic", haiku)]
    assert routes(cfg, "ollama/qwen2.5-coder:32b") == [("ollama", "qwen2.5-coder:32b")]


def test_codex_recipe():
    cfg = parse(recipe("Codex"))
    assert routes(cfg, "gpt-4.1") == [("openai", "gpt-4.1")]
    assert routes(cfg, "ollama/qwen2.5-coder:32b") == [("ollama", "qwen2.5-coder:32b")]
    (codex,) = [b for h, b in toml_blocks("docs/examples.md") if h == "Codex" and is_fragment(b)]
    provider = tomllib.loads(codex)["model_providers"]["llmrouter"]
    assert provider["base_url"] == "http://127.0.0.1:8090/v1" and provider["wire_api"] == "responses"


# --- config.example.toml with every optional line switched on -------------------------

COMMENTED_TOML = re.compile(r"^# ((\[\[?[a-z][a-z0-9_.-]*\]\]?)|([a-z_][a-z0-9_]* = .*)|(  \{ .*)|(\]))$")


def test_example_config_with_every_commented_line_enabled():
    lines = (ROOT / "config.example.toml").read_text().splitlines()
    enabled = [COMMENTED_TOML.sub(r"\1", line) for line in lines]
    switched = [b for a, b in zip(lines, enabled) if a != b]
    assert len(switched) >= 30  # the optional rules, plugins, server and provider keys
    environ = {"HOME": "/h", "OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "CLOUDFLARE_API_TOKEN": "k",
               "LLMROUTER_API_KEY": "k"}
    cfg = config.parse(tomllib.loads("\n".join(enabled)), source="example", environ=environ)
    assert cfg.server.api_key_env == "LLMROUTER_API_KEY" and cfg.server.max_attempts == 3
    llama = cfg.provider("local-llama")
    assert llama.first_byte_timeout == 300.0 and llama.connect_timeout == 1.0
    assert cfg.provider("openai").max_connections == 16 and cfg.provider("anthropic").headers
    # Every rule kind, random both ways, each optional rule with its threshold.
    kinds = [r.type for r in cfg.routers]
    assert set(kinds) == set(config.RULE_TYPES)
    randoms = [r for r in cfg.routers if r.type == "random"]
    assert [bool(r.candidates) for r in randoms] == [False, True] and randoms[0].providers
    by_type = {r.type: r for r in cfg.routers}
    assert by_type["price"].max_cost_per_1m_tokens == 1.0
    assert by_type["latency"].max_latency_ms == 800 and by_type["throughput"].min_tokens_per_sec == 50
    assert by_type["latency"].measured and by_type["least_busy"].providers == ("local-llama", "ollama")
    assert cfg.metrics.model_label
    assert cfg.plugins["pareto-router"].enabled and cfg.plugins["response-healing"].enabled
    keyword = cfg.classifiers["keyword"].settings
    assert keyword["word_boundary"] is True and keyword["scan"] == "last_user"


def test_example_config_has_every_provider_kind():
    text = (ROOT / "config.example.toml").read_text()
    cfg = config.parse(tomllib.loads(text), source="example", environ={"HOME": "/h", "OPENAI_API_KEY": "k",
                                                                         "ANTHROPIC_API_KEY": "k", "CLOUDFLARE_API_TOKEN": "k"})
    urls = {p.name: (p.format, p.base_url) for p in cfg.providers}
    assert urls["local-llama"] == ("openai", "http://localhost:8080/v1")
    assert urls["ollama"] == ("ollama", "http://localhost:11434")
    assert urls["openai"] == ("openai", "https://api.openai.com/v1")
    assert urls["anthropic"] == ("anthropic", "https://api.anthropic.com")
    assert urls["cloudflare"][0] == "openai" and "api.cloudflare.com" in urls["cloudflare"][1]
    # Each table is explained: a comment right above every [[providers]] and [[routers]].
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip("# ").startswith(("[[providers]]", "[[routers]]", "[plugins.", "[classifiers.keyword]")):
            above = lines[i - 1].strip()
            assert above.startswith("#") or lines[i - 1].startswith("# ["), f"line {i + 1} ({line}) has no explanation"
