"""Plugins: four hooks around routing, with the original's flow semantics.

Stages, in pipeline order:
  on_start       before classifiers; may change the request or answer it
  pre_request    after classifiers, before routing; may force providers
  post_response  after the provider answered (or a plugin did); may change the reply
  on_end         last; may change the reply

Each hook receives the shared `PluginState` and the plugin's resolved settings and
returns a `Flow`: CONTINUE (nothing changed), MODIFIED (something changed; the
id is recorded) or STOP (recorded; the rest of that stage is skipped).
A plugin that changes the request body also sets `state.request.modified`
so a same-format passthrough re-renders it. Pure: no I/O, no logging.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import errors
from ..canonical import Request, Response
from ..config import Entry

STAGES = ("on_start", "pre_request", "post_response", "on_end")
_FATAL_STAGES = ("on_start", "pre_request")  # a failure here fails the request


class Flow(str, enum.Enum):
    CONTINUE = "continue"
    MODIFIED = "modified"
    STOP = "stop"


# Module-level names, so callers can write `flow == plugins.CONTINUE`.
CONTINUE, MODIFIED, STOP = Flow.CONTINUE, Flow.MODIFIED, Flow.STOP


@dataclass
class PluginState:
    """What the hooks of one request share.

    `response` is None until a provider (or a plugin) answered; a plugin that
    sets it in on_start/pre_request answers without any provider. `streamed`
    is true when the reply was already streamed to the client, so
    post_response/on_end only see its reassembled copy and cannot change
    what was sent. `response_modified` is set by `run_stage` when a
    post_response/on_end plugin returned MODIFIED (the upstream's raw bytes
    must then not be passed through). `warnings` collects notes for the log.
    """

    request: Request
    response: Response | None = None
    streamed: bool = False
    response_modified: bool = False
    warnings: list[str] = field(default_factory=list)


class Plugin:
    """Base class: every hook defaults to CONTINUE. Override the ones you need."""

    id = ""
    name = ""

    def on_start(self, state: PluginState, settings: dict[str, Any]) -> Flow:
        return Flow.CONTINUE

    def pre_request(self, state: PluginState, settings: dict[str, Any]) -> Flow:
        return Flow.CONTINUE

    def post_response(self, state: PluginState, settings: dict[str, Any]) -> Flow:
        return Flow.CONTINUE

    def on_end(self, state: PluginState, settings: dict[str, Any]) -> Flow:
        return Flow.CONTINUE


@dataclass(frozen=True)
class ActivePlugin:
    plugin: Plugin
    settings: dict[str, Any]

    @property
    def id(self) -> str:
        return self.plugin.id


@dataclass(frozen=True)
class StageResult:
    flow: Flow  # CONTINUE or STOP: a MODIFIED plugin does not end the stage
    ids: list[str]  # plugins that returned MODIFIED or STOP, in order
    warnings: list[str]  # added to state.warnings during this stage

    @property
    def stopped(self) -> bool:
        return self.flow is Flow.STOP


def _request_settings(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in ("id", "enabled")}


def resolve(
    config_entries: dict[str, Entry],
    request_plugins: list[dict[str, Any]],
    *,
    registry: Mapping[str, Plugin] | None = None,
) -> tuple[list[ActivePlugin], list[str]]:
    """The plugins to run for one request, in order, and warnings.

    First every config-enabled plugin in registry order, its config settings
    shallowly overridden by the request's first entry with that id; then the
    request's other entries in request order, config settings (even of a
    disabled table) overridden by the entry. A request entry with
    `"enabled": false` switches the plugin off for this request. Unknown ids
    are ignored with a warning; later duplicates of an id are ignored.
    """
    registry = REGISTRY if registry is None else registry
    warnings: list[str] = []
    first: dict[str, dict[str, Any]] = {}
    for entry in request_plugins:
        pid = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(pid, str):
            warnings.append(f"ignored a request plugin entry without a string 'id': {entry!r}")
        elif pid not in registry:
            warnings.append(f"unknown plugin '{pid}' in request; ignored")
        else:
            first.setdefault(pid, entry)

    def settings_for(pid: str) -> dict[str, Any]:
        entry = config_entries.get(pid)
        settings = dict(entry.settings) if entry else {}
        settings.update(_request_settings(first.get(pid, {})))
        return settings

    wanted = [pid for pid in registry if (e := config_entries.get(pid)) is not None and e.enabled]
    wanted += [pid for pid in first if pid not in wanted]
    active = [
        ActivePlugin(registry[pid], settings_for(pid))
        for pid in wanted
        if first.get(pid, {}).get("enabled", True) is not False
    ]
    return active, warnings


def run_stage(stage: str, active: list[ActivePlugin], state: PluginState) -> StageResult:
    """Run one stage's hook of every active plugin, in order.

    Raises `errors.PluginError("plugin '<id>' failed: <msg>")` when a hook
    fails in on_start or pre_request; in post_response and on_end a failure
    becomes a warning and counts as CONTINUE.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown plugin stage {stage!r}")
    mark = len(state.warnings)
    ids: list[str] = []
    flow = Flow.CONTINUE
    for item in active:
        try:
            result = Flow(getattr(item.plugin, stage)(state, item.settings) or Flow.CONTINUE)
        except Exception as exc:
            message = exc.message if isinstance(exc, errors.RouterError) else str(exc)
            text = f"plugin '{item.id}' failed: {message}"
            if stage in _FATAL_STAGES:
                raise errors.PluginError(text) from exc
            state.warnings.append(text)
            continue
        if result is not Flow.CONTINUE:
            ids.append(item.id)
        if result is Flow.MODIFIED and stage not in _FATAL_STAGES:
            state.response_modified = True
        if result is Flow.STOP:
            flow = Flow.STOP
            break
    return StageResult(flow, ids, state.warnings[mark:])


# Imported last: the built-ins subclass Plugin and use Flow, defined above.
from .healing import ResponseHealing  # noqa: E402
from .pareto import ParetoRouter  # noqa: E402

# Registry order is run order. `web` and `pdf` are not built in.
REGISTRY: dict[str, Plugin] = {p.id: p for p in (ResponseHealing(), ParetoRouter())}
