"""Configuration: the TOML schema as frozen dataclasses, parsed strictly.

`parse` turns the dict tomllib produced into a `Config` and is pure (the
environment comes in as a mapping). It checks everything it can before the
router binds a port: unknown keys (with a "did you mean" hint), types, ranges,
references between rules and providers. Every problem is collected and raised
together as one `ConfigError`, each line `"{source}: {key.path}: {message}"`.
Messages name keys and environment variables, never the values of secrets.

`load` reads a file (or the embedded default) and calls `parse`; `describe`
renders the result for `llmrouter check`. The schema is in docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from llmrouter.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

FORMATS = ("openai", "anthropic", "ollama")
RULE_TYPES = ("prefix", "tag", "price", "latency", "throughput", "fallback", "discover", "random", "least_busy")
CLASSIFIER_IDS = ("keyword",)
PLUGIN_IDS = ("response-healing", "pareto-router")
DEFAULT_PATH = "config.toml"
BUILTIN_SOURCE = "<built-in default>"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    dashboard: bool = True
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0  # request line + headers must arrive within this
    body_timeout: float = 60.0  # the whole body must arrive within this
    keepalive_timeout: float = 75.0  # idle keep-alive connections are closed after this
    drain_timeout: float = 30.0  # graceful shutdown waits this long for in-flight requests
    max_attempts: int = 3  # providers tried per request (fallback), first included
    fallback_on_error: bool = True
    api_key_env: str | None = None  # clients must present this key when set
    allow_unauthenticated: bool = False  # needed to bind a non-loopback host without a key
    discovery_interval: float = 60.0
    discovery_timeout: float = 2.0
    breaker_failures: int = 5  # consecutive failures that open a provider's circuit
    breaker_cooldown: float = 30.0  # first cool-down of an open circuit (doubles on repeat)
    stream_idle_timeout: float = 300.0  # longest wait for a stream event; keep-alive bytes do not count
    # Host names clients may use besides loopback, localhost and `host` (DNS-rebinding guard); "*" = any.
    allowed_hosts: tuple[str, ...] = ()
    # Resolved from api_key_env; never printed (repr=False).
    api_key: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class LoggingConfig:
    enabled: bool = False
    path: str = "logs/requests.jsonl"  # after ${VAR} and ~ expansion, made absolute by load
    embedding_inputs: bool = False  # log embedding input texts (else only their count and sizes)


@dataclass(frozen=True)
class MetricsConfig:
    model_label: bool = False  # a `model` label on GET /metrics series (unbounded cardinality)


@dataclass(frozen=True)
class Provider:
    name: str
    format: str  # one of FORMATS
    base_url: str  # trailing slashes stripped
    api_key_env: str | None = None
    strict: bool = False
    cost_per_1m_tokens: float | None = None
    quality: float | None = None
    latency_ms: float | None = None
    throughput_tokens_per_sec: float | None = None
    models: tuple[str, ...] = ()  # declared models, listed by /v1/models
    headers: tuple[tuple[str, str], ...] = ()  # extra static headers sent upstream
    max_connections: int = 64
    connect_timeout: float = 5.0
    first_byte_timeout: float = 120.0  # until the response head arrives
    idle_timeout: float = 120.0  # longest silence between two body chunks
    total_timeout: float = 900.0  # the whole exchange
    ca_bundle: str | None = None  # extra trusted CAs (PEM) for https; absolute after load
    # Resolved from api_key_env at startup; never printed (repr=False).
    api_key: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Candidate:
    provider: str
    model: str


@dataclass(frozen=True)
class Rule:
    type: str  # one of RULE_TYPES
    provider: str | None = None  # prefix, tag, discover
    providers: tuple[str, ...] = ()  # price, latency, throughput, fallback, random; () = all
    model_prefix: str | None = None
    tag: str | None = None
    rewrite_model: str | None = None
    max_cost_per_1m_tokens: float | None = None
    max_latency_ms: float | None = None
    min_tokens_per_sec: float | None = None
    quality_bias: float = 0.5
    candidates: tuple[Candidate, ...] = ()
    strip_prefix: bool = False  # prefix rules: send the model without model_prefix
    measured: bool = False  # latency, throughput: rank by live measurements (llmrouter/measure.py)


@dataclass(frozen=True)
class Entry:
    """A `[classifiers.<id>]` or `[plugins.<id>]` table."""

    enabled: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    providers: tuple[Provider, ...] = ()  # active providers, in config order
    routers: tuple[Rule, ...] = ()
    classifiers: dict[str, Entry] = field(default_factory=dict)
    plugins: dict[str, Entry] = field(default_factory=dict)
    source: str = "<default>"  # the file it came from
    warnings: tuple[str, ...] = ()  # non-fatal problems, printed at startup
    # Dropped at startup (strict = true, key unset): rules naming them just pass.
    skipped_providers: tuple[Provider, ...] = ()

    def provider(self, name: str) -> Provider | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None


# ---------------------------------------------------------------------------
# Value checks. Each takes a TOML value and returns it converted, or raises
# _Bad. Messages describe the value's type, never the value itself: it may be
# a secret pasted in the wrong place.


class _Bad(Exception):
    """Problems with one value, as (path suffix, message) pairs."""

    def __init__(self, message: str = "", suffix: str = "", items: list | None = None) -> None:
        super().__init__(message)
        self.items: list[tuple[str, str]] = items if items is not None else [(suffix, message)]


Check = Callable[[Any], Any]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _expect(value: Any, types: type | tuple[type, ...], name: str) -> None:
    # bool is an int subclass; TOML's true is never a number here.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _Bad(f"expected {name}, got a boolean")
    if not isinstance(value, types):
        raise _Bad(f"expected {name}, got {_kind(value)}")


def _close(word: str, options: Any) -> str | None:
    import difflib  # only needed on the error path

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return close[0] if close else None


def _hint(word: str, options: Any) -> str:
    close = _close(word, options)
    return f" (did you mean '{close}'?)" if close else ""


def _str(value: Any) -> str:
    _expect(value, str, "a string")
    return value


def _nonempty(value: Any) -> str:
    _expect(value, str, "a string")
    if not value.strip():
        raise _Bad("must not be empty")
    return value


def _bool(value: Any) -> bool:
    _expect(value, bool, "a boolean (true or false)")
    return value


def _int(lo: int, hi: int | None = None) -> Check:
    def check(value: Any) -> int:
        _expect(value, int, "an integer")
        if value < lo or (hi is not None and value > hi):
            raise _Bad(f"must be between {lo} and {hi}" if hi is not None else f"must be >= {lo}")
        return value

    return check


def _float(*, ge: float | None = None, gt: float | None = None) -> Check:
    def check(value: Any) -> float:
        _expect(value, (int, float), "a number")
        value = float(value)
        if not math.isfinite(value):
            raise _Bad("must be a finite number")
        if gt is not None and value <= gt:
            raise _Bad(f"must be > {gt:g}")
        if ge is not None and value < ge:
            raise _Bad(f"must be >= {ge:g}")
        return value

    return check


_timeout = _float(gt=0)


def _choice(options: tuple[str, ...], what: str) -> Check:
    def check(value: Any) -> str:
        _expect(value, str, "a string")
        if value not in options:
            # Enumerated words are not secrets, so the value is shown.
            raise _Bad(f"unknown {what} '{value}'{_hint(value, options)}; expected one of: {', '.join(options)}")
        return value

    return check


def _str_list(value: Any) -> tuple[str, ...]:
    _expect(value, list, "an array of strings")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            items.append((f"[{i}]", f"expected a string, got {_kind(item)}"))
        elif not item.strip():
            items.append((f"[{i}]", "must not be empty"))
    if items:
        raise _Bad(items=items)
    return tuple(value)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _env_name(value: Any) -> str:
    _expect(value, str, "a string")
    if not _ENV_NAME.match(value):
        # Often a key pasted where its variable's name belongs: never echo it.
        raise _Bad("must be the name of an environment variable (like 'OPENAI_API_KEY'), not the key itself")
    return value


_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def _provider_name(value: Any) -> str:
    _expect(value, str, "a string")
    if not _PROVIDER_NAME.match(value):
        raise _Bad("must start with a letter or digit and hold only letters, digits, '.', '_' and '-'")
    return value


def _base_url(value: Any) -> str:
    from urllib.parse import urlsplit

    _expect(value, str, "a string")
    # The URL may carry credentials, so no message below repeats it.
    if any(c.isspace() for c in value):
        raise _Bad("must not contain whitespace")
    try:
        parts = urlsplit(value)
        parts.port  # raises ValueError for a bad port
    except ValueError:
        raise _Bad("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise _Bad("must start with http:// or https://")
    if not parts.hostname:
        raise _Bad("must name a host")
    if parts.username is not None or parts.password is not None:
        raise _Bad("must not contain credentials (user:password@); name the key's variable with api_key_env")
    if parts.query or parts.fragment:
        raise _Bad("must not have a query string or fragment")
    return value.rstrip("/")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Framing and connection headers belong to the HTTP client; overriding them
# would desynchronise the upstream connection.
_RESERVED_HEADERS = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive",
    "upgrade", "te", "trailer", "proxy-connection",
}


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    _expect(value, dict, "a table of strings")
    items = []
    for name, text in value.items():
        suffix = f".{name}" if _TOKEN.match(name) else f'."{name}"'
        if not _TOKEN.match(name):
            items.append((suffix, "is not a valid HTTP header name"))
        elif name.lower() in _RESERVED_HEADERS:
            items.append((suffix, "is set by the router and cannot be overridden"))
        if not isinstance(text, str):
            items.append((suffix, f"expected a string, got {_kind(text)}"))
        elif any(c in text for c in "\r\n\0"):
            items.append((suffix, "must not contain line breaks or NUL"))
    if items:
        raise _Bad(items=items)
    return tuple(value.items())


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_path(text: str, environ: Mapping[str, str], base_dir: str | None = None) -> str:
    """Expand `${VAR}` / `${VAR:-default}`, then a leading `~`, then make a
    relative result relative to `base_dir` (when given). Raises ValueError
    naming an unset variable that has no default."""

    def sub(m: re.Match) -> str:
        value = environ.get(m.group(1), "")
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)  # shell semantics: unset or empty takes the default
        raise ValueError(f"${{{m.group(1)}}} is not set (write ${{{m.group(1)}:-fallback}} to give a default)")

    if "${" in _VAR.sub("", text):
        raise ValueError("has an unterminated or malformed ${...}")
    out = _VAR.sub(sub, text)
    if out == "~" or out.startswith("~/"):
        home = environ.get("HOME") or os.path.expanduser("~")
        out = home + out[1:]
    if base_dir is not None and not os.path.isabs(out):
        out = os.path.join(base_dir, out)
    return os.path.normpath(out)


# ---------------------------------------------------------------------------
# The reader: walks tables, records problems with their key paths.


def _join(path: str, key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        key = '"' + key.replace('"', '\\"') + '"'
    return f"{path}.{key}" if path else key


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}")

    def bad(self, path: str, exc: _Bad) -> None:
        for suffix, message in exc.items:
            self.problem(path + suffix, message)

    def table(
        self,
        path: str,
        value: Any,
        spec: Mapping[str, Check | None],
        required: tuple[str, ...] = (),
    ) -> dict[str, Any] | None:
        """Check a table against `spec` (key -> check; None = the caller
        checks it). Returns the keys that passed, or None if not a table."""
        if not isinstance(value, dict):
            self.problem(path, f"expected a table, got {_kind(value)}")
            return None
        out: dict[str, Any] = {}
        misspelt = set()  # required keys an unknown key looks like
        for key, item in value.items():
            sub = _join(path, key)
            if key not in spec:
                self.problem(sub, _unknown_key(key, spec))
                misspelt.add(_close(key, spec))
                continue
            check = spec[key]
            if check is None:
                out[key] = item
                continue
            try:
                out[key] = check(item)
            except _Bad as exc:
                self.bad(sub, exc)
        for key in required:
            # A typo already reported with "did you mean" needs no second line.
            if key not in value and key not in misspelt:
                self.problem(_join(path, key), "required key is missing")
        return out


def _unknown_key(key: str, known: Mapping[str, Any]) -> str:
    if key in ("api_key", "key", "token", "password", "secret"):
        return "unknown key (keys never live in the file: put it in an environment variable and name it with api_key_env)"
    if key in _TOP_SPEC and key not in known:
        # `routers = [...]` written after a [[providers]] table lands inside it.
        return "unknown key (TOML puts a key into the table above it: move top-level keys before the first [table])"
    return "unknown key" + _hint(key, known)


# ---------------------------------------------------------------------------
# Sections.

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z")


def _host(value: Any) -> str:
    _expect(value, str, "a string")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise _Bad("must be an IP address or a host name (no scheme, port or path), e.g. 127.0.0.1")
    return value


def _allowed_hosts(value: Any) -> tuple[str, ...]:
    _expect(value, list, "an array of host names")
    hosts, items = [], []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            items.append((f"[{i}]", f"expected a string, got {_kind(item)}"))
            continue
        name = item[1:-1] if item.startswith("[") and item.endswith("]") else item  # [::1] as in a URL
        try:
            hosts.append(item if item == "*" else _host(name).lower())
        except _Bad:
            items.append((f"[{i}]", 'must be a host name or an IP address (no scheme, port or path), or "*" for any'))
    if items:
        raise _Bad(items=items)
    return tuple(hosts)


_SERVER_SPEC: dict[str, Check | None] = {
    "host": _host,
    "port": _int(0, 65535),
    "dashboard": _bool,
    "max_body_bytes": _int(1),
    "max_header_bytes": _int(1024),
    "header_timeout": _timeout,
    "body_timeout": _timeout,
    "keepalive_timeout": _timeout,
    "drain_timeout": _timeout,
    "max_attempts": _int(1),
    "fallback_on_error": _bool,
    "api_key_env": _env_name,
    "allow_unauthenticated": _bool,
    "discovery_interval": _timeout,
    "discovery_timeout": _timeout,
    "breaker_failures": _int(1),
    "breaker_cooldown": _timeout,
    "stream_idle_timeout": _timeout,
    "allowed_hosts": _allowed_hosts,
}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other hostname may resolve to a public address


def _check_listen(r: _Reader, host: str, has_key: bool, allow: bool, where: str) -> None:
    if not is_loopback(host) and not has_key and not allow:
        r.problem(
            where,
            f"binding '{host}' exposes the router (and your provider keys) beyond this machine: "
            "set server.api_key_env to require a client key, "
            "or set server.allow_unauthenticated = true to accept that risk",
        )


def _server(r: _Reader, raw: Any, environ: Mapping[str, str]) -> ServerConfig:
    vals = r.table("server", raw, _SERVER_SPEC)
    if vals is None:
        return ServerConfig()
    server = ServerConfig(**vals)
    if server.api_key_env is not None:
        key = environ.get(server.api_key_env, "")
        if not key:
            r.problem("server.api_key_env", f"${server.api_key_env} is not set; clients could not authenticate")
        server = replace(server, api_key=key or None)
    _check_listen(r, server.host, server.api_key_env is not None, server.allow_unauthenticated, "server.host")
    r.warnings += host_check_warnings(server)
    return server


def host_check_warnings(server: ServerConfig) -> list[str]:
    """What the DNS-rebinding guard (a check of each request's Host) means
    for this server. With a client key there is nothing to say: a request
    that presents it may use any Host, and one that does not is refused anyway."""
    if server.api_key_env is not None:
        return []
    if "*" in server.allowed_hosts:
        return ['server.allowed_hosts: "*" turns the Host check off and there is no client key: '
                "any web page can reach the router through DNS rebinding (read the event feed, send chats)"]
    if not is_loopback(server.host) and not server.allowed_hosts:
        return [f"server.host: only requests for a loopback address, localhost or '{server.host}' are served (DNS-rebinding guard); "
                "list the other names and addresses clients use in server.allowed_hosts"]
    return []


_LOGGING_SPEC: dict[str, Check | None] = {"enabled": _bool, "path": _nonempty, "embedding_inputs": _bool}


def _logging(r: _Reader, raw: Any, environ: Mapping[str, str], base_dir: str | None) -> LoggingConfig:
    vals = r.table("logging", raw, _LOGGING_SPEC) if raw is not None else {}
    if vals is None:
        return LoggingConfig()
    log = LoggingConfig(**vals)
    try:
        return replace(log, path=expand_path(log.path, environ, base_dir))
    except ValueError as exc:
        r.problem("logging.path", str(exc))
        return log


_METRICS_SPEC: dict[str, Check | None] = {"model_label": _bool}

_PROVIDER_SPEC: dict[str, Check | None] = {
    "name": _provider_name,
    "format": _choice(FORMATS, "format"),
    "base_url": _base_url,
    "api_key_env": _env_name,
    "strict": _bool,
    "cost_per_1m_tokens": _float(ge=0),
    "quality": _float(),
    "latency_ms": _float(ge=0),
    "throughput_tokens_per_sec": _float(ge=0),
    "models": _str_list,
    "headers": _headers,
    "max_connections": _int(1),
    "connect_timeout": _timeout,
    "first_byte_timeout": _timeout,
    "idle_timeout": _timeout,
    "total_timeout": _timeout,
    "ca_bundle": _nonempty,
}
_PROVIDER_REQUIRED = ("name", "format", "base_url")


def _link_local(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return ipaddress.ip_address(urlsplit(url).hostname or "").is_link_local
    except ValueError:
        return False


def _providers(
    r: _Reader, raw: Any, environ: Mapping[str, str], base_dir: str | None
) -> tuple[list[Provider], list[Provider], dict[str, str]]:
    """Returns (active, skipped, every declared name -> format)."""
    active: list[Provider] = []
    skipped: list[Provider] = []
    declared: dict[str, str] = {}
    if raw is None:
        r.problem("providers", "at least one [[providers]] table is required")
        return active, skipped, declared
    if not isinstance(raw, list):
        r.problem("providers", f"expected an array of tables ([[providers]]), got {_kind(raw)}")
        return active, skipped, declared
    if not raw:
        r.problem("providers", "at least one [[providers]] table is required")
    first_index: dict[str, int] = {}
    start = len(r.problems)
    for i, item in enumerate(raw):
        path = f"providers[{i}]"
        before = len(r.problems)
        vals = r.table(path, item, _PROVIDER_SPEC, _PROVIDER_REQUIRED)
        if vals is None:
            continue
        name = vals.get("name")
        if name is not None:
            if name in first_index:
                r.problem(f"{path}.name", f"duplicate provider name '{name}' (first declared at providers[{first_index[name]}])")
            else:
                first_index[name] = i
                # Kept even if the table has other problems: rules naming it
                # should not add a second, misleading error.
                declared[name] = vals.get("format", "")
        if "ca_bundle" in vals:
            try:
                vals["ca_bundle"] = expand_path(vals["ca_bundle"], environ, base_dir)
            except ValueError as exc:
                r.problem(f"{path}.ca_bundle", str(exc))
        if len(r.problems) > before:
            continue
        provider = Provider(**vals)
        if _link_local(provider.base_url):
            r.warnings.append(f"provider '{name}': base_url is a link-local address (where cloud metadata services live)")
        if provider.api_key_env is not None:
            key = environ.get(provider.api_key_env, "")
            if not key:
                var = provider.api_key_env
                if provider.strict:
                    r.warnings.append(f"skipping provider '{name}': ${var} is not set (strict = true)")
                    skipped.append(provider)
                    continue
                r.warnings.append(f"provider '{name}': ${var} is not set; requests to it will fail until it is")
            provider = replace(provider, api_key=key or None)
        active.append(provider)
    if raw and len(r.problems) == start and not active:
        r.problem("providers", "no provider is usable: every one is strict and its API key variable is not set")
    return active, skipped, declared


# Keys each rule type uses; any other key of the rule schema is misplaced.
_RULE_KEYS: dict[str, tuple[str, ...]] = {
    "prefix": ("model_prefix", "provider", "rewrite_model", "strip_prefix"),
    "tag": ("tag", "provider", "rewrite_model"),
    "price": ("providers", "max_cost_per_1m_tokens"),
    "latency": ("providers", "max_latency_ms", "measured"),
    "throughput": ("providers", "min_tokens_per_sec", "measured"),
    "fallback": ("providers", "quality_bias", "rewrite_model"),
    "discover": ("provider",),
    "random": ("providers", "rewrite_model", "candidates"),
    "least_busy": ("providers",),
}
_RULE_REQUIRED = {"prefix": ("model_prefix", "provider"), "tag": ("tag", "provider"), "discover": ("provider",)}
_RULE_CHECKS: dict[str, Check | None] = {
    "type": None,
    "provider": _nonempty,
    "providers": _str_list,
    "model_prefix": _str,
    "tag": _nonempty,
    "rewrite_model": _nonempty,
    "strip_prefix": _bool,
    "max_cost_per_1m_tokens": _float(ge=0),
    "max_latency_ms": _float(ge=0),
    "min_tokens_per_sec": _float(ge=0),
    "quality_bias": _float(),
    "measured": _bool,
    "candidates": None,  # checked by _candidates, which needs the path
}


def _candidates(r: _Reader, path: str, raw: Any) -> tuple[Candidate, ...]:
    if not isinstance(raw, list):
        r.problem(path, f"expected an array of tables, got {_kind(raw)}")
        return ()
    out = []
    spec = {"provider": _nonempty, "model": _nonempty}
    for j, item in enumerate(raw):
        vals = r.table(f"{path}[{j}]", item, spec, ("provider", "model"))
        if vals and len(vals) == 2:
            out.append(Candidate(**vals))
    return tuple(out)


def _rule(r: _Reader, path: str, raw: Any) -> Rule | None:
    if not isinstance(raw, dict):
        r.problem(path, f"expected a table, got {_kind(raw)}")
        return None
    kind = raw.get("type")
    if kind is None:
        r.problem(f"{path}.type", f"required key is missing (one of: {', '.join(RULE_TYPES)})")
        return None
    try:
        kind = _choice(RULE_TYPES, "router type")(kind)
    except _Bad as exc:
        r.bad(f"{path}.type", exc)
        return None
    allowed = _RULE_KEYS[kind]
    spec = {k: _RULE_CHECKS[k] for k in ("type", *allowed)}
    own = {}
    for key, value in raw.items():
        if key in _RULE_CHECKS and key not in spec:
            r.problem(_join(path, key), f"not used by '{kind}' rules (they take: {', '.join(allowed)})")
        else:
            own[key] = value
    before = len(r.problems)
    vals = r.table(path, own, spec, _RULE_REQUIRED.get(kind, ())) or {}
    vals.pop("type")
    if "candidates" in vals:
        vals["candidates"] = _candidates(r, f"{path}.candidates", vals["candidates"])
        for key in ("providers", "rewrite_model"):
            if key in vals:
                r.problem(_join(path, key), "cannot be combined with candidates (each candidate names its model)")
    if vals.get("strip_prefix") and "rewrite_model" in vals:
        r.problem(f"{path}.strip_prefix", "has no effect together with rewrite_model; keep one of them")
    names = vals.get("providers", ())
    for j, name in enumerate(names):
        if name in names[:j]:
            r.problem(f"{path}.providers[{j}]", f"'{name}' is listed twice")
    if len(r.problems) > before:
        return None
    return Rule(type=kind, **vals)


def _check_references(r: _Reader, rules: list[tuple[str, Rule]], declared: Mapping[str, str]) -> None:
    def check(path: str, name: str) -> None:
        if name not in declared:
            r.problem(path, f"no provider named '{name}'{_hint(name, declared)}")

    for path, rule in rules:
        if rule.provider is not None:
            check(f"{path}.provider", rule.provider)
            fmt = declared.get(rule.provider)
            if rule.type == "discover" and fmt and fmt != "ollama":
                r.problem(f"{path}.provider", f"'{rule.provider}' is an {fmt} provider; discover rules need an ollama provider")
        for j, name in enumerate(rule.providers):
            check(f"{path}.providers[{j}]", name)
        for j, cand in enumerate(rule.candidates):
            check(f"{path}.candidates[{j}].provider", cand.provider)


def _routers(r: _Reader, raw: Any, declared: Mapping[str, str]) -> tuple[Rule, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        r.problem("routers", f"expected an array of tables ([[routers]]), got {_kind(raw)}")
        return ()
    rules = []
    for i, item in enumerate(raw):
        rule = _rule(r, f"routers[{i}]", item)
        if rule is not None:
            rules.append((f"routers[{i}]", rule))
    _check_references(r, rules, declared)
    if not raw:
        r.warnings.append("no [[routers]] rules: every request will fail with model_not_found")
    return tuple(rule for _, rule in rules)


def _keyword_tags(value: Any) -> dict[str, list[str]]:
    _expect(value, dict, "a table of tag = [keywords]")
    items = []
    for tag, words in value.items():
        try:
            _str_list(words)
        except _Bad as exc:
            items += [("." + _join("", tag) + s, m) for s, m in exc.items]
    if items:
        raise _Bad(items=items)
    return value


def _tier_map(value: Any) -> dict[str, list[str]]:
    _expect(value, dict, "a table of tier = [provider names]")
    items = []
    for tier, names in value.items():
        try:
            if not _str_list(names):
                items.append(("." + _join("", tier), "must list at least one provider"))
        except _Bad as exc:
            items += [("." + _join("", tier) + s, m) for s, m in exc.items]
    if items:
        raise _Bad(items=items)
    return value


# Settings each built-in understands (besides `enabled`).
_ENTRY_SETTINGS: dict[tuple[str, str], dict[str, Check | None]] = {
    ("classifiers", "keyword"): {
        "tags": _keyword_tags,
        "word_boundary": _bool,
        "scan": _choice(("all", "last_user"), "scan mode"),
    },
    ("plugins", "response-healing"): {},
    ("plugins", "pareto-router"): {"tier": _nonempty, "default_tier": _nonempty, "tiers": _tier_map},
}
_NOT_BUILT_IN = {
    "web": "'web' (web search) is not built in: the original's was a stub that failed every request; remove this table",
    "pdf": "'pdf' (PDF inputs) is not built in: the original's was a stub that failed every request; remove this table",
}


def _entries(r: _Reader, section: str, raw: Any, known: tuple[str, ...]) -> dict[str, Entry]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.problem(section, f"expected a table of [{section}.<id>] tables, got {_kind(raw)}")
        return {}
    out = {}
    for ident, table in raw.items():
        path = _join(section, ident)
        if ident not in known:
            if section == "plugins" and ident in _NOT_BUILT_IN:
                r.problem(path, _NOT_BUILT_IN[ident])
            else:
                r.problem(path, f"unknown {section[:-1]} '{ident}'{_hint(ident, known)}; built in: {', '.join(known)}")
            continue
        spec = {"enabled": _bool, **_ENTRY_SETTINGS[(section, ident)]}
        vals = r.table(path, table, spec)
        if vals is None:
            continue
        enabled = vals.pop("enabled", False)
        out[ident] = Entry(enabled=enabled, settings=vals)
    return out


def _check_entries(r: _Reader, plugins: dict[str, Entry], declared: Mapping[str, str]) -> None:
    # (An empty keyword, which would tag every request, is refused by _str_list.)
    pareto = plugins.get("pareto-router")
    if pareto is None:
        return
    path = "plugins.pareto-router"
    tiers = pareto.settings.get("tiers")
    if tiers is None:
        if pareto.enabled:
            r.problem(f"{path}.tiers", "required when the plugin is enabled (e.g. tiers = { low = [\"local\"], high = [\"openai\"] })")
        return
    for tier, names in tiers.items():
        for j, name in enumerate(names):
            if name not in declared:
                r.problem(f"{path}.tiers.{_join('', tier)}[{j}]", f"no provider named '{name}'{_hint(name, declared)}")
    for key in ("tier", "default_tier"):
        tier = pareto.settings.get(key)
        if tier is not None and tier not in tiers:
            r.problem(f"{path}.{key}", f"no tier named '{tier}'{_hint(tier, tiers)}; tiers: {', '.join(sorted(tiers))}")


_TOP_SPEC: dict[str, Check | None] = dict.fromkeys(
    ("server", "logging", "metrics", "providers", "routers", "classifiers", "plugins")
)


def parse(
    data: dict, *, source: str, environ: Mapping[str, str], base_dir: str | None = None
) -> Config:
    """Validate the TOML document `data` into a Config, or raise ConfigError
    listing every problem. `environ` supplies API keys and ${VAR}s in
    logging.path and ca_bundle; `base_dir` anchors a relative logging.path
    or ca_bundle (the config file's directory; None leaves it relative to the
    working directory)."""
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a TOML document (a table), got {_kind(data)}"])
    r = _Reader(source)
    top = r.table("", data, _TOP_SPEC) or {}
    server = _server(r, top.get("server", {}), environ)
    log = _logging(r, top.get("logging"), environ, base_dir)
    metrics = MetricsConfig(**(r.table("metrics", top["metrics"], _METRICS_SPEC) or {})) if "metrics" in top else MetricsConfig()
    active, skipped, declared = _providers(r, top.get("providers"), environ, base_dir)
    routers = _routers(r, top.get("routers"), declared)
    classifiers = _entries(r, "classifiers", top.get("classifiers"), CLASSIFIER_IDS)
    plugins = _entries(r, "plugins", top.get("plugins"), PLUGIN_IDS)
    _check_entries(r, plugins, declared)
    if r.problems:
        raise ConfigError(r.problems)
    return Config(
        server=server,
        logging=log,
        metrics=metrics,
        providers=tuple(active),
        routers=routers,
        classifiers=classifiers,
        plugins=plugins,
        source=source,
        warnings=tuple(r.warnings),
        skipped_providers=tuple(skipped),
    )


def override_listen(config: Config, *, host: str | None = None, port: int | None = None) -> Config:
    """Apply the CLI's --host/--port, re-checking the exposure rule."""
    server = config.server
    problems = []
    if port is not None:
        if not 0 <= port <= 65535:
            problems.append("--port: must be between 0 and 65535")
        server = replace(server, port=port)
    if host is not None:
        try:
            _host(host)
        except _Bad as exc:
            problems.append(f"--host: {exc}")
        else:
            r = _Reader("--host")
            _check_listen(r, host, server.api_key_env is not None, server.allow_unauthenticated, "server.host")
            problems += [p.replace("--host: server.host: ", "--host: ") for p in r.problems]
        server = replace(server, host=host)
    if problems:
        raise ConfigError(problems)
    warnings = [w for w in config.warnings if w not in host_check_warnings(config.server)] + host_check_warnings(server)
    return replace(config, server=server, warnings=tuple(warnings))


# ---------------------------------------------------------------------------
# Loading.

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _read_toml(raw: bytes, source: str) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not valid UTF-8 (byte {exc.start})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_POSITION.search(message)
        where = f"line {m.group(1)}, column {m.group(2)}" if m else "syntax"
        message = _TOML_POSITION.sub("", message)
        raise ConfigError([f"{source}: {where}: invalid TOML: {message}"]) from None


def load(path: str | None, *, environ: Mapping[str, str]) -> Config:
    """Read and parse a config file. `path=None` takes ./config.toml when it
    exists, else the embedded default. Raises ConfigError for every failure."""
    if path is None and os.path.isfile(DEFAULT_PATH):
        path = DEFAULT_PATH
    if path is None:
        from importlib.resources import files

        raw = files("llmrouter").joinpath("default_config.toml").read_bytes()
        return parse(_read_toml(raw, BUILTIN_SOURCE), source=BUILTIN_SOURCE, environ=environ)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    base_dir = os.path.dirname(os.path.abspath(path))
    data = _read_toml(raw, path)
    config = parse(data, source=path, environ=environ, base_dir=base_dir)
    problems = _ca_bundle_problems(config, data["providers"])
    if problems:
        raise ConfigError(problems)
    return config


def _ca_bundle_problems(config: Config, raw_providers: list) -> list[str]:
    """Each ca_bundle must be a readable PEM file of certificates: a typo is
    found at startup, not at the first https request."""
    by_name = {p.name: p for p in (*config.providers, *config.skipped_providers) if p.ca_bundle}
    problems = []
    for i, item in enumerate(raw_providers):
        provider = by_name.get(item["name"])
        if provider is None:
            continue
        import ssl  # only when a ca_bundle is configured

        where = f"{config.source}: providers[{i}].ca_bundle"
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=provider.ca_bundle)
        except ssl.SSLError:  # before OSError, of which it is a kind
            problems.append(f"{where}: {provider.ca_bundle} holds no PEM certificate")
        except OSError as exc:
            problems.append(f"{where}: cannot read {provider.ca_bundle}: {exc.strerror or exc}")
    return problems


# ---------------------------------------------------------------------------
# Describing.


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def server_url(host: str, port: int) -> str:
    """The URL that reaches a server bound to host:port from this machine: a
    wildcard bind is reached on 127.0.0.1, an IPv6 literal goes in brackets."""
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _rule_line(rule: Rule) -> str:
    over = f" over {', '.join(rule.providers)}" if rule.providers else " over all providers"
    model = f" as '{rule.rewrite_model}'" if rule.rewrite_model else ""
    if rule.type == "prefix":
        strip = " (prefix stripped)" if rule.strip_prefix else ""
        match = f"model starts with '{rule.model_prefix}'" if rule.model_prefix else "any model"
        return f"prefix: {match} -> {rule.provider}{model}{strip}"
    if rule.type == "tag":
        return f"tag: tagged '{rule.tag}' -> {rule.provider}{model}"
    if rule.type == "discover":
        return f"discover: models {rule.provider} reports -> {rule.provider}"
    if rule.type == "price":
        limit = f", max cost {rule.max_cost_per_1m_tokens:g}/1M tokens" if rule.max_cost_per_1m_tokens is not None else ""
        return f"price: cheapest{over}{limit}"
    live = " (measured live)" if rule.measured else ""
    if rule.type == "latency":
        limit = f", max {rule.max_latency_ms:g} ms" if rule.max_latency_ms is not None else ""
        return f"latency: fastest to answer{live}{over}{limit}"
    if rule.type == "throughput":
        limit = f", min {rule.min_tokens_per_sec:g} tokens/s" if rule.min_tokens_per_sec is not None else ""
        return f"throughput: most tokens/s{live}{over}{limit}"
    if rule.type == "least_busy":
        return f"least_busy: fewest requests in flight{over}"
    if rule.type == "fallback":
        return f"fallback: best quality/cost (quality_bias {rule.quality_bias:g}){over}{model}"
    if rule.candidates:
        picks = ", ".join(f"{c.provider}:{c.model}" for c in rule.candidates)
        return f"random: one of {picks}"
    return f"random: any{over}{model}"


def _key_status(p: Provider, skipped: bool) -> str:
    if p.api_key_env is None:
        return "no key"
    state = "set" if p.api_key else "missing"
    return f"key from ${p.api_key_env}: {state}" + (" (skipped: strict = true)" if skipped else "")


def _hosts_line(s: ServerConfig) -> str:
    if "*" in s.allowed_hosts:
        return 'any (allowed_hosts = ["*"]: the Host check is off)'
    names = ["loopback addresses", "localhost"]
    if not is_loopback(s.host):
        names.append(s.host)
    names += s.allowed_hosts
    keyed = "; any host with the client key" if s.api_key_env else ""
    return ", ".join(names) + keyed


def describe(config: Config) -> str:
    """A human summary for `llmrouter check`; shows no secret."""
    s = config.server
    url = server_url(s.host, s.port)
    bound = f"bound to all interfaces ({s.host or '*'}); " if s.host in WILDCARD_HOSTS else ""
    if s.api_key_env:
        auth = f"clients must present the key from ${s.api_key_env}"
    elif is_loopback(s.host):
        auth = "loopback only, no client key"
    else:
        auth = "reachable from the network WITHOUT a client key: allow_unauthenticated = true"
    lines = [
        f"config: {config.source}",
        f"listen: {url} ({bound}{auth})",
        f"allowed hosts: {_hosts_line(s)}",
        f"dashboard: {url + '/dashboard' if s.dashboard else 'off'}",
        f"request log: {config.logging.path if config.logging.enabled else 'off'}"
        + (" (with embedding input texts)" if config.logging.enabled and config.logging.embedding_inputs else ""),
        f"metrics: {url}/metrics" + (" (with model labels)" if config.metrics.model_label else ""),
        f"providers ({len(config.providers)} active):",
    ]
    rows = [(p, False) for p in config.providers] + [(p, True) for p in config.skipped_providers]
    width = max((len(p.name) for p, _ in rows), default=0)
    url_width = max((len(p.base_url) for p, _ in rows), default=0)
    for p, skipped in rows:
        extra = f"; extra headers: {', '.join(n for n, _ in p.headers)}" if p.headers else ""
        extra += f"; also trusts the CAs in {p.ca_bundle}" if p.ca_bundle else ""
        lines.append(f"  {p.name:<{width}}  {p.format:<9}  {p.base_url:<{url_width}}  {_key_status(p, skipped)}{extra}")
    lines.append(f"routers ({len(config.routers)}, first match wins):")
    # Named as warnings, config errors and `llmrouter replay` name them (from 0).
    lines += [f"  routers[{i}] {_rule_line(rule)}" for i, rule in enumerate(config.routers)]
    for section, entries in (("classifiers", config.classifiers), ("plugins", config.plugins)):
        on = [ident for ident, e in entries.items() if e.enabled]
        lines.append(f"{section}: {', '.join(on) if on else 'none enabled'}")
    if config.warnings:
        lines.append("warnings:")
        lines += [f"  - {w}" for w in config.warnings]
    return "\n".join(lines)
