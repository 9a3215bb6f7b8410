"""`llmrouter replay LOG [CONFIG]` (issue 13 §4): what another config would have
done with logged requests. The log is a real one: the router served real SDK
requests through fakes first."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tomllib

import anthropic
import openai
import pytest

from fakes import FakeUpstream
from harness import provider_config, running_router
from llmrouter import config, replay
from subproc import RouterProcess, environ

KEYWORDS = '[classifiers.keyword]\nenabled = true\n[classifiers.keyword.tags]\ncode = ["python"]\n'


def rules(*lines: str) -> str:
    return "".join(f"[[routers]]\n{line}\n" for line in lines)


def providers(local: str, coder: str, cloud: str) -> str:
    return provider_config(local, "local") + provider_config(coder, "coder", "anthropic") + provider_config(cloud, "cloud")


OLD_RULES = rules(
    'type = "prefix"\nmodel_prefix = "gpt-"\nprovider = "cloud"',
    'type = "tag"\ntag = "code"\nprovider = "coder"',
    'type = "prefix"\nmodel_prefix = ""\nprovider = "local"',
)
NEW_RULES = rules(
    'type = "prefix"\nmodel_prefix = "gpt-"\nprovider = "cloud"',
    'type = "tag"\ntag = "code"\nprovider = "cloud"\nrewrite_model = "big-coder"',
    'type = "random"\nproviders = ["local", "cloud"]',
)


def run_replay(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmrouter", "replay", *args], cwd=cwd, env=environ(),
                          capture_output=True, text=True, timeout=60)


def test_replay_of_a_real_log_against_the_same_and_another_config(tmp_path):
    log = tmp_path / "requests.jsonl"
    with FakeUpstream() as local, FakeUpstream() as coder, FakeUpstream() as cloud:
        served = providers(local.url, coder.url, cloud.url)
        old = f'[server]\nport = 0\n[logging]\nenabled = true\npath = "{log}"\n' + served + OLD_RULES + KEYWORDS
        with RouterProcess(old, tmp_path) as router:
            oa = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
            an = anthropic.Anthropic(base_url=router.url, api_key="unused", max_retries=0)
            oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])
            oa.chat.completions.create(model="llama", messages=[{"role": "system", "content": "be brief"},
                                                                 {"role": "user", "content": "write python please"}])
            an.messages.create(model="claude", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
            for _ in oa.chat.completions.create(model="llama", stream=True, messages=[{"role": "user", "content": "stream it"}]):
                pass
            try:
                oa.chat.completions.create(model="llama", messages=[{"role": "bogus", "content": 5}])
            except openai.BadRequestError:
                pass
        sent = (len(local.requests), len(coder.requests), len(cloud.requests))
        assert sent == (2, 1, 1)
        lines = log.read_text().splitlines()
        assert len(lines) == 5
        with open(log, "a") as f:
            f.write("{not json\n")
        new_cfg = tmp_path / "new.toml"
        new_cfg.write_text(served + NEW_RULES + KEYWORDS)

        same = run_replay(str(log), cwd=tmp_path)  # no CONFIG: ./config.toml, the one the router served with
        other = run_replay(str(log), str(new_cfg), "--json", "--seed", "7", cwd=tmp_path)
        again = run_replay(str(log), str(new_cfg), "--json", "--seed", "7", cwd=tmp_path)
        summary = run_replay(str(log), str(new_cfg), "--seed", "7", cwd=tmp_path)
        assert (len(local.requests), len(coder.requests), len(cloud.requests)) == sent  # nothing went upstream

    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("4 request(s) replayed; 0 would change")
    assert "1 record(s) never reached routing" in same.stdout
    assert f"{log}:6: skipped: not JSON" in same.stderr

    assert other.returncode == 0 and other.stdout == again.stdout  # --seed: repeatable
    rows = [json.loads(line) for line in other.stdout.splitlines()]
    by_prompt = {r["line"]: r for r in rows}
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    gpt, code, claude, stream = (by_prompt[n] for n in (1, 2, 3, 4))
    assert gpt["was"] == gpt["would"] == {"provider": "cloud", "model": "gpt-4o"}
    assert gpt["rule"] == {"index": 0, "type": "prefix"} and not gpt["changed"] and gpt["live"] == []
    assert code["was"] == {"provider": "coder", "model": "llama"}
    assert code["would"] == {"provider": "cloud", "model": "big-coder"} and code["rule"] == {"index": 1, "type": "tag"}
    assert code["changed"] and code["live"] == []
    for row in (claude, stream):
        assert row["rule"] == {"index": 2, "type": "random"} and row["live"] == ["random draw"]
        assert row["would"]["provider"] in ("local", "cloud")
    assert isinstance(gpt["id"], int) and gpt["request_id"]

    changed = sum(r["changed"] for r in rows)
    assert summary.stdout.startswith(f"4 request(s) replayed; {changed} would change")
    assert "2 decision(s) depend on live state" in summary.stdout
    table = {line.split()[0]: line.split()[1:] for line in summary.stdout.splitlines() if line.startswith("  ") and line.split()[0] in ("local", "coder", "cloud")}
    assert table["coder"] == ["1", "0"] and table["local"][0] == "2" and table["cloud"][0] == "1"
    assert "coder/llama -> cloud/big-coder  routers[1] (tag)" in summary.stdout


# --- the pure core ---------------------------------------------------------------


def parse(text: str) -> config.Config:
    return config.parse(tomllib.loads(text), source="t.toml", environ={})


def record(model: str, text: str, provider: str | None = "a", **extra) -> dict:
    return {"type": "complete", "id": 1, "request_id": "r", "client_format": "openai", "provider": provider,
            "requested_model": model, "sent_model": model, "system": None,
            "messages": [{"role": "user", "content": text}], **extra}


def test_plugins_routing_hooks_run_and_forced_providers_show_as_forced():
    cfg = parse(provider_config("http://127.0.0.1:1", "a") + provider_config("http://127.0.0.1:2", "b")
                + rules('type = "prefix"\nmodel_prefix = ""\nprovider = "a"')
                + '[plugins.pareto-router]\nenabled = true\ndefault_tier = "high"\ntiers = { high = ["b", "a"] }\n')
    outcome = replay.decide(replay.request_of(record("m", "hi")), cfg, random.Random(0))
    assert (outcome.provider, outcome.model, outcome.rule_index, outcome.rule_type) == ("b", "m", -1, "forced")


def test_rules_before_the_deciding_one_that_need_live_state_mark_it_and_no_route_is_reported():
    cfg = parse(provider_config("http://127.0.0.1:1", "a", "ollama")
                + rules('type = "discover"\nprovider = "a"', 'type = "prefix"\nmodel_prefix = "x"\nprovider = "a"'))
    fell_through = replay.decide(replay.request_of(record("x1", "hi")), cfg, random.Random(0))
    assert fell_through.provider == "a" and fell_through.rule_index == 1 and fell_through.live == ("discovered models (none in a replay)",)
    nothing = replay.decide(replay.request_of(record("y", "hi")), cfg, random.Random(0))
    assert nothing.provider is None and "no provider" in nothing.error and nothing.live


def test_least_busy_and_measured_rules_are_marked_live():
    cfg = parse(provider_config("http://127.0.0.1:1", "a", extra="latency_ms = 100") + provider_config("http://127.0.0.1:2", "b", extra="latency_ms = 50")
                + rules('type = "latency"\nmeasured = true', 'type = "least_busy"\nproviders = ["a", "b"]'))
    outcome = replay.decide(replay.request_of(record("m", "hi")), cfg, random.Random(0))
    # Nothing measured in a replay: the unmeasured candidates go first, in list order.
    assert (outcome.provider, outcome.rule_index, outcome.live) == ("a", 0, ("live measurements",))
    only_busy = parse(provider_config("http://127.0.0.1:1", "a") + rules('type = "least_busy"\nproviders = ["a"]'))
    assert replay.decide(replay.request_of(record("m", "hi")), only_busy, random.Random(0)).live == ("requests in flight",)


def test_logged_message_parts_come_back_and_malformed_records_are_reported_by_line():
    parts = [{"type": "text", "text": "look"}, {"type": "image", "media_type": "image/png", "bytes": 10},
             {"type": "tool_use", "id": "t1", "name": "f", "arguments": "{}"},
             {"type": "tool_result", "tool_use_id": "t1", "content": "42", "is_error": False}]
    req = replay.request_of({**record("m", ""), "messages": [{"role": "user", "content": parts}], "system": "s"})
    assert [type(p).__name__ for p in req.messages[0].content] == ["Text", "Image", "ToolCall", "ToolResult"]
    assert req.system == "s" and req.messages[0].content[3].text == "42"
    cfg = parse(provider_config("http://127.0.0.1:1", "a") + rules('type = "prefix"\nmodel_prefix = ""\nprovider = "a"'))
    lines = [json.dumps(record("m", "hi")), "", "[1]", json.dumps({"type": "breaker"}), json.dumps({**record("m", "x"), "messages": "no"})]
    report = replay.replay(lines, cfg, random.Random(0))
    assert len(report.replayed) == 1 and [n for n, _ in report.malformed] == [3, 4, 5]


# --- request kinds: replay passes over providers without an API for the kind, as serve does ---


def test_embeddings_and_completions_skip_an_anthropic_provider_and_a_lone_one_is_the_routers_400(tmp_path):
    """Logged by a real router: with catch-all rules anthropic then openai, an
    embedding and a completion went to openai (a chat to anthropic), and with
    the anthropic provider alone they got a 400. Replay says the same."""
    catch_all = 'type = "prefix"\nmodel_prefix = ""\nprovider = "{}"'
    with FakeUpstream() as fake:
        claude = provider_config(fake.url, "claude", "anthropic")
        both = claude + provider_config(fake.url, "oai") + rules(catch_all.format("claude"), catch_all.format("oai"))
        alone = claude + rules(catch_all.format("claude"))
        for name, served in (("both", both), ("alone", alone)):
            logged = f'[server]\nport = 0\n[logging]\nenabled = true\npath = "{tmp_path / name}.jsonl"\n'
            with running_router(logged + served) as router:
                oa = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
                for create, args in ((oa.embeddings.create, {"model": "emb", "input": "some text"}),
                                     (oa.completions.create, {"model": "comp", "prompt": "def f(", "max_tokens": 5}),
                                     (oa.chat.completions.create, {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})):
                    try:
                        create(**args)
                    except openai.BadRequestError:
                        pass
                router.wait_records(3)
    lines = {name: (tmp_path / f"{name}.jsonl").read_text().splitlines() for name in ("both", "alone")}
    logged = {name: [json.loads(line) for line in lines[name]] for name in lines}
    assert [(r["kind"], r["provider"], r["status"]) for r in logged["both"]] == [
        ("embedding", "oai", 200), ("completion", "oai", 200), ("chat", "claude", 200)]
    assert [(r["provider"], r["status"], r["error_code"]) for r in logged["alone"]] == [
        (None, 400, "unsupported_kind"), (None, 400, "unsupported_kind"), ("claude", 200, None)]

    same = replay.replay(lines["both"], parse(both), random.Random(0))
    assert [(r.would.provider, r.would.model, r.would.rule_index, r.changed) for r in same.replayed] == [
        ("oai", "emb", 1, False), ("oai", "comp", 1, False), ("claude", "chat", 0, False)]

    refused = replay.replay(lines["alone"], parse(alone), random.Random(0))
    assert refused.skipped == 0 and len(refused.replayed) == 3  # a kind nobody serves reached routing
    for row, record in zip(refused.replayed[:2], logged["alone"]):
        assert (row.would.status, row.would.error_code, row.would.error) == (record["status"], record["error_code"], record["error"])
        assert row.would.provider is None and not row.changed
        assert row.to_json()["status"] == 400 and row.to_json()["error_code"] == "unsupported_kind"

    moved = replay.replay(lines["both"], parse(alone), random.Random(0))
    assert [(r.changed, r.would.status, r.would.provider) for r in moved.replayed] == [
        (True, 400, None), (True, 400, None), (False, None, "claude")]
    assert "oai/emb -> (no route)  400 unsupported_kind: no provider routed for model 'emb'" in replay.summary(moved)


def test_the_logged_kind_comes_back_and_an_unknown_one_is_malformed():
    assert [replay.request_of(record("m", "hi", kind=k)).kind for k in ("chat", "completion", "embedding")] == ["chat", "completion", "embedding"]
    assert replay.request_of(record("m", "hi")).kind == "chat"  # a log from before kinds were logged
    with pytest.raises(ValueError, match="unknown request kind"):
        replay.request_of(record("m", "hi", kind="rerank"))
