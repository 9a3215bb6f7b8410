"""Bad JSON and wrong types (issue 6, item 2; RELIABILITY B): ≥ 1,000 generated
bodies per client endpoint (chat, messages, completions, embeddings, Ollama's
embed) never get a 500; a body with one field of the wrong
type gets a 400 in the client's error shape naming that field; deep nesting,
huge numbers, NaN, lone surrogates and U+2028 are handled; what the router
forwards is valid JSON and carries valid unicode text exactly.
"""

from __future__ import annotations

import copy
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import httpcore
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fakes import FakeUpstream, Reply
from harness import FeedReader, running_router
from reliability_report import record

OPENAI_BASE = {
    "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "max_completion_tokens": 5,
    "temperature": 0.5, "top_p": 1, "stream": False, "stop": ["zz"], "tool_choice": "auto",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "response_format": {"type": "text"}, "stream_options": {"include_usage": True}, "plugins": [],
}
ANTHROPIC_BASE = {
    "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "system": "be brief",
    "temperature": 0.5, "top_p": 1, "top_k": 3, "stop_sequences": ["zz"], "stream": False, "metadata": {},
    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# path → what a valid value looks like there (None = absent is fine unless noted)
OPENAI_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, str),
    "messages": lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(m, dict) for m in v),
    "messages[0]": lambda v: isinstance(v, dict) and v.get("role") == "user",
    "messages[0].role": lambda v: v in ("system", "developer", "user", "assistant"),
    "messages[0].content": lambda v: v is None or isinstance(v, str) or (isinstance(v, list) and not v),
    "max_tokens": lambda v: v is None or (_int(v) and v >= 0),
    "max_completion_tokens": lambda v: v is None or (_int(v) and v >= 0),
    "temperature": lambda v: v is None or _number(v),
    "top_p": lambda v: v is None or _number(v),
    "stream": lambda v: v is None or isinstance(v, bool),
    "stop": lambda v: v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
    "tools": lambda v: v is None or (isinstance(v, list) and not v),
    "tools[0].function": lambda v: isinstance(v, dict) and isinstance(v.get("name"), str),
    "tools[0].function.name": lambda v: isinstance(v, str) and v != "",
    # An object of a type the router does not know is forwarded for the upstream to judge.
    "tool_choice": lambda v: v is None or v in ("auto", "none", "required") or (isinstance(v, dict) and v.get("type") != "function"),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "stream_options": lambda v: v is None or (isinstance(v, dict) and v.get("include_usage") in (None, True, False)),
    "stream_options.include_usage": lambda v: v is None or isinstance(v, bool),
    "plugins": lambda v: v is None or (isinstance(v, list) and not v),
}
ANTHROPIC_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, str) and v != "",
    "max_tokens": lambda v: _int(v) and v >= 1,
    "messages": lambda v: isinstance(v, list) and all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in v),
    "messages[0]": lambda v: isinstance(v, dict) and v.get("role") == "user" and isinstance(v.get("content"), str),
    "messages[0].role": lambda v: v in ("user", "assistant", "system"),
    "messages[0].content": lambda v: isinstance(v, str) or (isinstance(v, list) and not v),
    "system": lambda v: v is None or isinstance(v, str) or (isinstance(v, list) and not v),
    "temperature": lambda v: v is None or _number(v),
    "top_p": lambda v: v is None or _number(v),
    "top_k": lambda v: v is None or _int(v),
    "stop_sequences": lambda v: v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
    "stream": lambda v: v is None or isinstance(v, bool),
    "metadata": lambda v: v is None or isinstance(v, dict),
    "tools": lambda v: v is None or (isinstance(v, list) and not v),
    "tools[0].name": lambda v: isinstance(v, str) and v != "",
}
COMPLETION_BASE = {
    "model": "m", "prompt": "def f(", "suffix": "pass", "max_tokens": 5, "temperature": 0.5, "top_p": 1,
    "stream": False, "stop": ["zz"], "seed": 1, "stream_options": {"include_usage": True}, "plugins": [],
}
COMPLETION_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, str),
    "prompt": lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) == 1 and isinstance(v[0], str)),
    "suffix": lambda v: v is None or isinstance(v, str),
    "seed": lambda v: v is None or _int(v),
    **{k: OPENAI_FIELDS[k] for k in ("max_tokens", "temperature", "top_p", "stream", "stop", "stream_options",
                                     "stream_options.include_usage", "plugins")},
}
EMBEDDING_BASE = {"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 8, "user": "u", "plugins": []}
_texts = lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) > 0 and all(isinstance(t, str) for t in v))  # noqa: E731
EMBEDDING_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, str),
    "input": _texts,
    "encoding_format": lambda v: v is None or v in ("float", "base64"),
    "dimensions": lambda v: v is None or (_int(v) and v >= 1),
    "user": lambda v: v is None or isinstance(v, str),
    "plugins": OPENAI_FIELDS["plugins"],
}
OLLAMA_EMBED_BASE = {"model": "m", "input": ["a"], "truncate": True, "keep_alive": "5m", "options": {}, "dimensions": 8}
OLLAMA_EMBED_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, str),
    "input": _texts,
    "truncate": lambda v: v is None or isinstance(v, bool),
    "options": lambda v: v is None or isinstance(v, dict),
    "dimensions": EMBEDDING_FIELDS["dimensions"],
}
FORMATS = {
    "openai": ("/v1/chat/completions", OPENAI_BASE, OPENAI_FIELDS),
    "anthropic": ("/v1/messages", ANTHROPIC_BASE, ANTHROPIC_FIELDS),
    "completions": ("/v1/completions", COMPLETION_BASE, COMPLETION_FIELDS),
    "embeddings": ("/v1/embeddings", EMBEDDING_BASE, EMBEDDING_FIELDS),
    "ollama-embed": ("/api/embed", OLLAMA_EMBED_BASE, OLLAMA_EMBED_FIELDS),
}
# The error shape each endpoint answers in.
SHAPES = {"openai": "openai", "anthropic": "anthropic", "completions": "openai", "embeddings": "openai",
          "ollama-embed": "ollama"}

json_scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def set_path(body: dict, path: str, value: Any) -> None:
    keys: list[Any] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        keys.append(name)
        if index:
            keys.append(int(index[:-1]))
    target: Any = body
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


@st.composite
def corrupted(draw, fmt: str) -> tuple[str, bytes]:
    """The format's valid body with exactly one field set to a value that is wrong there."""
    _, base, fields = FORMATS[fmt]
    path = draw(st.sampled_from(sorted(fields)))
    value = draw(json_values.filter(lambda v: not fields[path](v)))
    body = copy.deepcopy(base)
    set_path(body, path, value)
    return path, json.dumps(body).encode()


@st.composite
def random_body(draw, fmt: str) -> bytes:
    """Arbitrary JSON objects mixing the format's fields with random ones (and
    sometimes not an object at all)."""
    _, base, fields = FORMATS[fmt]
    if draw(st.integers(0, 9)) == 0:
        return json.dumps(draw(json_values)).encode()
    body = copy.deepcopy(base) if draw(st.booleans()) else {}
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.sampled_from([p.split(".")[0].split("[")[0] for p in fields]) | st.text(max_size=10))
        body[key] = draw(json_values)
    return json.dumps(body).encode()


def collect(strategy: st.SearchStrategy, n: int) -> list:
    out: list = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def run(example: Any) -> None:
        out.append(example)

    run()
    return out


def config_for(url: str, log_path: str | None = None) -> str:
    text = "[server]\nport = 0\nmax_body_bytes = 33554432\n"
    if log_path:
        text += f'[logging]\nenabled = true\npath = "{log_path}"\n'
    for name, fmt in (("oa", "openai"), ("an", "anthropic")):
        base = url + "/v1" if fmt == "openai" else url
        text += f'[[providers]]\nname = "{name}"\nformat = "{fmt}"\nbase_url = "{base}"\n'
    return text + ('[[routers]]\ntype = "prefix"\nmodel_prefix = "to-an/"\nprovider = "an"\n'
                   '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "oa"\n')


class Client(threading.local):
    """One keep-alive connection pool per worker thread."""

    def post(self, port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if not hasattr(self, "pool"):
            self.pool = httpcore.ConnectionPool()
        response = self.pool.request("POST", f"http://127.0.0.1:{port}{path}",
                                     headers={"content-type": "application/json"}, content=body)
        return response.status, {k.decode().lower(): v.decode() for k, v in response.headers}, response.content


CLIENT = Client()


def error_of(fmt: str, headers: dict[str, str], body: bytes) -> tuple[str, str | None]:
    """(message, param) from an error in the client's shape; asserts the shape."""
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    if fmt == "ollama":
        assert set(data) == {"error"} and isinstance(data["error"], str)
        return data["error"], None
    if fmt == "openai":
        error = data["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        return error["message"], error["param"]
    assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    return data["error"]["message"], None


@pytest.fixture(scope="module")
def world():
    with FakeUpstream() as fake:
        fake.script = lambda r: Reply.embeddings() if "embed" in r.route else Reply.text("ok")
        with running_router(config_for(fake.url)) as router:
            yield router, fake


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_generated_bodies(world, fmt, soak):
    router, fake = world
    path, _, _ = FORMATS[fmt]
    scale = 10 if soak else 1
    targeted = collect(corrupted(fmt), 900 * scale)
    arbitrary = collect(random_body(fmt), 400 * scale)
    before = len(fake.requests)

    def targeted_case(case: tuple[str, bytes]) -> str | None:
        field, body = case
        status, headers, reply = CLIENT.post(router.port, path, body)
        if status != 400:
            return f"{field}: {status} for {body[:300]!r}"
        message, param = error_of(SHAPES[fmt], headers, reply)
        if field not in message and param != field:
            return f"{field}: the error does not name it: {message!r} (param {param!r})"
        return None

    def arbitrary_case(body: bytes) -> str | None:
        status, headers, reply = CLIENT.post(router.port, path, body)
        if status >= 500:
            return f"{status} for {body[:300]!r}: {reply[:300]!r}"
        if status != 200:
            error_of(SHAPES[fmt], headers, reply)
        return None

    with ThreadPoolExecutor(8) as pool:
        problems = [p for p in pool.map(targeted_case, targeted) if p]
        leaked = fake.requests[before:]
        problems += [p for p in pool.map(arbitrary_case, arbitrary) if p]
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"
    assert leaked == []  # no invalid body reached the upstream
    assert len(targeted) + len(arbitrary) >= 1000 * scale
    record(f"json.{fmt}_bodies", len(targeted) + len(arbitrary), unit="bodies", status_500=0,
           wrong_type_400_naming_the_field=len(targeted), arbitrary_without_500=len(arbitrary),
           fields=len(FORMATS[fmt][2]))


# --- edge cases -------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]


def strict_json(data: bytes) -> Any:
    """What a strict reader accepts: UTF-8, no NaN/Infinity."""
    def reject(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    value = json.loads(data.decode("utf-8"), parse_constant=reject)
    json.dumps(value, allow_nan=False)  # raises on a non-finite float (1e400 parses as inf)
    return value


@pytest.mark.parametrize("case, body, status, names", [
    ("deep-nesting", b'{"model":"m","messages":[],"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "JSON"),
    ("huge-int", b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":' + b"9" * 5000 + b"}", 400, "JSON"),
    ("huge-float", b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1e400}', 400, "1e400"),
    ("nan", b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":NaN}', 400, "NaN"),
    ("infinity", b'{"model":"m","messages":[{"role":"user","content":"hi"}],"top_p":-Infinity}', 400, "Infinity"),
    ("invalid-utf8", b'{"model":"m","messages":[{"role":"user","content":"h\xff"}]}', 400, "JSON"),
    ("bool-as-int", b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":true}', 400, "max_tokens"),
])
def test_hostile_values_are_400(world, case, body, status, names):
    router, fake = world
    before = len(fake.requests)
    for fmt, path in (("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")):
        got, headers, reply = CLIENT.post(router.port, path, body)
        assert got == status, (fmt, reply)
        message, _ = error_of(fmt, headers, reply)
        assert names in message, (fmt, message)
    assert len(fake.requests) == before


@pytest.mark.parametrize("model", ["m\x0b\x9d\u00ce\x00\x7f\r\nx: y", " \u00dc\u00d6z ", "\t"])
@pytest.mark.parametrize("fmt, path", [("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")])
def test_control_characters_in_the_model_name_stay_out_of_headers(world, fmt, path, model):
    """The model goes back in x-router-model; a \x0b or a leading space there
    made h11 refuse the whole response (a 500). Found by the soak tier."""
    router, fake = world
    body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    status, headers, reply = CLIENT.post(router.port, path, json.dumps(body).encode())
    assert status == 200, reply
    value = headers.get("x-router-model", "")
    assert all(32 <= ord(c) < 127 for c in value) and value == value.strip() and "x" not in headers
    assert strict_json(fake.requests[-1].body)["model"] == model


@pytest.mark.parametrize("route", ["m", "to-an/m"])
@pytest.mark.parametrize("depth", [100, 400, 490, 1000])
def test_deep_nesting_is_forwarded_as_valid_json_or_refused(world, route, depth):
    """Nesting the JSON decoder accepts must not break re-encoding (a 500);
    deeper nesting is a 400."""
    router, fake = world
    deep = b'{"x":[' * depth + b'"leaf"' + b"]}" * depth
    tools = b'[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"p":' + deep + b"}}}}]"
    body = b'{"model":"' + route.encode() + b'","messages":[{"role":"user","content":"hi"}],"tools":' + tools + b',"extra":' + deep + b"}"
    before = len(fake.requests)
    status, headers, reply = CLIENT.post(router.port, "/v1/chat/completions", body)
    assert status in (200, 400), reply[:500]
    if status == 200:
        sent = fake.requests[-1].body
        assert sent.count(b'"x":') + sent.count(b'"x": ') >= depth and strict_json(sent)
    else:
        assert "recursion" in error_of("openai", headers, reply)[0] and len(fake.requests) == before
    if depth <= 400:
        assert status == 200


NASTY = [
    "\ud800", "a\udfffb", "\u2028line\u2029sep", "nel\x85here", "nul\x00byte", "bidi \u202e\u202d\u2066 text",
    "e\u0301\u0301\u0301", "👩\u200d👩\u200d👧\u200d👦", "\ufeffbom inside", "tab\tand\r\nnewlines", "\U0010ffff",
    '"quotes" and \\backslashes\\', "</script><script>alert(1)</script>", "\x1b[31mred\x1b[0m",
]


def test_unicode_reaches_the_upstream_exactly_and_logs_stay_one_line(tmp_path, soak):
    """Valid unicode (hypothesis st.text over all code points but surrogates,
    plus a nasty list with lone surrogates, U+2028/2029, NEL, NUL) goes
    through passthrough and translation unchanged; the upstream always gets
    valid JSON; the log keeps one JSON line per request; the feed survives."""
    texts = NASTY + collect(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40), 1000 if soak else 200)
    log_path = tmp_path / "log.jsonl"
    with FakeUpstream() as fake:
        fake.script = lambda r: Reply.text("ok")
        with running_router(config_for(fake.url, str(log_path))) as router:
            feed = FeedReader(router.port)
            routes = [("openai", "/v1/chat/completions", "m"), ("anthropic", "/v1/messages", "m"),
                      ("openai", "/v1/chat/completions", "to-an/m")]
            sent = 0
            for i, text in enumerate(texts):
                fmt, path, model = routes[i % 3]
                body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
                if fmt == "anthropic":
                    body["max_tokens"] = 5
                status, _, reply = CLIENT.post(router.port, path, json.dumps(body).encode())
                assert status == 200, (text, reply)
                got = strict_json(fake.requests[-1].body)
                assert got["messages"][-1]["content"] in (text, [{"type": "text", "text": text}]), (text, got)
                sent += 1
            router.wait_records(sent)
            # The feed still delivers (an unencodable event would have killed it).
            feed.until(b"event: complete", count=sent)
            assert feed.data.count(b"event: complete") == sent
            feed.close()
    raw = log_path.read_bytes()
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert len(lines) == sent and len(raw.decode("utf-8").splitlines()) == sent
    logged = [json.loads(line)["messages"][0]["content"] for line in lines]
    assert logged == texts
    record("json.unicode_strings", len(texts), unit="strings", exact_at_upstream=len(texts), routes=3,
           log_lines=len(lines), log_splitlines=len(lines))
