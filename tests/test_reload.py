"""Hot reload (issue 13 §3): SIGHUP to a real router process re-reads its config.

The pure parts (what changes, what carries over) are tested directly; the rest
through a real process, a real signal and fake upstreams on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest

from aclient import exchange
from fakes import FakeUpstream, Reply
from harness import FeedReader, provider_config
from llmrouter import config, events, reload
from llmrouter.breaker import Circuit
from subproc import RouterProcess, environ
from test_dashboard import browser, scripted  # noqa: F401 (fixtures)

ROUTE_ALL = '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "{name}"\n'
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def cfg(*providers: str, route: str, server: str = "port = 0") -> str:
    return f"[server]\n{server}\n" + "".join(providers) + ROUTE_ALL.format(name=route)


def parse(text: str, environ: dict[str, str] | None = None) -> config.Config:
    import tomllib

    return config.parse(tomllib.loads(text), source="t.toml", environ=environ or {})


# --- pure: plan, carry_over, keep_running --------------------------------------


def test_plan_names_added_removed_changed_and_restart_only_settings():
    old = parse(cfg(provider_config("http://127.0.0.1:1", "a"), provider_config("http://127.0.0.1:2", "b"), route="a"))
    new = parse(
        cfg(provider_config("http://127.0.0.1:1", "a"), provider_config("http://127.0.0.1:3", "b"), provider_config("http://127.0.0.1:4", "c"),
            route="a", server="port = 9999")
    )
    p = reload.plan(old, new)
    assert (p.added, p.removed, p.changed, p.restart_needed) == (["c"], [], ["b"], ["server.port"])
    assert reload.plan(new, old).removed == ["c"]


def test_a_rotated_key_is_no_change_of_the_provider():
    text = cfg(provider_config("http://127.0.0.1:1", "a", extra='api_key_env = "K"'), route="a")
    old, new = parse(text, {"K": "old"}), parse(text, {"K": "new"})
    assert new.providers[0].api_key == "new"
    assert reload.plan(old, new).changed == []


def test_carry_over_keeps_the_state_of_providers_with_the_same_name_and_base_url():
    old = parse(cfg(provider_config("http://127.0.0.1:1", "a"), provider_config("http://127.0.0.1:2", "b"),
                    provider_config("http://127.0.0.1:5", "gone"), route="a"))
    new = parse(cfg(provider_config("http://127.0.0.1:1", "a", extra="quality = 0.9"), provider_config("http://127.0.0.1:3", "b"), route="a"))
    circuit = Circuit(state="open", failures=5)
    state = {"a": circuit, "b": Circuit(), "gone": Circuit()}
    kept = reload.carry_over(old, new, state)
    assert kept == {"a": circuit} and kept["a"] is circuit  # handed on, not copied


def test_keep_running_pins_host_port_and_log_and_refuses_an_exposed_listener_without_key():
    old = parse('[server]\nhost = "0.0.0.0"\nport = 8000\napi_key_env = "RK"\n' + provider_config("http://127.0.0.1:1", "a"), {"RK": "k"})
    new = parse('[server]\nport = 9000\n[logging]\nenabled = true\n' + provider_config("http://127.0.0.1:1", "a"))
    with pytest.raises(config.ConfigError) as caught:
        reload.keep_running(old, new)  # still bound to 0.0.0.0, and the new file has no client key
    assert "listens on 0.0.0.0" in caught.value.problems[0]
    keyed = parse('[server]\nport = 9000\napi_key_env = "RK"\n' + provider_config("http://127.0.0.1:1", "a"), {"RK": "k2"})
    pinned = reload.keep_running(old, keyed)
    assert (pinned.server.host, pinned.server.port, pinned.server.api_key, pinned.logging) == ("0.0.0.0", 8000, "k2", old.logging)


def test_a_setting_a_reload_does_not_apply_is_one_it_reports_as_needing_a_restart():
    """Per key, not per section: whatever changes in [server], [logging] or
    [metrics] either takes effect or is named in restart_needed, so a new key
    cannot be silently kept at its old value."""
    old = parse(cfg(provider_config("http://127.0.0.1:1", "a"), route="a"))
    other = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v * 2 + 1, str: lambda v: v + "x"}
    checked = []
    for section in ("server", "logging", "metrics"):
        for f in dataclasses.fields(getattr(old, section)):
            value = getattr(getattr(old, section), f.name)
            if type(value) not in other:
                continue
            changed = other[type(value)](value)
            new = dataclasses.replace(old, **{section: dataclasses.replace(getattr(old, section), **{f.name: changed})})
            applied = getattr(getattr(reload.keep_running(old, new), section), f.name) == changed
            reported = f"{section}.{f.name}" in reload.plan(old, new).restart_needed
            assert applied != reported, f"{section}.{f.name}: applied {applied}, reported {reported}"
            checked.append(f"{section}.{f.name}")
    assert {"logging.embedding_inputs", "logging.enabled", "metrics.model_label", "server.max_attempts"} <= set(checked)


def test_embedding_inputs_apply_on_reload_while_the_log_stays_where_it_is():
    old = parse('[logging]\nenabled = true\npath = "/tmp/a.jsonl"\n' + provider_config("http://127.0.0.1:1", "a"))
    new = parse('[logging]\nenabled = false\npath = "/tmp/b.jsonl"\nembedding_inputs = true\n' + provider_config("http://127.0.0.1:1", "a"))
    pinned = reload.keep_running(old, new).logging
    assert (pinned.enabled, pinned.path, pinned.embedding_inputs) == (True, "/tmp/a.jsonl", True)
    assert reload.plan(old, new).restart_needed == ["logging.enabled", "logging.path"]


def test_the_reload_event_is_part_of_the_schema():
    event = events.reload(5, False, "c.toml", ["c.toml: x: bad"], [], [], [], [])
    assert events.parse(events.dumps(event)) == event
    with pytest.raises(ValueError):
        events.parse(json.dumps({**event, "ok": "yes"}))


# --- a real process, a real SIGHUP -------------------------------------------


def hup_and_wait(router: RouterProcess, marker: str, timeout: float = 10.0) -> None:
    """Sends SIGHUP and waits until `marker` appears once more on stderr."""
    before = router.stderr.count(marker)
    router.signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while router.stderr.count(marker) <= before:
        assert time.monotonic() < deadline, f"no {marker!r} after SIGHUP:\n{router.stderr}"
        assert router.proc.poll() is None, router.stderr
        time.sleep(0.02)


RELOADED = "reloaded "
REFUSED = "nothing was changed"


def chat(port: int, body: dict | None = None):
    return asyncio.run(exchange(port, "/v1/chat/completions", body or CHAT))


def feed_events(feed: FeedReader, kind: str) -> list[dict]:
    """The events of one type the feed delivered so far (each is one chunk of its own)."""
    marker = b"event: " + kind.encode() + b"\ndata: "
    return [json.loads(piece.split(b"\n", 1)[0]) for piece in bytes(feed.data).split(marker)[1:]]


def test_a_stream_started_before_sighup_finishes_on_the_old_provider_new_requests_use_the_new(tmp_path):
    with FakeUpstream() as old_fake, FakeUpstream() as new_fake:
        old_fake.script = lambda r: Reply.text("one two three four five six", chunks=6, delay=0.3)
        with RouterProcess(cfg(provider_config(old_fake.url, "old"), route="old"), tmp_path) as router:

            async def main():
                stream = asyncio.create_task(exchange(router.port, "/v1/chat/completions", {**CHAT, "stream": True}))
                while not old_fake.requests:
                    await asyncio.sleep(0.01)
                router.config.write_text(cfg(provider_config(new_fake.url, "new"), route="new"))
                await asyncio.to_thread(hup_and_wait, router, RELOADED)
                fresh = await exchange(router.port, "/v1/chat/completions", CHAT)
                return await stream, fresh

            streamed, fresh = asyncio.run(main())
            old_fake.wait_peer_closed(1)  # the removed provider's pool let its connection go once the stream ended
    assert streamed.status == 200 and streamed.complete and streamed.headers["x-router-provider"] == "old"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in streamed.body.decode().splitlines() if line.startswith("data: {") and '"choices":[{' in line)
    assert text.split() == "one two three four five six".split()
    assert streamed.seconds > 1.0  # still running when the reload happened (six frames 0.3 s apart)
    assert fresh.status == 200 and fresh.headers["x-router-provider"] == "new"
    assert len(old_fake.requests) == 1 and len(new_fake.requests) == 1


def test_a_broken_file_changes_nothing_prints_its_problems_and_publishes_ok_false(tmp_path):
    with FakeUpstream() as fake:
        with RouterProcess(cfg(provider_config(fake.url, "a"), route="a"), tmp_path) as router:
            feed = FeedReader(router.port)
            feed.until(b": connected")
            try:
                router.config.write_text(cfg(provider_config(fake.url, "a"), route="a") + '[[routers]]\ntype = "prefix"\nprovider = "nope"\n\n[server.typo]\n')
                hup_and_wait(router, REFUSED)
                feed.until(b"event: reload")
                (event,) = feed_events(feed, "reload")
                reply = chat(router.port)
            finally:
                feed.close()
            check = subprocess.run([sys.executable, "-m", "llmrouter", "check", str(router.config)],
                                   cwd=tmp_path, env=environ(), capture_output=True, text=True)
            stderr = router.stderr
    assert event["ok"] is False and event["problems"] and event["type"] == "reload"
    problems = [line for line in check.stderr.splitlines() if not line.startswith("llmrouter:")]
    assert len(problems) >= 2 and problems == event["problems"]
    assert all(problem in stderr for problem in problems)  # printed as `check` prints them
    assert reply.status == 200 and reply.headers["x-router-provider"] == "a"


def test_pools_of_unchanged_providers_are_kept_and_those_of_changed_ones_closed(tmp_path):
    with FakeUpstream() as a, FakeUpstream() as b, FakeUpstream() as b2:
        both = '[[routers]]\ntype = "prefix"\nmodel_prefix = "b"\nprovider = "b"\n'
        with RouterProcess(both + cfg(provider_config(a.url, "a"), provider_config(b.url, "b"), route="a"), tmp_path) as router:
            assert chat(router.port).status == chat(router.port, {**CHAT, "model": "b"}).status == 200
            assert a.connections_open == b.connections_open == 1
            router.config.write_text(both + cfg(provider_config(a.url, "a"), provider_config(b2.url, "b"), route="a"))
            hup_and_wait(router, RELOADED)
            b.wait_peer_closed(1)  # the replaced pool let its idle connection go
            assert chat(router.port).status == chat(router.port, {**CHAT, "model": "b"}).status == 200
            assert a.connections_opened == 1 and a.peer_closed == 0  # the kept pool reused its connection
            assert len(b2.requests) == 1 and len(b.requests) == 1


def test_a_rotated_key_in_dotenv_takes_effect_but_the_real_environment_still_wins(tmp_path):
    (tmp_path / ".env").write_text("ROTATED_KEY=old\nPINNED_KEY=from-file\n")
    text = cfg(provider_config("{a}", "a", extra='api_key_env = "ROTATED_KEY"'), provider_config("{b}", "b", extra='api_key_env = "PINNED_KEY"'), route="a")
    text = '[[routers]]\ntype = "prefix"\nmodel_prefix = "b"\nprovider = "b"\n' + text
    with FakeUpstream() as a, FakeUpstream() as b:
        text = text.replace("{a}", a.url).replace("{b}", b.url)
        with RouterProcess(text, tmp_path, env={"PINNED_KEY": "from-env"}) as router:
            chat(router.port)
            (tmp_path / ".env").write_text("ROTATED_KEY=new\nPINNED_KEY=rotated-in-file\n")
            hup_and_wait(router, RELOADED)
            chat(router.port)
            chat(router.port, {**CHAT, "model": "b"})
    assert [r.headers["authorization"] for r in a.requests] == ["Bearer old", "Bearer new"]
    assert b.requests[0].headers["authorization"] == "Bearer from-env"


def test_a_changed_port_is_reported_as_needing_a_restart_and_the_router_stays_where_it_is(tmp_path):
    with FakeUpstream() as a, FakeUpstream() as b:
        with RouterProcess(cfg(provider_config(a.url, "a"), route="a"), tmp_path) as router:
            feed = FeedReader(router.port)
            feed.until(b": connected")
            try:
                router.config.write_text(cfg(provider_config(b.url, "a"), route="a", server='port = 1\nhost = "127.0.0.2"'))
                hup_and_wait(router, RELOADED)
                feed.until(b"event: reload")
                (event,) = feed_events(feed, "reload")
            finally:
                feed.close()
            reply = chat(router.port)
            stderr = router.stderr
    assert event["ok"] is True and event["restart_needed"] == ["server.host", "server.port"] and event["changed"] == ["a"]
    assert "server.port changed; it takes effect only after a restart" in stderr
    assert "server.host changed" in stderr
    assert reply.status == 200 and len(b.requests) == 1  # the rest of the file applied


def test_a_reload_turns_logging_of_embedding_texts_on(tmp_path):
    log = tmp_path / "requests.jsonl"
    logging = f'[logging]\nenabled = true\npath = "{log}"\nembedding_inputs = {{}}\n'
    embed = {"model": "m", "input": ["private text"]}
    with FakeUpstream() as fake:
        served = cfg(provider_config(fake.url, "a"), route="a")
        with RouterProcess(served + logging.format("false"), tmp_path) as router:
            feed = FeedReader(router.port)
            feed.until(b": connected")
            try:
                assert asyncio.run(exchange(router.port, "/v1/embeddings", embed)).status == 200
                router.config.write_text(served + logging.format("true"))
                hup_and_wait(router, RELOADED)
                feed.until(b"event: reload")
                (event,) = feed_events(feed, "reload")
            finally:
                feed.close()
            assert asyncio.run(exchange(router.port, "/v1/embeddings", embed)).status == 200
            stderr = router.stderr
    before, after = (json.loads(line) for line in log.read_text().splitlines())
    assert before["messages"] == [] and after["messages"] == [{"role": "user", "content": "private text"}]
    assert event["ok"] is True and event["restart_needed"] == [] and "only after a restart" not in stderr


def test_llmrouter_reload_signals_the_pid_in_the_pid_file(tmp_path):
    pid_file = tmp_path / "router.pid"
    with FakeUpstream() as a, FakeUpstream() as b:
        with RouterProcess(cfg(provider_config(a.url, "a"), route="a"), tmp_path, serve_args=("--pid-file", str(pid_file))) as router:
            assert pid_file.read_text().strip() == str(router.pid)
            router.config.write_text(cfg(provider_config(b.url, "b"), route="b"))
            before = router.stderr.count(RELOADED)
            done = subprocess.run([sys.executable, "-m", "llmrouter", "reload", "--pid-file", str(pid_file)],
                                  cwd=tmp_path, env=environ(), capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            deadline = time.monotonic() + 10
            while router.stderr.count(RELOADED) == before:
                assert time.monotonic() < deadline, router.stderr
                time.sleep(0.02)
            assert chat(router.port).headers["x-router-provider"] == "b"
        assert not pid_file.exists()  # removed on exit
    missing = subprocess.run([sys.executable, "-m", "llmrouter", "reload", "--pid-file", str(pid_file)],
                             cwd=tmp_path, env=environ(), capture_output=True, text=True)
    assert missing.returncode == 1 and "cannot signal" in missing.stderr


# --- the live views show reloads ----------------------------------------------


def test_watch_and_tui_show_applied_and_refused_reloads():
    from llmrouter import tui_state, watch

    applied = events.reload(0, True, "/etc/llmrouter/config.toml", [], ["server.port"], ["c"], [], ["b"])
    refused = events.reload(0, False, "config.toml", ["config.toml: routers[1].provider: unknown provider 'nope'"], [], [], [], [])
    line = watch.format_event(applied)
    assert "config reloaded from /etc/llmrouter/config.toml; added: c; changed: b; needs a restart: server.port" in line
    assert "config reload refused, nothing changed (1 problem(s)): config.toml: routers[1].provider: unknown provider 'nope'" in watch.format_event(refused)
    state = tui_state.State()
    for event in (applied, refused):
        tui_state.reduce(state, event)
    screen = "\n".join(tui_state.plain(tui_state.render(state, 30, 160, 0)))
    assert "config reloaded from /etc/llmrouter/config.toml" in screen and "config reload refused" in screen
    assert state.total.count == 0  # not counted as a request


def get_json(port: int, path: str) -> dict:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_circuit_states_and_measurements_carry_over_only_where_name_and_base_url_are_unchanged(tmp_path):
    with FakeUpstream() as a, FakeUpstream() as b, FakeUpstream() as b2:
        a.script = b.script = lambda r: Reply.error(500, "down")
        by_prefix = '[[routers]]\ntype = "prefix"\nmodel_prefix = "b"\nprovider = "b"\n'

        def text(b_url: str, a_extra: str = "") -> str:
            return by_prefix + cfg(provider_config(a.url, "a", extra=a_extra), provider_config(b_url, "b"), route="a",
                                   server="port = 0\nbreaker_failures = 1\nbreaker_cooldown = 600")

        with RouterProcess(text(b.url), tmp_path) as router:
            assert chat(router.port).status == chat(router.port, {**CHAT, "model": "b"}).status == 500  # passed on
            opened = get_json(router.port, "/health?verbose")
            router.config.write_text(text(b2.url, a_extra="quality = 0.5"))  # a: other settings, same base_url
            hup_and_wait(router, RELOADED)
            after = get_json(router.port, "/health?verbose")
            refused = chat(router.port)
    assert opened["breakers"]["a"]["state"] == opened["breakers"]["b"]["state"] == "open"
    assert after["breakers"]["a"]["state"] == "open" and after["breakers"]["b"] == {"state": "closed", "failures": 0}
    # The live measurements go the same way.
    assert opened["measurements"]["a"]["error_rate"] == opened["measurements"]["b"]["error_rate"] == 1
    assert after["measurements"]["a"] == opened["measurements"]["a"] and "b" not in after["measurements"]
    assert refused.status == 503 and len(a.requests) == 1  # a's circuit is still open: not even tried


def test_discovery_lists_a_changed_ollama_provider_again(tmp_path):
    with FakeUpstream(models=["first:latest"]) as one, FakeUpstream(models=["second:latest"]) as two:
        text = '[server]\nport = 0\n{p}[[routers]]\ntype = "discover"\nprovider = "ol"\n'
        with RouterProcess(text.format(p=provider_config(one.url, "ol", "ollama")), tmp_path) as router:
            before = [m["id"] for m in get_json(router.port, "/v1/models")["data"]]
            router.config.write_text(text.format(p=provider_config(two.url, "ol", "ollama")))
            hup_and_wait(router, RELOADED)
            after = [m["id"] for m in get_json(router.port, "/v1/models")["data"]]
    assert before == ["first:latest"] and after == ["second:latest"]


def test_the_dashboard_shows_reloads_among_the_requests(browser, scripted):
    from test_dashboard import card_texts, complete

    browser.open(scripted.url + "/dashboard")
    browser.wait_for("document.getElementById('status').textContent === 'live'")
    scripted.send(complete(1, "local", (1, 2)))
    scripted.send(events.reload(1_700_000_000_000, True, "/etc/llmrouter/config.toml", [], ["server.port"], ["paid"], [], ["local"]))
    scripted.send(events.reload(1_700_000_000_000, False, "/etc/llmrouter/config.toml", ["config.toml: routers[0].type: <b>bad</b>"], [], [], [], []))
    browser.wait_for("document.querySelectorAll('#done .card').length === 3")
    refused, applied, request = card_texts(browser)
    assert "config reload refused" in refused and "nothing changed" in refused and "<b>bad</b>" in refused
    assert "config reloaded" in applied and "added: paid" in applied and "changed: local" in applied
    assert "needs a restart: server.port" in applied
    assert "local" in request
    assert browser.js("document.querySelectorAll('#done b').length === 0")  # problems are shown as text


def test_allowed_hosts_apply_at_once(tmp_path):
    import http.client

    def status_for_host(port: int, host: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(CHAT), {"Host": host, "content-type": "application/json"})
            return conn.getresponse().status
        finally:
            conn.close()

    with FakeUpstream() as fake:
        with RouterProcess(cfg(provider_config(fake.url, "a"), route="a"), tmp_path) as router:
            before = status_for_host(router.port, "llm.example")
            router.config.write_text(cfg(provider_config(fake.url, "a"), route="a", server='port = 0\nallowed_hosts = ["llm.example"]'))
            hup_and_wait(router, RELOADED)
            after = status_for_host(router.port, "llm.example")
    assert (before, after) == (403, 200)
