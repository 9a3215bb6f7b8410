"""Ollama model discovery: GET {base_url}/api/tags, at startup and then periodically.

Startup never waits longer than `server.discovery_timeout`; a provider that
is down simply has no discovered models until a later refresh reaches it.
"""

from __future__ import annotations

import logging

import anyio

from llmrouter import errors
from llmrouter.config import Config, Provider
from llmrouter.formats import UpstreamCall, ollama
from llmrouter.upstream import Upstreams

log = logging.getLogger("llmrouter.discovery")


class Discovery:
    def __init__(self, config: Config, upstreams: Upstreams) -> None:
        self.providers: list[Provider] = []
        self.models: dict[str, frozenset[str]] = {}  # read by the router
        self._down: set[str] = set()  # providers already reported unreachable
        self.reconfigure(config, upstreams)

    def reconfigure(self, config: Config, upstreams: Upstreams) -> list[Provider]:
        """After a reload: forgets the models of removed and changed Ollama
        providers and returns the ones to list now (new or changed). The
        `models` dict stays the same object: routing contexts hold it."""
        before = {p.name: p for p in self.providers}
        self.providers = [p for p in config.providers if p.format == "ollama"]
        self.timeout = config.server.discovery_timeout
        self.interval = config.server.discovery_interval
        self.upstreams = upstreams
        fresh = [p for p in self.providers if before.get(p.name) != p]
        keep = {p.name for p in self.providers} - {p.name for p in fresh}
        for name in set(self.models) - keep:
            del self.models[name]
        self._down &= keep
        return fresh

    async def refresh_all(self, providers: list[Provider] | None = None) -> None:
        async with anyio.create_task_group() as tg:
            for provider in self.providers if providers is None else providers:
                tg.start_soon(self.refresh, provider)

    async def first_pass(self) -> None:
        await self.refresh_all()

    async def refresh_forever(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            await self.refresh_all()

    async def refresh(self, provider: Provider) -> None:
        headers = [("accept", "application/json")]
        if provider.api_key:
            headers.append(("authorization", f"Bearer {provider.api_key}"))
        names: list[str] | None = None
        with anyio.move_on_after(self.timeout):
            try:
                stream = await self.upstreams.open(provider, UpstreamCall("/api/tags", headers, b""), method="GET")
                try:
                    body = await stream.read_all(4 * 1024 * 1024)
                finally:
                    await stream.aclose()
                if stream.status != 200:
                    raise errors.UpstreamStatusError(f"HTTP {stream.status}", status=stream.status)
                names = ollama.parse_tags(body)
            except (errors.RouterError, ValueError) as exc:
                self._forget(provider, f"cannot list models: {exc}")
                return
        if names is None:
            self._forget(provider, f"no answer within {self.timeout:g}s")
            return
        self._down.discard(provider.name)
        found = frozenset(names)
        if self.models.get(provider.name) != found:
            log.info("provider '%s' has %d model(s): %s", provider.name, len(found), ", ".join(sorted(found)) or "none")
        self.models[provider.name] = found

    def _forget(self, provider: Provider, why: str) -> None:
        if provider.name not in self._down:
            log.warning("discovery: provider '%s': %s", provider.name, why)
            self._down.add(provider.name)
        self.models.pop(provider.name, None)
