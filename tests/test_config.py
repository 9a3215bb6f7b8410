import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from llmrouter import config
from llmrouter.config import Candidate, Config, Entry, Rule
from llmrouter.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CANARY = "sk-Zq9vX3kLmP7wR2tYb8nC"

LOCAL = """
[[providers]]
name = "local"
format = "openai"
base_url = "http://127.0.0.1:8080/v1"
"""
OLLAMA = """
[[providers]]
name = "ollama"
format = "ollama"
base_url = "http://127.0.0.1:11434"
"""


def parse_text(text: str, environ=None, **kw) -> Config:
    data = tomllib.loads(textwrap.dedent(text))
    return config.parse(data, source="config.toml", environ=environ or {}, **kw)


def problems_of(text: str, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_text(text, environ)
    return info.value.problems


def assert_no_canary(text: str) -> None:
    for i in range(len(CANARY) - 7):
        assert CANARY[i : i + 8] not in text, f"secret piece leaked into: {text}"


# Each case: (id, TOML text, key path named in the message, a fragment of the message).
BROKEN = [
    ("unknown-top", "[sever]\nport = 1\n" + LOCAL, "sever", "did you mean 'server'?"),
    ("port-string", '[server]\nport = "8090"\n' + LOCAL, "server.port", "expected an integer, got a string"),
    ("port-high", "[server]\nport = 70000\n" + LOCAL, "server.port", "between 0 and 65535"),
    ("port-negative", "[server]\nport = -1\n" + LOCAL, "server.port", "between 0 and 65535"),
    ("port-bool", "[server]\nport = true\n" + LOCAL, "server.port", "got a boolean"),
    ("port-float", "[server]\nport = 8090.0\n" + LOCAL, "server.port", "expected an integer, got a float"),
    ("port-date", "[server]\nport = 1979-05-27\n" + LOCAL, "server.port", "got a date/time"),
    ("dashboard-string", '[server]\ndashboard = "yes"\n' + LOCAL, "server.dashboard", "expected a boolean"),
    ("timeout-zero", "[server]\nheader_timeout = 0\n" + LOCAL, "server.header_timeout", "must be > 0"),
    ("timeout-negative", "[server]\nbody_timeout = -5\n" + LOCAL, "server.body_timeout", "must be > 0"),
    ("timeout-nan", "[server]\ndrain_timeout = nan\n" + LOCAL, "server.drain_timeout", "finite"),
    ("timeout-inf", "[server]\nkeepalive_timeout = inf\n" + LOCAL, "server.keepalive_timeout", "finite"),
    ("attempts-zero", "[server]\nmax_attempts = 0\n" + LOCAL, "server.max_attempts", "must be >= 1"),
    ("server-typo", "[server]\nhots = '127.0.0.1'\n" + LOCAL, "server.hots", "did you mean 'host'?"),
    ("server-not-table", 'server = "x"\n' + LOCAL, "server", "expected a table, got a string"),
    ("host-exposed", '[server]\nhost = "0.0.0.0"\n' + LOCAL, "server.host", "allow_unauthenticated"),
    ("host-ipv6-any", '[server]\nhost = "::"\n' + LOCAL, "server.host", "set server.api_key_env"),
    ("host-key-unset", '[server]\nhost = "0.0.0.0"\napi_key_env = "ROUTER_KEY"\n' + LOCAL,
     "server.api_key_env", "$ROUTER_KEY is not set"),
    ("host-url", '[server]\nhost = "http://localhost"\n' + LOCAL, "server.host", "IP address or a host name"),
    ("stream-idle-zero", "[server]\nstream_idle_timeout = 0\n" + LOCAL, "server.stream_idle_timeout", "must be > 0"),
    ("allowed-hosts-string", '[server]\nallowed_hosts = "router.lan"\n' + LOCAL, "server.allowed_hosts", "expected an array of host names"),
    ("allowed-hosts-port", '[server]\nallowed_hosts = ["ok.lan", "router.lan:8090"]\n' + LOCAL, "server.allowed_hosts[1]", "no scheme, port or path"),
    ("allowed-hosts-url", '[server]\nallowed_hosts = ["http://router.lan"]\n' + LOCAL, "server.allowed_hosts[0]", 'or "*" for any'),
    ("allowed-hosts-int", '[server]\nallowed_hosts = [1]\n' + LOCAL, "server.allowed_hosts[0]", "expected a string, got an integer"),
    ("allowed-hosts-empty", '[server]\nallowed_hosts = [""]\n' + LOCAL, "server.allowed_hosts[0]", "host name or an IP address"),
    ("server-key-name", '[server]\napi_key_env = "my key"\n' + LOCAL, "server.api_key_env", "name of an environment variable"),
    ("logging-enabled-int", "[logging]\nenabled = 1\n" + LOCAL, "logging.enabled", "expected a boolean"),
    ("logging-unset-var", '[logging]\npath = "${NOPE_UNSET}/x.jsonl"\n' + LOCAL, "logging.path", "${NOPE_UNSET} is not set"),
    ("logging-malformed-var", '[logging]\npath = "${BROKEN/x"\n' + LOCAL, "logging.path", "malformed"),
    ("section-key-misplaced", LOCAL + 'routers = []\n', "providers[0].routers", "into the table above it"),
    ("logging-unknown", '[logging]\nlevel = "debug"\n' + LOCAL, "logging.level", "unknown key"),
    ("no-providers", "[server]\nport = 1\n", "providers", "at least one"),
    ("providers-empty", "providers = []\n", "providers", "at least one"),
    ("providers-table", '[providers]\nname = "x"\n', "providers", "expected an array of tables"),
    ("provider-typo", LOCAL + 'base_ur1 = "http://x"\n', "providers[0].base_ur1", "unknown key (did you mean 'base_url'?)"),
    ("provider-no-name", '[[providers]]\nformat = "openai"\nbase_url = "http://x"\n', "providers[0].name", "required key is missing"),
    ("provider-no-format", '[[providers]]\nname = "a"\nbase_url = "http://x"\n', "providers[0].format", "required key is missing"),
    ("provider-no-url", '[[providers]]\nname = "a"\nformat = "openai"\n', "providers[0].base_url", "required key is missing"),
    ("format-typo", LOCAL.replace('"openai"', '"opneai"'), "providers[0].format", "unknown format 'opneai' (did you mean 'openai'?)"),
    ("format-case", LOCAL.replace('"openai"', '"OpenAI"'), "providers[0].format", "unknown format"),
    ("url-ftp", LOCAL.replace("http://127.0.0.1:8080/v1", "ftp://host/x"), "providers[0].base_url", "http:// or https://"),
    ("url-file", LOCAL.replace("http://127.0.0.1:8080/v1", "file:///etc/passwd"), "providers[0].base_url", "http:// or https://"),
    ("url-no-host", LOCAL.replace("http://127.0.0.1:8080/v1", "http://"), "providers[0].base_url", "must name a host"),
    ("url-credentials", LOCAL.replace("http://127.0.0.1:8080/v1", "https://u:p@host/v1"), "providers[0].base_url", "credentials"),
    ("url-bad-port", LOCAL.replace("8080", "99999"), "providers[0].base_url", "not a valid URL"),
    ("url-query", LOCAL.replace("/v1", "/v1?x=1"), "providers[0].base_url", "query string"),
    ("url-space", LOCAL.replace("/v1", "/v 1"), "providers[0].base_url", "whitespace"),
    ("duplicate-name", LOCAL + LOCAL, "providers[1].name", "duplicate provider name 'local' (first declared at providers[0])"),
    ("name-space", LOCAL.replace('"local"', '"my local"'), "providers[0].name", "letters, digits"),
    ("cost-negative", LOCAL + "cost_per_1m_tokens = -1\n", "providers[0].cost_per_1m_tokens", "must be >= 0"),
    ("quality-string", LOCAL + 'quality = "high"\n', "providers[0].quality", "expected a number, got a string"),
    ("latency-inf", LOCAL + "latency_ms = inf\n", "providers[0].latency_ms", "finite"),
    ("models-string", LOCAL + 'models = "gpt-4o"\n', "providers[0].models", "expected an array of strings"),
    ("models-item", LOCAL + 'models = ["a", 3]\n', "providers[0].models[1]", "expected a string, got an integer"),
    ("header-name", LOCAL + 'headers = { "Bad Header" = "x" }\n', 'providers[0].headers."Bad Header"', "not a valid HTTP header name"),
    ("header-reserved", LOCAL + 'headers = { Host = "x" }\n', "providers[0].headers.Host", "cannot be overridden"),
    ("header-int", LOCAL + "headers = { X-A = 1 }\n", "providers[0].headers.X-A", "expected a string, got an integer"),
    ("header-newline", LOCAL + 'headers = { X-A = "a\\nb" }\n', "providers[0].headers.X-A", "line breaks"),
    ("max-connections", LOCAL + "max_connections = 0\n", "providers[0].max_connections", "must be >= 1"),
    ("connect-timeout", LOCAL + "connect_timeout = 0\n", "providers[0].connect_timeout", "must be > 0"),
    ("api-key-in-file", LOCAL + 'api_key = "x"\n', "providers[0].api_key", "environment variable"),
    ("strict-string", LOCAL + 'strict = "true"\n', "providers[0].strict", "expected a boolean"),
    ("key-env-name", LOCAL + 'api_key_env = "sk-abc"\n', "providers[0].api_key_env", "not the key itself"),
    ("all-strict-dropped", LOCAL + 'api_key_env = "K1"\nstrict = true\n', "providers", "no provider is usable"),
    ("routers-string", 'routers = "prefix"\n' + LOCAL, "routers", "expected an array of tables"),
    ("rule-no-type", LOCAL + '[[routers]]\nprovider = "local"\n', "routers[0].type", "required key is missing"),
    ("rule-type-typo", LOCAL + '[[routers]]\ntype = "prefx"\n', "routers[0].type", "unknown router type 'prefx' (did you mean 'prefix'?)"),
    ("rule-type-int", LOCAL + "[[routers]]\ntype = 1\n", "routers[0].type", "expected a string"),
    ("prefix-no-prefix", LOCAL + '[[routers]]\ntype = "prefix"\nprovider = "local"\n', "routers[0].model_prefix", "required key is missing"),
    ("prefix-no-provider", LOCAL + '[[routers]]\ntype = "prefix"\nmodel_prefix = "x"\n', "routers[0].provider", "required key is missing"),
    ("tag-no-tag", LOCAL + '[[routers]]\ntype = "tag"\nprovider = "local"\n', "routers[0].tag", "required key is missing"),
    ("tag-empty", LOCAL + '[[routers]]\ntype = "tag"\ntag = ""\nprovider = "local"\n', "routers[0].tag", "must not be empty"),
    ("discover-no-provider", OLLAMA + '[[routers]]\ntype = "discover"\n', "routers[0].provider", "required key is missing"),
    ("discover-not-ollama", LOCAL + '[[routers]]\ntype = "discover"\nprovider = "local"\n', "routers[0].provider", "need an ollama provider"),
    ("rule-unknown-provider", OLLAMA + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "olama"\n',
     "routers[0].provider", "no provider named 'olama' (did you mean 'ollama'?)"),
    ("price-unknown-provider", LOCAL + '[[routers]]\ntype = "price"\nproviders = ["local", "nope"]\n', "routers[0].providers[1]", "no provider named 'nope'"),
    ("price-listed-twice", LOCAL + '[[routers]]\ntype = "price"\nproviders = ["local", "local"]\n', "routers[0].providers[1]", "listed twice"),
    ("price-rewrite", LOCAL + '[[routers]]\ntype = "price"\nrewrite_model = "m"\n', "routers[0].rewrite_model", "not used by 'price' rules"),
    ("price-threshold", LOCAL + '[[routers]]\ntype = "price"\nmax_cost_per_1m_tokens = "cheap"\n', "routers[0].max_cost_per_1m_tokens", "expected a number"),
    ("tag-strip", LOCAL + '[[routers]]\ntype = "tag"\ntag = "t"\nprovider = "local"\nstrip_prefix = true\n', "routers[0].strip_prefix", "not used by 'tag' rules"),
    ("strip-and-rewrite", LOCAL + '[[routers]]\ntype = "prefix"\nmodel_prefix = "a/"\nprovider = "local"\nstrip_prefix = true\nrewrite_model = "m"\n',
     "routers[0].strip_prefix", "no effect together with rewrite_model"),
    ("rule-typo", LOCAL + '[[routers]]\ntype = "prefix"\nmodel_prefx = "a/"\nprovider = "local"\n', "routers[0].model_prefx", "did you mean 'model_prefix'?"),
    ("fallback-bias-nan", LOCAL + '[[routers]]\ntype = "fallback"\nquality_bias = nan\n', "routers[0].quality_bias", "finite"),
    ("random-candidate-model", LOCAL + '[[routers]]\ntype = "random"\ncandidates = [{ provider = "local" }]\n', "routers[0].candidates[0].model", "required key is missing"),
    ("random-candidate-provider", LOCAL + '[[routers]]\ntype = "random"\ncandidates = [{ provider = "gone", model = "m" }]\n',
     "routers[0].candidates[0].provider", "no provider named 'gone'"),
    ("random-candidates-and-providers", LOCAL + '[[routers]]\ntype = "random"\nproviders = ["local"]\ncandidates = [{ provider = "local", model = "m" }]\n',
     "routers[0].providers", "cannot be combined with candidates"),
    ("random-candidates-not-list", LOCAL + '[[routers]]\ntype = "random"\ncandidates = "local"\n', "routers[0].candidates", "expected an array of tables"),
    ("classifier-typo", LOCAL + "[classifiers.keywrd]\nenabled = true\n", "classifiers.keywrd", "did you mean 'keyword'?"),
    ("classifiers-not-table", 'classifiers = "keyword"\n' + LOCAL, "classifiers", "expected a table"),
    ("classifier-enabled-string", LOCAL + '[classifiers.keyword]\nenabled = "yes"\n', "classifiers.keyword.enabled", "expected a boolean"),
    ("keyword-tags-string", LOCAL + '[classifiers.keyword.tags]\ncode = "python"\n', "classifiers.keyword.tags.code", "expected an array of strings"),
    ("keyword-tag-item", LOCAL + '[classifiers.keyword.tags]\ncode = ["python", 1]\n', "classifiers.keyword.tags.code[1]", "expected a string"),
    ("keyword-scan", LOCAL + '[classifiers.keyword]\nscan = "first"\n', "classifiers.keyword.scan", "unknown scan mode 'first'"),
    ("plugin-web", LOCAL + "[plugins.web]\nenabled = true\n", "plugins.web", "not built in"),
    ("plugin-pdf", LOCAL + "[plugins.pdf]\nenabled = false\n", "plugins.pdf", "not built in"),
    ("plugin-typo", LOCAL + "[plugins.response-heal]\nenabled = true\n", "plugins.response-heal", "did you mean 'response-healing'?"),
    ("plugin-unknown-setting", LOCAL + "[plugins.response-healing]\nmode = 1\n", "plugins.response-healing.mode", "unknown key"),
    ("pareto-no-tiers", LOCAL + "[plugins.pareto-router]\nenabled = true\n", "plugins.pareto-router.tiers", "required when the plugin is enabled"),
    ("pareto-unknown-provider", LOCAL + '[plugins.pareto-router]\ntiers = { low = ["local", "cloud"] }\n',
     "plugins.pareto-router.tiers.low[1]", "no provider named 'cloud'"),
    ("pareto-empty-tier", LOCAL + "[plugins.pareto-router]\ntiers = { low = [] }\n", "plugins.pareto-router.tiers.low", "at least one provider"),
    ("pareto-default-tier", LOCAL + '[plugins.pareto-router]\ndefault_tier = "medium"\ntiers = { low = ["local"] }\n',
     "plugins.pareto-router.default_tier", "no tier named 'medium'"),
]


@pytest.mark.parametrize("text, path, fragment", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config_names_file_and_key(tmp_path, text, path, fragment):
    file = tmp_path / "config.toml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(str(file), environ={})
    prefix = f"{file}: {path}: "
    matching = [p for p in info.value.problems if p.startswith(prefix)]
    assert matching, f"no problem at {path!r}: {info.value.problems}"
    assert any(fragment in p for p in matching), info.value.problems
    # Every problem line names the file; the error's text is those lines.
    assert all(p.startswith(f"{file}: ") for p in info.value.problems)
    assert str(info.value) == "\n".join(info.value.problems)


def test_at_least_forty_broken_cases():
    assert len({c[0] for c in BROKEN}) == len(BROKEN) >= 40


@pytest.mark.parametrize(
    "raw, where",
    [
        (b"[server\nport = 1\n", "line 1, column 8"),
        (b"[server]\nport = = 1\n", "line 2, column 8"),
        (b'[server]\nhost = "a"\nhost = "b"\n', "line 3"),
    ],
)
def test_toml_syntax_error_names_line_and_column(tmp_path, raw, where):
    file = tmp_path / "bad.toml"
    file.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        config.load(str(file), environ={})
    (problem,) = info.value.problems
    assert problem.startswith(f"{file}: {where}")
    assert "invalid TOML" in problem


def test_invalid_utf8(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        config.load(str(file), environ={})


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(str(tmp_path / "nope.toml"), environ={})
    assert info.value.problems[0].startswith(f"{tmp_path / 'nope.toml'}: cannot read")
    with pytest.raises(ConfigError) as info:
        config.load(str(tmp_path), environ={})
    assert info.value.problems[0].startswith(f"{tmp_path}: cannot read")


def test_every_problem_is_reported_at_once():
    problems = problems_of(
        """
        [server]
        port = 99999
        colour = "red"
        [[providers]]
        name = "a"
        format = "gopher"
        base_url = "ftp://x"
        [[routers]]
        type = "prefix"
        model_prefix = "x"
        provider = "b"
        [plugins.web]
        """
    )
    paths = [p.split(": ")[1] for p in problems]
    assert paths == [
        "server.port",
        "server.colour",
        "providers[0].format",
        "providers[0].base_url",
        "routers[0].provider",
        "plugins.web",
    ]


def test_provider_with_problems_does_not_cascade_into_rules():
    # 'a' is declared (if broken), so the rule naming it adds no second error.
    problems = problems_of(
        '[[providers]]\nname = "a"\nformat = "openai"\nbase_url = "nope"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "a"\n'
    )
    assert len(problems) == 1 and "providers[0].base_url" in problems[0]


FULL = """
[server]
host = "::1"
port = 0
dashboard = false
max_body_bytes = 1024
header_timeout = 1
max_attempts = 2
fallback_on_error = false
discovery_interval = 5
breaker_failures = 3
breaker_cooldown = 0.5
stream_idle_timeout = 7
allowed_hosts = ["Router.LAN", "[fe80::1]", "10.0.0.2"]

[logging]
enabled = true
path = "logs/r.jsonl"

[[providers]]
name = "local"
format = "openai"
base_url = "http://127.0.0.1:8080/v1///"
cost_per_1m_tokens = 0
quality = 60
latency_ms = 900
throughput_tokens_per_sec = 20
models = ["qwen", "llama"]
headers = { X-Team = "research", "User-Agent" = "me" }
max_connections = 8
connect_timeout = 1
first_byte_timeout = 2.5
idle_timeout = 3
total_timeout = 4

[[providers]]
name = "ollama"
format = "ollama"
base_url = "http://127.0.0.1:11434"

[[providers]]
name = "openai"
format = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[[routers]]
type = "prefix"
model_prefix = "ollama/"
provider = "ollama"
strip_prefix = true

[[routers]]
type = "tag"
tag = "code"
provider = "openai"
rewrite_model = "gpt-4o"

[[routers]]
type = "price"
providers = ["local", "ollama"]
max_cost_per_1m_tokens = 1

[[routers]]
type = "latency"
max_latency_ms = 500

[[routers]]
type = "throughput"
min_tokens_per_sec = 10

[[routers]]
type = "fallback"
quality_bias = 0.8

[[routers]]
type = "discover"
provider = "ollama"

[[routers]]
type = "random"
candidates = [{ provider = "local", model = "qwen" }, { provider = "ollama", model = "llama3" }]

[classifiers.keyword]
enabled = true
word_boundary = true
scan = "last_user"
tags = { code = ["python", "def "], vision = ["image"] }

[plugins.response-healing]
enabled = true

[plugins.pareto-router]
default_tier = "low"
tiers = { low = ["local"], high = ["openai", "local"] }
"""


def test_full_config_parses_every_key(tmp_path):
    cfg = parse_text(FULL, {"OPENAI_API_KEY": CANARY}, base_dir=str(tmp_path))
    s = cfg.server
    assert (s.host, s.port, s.dashboard, s.max_body_bytes) == ("::1", 0, False, 1024)
    assert (s.header_timeout, s.max_attempts, s.fallback_on_error) == (1.0, 2, False)
    assert isinstance(s.header_timeout, float) and s.discovery_interval == 5.0
    assert (s.breaker_failures, s.breaker_cooldown) == (3, 0.5)
    assert s.stream_idle_timeout == 7.0 and s.allowed_hosts == ("router.lan", "fe80::1", "10.0.0.2")
    assert cfg.logging.enabled and cfg.logging.path == str(tmp_path / "logs" / "r.jsonl")
    local, ollama, openai = cfg.providers
    assert local.base_url == "http://127.0.0.1:8080/v1"
    assert local.models == ("qwen", "llama")
    assert local.headers == (("X-Team", "research"), ("User-Agent", "me"))
    assert (local.max_connections, local.connect_timeout, local.first_byte_timeout) == (8, 1.0, 2.5)
    assert (local.idle_timeout, local.total_timeout) == (3.0, 4.0)
    assert (local.cost_per_1m_tokens, local.quality, local.latency_ms) == (0.0, 60.0, 900.0)
    assert ollama.cost_per_1m_tokens is None and ollama.api_key is None
    assert openai.api_key == CANARY and openai.strict is False
    assert cfg.provider("openai") is openai and cfg.provider("nope") is None
    assert [r.type for r in cfg.routers] == ["prefix", "tag", "price", "latency", "throughput", "fallback", "discover", "random"]
    assert cfg.routers[0] == Rule(type="prefix", provider="ollama", model_prefix="ollama/", strip_prefix=True)
    assert cfg.routers[1] == Rule(type="tag", tag="code", provider="openai", rewrite_model="gpt-4o")
    assert cfg.routers[2] == Rule(type="price", providers=("local", "ollama"), max_cost_per_1m_tokens=1.0)
    assert cfg.routers[3].max_latency_ms == 500.0 and cfg.routers[3].providers == ()
    assert cfg.routers[4].min_tokens_per_sec == 10.0
    assert cfg.routers[5].quality_bias == 0.8
    assert cfg.routers[7].candidates == (Candidate("local", "qwen"), Candidate("ollama", "llama3"))
    assert cfg.classifiers == {
        "keyword": Entry(True, {"word_boundary": True, "scan": "last_user", "tags": {"code": ["python", "def "], "vision": ["image"]}})
    }
    assert cfg.plugins["response-healing"] == Entry(True, {})
    assert cfg.plugins["pareto-router"].enabled is False
    assert cfg.plugins["pareto-router"].settings["tiers"]["high"] == ["openai", "local"]
    assert cfg.source == "config.toml" and cfg.warnings == ()


def test_minimal_config_defaults():
    cfg = parse_text(LOCAL)
    assert cfg.server == config.ServerConfig()
    assert cfg.server.host == "127.0.0.1"
    assert cfg.logging == config.LoggingConfig(enabled=False, path="logs/requests.jsonl")
    assert cfg.routers == () and cfg.classifiers == {} and cfg.plugins == {}
    assert any("no [[routers]]" in w for w in cfg.warnings)


def test_int_accepted_where_float_wanted_but_bool_is_not_int():
    cfg = parse_text(LOCAL + "connect_timeout = 2\n")
    assert cfg.providers[0].connect_timeout == 2.0
    assert problems_of(LOCAL + "max_connections = true\n")


def test_strict_provider_without_key_is_skipped_and_rules_naming_it_pass():
    text = LOCAL + """
[[providers]]
name = "openai"
format = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
strict = true

[[routers]]
type = "prefix"
model_prefix = "gpt-"
provider = "openai"
"""
    for environ in ({}, {"OPENAI_API_KEY": ""}):
        cfg = parse_text(text, environ)
        assert [p.name for p in cfg.providers] == ["local"]
        assert [p.name for p in cfg.skipped_providers] == ["openai"]
        assert cfg.warnings == ("skipping provider 'openai': $OPENAI_API_KEY is not set (strict = true)",)
        assert cfg.routers[0].provider == "openai"
    cfg = parse_text(text, {"OPENAI_API_KEY": CANARY})
    assert [p.name for p in cfg.providers] == ["local", "openai"]
    assert cfg.provider("openai").api_key == CANARY and cfg.warnings == ()


def test_non_strict_provider_without_key_is_kept_with_a_warning():
    cfg = parse_text(LOCAL + 'api_key_env = "LOCAL_KEY"\n')
    assert cfg.providers[0].api_key is None
    assert cfg.warnings[0] == "provider 'local': $LOCAL_KEY is not set; requests to it will fail until it is"


def test_exposed_host_with_key_or_explicit_opt_out():
    cfg = parse_text('[server]\nhost = "0.0.0.0"\napi_key_env = "ROUTER_KEY"\n' + LOCAL, {"ROUTER_KEY": CANARY})
    assert cfg.server.api_key == CANARY and cfg.server.api_key_env == "ROUTER_KEY"
    assert CANARY not in repr(cfg.server)
    cfg = parse_text('[server]\nhost = "192.168.1.5"\nallow_unauthenticated = true\n' + LOCAL)
    assert cfg.server.api_key is None
    for host in ("localhost", "127.0.0.2", "::1"):
        assert parse_text(f'[server]\nhost = "{host}"\n' + LOCAL).server.host == host


def test_allowed_hosts_warnings_and_what_check_prints():
    """The DNS-rebinding guard: check says which Host names are served, and
    warns when the guard is off without a key, or would refuse the clients of
    an unauthenticated non-loopback bind."""
    cfg = parse_text(LOCAL)
    assert "allowed hosts: loopback addresses, localhost\n" in config.describe(cfg)
    assert not any("allowed_hosts" in w for w in cfg.warnings)
    cfg = parse_text('[server]\nallowed_hosts = ["router.lan"]\n' + LOCAL)
    assert "allowed hosts: loopback addresses, localhost, router.lan\n" in config.describe(cfg)
    off = parse_text('[server]\nallowed_hosts = ["*"]\n' + LOCAL)
    assert 'allowed hosts: any (allowed_hosts = ["*"]: the Host check is off)' in config.describe(off)
    assert any(w.startswith('server.allowed_hosts: "*" turns the Host check off and there is no client key') for w in off.warnings)
    keyed = parse_text('[server]\nallowed_hosts = ["*"]\napi_key_env = "K"\n' + LOCAL, {"K": CANARY})
    assert not any("Host" in w for w in keyed.warnings)
    exposed = parse_text('[server]\nhost = "0.0.0.0"\nallow_unauthenticated = true\n' + LOCAL)
    assert any("list the other names and addresses clients use in server.allowed_hosts" in w for w in exposed.warnings)
    assert "allowed hosts: loopback addresses, localhost, 0.0.0.0\n" in config.describe(exposed)
    listed = parse_text('[server]\nhost = "0.0.0.0"\nallow_unauthenticated = true\nallowed_hosts = ["router.lan"]\n' + LOCAL)
    assert not any("allowed_hosts" in w for w in listed.warnings)
    # A key and no allowed_hosts: keyed clients may use any Host; nothing to warn about.
    keyed = parse_text('[server]\nhost = "0.0.0.0"\napi_key_env = "K"\n' + LOCAL, {"K": CANARY})
    assert not any("allowed_hosts" in w for w in keyed.warnings)
    assert "; any host with the client key" in config.describe(keyed)
    # --host re-evaluates the warning for the address actually bound.
    loose = parse_text("[server]\nallow_unauthenticated = true\n" + LOCAL)
    assert not any("allowed_hosts" in w for w in loose.warnings)
    moved = config.override_listen(loose, host="0.0.0.0")
    assert sum("allowed_hosts" in w for w in moved.warnings) == 1
    assert not any("allowed_hosts" in w for w in config.override_listen(moved, host="127.0.0.1").warnings)


def test_loopback_with_key_env_still_needs_the_variable():
    assert problems_of('[server]\napi_key_env = "ROUTER_KEY"\n' + LOCAL) == [
        "config.toml: server.api_key_env: $ROUTER_KEY is not set; clients could not authenticate"
    ]


def test_override_listen():
    cfg = parse_text(LOCAL)
    assert config.override_listen(cfg, port=9000).server.port == 9000
    assert config.override_listen(cfg, host="localhost").server.host == "localhost"
    with pytest.raises(ConfigError, match=r"^--host: binding '0\.0\.0\.0'"):
        config.override_listen(cfg, host="0.0.0.0")
    with pytest.raises(ConfigError, match="--port"):
        config.override_listen(cfg, port=70000)
    with pytest.raises(ConfigError, match="--host: must be an IP"):
        config.override_listen(cfg, host="http://x")
    keyed = parse_text('[server]\napi_key_env = "K"\n' + LOCAL, {"K": CANARY})
    assert config.override_listen(keyed, host="0.0.0.0").server.api_key == CANARY


@pytest.mark.parametrize(
    "path, environ, base_dir, expected",
    [
        ("logs/x.jsonl", {}, "/etc/cfg", "/etc/cfg/logs/x.jsonl"),
        ("logs/x.jsonl", {}, None, "logs/x.jsonl"),
        ("/var/log/x.jsonl", {}, "/etc/cfg", "/var/log/x.jsonl"),
        ("~/x.jsonl", {"HOME": "/home/u"}, "/etc/cfg", "/home/u/x.jsonl"),
        ("${XDG_STATE_HOME:-~/.local/state}/r/x", {"HOME": "/h"}, None, "/h/.local/state/r/x"),
        ("${XDG_STATE_HOME:-~/.local/state}/r/x", {"HOME": "/h", "XDG_STATE_HOME": ""}, None, "/h/.local/state/r/x"),
        ("${XDG_STATE_HOME:-~/.local/state}/r/x", {"XDG_STATE_HOME": "/st"}, None, "/st/r/x"),
        ("${A}/${B}.jsonl", {"A": "/a", "B": "b"}, None, "/a/b.jsonl"),
        ("${REL}/x", {"REL": "rel"}, "/base", "/base/rel/x"),
        ("a/~/b", {"HOME": "/h"}, "/base", "/base/a/~/b"),
        ("$HOME/x", {"HOME": "/h"}, "/base", "/base/$HOME/x"),
    ],
)
def test_expand_path(path, environ, base_dir, expected):
    assert config.expand_path(path, environ, base_dir) == expected


def test_logging_path_resolves_against_the_config_file(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "router.toml").write_text('[logging]\nenabled = true\npath = "out/log.jsonl"\n' + LOCAL)
    cfg = config.load(str(sub / "router.toml"), environ={})
    assert cfg.logging.path == str(sub / "out" / "log.jsonl")


def test_did_you_mean_hints():
    problems = problems_of(LOCAL + 'base_url_ = "x"\ncost_per_1m_token = 1\nzzz = 1\n')
    assert "config.toml: providers[0].base_url_: unknown key (did you mean 'base_url'?)" in problems
    assert "config.toml: providers[0].cost_per_1m_token: unknown key (did you mean 'cost_per_1m_tokens'?)" in problems
    assert "config.toml: providers[0].zzz: unknown key" in problems
    # A misspelt required key is one problem, not also "required key is missing".
    problems = problems_of('[[providers]]\nname = "a"\nformat = "openai"\nbase_ur1 = "http://x"\n')
    assert problems == ["config.toml: providers[0].base_ur1: unknown key (did you mean 'base_url'?)"]


def test_empty_keyword_is_refused():
    # The original matched every request with an empty keyword (SPEC gap 22).
    problems = problems_of(LOCAL + '[classifiers.keyword]\nenabled = true\ntags = { all = ["x", ""] }\n')
    assert problems == ["config.toml: classifiers.keyword.tags.all[1]: must not be empty"]


def test_link_local_base_url_warns():
    cfg = parse_text(LOCAL.replace("127.0.0.1:8080", "169.254.169.254"))
    assert any("link-local" in w for w in cfg.warnings)


def test_secrets_never_appear_in_errors_describe_or_repr():
    environ = {"OPENAI_API_KEY": CANARY, "ROUTER_KEY": CANARY, "LOCAL_KEY": CANARY}
    text = (
        '[server]\nhost = "0.0.0.0"\napi_key_env = "ROUTER_KEY"\n'
        + LOCAL
        + 'api_key_env = "LOCAL_KEY"\nheaders = { X-Secret = "%s" }\n' % CANARY
        + '[[providers]]\nname = "openai"\nformat = "openai"\nbase_url = "https://api.openai.com/v1"\napi_key_env = "OPENAI_API_KEY"\n'
        + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "openai"\n'
    )
    cfg = parse_text(text, environ)
    assert cfg.provider("openai").api_key == CANARY
    out = config.describe(cfg)
    assert "key from $OPENAI_API_KEY: set" in out and "X-Secret" in out
    assert_no_canary(out)
    assert_no_canary(repr(cfg.providers[1]) + repr(cfg.server))
    # Secrets pasted into the wrong places are never echoed back.
    broken = [
        LOCAL.replace("http://127.0.0.1:8080/v1", f"https://user:{CANARY}@host/v1"),
        LOCAL.replace("http://127.0.0.1:8080/v1", f"{CANARY}"),
        LOCAL + f'api_key_env = "{CANARY}"\n',
        LOCAL + f'api_key = "{CANARY}"\n',
        LOCAL + f'headers = {{ X-K = "{CANARY}\\n" }}\n',
        LOCAL + f'headers = {{ Host = "{CANARY}" }}\n',
        LOCAL + f'models = [1, "{CANARY}"]\n',
        f'[server]\nport = "{CANARY}"\napi_key_env = "{CANARY}"\n' + LOCAL,
        LOCAL + f'[plugins.response-healing]\ntoken = "{CANARY}"\n',
        LOCAL + f'[classifiers.keyword]\ntags = {{ x = "{CANARY}" }}\n',
        LOCAL + f'quality = "{CANARY}"\n',
    ]
    for text in broken:
        problems = problems_of(text, environ)
        assert problems
        assert_no_canary("\n".join(problems))


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8090"), ("0.0.0.0", "http://127.0.0.1:8090"), ("::", "http://127.0.0.1:8090"),
     ("::1", "http://[::1]:8090"), ("[::1]", "http://[::1]:8090"), ("router.lan", "http://router.lan:8090")],
)
def test_server_url_is_one_a_local_client_can_open(host, url):
    assert config.server_url(host, 8090) == url


def test_describe_lists_everything():
    cfg = parse_text(FULL, {})
    out = config.describe(cfg)
    assert out.startswith("config: config.toml\nlisten: http://[::1]:0 ")
    assert "dashboard: off" in out and "request log: " in out
    assert "key from $OPENAI_API_KEY: missing" in out
    assert "extra headers: X-Team, User-Agent" in out
    assert "research" not in out  # header values may be secrets: names only
    for expected in (
        "  routers[0] prefix: model starts with 'ollama/' -> ollama (prefix stripped)",
        "  routers[1] tag: tagged 'code' -> openai as 'gpt-4o'",
        "  routers[2] price: cheapest over local, ollama, max cost 1/1M tokens",
        "  routers[3] latency: fastest to answer over all providers, max 500 ms",
        "  routers[4] throughput: most tokens/s over all providers, min 10 tokens/s",
        "  routers[5] fallback: best quality/cost (quality_bias 0.8) over all providers",
        "  routers[6] discover: models ollama reports -> ollama",
        "  routers[7] random: one of local:qwen, ollama:llama3",
        "classifiers: keyword",
        "plugins: response-healing",
        "warnings:\n  - provider 'openai': $OPENAI_API_KEY is not set",
    ):
        assert expected in out


def test_embedded_default_without_keys(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./config.toml here
    cfg = config.load(None, environ={"HOME": "/home/u"})
    assert cfg.source == config.BUILTIN_SOURCE == "<built-in default>"
    assert (cfg.server.host, cfg.server.port, cfg.server.dashboard) == ("127.0.0.1", 8090, True)
    assert cfg.logging.enabled and cfg.logging.path == "/home/u/.local/state/llmrouter/requests.jsonl"
    assert [p.name for p in cfg.providers] == ["llamacpp", "ollama"]
    assert [p.name for p in cfg.skipped_providers] == ["openai", "anthropic"]
    assert cfg.provider("llamacpp").base_url == "http://127.0.0.1:8080/v1"
    assert cfg.provider("ollama").format == "ollama"
    rules = [(r.type, r.model_prefix, r.provider, r.strip_prefix) for r in cfg.routers]
    assert rules == [
        ("prefix", "ollama/", "ollama", True),
        ("prefix", "local/", "llamacpp", True),
        ("prefix", "openai/", "openai", True),
        ("prefix", "anthropic/", "anthropic", True),
        ("prefix", "gpt-", "openai", False),
        ("prefix", "claude-", "anthropic", False),
        ("discover", None, "ollama", False),
        ("prefix", "", "llamacpp", False),
    ]
    assert len(cfg.warnings) == 2


def test_embedded_default_with_keys(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    environ = {"HOME": "/h", "XDG_STATE_HOME": "/state", "OPENAI_API_KEY": CANARY, "ANTHROPIC_API_KEY": CANARY}
    cfg = config.load(None, environ=environ)
    assert [p.name for p in cfg.providers] == ["llamacpp", "ollama", "openai", "anthropic"]
    assert cfg.provider("anthropic").api_key == CANARY and cfg.warnings == ()
    assert cfg.logging.path == "/state/llmrouter/requests.jsonl"
    assert_no_canary(config.describe(cfg))


def test_load_prefers_config_toml_in_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(LOCAL)
    cfg = config.load(None, environ={})
    assert cfg.source == "config.toml" and [p.name for p in cfg.providers] == ["local"]


def test_example_config_parses():
    cfg = config.load(str(ROOT / "config.example.toml"), environ={"HOME": "/h"})
    assert {p.name for p in cfg.providers} == {"local-llama", "ollama"}
    assert {p.name for p in cfg.skipped_providers} == {"cloudflare", "openai", "anthropic"}
    assert cfg.classifiers["keyword"].enabled
    assert set(cfg.classifiers["keyword"].settings["tags"]) == {"vision", "code"}
    assert cfg.plugins["response-healing"].enabled
    keys = {"CLOUDFLARE_API_TOKEN": "a", "OPENAI_API_KEY": "b", "ANTHROPIC_API_KEY": "c"}
    cfg = config.load(str(ROOT / "config.example.toml"), environ=keys)
    assert len(cfg.providers) == 5 and cfg.warnings == ()


def test_example_config_commented_parts_are_valid():
    # Uncommenting the optional rules and plugins must still give a valid config.
    lines = (ROOT / "config.example.toml").read_text().splitlines()
    start = lines.index("# [[routers]]")

    def uncomment(line: str) -> str:
        body = line[2:]
        toml = body.startswith(("[", "  {", "]")) or re.match(r"[a-z_]+ = ", body)
        return body if line.startswith("# ") and toml else line

    text = "\n".join(lines[:start] + [uncomment(line) for line in lines[start:]])
    cfg = parse_text(text, {"HOME": "/h", "OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "CLOUDFLARE_API_TOKEN": "k"})
    assert [r.type for r in cfg.routers].count("price") == 1
    assert cfg.routers[-2].candidates[1].provider == "cloudflare"
    assert cfg.plugins["pareto-router"].enabled


def test_importing_config_stays_light():
    code = "import sys, llmrouter.config; print(sorted(m for m in ('anyio', 'h11', 'httpcore', 'asyncio', 'ssl', 'difflib') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# --- ca_bundle: extra trusted CAs for https upstreams ------------------------------------

HTTPS = '[[providers]]\nname = "cloud"\nformat = "openai"\nbase_url = "https://api.example.com/v1"\n'


def test_ca_bundle_is_resolved_against_the_config_directory_and_checked(tmp_path):
    import certifi  # a real PEM bundle to point at

    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "corp.pem").write_bytes(Path(certifi.where()).read_bytes())
    file = sub / "router.toml"
    file.write_text(HTTPS + 'ca_bundle = "corp.pem"\n' + LOCAL)
    cfg = config.load(str(file), environ={})
    assert cfg.provider("cloud").ca_bundle == str(sub / "corp.pem")
    assert cfg.provider("local").ca_bundle is None
    assert f"also trusts the CAs in {sub / 'corp.pem'}" in config.describe(cfg)
    file.write_text(HTTPS + 'ca_bundle = "${CORP_CA}"\n' + LOCAL)
    assert config.load(str(file), environ={"CORP_CA": str(sub / "corp.pem")}).provider("cloud").ca_bundle == str(sub / "corp.pem")


def test_ca_bundle_that_is_missing_or_not_pem_stops_startup_naming_file_and_key(tmp_path):
    file = tmp_path / "router.toml"
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    strict_unset = 'api_key_env = "UNSET_KEY"\nstrict = true\n'  # checked even while skipped
    file.write_text(LOCAL + HTTPS + 'ca_bundle = "missing.pem"\n' + HTTPS.replace("cloud", "other") + strict_unset + 'ca_bundle = "notes.txt"\n')
    with pytest.raises(ConfigError) as info:
        config.load(str(file), environ={})
    assert info.value.problems == [
        f"{file}: providers[1].ca_bundle: cannot read {tmp_path / 'missing.pem'}: No such file or directory",
        f"{file}: providers[2].ca_bundle: {tmp_path / 'notes.txt'} holds no PEM certificate",
    ]
    assert problems_of(HTTPS + 'ca_bundle = ""\n') == ["config.toml: providers[0].ca_bundle: must not be empty"]
    assert problems_of(HTTPS + 'ca_bundle = "${NOPE}"\n')[0].startswith("config.toml: providers[0].ca_bundle: ${NOPE} is not set")
