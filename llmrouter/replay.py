"""Replay: what a config would have done with the requests of a JSONL log. Pure.

Each logged `complete` record (events.md) is turned back into a request —
kind, model, client format, system prompt, messages, stream flag — and put
through the routing half of the pipeline of another config: on_start plugins,
classifiers, pre_request plugins, the router rules. Nothing is sent anywhere;
the first routing decision whose provider can serve the request's kind
(pipeline.serves) is what the request "would" get.

What a log cannot give back is assumed neutral: every circuit is closed, no
model was discovered, no request is in flight, per-request plugin entries
(not logged) are absent. Rules whose choice depends on such live state are
marked (`Outcome.live`), so a changed route there is read with care. The
caller passes the random generator (`--seed` makes `random` rules repeatable).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmrouter import canonical, classifiers, errors, pipeline, plugins, router
from llmrouter.config import Config, Rule

PLUGIN = "plugin"  # the provider name the log uses when a plugin answered
# The failures of requests that reached the plugins and rules without a provider
# answering; any other record without a provider was refused or invalid before
# routing, and replaying it would say nothing.
ROUTED_ERROR_CODES = (
    errors.NoRoute.code, router.UnknownProvider.code, errors.CircuitOpen.code, errors.PluginError.code,
    errors.KindNotSupported.code,
)


@dataclass(frozen=True)
class Outcome:
    provider: str | None  # None: no route (see `error`)
    model: str | None
    rule_index: int | None  # index in config.routers; -1 forced by a plugin; None no rule
    rule_type: str | None
    live: tuple[str, ...] = ()  # why this outcome depends on live state; () when it does not
    error: str | None = None
    status: int | None = None  # with `error`: the status the router would answer with
    error_code: str | None = None  # with `error`: its code, as a log record's `error_code`


@dataclass(frozen=True)
class Replayed:
    line: int
    record: dict[str, Any]
    was: tuple[str | None, str | None]  # (provider, model) as logged
    would: Outcome

    @property
    def changed(self) -> bool:
        return self.was != (self.would.provider, self.would.model)

    def to_json(self) -> dict[str, Any]:
        would = self.would
        out: dict[str, Any] = {
            "id": self.record.get("id"),
            "request_id": self.record.get("request_id"),
            "line": self.line,
            "was": {"provider": self.was[0], "model": self.was[1]},
            "would": {"provider": would.provider, "model": would.model},
            "rule": {"index": would.rule_index, "type": would.rule_type},
            "changed": self.changed,
            "live": list(would.live),
        }
        if would.error:
            out.update(error=would.error, status=would.status, error_code=would.error_code)
        return out


@dataclass
class Report:
    replayed: list[Replayed] = field(default_factory=list)
    skipped: int = 0  # records that never reached routing (refused, invalid)
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line number, problem)


def live_reasons(rule: Rule) -> tuple[str, ...]:
    """Why a rule's choice depends on state a log does not hold."""
    if rule.type == "random":
        return ("random draw",)
    if rule.type == "discover":
        return ("discovered models (none in a replay)",)
    if rule.type == "least_busy":
        return ("requests in flight",)
    if getattr(rule, "measured", False):
        return ("live measurements",)
    return ()


def request_of(record: dict[str, Any]) -> canonical.Request:
    """The logged request as the pipeline saw it after parsing; ValueError if
    the record is not a request log line."""
    if record.get("type", "complete") != "complete":
        raise ValueError(f"a {record.get('type')!r} event, not a request record")
    model, messages, system = record.get("requested_model"), record.get("messages"), record.get("system")
    if not isinstance(model, str) or not isinstance(messages, list) or not (system is None or isinstance(system, str)):
        raise ValueError("not a request record (requested_model, messages, system)")
    kind = record.get("kind", canonical.CHAT)  # logs from before kinds were logged hold chats only
    if kind not in canonical.KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    return canonical.Request(
        model=model,
        messages=[_message(m) for m in messages],
        system=system,
        stream=record.get("stream") is True,
        client_format=record.get("client_format") if isinstance(record.get("client_format"), str) else "openai",
        kind=kind,
    )


def _message(raw: Any) -> canonical.Message:
    if not isinstance(raw, dict) or not isinstance(raw.get("role"), str):
        raise ValueError("a message must be an object with a string role")
    content = raw.get("content")
    if isinstance(content, str):
        return canonical.Message(raw["role"], [canonical.Text(content)])
    if not isinstance(content, list):
        raise ValueError("a message's content must be a string or a list of parts")
    return canonical.Message(raw["role"], [_part(p) for p in content])


def _part(raw: Any) -> canonical.Part:
    """The inverse of canonical.part_to_json, as far as a log keeps it (no image data)."""
    if not isinstance(raw, dict):
        raise ValueError("a content part must be an object")
    kind = raw.get("type")
    if kind == "text":
        return canonical.Text(str(raw.get("text", "")))
    if kind == "image":
        return canonical.Image(raw.get("media_type"), None, raw.get("url"))
    if kind == "tool_use":
        return canonical.ToolCall(str(raw.get("id", "")), str(raw.get("name", "")), str(raw.get("arguments", "{}")))
    if kind == "tool_result":
        return canonical.ToolResult(str(raw.get("tool_use_id", "")), [canonical.Text(str(raw.get("content") or ""))], raw.get("is_error") is True)
    return canonical.Opaque(str(raw.get("format", "")), {"type": kind})


def decide(req: canonical.Request, config: Config, rng: router.Rng) -> Outcome:
    """The route `config` gives `req`: plugins (on_start, pre_request),
    classifiers, then the first routing decision, as pipeline.handle runs them."""
    active, _ = plugins.resolve(config.plugins, [])
    state = plugins.PluginState(request=req, streamed=req.stream)
    try:
        flow = plugins.run_stage("on_start", active, state).flow
        if flow == plugins.CONTINUE:
            req.tags, _ = classifiers.classify(req, config.classifiers)
            flow = plugins.run_stage("pre_request", active, state).flow
            if flow == plugins.CONTINUE and state.response is None:
                return _route(req, config, rng)
    except errors.RouterError as err:
        return _failed(err)
    if state.response is None:
        return _failed(errors.RouterError("pipeline stopped without producing a response"))
    return Outcome(PLUGIN, req.model, None, None)


def _failed(err: errors.RouterError, live: tuple[str, ...] = ()) -> Outcome:
    return Outcome(None, None, None, None, live, err.message, err.status, err.code)


def _route(req: canonical.Request, config: Config, rng: router.Rng) -> Outcome:
    """The first decision whose provider can serve the request's kind, as
    pipeline._route passes over the others (with a circuit closed, it sends there)."""
    unable: dict[str, str] = {}
    try:
        for decision in router.decisions(req, config, {}, rng):
            if pipeline.serves(decision.provider, req.kind):
                break
            unable.setdefault(decision.provider.name, decision.provider.format)
        else:
            raise pipeline.kind_not_supported(req, unable)
    except errors.RouterError as err:
        # No rule gave a usable provider: any live rule might have, with live state.
        return _failed(err, tuple(dict.fromkeys(r for rule in config.routers for r in live_reasons(rule))))
    # Rules before the deciding one gave no usable provider; a live one of them might have.
    rules = config.routers[: decision.rule_index + 1] if decision.rule_index >= 0 else ()
    live = tuple(dict.fromkeys(r for rule in rules for r in live_reasons(rule)))
    return Outcome(decision.provider.name, decision.model, decision.rule_index, decision.rule_type, live)


def records(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, record, problem) per non-blank line; exactly one of record and problem is set."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield number, None, f"not JSON ({exc})"
            continue
        if not isinstance(record, dict):
            yield number, None, "not a JSON object"
            continue
        yield number, record, None


def replay(lines: Iterable[str], config: Config, rng: router.Rng) -> Report:
    report = Report()
    for number, record, problem in records(lines):
        if record is None:
            report.malformed.append((number, problem or "malformed"))
            continue
        try:
            req = request_of(record)
        except ValueError as exc:
            report.malformed.append((number, str(exc)))
            continue
        provider = record.get("provider")
        if provider is None and record.get("error_code") not in ROUTED_ERROR_CODES:
            report.skipped += 1
            continue
        was = (provider if isinstance(provider, str) else None, record.get("sent_model") if provider is not None else None)
        report.replayed.append(Replayed(number, record, was, decide(req, config, rng)))
    return report


def summary(report: Report, first_changed: int = 10) -> str:
    """Requests per provider before and after, how many change, the first changes."""
    before = Counter(r.was[0] or "(no route)" for r in report.replayed)
    after = Counter(r.would.provider or "(no route)" for r in report.replayed)
    changed = [r for r in report.replayed if r.changed]
    live = sum(bool(r.would.live) for r in report.replayed)
    lines = [f"{len(report.replayed)} request(s) replayed; {len(changed)} would change"]
    if report.skipped:
        lines.append(f"{report.skipped} record(s) never reached routing (refused or invalid) and were not replayed")
    if live:
        lines.append(f"{live} decision(s) depend on live state (random, discovery, in-flight counts, measurements): marked ~")
    lines.append("")
    width = max((len(name) for name in ("provider", *before, *after)))
    lines.append(f"  {'provider':<{width}}  {'before':>6}  {'after':>6}")
    for name in dict.fromkeys([*before, *after]):
        lines.append(f"  {name:<{width}}  {before[name]:>6}  {after[name]:>6}")
    if changed:
        lines.append("")
        lines.append(f"first {min(first_changed, len(changed))} changed request(s):")
        for r in changed[:first_changed]:
            lines.append("  " + _change_line(r))
    return "\n".join(lines)


def _change_line(r: Replayed) -> str:
    would = r.would
    failure = f"{would.status} {would.error_code}: {would.error}" if would.error else ""
    where = f"routers[{would.rule_index}] ({would.rule_type})" if would.rule_index is not None and would.rule_index >= 0 else (would.rule_type or failure)
    mark = "~" if would.live else " "
    return (
        f"{mark} line {r.line} id {r.record.get('id')}: {r.record.get('requested_model')!r}: "
        f"{_route_text(*r.was)} -> {_route_text(would.provider, would.model)}  {where}"
    )


def _route_text(provider: str | None, model: str | None) -> str:
    return f"{provider}/{model}" if provider else "(no route)"
