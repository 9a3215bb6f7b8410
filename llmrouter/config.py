"""Configuration: the TOML schema as frozen dataclasses, parsed strictly.

(Skeleton: the dataclasses below are the contract other modules code against;
`parse`, `load` and `describe` are implemented in this module.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORMATS = ("openai", "anthropic", "ollama")
RULE_TYPES = ("prefix", "tag", "price", "latency", "throughput", "fallback", "discover", "random")


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


@dataclass(frozen=True)
class LoggingConfig:
    enabled: bool = False
    path: str = "logs/requests.jsonl"


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


@dataclass(frozen=True)
class Entry:
    """A `[classifiers.<id>]` or `[plugins.<id>]` table."""

    enabled: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    providers: tuple[Provider, ...] = ()  # active providers, in config order
    routers: tuple[Rule, ...] = ()
    classifiers: dict[str, Entry] = field(default_factory=dict)
    plugins: dict[str, Entry] = field(default_factory=dict)
    source: str = "<default>"  # the file it came from
    warnings: tuple[str, ...] = ()  # non-fatal problems, printed at startup

    def provider(self, name: str) -> Provider | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None
