"""Hot reload: SIGHUP (or `llmrouter reload`) re-reads the config the router started with.

    re-read .env and the config → validate as `serve` does → on any problem
    nothing changes → else App.reconfigure applies it to new requests
    → one `reload` event either way

`plan` and `carry_over` are pure; `Reloader` reads the files and reports on stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from llmrouter import config as config_mod
from llmrouter import dotenv, errors, events, router
from llmrouter.config import Config

log = logging.getLogger("llmrouter")
T = TypeVar("T")

# Settings a running process cannot take over, as (section, key): the bound
# socket, the open log, the metrics' labels. Only these keep their old value
# on a reload; every other key of a section applies (logging.embedding_inputs
# is read per request).
RESTART_ONLY: tuple[tuple[str, str], ...] = (
    ("server", "host"),
    ("server", "port"),
    ("logging", "enabled"),
    ("logging", "path"),
    ("metrics", "model_label"),  # the counters' label set
)


def _setting(config: Config, section: str, key: str) -> Any:
    return getattr(getattr(config, section), key)


@dataclass(frozen=True)
class Plan:
    added: list[str]
    removed: list[str]
    changed: list[str]  # same name, other settings: a new pool, discovery again
    restart_needed: list[str]  # RESTART_ONLY settings that differ; they keep their old value


def plan(old: Config, new: Config) -> Plan:
    before = {p.name: p for p in old.providers}
    after = {p.name: p for p in new.providers}
    return Plan(
        added=[n for n in after if n not in before],
        removed=[n for n in before if n not in after],
        # Provider equality leaves the key out: a rotated key changes nothing but headers.
        changed=[n for n in after if n in before and before[n] != after[n]],
        restart_needed=[f"{section}.{key}" for section, key in RESTART_ONLY if _setting(old, section, key) != _setting(new, section, key)],
    )


def keep_running(old: Config, new: Config) -> Config:
    """`new` with the RESTART_ONLY settings the process runs with. Raises
    ConfigError when `new` would leave a non-loopback listener without a client key."""
    try:
        pinned = config_mod.override_listen(new, host=old.server.host, port=old.server.port)
    except errors.ConfigError as exc:
        where = f"{new.source}: server (the router listens on {old.server.host} until a restart)"
        raise errors.ConfigError([p.replace("--host", where, 1) for p in exc.problems]) from None
    kept: dict[str, dict[str, Any]] = {}
    for section, key in RESTART_ONLY:
        kept.setdefault(section, {})[key] = _setting(old, section, key)
    return dataclasses.replace(pinned, **{section: dataclasses.replace(getattr(pinned, section), **keys) for section, keys in kept.items()})


def carry_over(old: Config, new: Config, state: Mapping[str, T]) -> dict[str, T]:
    """The entries of a per-provider state map (circuit breakers, live
    measurements) that survive a reload: those of providers whose name and
    base_url are unchanged. The values are handed on, not copied, so requests
    still running on the old config keep updating the same state."""
    old_urls = {p.name: p.base_url for p in old.providers}
    return {p.name: state[p.name] for p in new.providers if p.name in state and old_urls.get(p.name) == p.base_url}


class Reloader:
    """Reads the config `serve` started with, the way it did, and applies it."""

    def __init__(self, path: str | None, host: str | None, port: int | None, real_environ: Mapping[str, str], dotenv_path: str = ".env") -> None:
        self.path, self.host, self.port = path, host, port
        self.real_environ = dict(real_environ)  # before .env: these always win over it
        self.dotenv_path = dotenv_path

    def environment(self) -> dict[str, str]:
        """The real environment plus the current .env (a rotated key takes effect)."""
        environ = dict(self.real_environ)
        dotenv.load_dotenv(self.dotenv_path, environ)
        return environ

    def read(self, running: Config) -> tuple[Config | None, Plan | None, list[str]]:
        """The config to apply and what changes, or the problems that refuse it
        (listed as `check` lists them)."""
        try:
            environ = self.environment()
        except OSError as exc:
            return None, None, [f"llmrouter: cannot read {self.dotenv_path}: {exc}"]
        try:
            cfg = config_mod.load(self.path, environ=environ)
            cfg = config_mod.override_listen(cfg, host=self.host, port=self.port)
            return keep_running(running, cfg), plan(running, cfg), []
        except errors.ConfigError as exc:
            return None, None, list(exc.problems)

    async def __call__(self, app: Any) -> dict[str, Any]:
        """Reloads `app` (an App); returns the `reload` event it published."""
        new, changes, problems = self.read(app.config)
        if new is None or changes is None:
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"llmrouter: reload: the configuration has {len(problems)} problem(s); nothing was changed", file=sys.stderr, flush=True)
            event = events.reload(app.ctx.clock_ms(), False, self.path or app.config.source, problems, [], [], [], [])
        else:
            for warning in (*new.warnings, *router.check_rules(new)):
                log.warning("%s", warning)
            await app.reconfigure(new)
            for setting in changes.restart_needed:
                print(f"llmrouter: reload: {setting} changed; it takes effect only after a restart", file=sys.stderr, flush=True)
            providers = "; ".join(f"{what}: {', '.join(names) or 'none'}" for what, names in (("added", changes.added), ("removed", changes.removed), ("changed", changes.changed)))
            print(f"llmrouter: reloaded {new.source}: {len(new.providers)} provider(s); {providers}", file=sys.stderr, flush=True)
            event = events.reload(app.ctx.clock_ms(), True, new.source, [], changes.restart_needed, changes.added, changes.removed, changes.changed)
        app.bus.publish(event)
        return event


def send_signal(pid_file: str) -> str | None:
    """`llmrouter reload`: SIGHUP to the pid in `pid_file`; a problem, or None."""
    import signal

    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        return f"cannot signal the router of pid file {pid_file}: {exc}"
    return None
