"""Plugins: resolution and merge order (SPEC 6.1), stage flow (6.2),
response-healing (6.4, 14.4) and pareto-router (6.5)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrouter import errors, plugins
from llmrouter.canonical import Message, Request, Response, Text, ToolCall
from llmrouter.config import Entry
from llmrouter.plugins import Flow, Plugin, PluginState, resolve, run_stage
from llmrouter.plugins.healing import heal, is_json

# --- SPEC 14.4: heal() ------------------------------------------------------------


def test_passes_through_plain_text():
    assert heal("Hello, I'm here.") is None


def test_strips_markdown_fence():
    assert heal('```json\n{"a": 1}\n```') == '{"a": 1}'


def test_strips_surrounding_prose():
    text = 'Sure, here\'s the JSON:\n{"a": 1}\nLet me know if you need anything else.'
    assert heal(text) == '{"a": 1}'


def test_removes_trailing_commas():
    assert heal('{"a": 1, "b": [1, 2,],}') == '{"a": 1, "b": [1, 2]}'


def test_balances_truncated_output():
    assert heal('{"a": 1, "b": [1, 2') == '{"a": 1, "b": [1, 2]}'


def test_already_valid_json_is_unchanged_upstream():
    assert heal('{"a": 1}') == '{"a": 1}'


# --- heal(): kept behaviour and fixed gaps ------------------------------------------


@pytest.mark.parametrize(
    "text, healed",
    [
        ('```\n{"a": 1}\n```', '{"a": 1}'),  # fence without a language
        ('```json\r\n[1, 2]\n```\nthanks', "[1, 2]"),  # text after the closing fence dropped
        ('```json\n{"a": 1', '{"a": 1}'),  # unclosed fence, truncated JSON
        ('Result: {"a": 1}', '{"a": 1}'),  # after a colon on the same line
        ('Here:\n[{"a": "x"},]\nDone.', '[{"a": "x"}]'),
        ('{"a": "b', '{"a": "b"}'),  # truncated inside a string
        ('{"a": "q\\"', '{"a": "q\\""}'),  # escaped quote stays inside the string
        ("[1, 2,\n]", "[1, 2\n]"),  # whitespace after a dropped comma is kept
        ("  42  ", "42"),
        ("", None),
        ("{", "{}"),
        ("}{", None),
    ],
)
def test_heal_cases(text, healed):
    assert heal(text) == healed


def test_bracketed_prose_is_not_healed():
    """Fixed gap 23: a citation in a sentence is not JSON."""
    assert heal("see [1] for details") is None
    assert heal("[1] Smith et al., 2020") is None
    assert heal("[1, 2] are the first two") is None
    assert heal("Result: [1, 2] as asked") == "[1, 2]"  # after a colon it is data
    assert heal("[\n  1\n] as asked") == "[\n  1\n]"  # several lines: data
    assert heal('The answer is {"a": 1} obviously') == '{"a": 1}'  # objects: as before
    assert heal('Pick from ["a", "b"] please') == '["a", "b"]'  # strings: data, as before
    assert heal('[{"a": 1}] Hope it helps') == '[{"a": 1}]'


def test_partially_closed_document_is_completed_not_truncated():
    """Fixed gap 23: the original returned {"a": [1]}."""
    assert heal('{"a": [1], "b": {"c": 1') == '{"a": [1], "b": {"c": 1}}'
    assert heal('Here it is:\n{"a": [1], "b": [2') == '{"a": [1], "b": [2]}'
    assert heal('{"a": {"b": 1}, "c": "cut') == '{"a": {"b": 1}, "c": "cut"}'
    # When completing everything fails, the original's cut is still tried.
    assert heal('{"a": {"b": 1}, "c":') == '{"a": {"b": 1}}'


def test_truncation_after_a_comma_heals():
    """Fixed gap 23: a comma at the end of truncated output is dropped."""
    assert heal('{"a": 1,') == '{"a": 1}'
    assert heal('[{"a": 1}, ') == '[{"a": 1}]'


def test_commas_inside_strings_are_kept():
    """Fixed gap 23: the original turned "x,}" into "x}"."""
    assert heal('{"a": "x,}"}') == '{"a": "x,}"}'
    assert heal('{"a": "x, ]", "b": [1,],}') == '{"a": "x, ]", "b": [1]}'


def test_is_json_is_strict():
    assert is_json(' {"a": 1} ') and is_json("42") and is_json('"x"') and is_json("true")
    for bad in ("NaN", "[Infinity]", "[-Infinity]", "[1,]", "{'a': 1}", "", "[1] x"):
        assert not is_json(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values, st.sampled_from([None, 2]))
def test_heal_is_identity_on_valid_json(value, indent):
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    assert heal(text) == text


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet='{}[]",:\\ \nab1`json', max_size=40))
def test_heal_never_raises_and_only_returns_json(text):
    healed = heal(text)
    assert healed is None or is_json(healed)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.lists(st.integers(), max_size=3), min_size=1, max_size=4), st.data())
def test_truncated_objects_heal_to_json(value, data):
    text = json.dumps(value)
    cut = data.draw(st.integers(min_value=1, max_value=len(text)))
    healed = heal(text[:cut])
    assert healed is None or is_json(healed)


# --- response-healing as a plugin ---------------------------------------------------


def make_request(**kw) -> Request:
    return Request(model="m", messages=[Message("user", [Text("hi")])], **kw)


def reply(*parts) -> Response:
    return Response(id="r1", model="m", content=list(parts))


HEALING = [plugins.ActivePlugin(plugins.REGISTRY["response-healing"], {})]


def test_healing_replaces_text_and_keeps_tool_calls():
    call = ToolCall("c1", "f", "{}")
    state = PluginState(make_request(), reply(Text("Sure:\n"), call, Text('{"a": 1,')))
    result = run_stage("post_response", HEALING, state)
    assert (result.flow, result.ids) == (Flow.CONTINUE, ["response-healing"])
    assert state.response.content == [Text('{"a": 1}'), call]
    assert state.response_modified


@pytest.mark.parametrize("content", ['{"a": 1}', "  42 ", '"x"', "true", "plain prose", "", "see [1]"])
def test_healing_leaves_json_and_prose_alone(content):
    state = PluginState(make_request(), reply(Text(content)))
    result = run_stage("post_response", HEALING, state)
    assert result.ids == [] and not state.response_modified
    assert state.response.content == [Text(content)]


def test_healing_without_a_response_continues():
    state = PluginState(make_request())
    assert run_stage("post_response", HEALING, state).ids == []


def test_healing_never_rewrites_a_streamed_reply():
    state = PluginState(make_request(stream=True), reply(Text('{"a": 1,')), streamed=True)
    result = run_stage("post_response", HEALING, state)
    assert result.ids == [] and state.response.content == [Text('{"a": 1,')]
    assert result.warnings == ["response-healing: the streamed reply is not valid JSON and was sent unchanged"]
    assert state.warnings == result.warnings


# --- pareto-router ------------------------------------------------------------------

TIERS = {"low": ["local-llama"], "medium": ["ollama", "cloud"], "high": ["openai", 3, "anthropic"]}


def pareto(settings: dict, request: Request | None = None) -> Request:
    request = request or make_request()
    active = [plugins.ActivePlugin(plugins.REGISTRY["pareto-router"], settings)]
    result = run_stage("pre_request", active, PluginState(request))
    assert result.ids == ["pareto-router"]
    return request


def test_pareto_forces_the_whole_tier_in_order():
    r = pareto({"tiers": TIERS})  # default tier "medium"
    assert (r.forced_providers, r.forced_provider) == (["ollama", "cloud"], "ollama")
    assert not r.modified  # the body is unchanged: passthrough stays possible
    assert pareto({"tiers": TIERS, "tier": "high", "default_tier": "low"}).forced_providers == ["openai", "anthropic"]
    assert pareto({"tiers": TIERS, "default_tier": "low"}).forced_providers == ["local-llama"]
    assert pareto({"tiers": TIERS, "tier": 5, "default_tier": "low"}).forced_providers == ["local-llama"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, "pareto-router: no `tiers` configured (e.g. [plugins.pareto-router.tiers])"),
        ({"tiers": ["low"]}, "pareto-router: no `tiers` configured (e.g. [plugins.pareto-router.tiers])"),
        ({"tiers": TIERS, "tier": "ultra"},
         'pareto-router: unknown tier \'ultra\' (configured tiers: ["high", "low", "medium"])'),
        ({"tiers": {"medium": "ollama"}}, "pareto-router: unknown tier 'medium' (configured tiers: [\"medium\"])"),
        ({"tiers": {"medium": []}}, "pareto-router: tier 'medium' has no providers configured"),
        ({"tiers": {"medium": [1, "x"]}}, "pareto-router: tier 'medium' has no providers configured"),
    ],
)
def test_pareto_error_texts(settings, message):
    active = [plugins.ActivePlugin(plugins.REGISTRY["pareto-router"], settings)]
    with pytest.raises(errors.PluginError) as info:
        run_stage("pre_request", active, PluginState(make_request()))
    assert info.value.message == f"plugin 'pareto-router' failed: {message}"
    assert info.value.status == 500


def test_pareto_request_tiers_replace_the_whole_map():
    config = {"pareto-router": Entry(False, {"tiers": TIERS, "default_tier": "low"})}
    active, _ = resolve(config, [{"id": "pareto-router", "tiers": {"x": ["p"]}, "tier": "x"}])
    request = make_request()
    run_stage("pre_request", active, PluginState(request))
    assert request.forced_providers == ["p"]
    assert active[0].settings == {"tiers": {"x": ["p"]}, "default_tier": "low", "tier": "x"}


# --- resolve ------------------------------------------------------------------------


class Recorder(Plugin):
    def __init__(self, pid: str, log: list, flows: dict | None = None, fail: set | None = None):
        self.id, self.log, self.flows, self.fail = pid, log, flows or {}, fail or set()

    def _hook(self, stage, state, settings):
        self.log.append((self.id, stage))
        if stage in self.fail:
            raise RuntimeError(f"{self.id} broke")
        return self.flows.get(stage, Flow.CONTINUE)

    def on_start(self, state, settings):
        return self._hook("on_start", state, settings)

    def pre_request(self, state, settings):
        return self._hook("pre_request", state, settings)

    def post_response(self, state, settings):
        return self._hook("post_response", state, settings)

    def on_end(self, state, settings):
        return self._hook("on_end", state, settings)


def registry(*ids, log=None, **per_id) -> dict[str, Plugin]:
    log = [] if log is None else log
    return {pid: Recorder(pid, log, **per_id.get(pid.replace("-", "_"), {})) for pid in ids}


def ids_and_settings(active):
    return [(a.id, a.settings) for a in active]


def test_resolve_config_enabled_in_registry_order_with_request_overrides():
    reg = registry("one", "two", "three")
    config = {
        "three": Entry(True, {"x": 3}),
        "one": Entry(True, {"x": 1, "y": 1}),
        "two": Entry(False, {"x": 2}),
    }
    requested = [{"id": "one", "y": "req", "z": 0}, {"id": "one", "y": "later duplicate"}]
    active, warnings = resolve(config, requested, registry=reg)
    assert ids_and_settings(active) == [("one", {"x": 1, "y": "req", "z": 0}), ("three", {"x": 3})]
    assert warnings == []


def test_resolve_request_entries_are_appended_in_request_order():
    reg = registry("one", "two", "three")
    config = {"one": Entry(True), "three": Entry(False, {"deflt": True})}
    requested = [{"id": "three", "k": 1}, {"id": "mystery"}, {"id": "two"}, {"id": "three", "k": 2}, "junk"]
    active, warnings = resolve(config, requested, registry=reg)
    assert ids_and_settings(active) == [("one", {}), ("three", {"deflt": True, "k": 1}), ("two", {})]
    assert warnings == [
        "unknown plugin 'mystery' in request; ignored",
        "ignored a request plugin entry without a string 'id': 'junk'",
    ]


def test_resolve_request_can_disable_a_config_enabled_plugin():
    """Fixed gap 24."""
    reg = registry("one", "two")
    config = {"one": Entry(True), "two": Entry(True)}
    active, _ = resolve(config, [{"id": "one", "enabled": False}, {"id": "one"}], registry=reg)
    assert [a.id for a in active] == ["two"]
    active, _ = resolve({}, [{"id": "one", "enabled": False}], registry=reg)
    assert active == []
    active, _ = resolve({}, [{"id": "one", "enabled": True, "k": 1}], registry=reg)
    assert ids_and_settings(active) == [("one", {"k": 1})]  # "enabled" is no setting


def test_builtin_registry_order_and_no_stubs():
    assert list(plugins.REGISTRY) == ["response-healing", "pareto-router"]
    config = {"pareto-router": Entry(True, {"tiers": TIERS}), "response-healing": Entry(True)}
    active, _ = resolve(config, [])
    assert [a.id for a in active] == ["response-healing", "pareto-router"]
    _, warnings = resolve({}, [{"id": "web"}, {"id": "pdf"}])
    assert warnings == ["unknown plugin 'web' in request; ignored", "unknown plugin 'pdf' in request; ignored"]


# --- run_stage ----------------------------------------------------------------------


def active_of(reg):
    return [plugins.ActivePlugin(p, {}) for p in reg.values()]


def test_stage_flow_records_modified_and_stop_and_stops_the_stage():
    log: list = []
    reg = registry("a", "b", "c", "d", log=log, b={"flows": {"pre_request": Flow.MODIFIED}},
                   c={"flows": {"pre_request": Flow.STOP}})
    result = run_stage("pre_request", active_of(reg), PluginState(make_request()))
    assert (result.flow, result.ids, result.stopped) == (Flow.STOP, ["b", "c"], True)
    assert log == [("a", "pre_request"), ("b", "pre_request"), ("c", "pre_request")]


def test_modified_does_not_end_the_stage():
    reg = registry("a", "b", a={"flows": {"on_start": "modified"}})
    result = run_stage("on_start", active_of(reg), PluginState(make_request()))
    assert (result.flow, result.ids) == (Flow.CONTINUE, ["a"])
    assert result.flow == plugins.CONTINUE == "continue"


@pytest.mark.parametrize("stage", ["on_start", "pre_request"])
def test_failure_in_early_stages_raises_plugin_error(stage):
    log: list = []
    reg = registry("good", "bad", "after", log=log, bad={"fail": {stage}})
    with pytest.raises(errors.PluginError) as info:
        run_stage(stage, active_of(reg), PluginState(make_request()))
    assert info.value.message == "plugin 'bad' failed: bad broke"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert [pid for pid, _ in log] == ["good", "bad"]


@pytest.mark.parametrize("stage", ["post_response", "on_end"])
def test_failure_in_late_stages_is_a_warning(stage):
    log: list = []
    reg = registry("bad", "after", log=log, bad={"fail": {stage}}, after={"flows": {stage: Flow.MODIFIED}})
    state = PluginState(make_request(), reply(Text("x")))
    result = run_stage(stage, active_of(reg), state)
    assert (result.flow, result.ids, result.warnings) == (Flow.CONTINUE, ["after"], ["plugin 'bad' failed: bad broke"])
    assert [pid for pid, _ in log] == ["bad", "after"]
    assert state.response_modified


def test_router_errors_keep_their_message_and_bad_return_values_fail():
    class Raises(Plugin):
        id = "raises"

        def on_start(self, state, settings):
            raise errors.BadRequest("nope")

    class Weird(Plugin):
        id = "weird"

        def on_start(self, state, settings):
            return 42

    with pytest.raises(errors.PluginError, match=r"^plugin 'raises' failed: nope$"):
        run_stage("on_start", [plugins.ActivePlugin(Raises(), {})], PluginState(make_request()))
    with pytest.raises(errors.PluginError, match=r"^plugin 'weird' failed: "):
        run_stage("on_start", [plugins.ActivePlugin(Weird(), {})], PluginState(make_request()))


def test_a_plugin_can_answer_and_hooks_default_to_continue():
    class Answer(Plugin):
        id = "answer"

        def on_start(self, state, settings):
            state.response = reply(Text(settings["text"]))
            return None  # None counts as CONTINUE

    state = PluginState(make_request())
    active = [plugins.ActivePlugin(Plugin(), {}), plugins.ActivePlugin(Answer(), {"text": "hello"})]
    result = run_stage("on_start", active, state)
    assert (result.flow, result.ids) == (Flow.CONTINUE, [])
    assert state.response.text == "hello"
    for stage in plugins.STAGES:
        assert run_stage(stage, [plugins.ActivePlugin(Plugin(), {})], state).ids == []


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError, match="unknown plugin stage"):
        run_stage("before", [], PluginState(make_request()))
