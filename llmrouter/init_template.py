"""`llmrouter init`'s pure half: config.example.toml turned into a config for
what was found on this host (the probing is in init.py).

The example is read paragraph by paragraph (blank-line separated). A
provider paragraph stays on when its provider was found (a local server) or
its key variable is set (a cloud provider), and is commented out otherwise;
a rule paragraph stays on while the providers it names are on (a
`providers` list keeps the ones that are). Local servers the example does
not declare (vLLM, LM Studio) get a provider and a "<name>/" prefix rule of
their own, and join the rules that list local providers. The result keeps
every comment of the example, so it still explains itself.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class LocalServer:
    key: str  # what `llmrouter init --port KEY=PORT` calls it
    label: str
    provider: str  # its provider's name in the config
    port: int  # its default port
    path: str  # what is asked to find it and its models
    format: str
    base_path: str  # appended to http://127.0.0.1:PORT for base_url


SERVERS = (
    LocalServer("llama.cpp", "llama.cpp", "local-llama", 8080, "/v1/models", "openai", "/v1"),
    LocalServer("ollama", "Ollama", "ollama", 11434, "/api/tags", "ollama", ""),
    LocalServer("vllm", "vLLM", "vllm", 8000, "/v1/models", "openai", "/v1"),
    LocalServer("lmstudio", "LM Studio", "lmstudio", 1234, "/v1/models", "openai", "/v1"),
)
CLOUD = (("openai", "OpenAI", "OPENAI_API_KEY"), ("anthropic", "Anthropic", "ANTHROPIC_API_KEY"))
DEFAULT_LOCAL = ("local-llama", "ollama")  # kept on when no local server was found


@dataclass(frozen=True)
class Found:
    server: LocalServer
    port: int
    models: tuple[str, ...]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.server.base_path}"


def models_in_reply(server: LocalServer, body: bytes) -> tuple[str, ...] | None:
    """The model names in a model-list reply, or None when the reply is not
    what that server sends (something else listens on its port)."""
    try:
        data = json.loads(body)
        items = data["models"] if server.format == "ollama" else data["data"]
        names = [item["name"] if server.format == "ollama" else item["id"] for item in items]
    except (ValueError, TypeError, KeyError):
        return None
    if not all(isinstance(name, str) for name in names):
        return None
    # Names go into comments: no control characters, so none can end one.
    return tuple(re.sub(r"[\x00-\x1f\x7f]", "", name)[:200] for name in names)


def _wrap(prefix: str, words: list[str], width: int = 88) -> list[str]:
    """Comment lines: `prefix` then the words, comma-separated, wrapped."""
    pieces = [word + "," for word in words[:-1]] + words[-1:]
    lines, line, count = [], prefix.rstrip(), 0
    for piece in pieces:
        if count and len(line) + 1 + len(piece) > width:
            lines.append(line)
            line, count = "#  ", 0
        line += " " + piece
        count += 1
    lines.append(line)
    return lines


def _found_comment(found: Found) -> list[str]:
    where = f"# Found by llmrouter init at 127.0.0.1:{found.port}"
    if not found.models:
        return [where + ", with no model loaded."]
    return _wrap(where + f", serving {len(found.models)} model(s): ", list(found.models))


def _comment_out(lines: list[str], reason: str) -> list[str]:
    return [f"# Off: {reason}."] + [line if line.startswith("#") or not line else "# " + line for line in lines]


def _table(lines: list[str]) -> dict:
    return tomllib.loads("\n".join(line for line in lines if not line.startswith("#")))


def _extra_paragraphs(found: Found) -> tuple[str, str]:
    s = found.server
    provider = "\n".join([
        *_found_comment(found),
        "[[providers]]",
        f'name = "{s.provider}"',
        f'format = "{s.format}"',
        f'base_url = "{found.base_url}"',
        "cost_per_1m_tokens = 0.0",
    ])
    example = f'"{s.provider}/{found.models[0]}"' if found.models else f'"{s.provider}/<model>"'
    rule = "\n".join([
        f"# {s.label}: a model asked for as {example} goes to it, without the prefix.",
        "[[routers]]",
        'type = "prefix"',
        f'model_prefix = "{s.provider}/"',
        f'provider = "{s.provider}"',
        "strip_prefix = true",
    ])
    return provider, rule


def render(example: str, found: list[Found], keys_set: set[str]) -> str:
    """config.example.toml (`example`) turned on for what was found:
    `found` local servers, and the cloud providers whose key variable is in
    `keys_set`."""
    locals_found = {f.server.provider: f for f in found}
    on = set(locals_found) or set(DEFAULT_LOCAL)
    on |= {name for name, _, var in CLOUD if var in keys_set}
    declared = set()
    local_names = {s.provider for s in SERVERS}
    reasons = {s.provider: f"llmrouter init found no {s.label} at 127.0.0.1:{s.port}" for s in SERVERS}
    reasons.update({name: f"${var} was not set when llmrouter init ran" for name, _, var in CLOUD})
    other = "llmrouter init turns on local servers it found and cloud providers whose key is set"

    paragraphs = example.strip("\n").split("\n\n")
    out: list[list[str]] = []
    first_rule = last_provider = None
    for paragraph in paragraphs:
        lines = paragraph.split("\n")
        if "[[providers]]" in lines:
            provider = _table(lines)["providers"][0]
            name = provider["name"]
            declared.add(name)
            if name in locals_found:
                lines = [f'base_url = "{locals_found[name].base_url}"' if l.startswith("base_url = ") else l for l in lines]
                at = lines.index("[[providers]]")
                lines[at:at] = _found_comment(locals_found[name])
            elif name not in on:
                lines = _comment_out(lines, reasons.get(name, other))
            last_provider = len(out)
        elif "[[routers]]" in lines:
            lines = _rule(lines, on, local_names, [f.server.provider for f in found if f.server.provider not in declared])
            first_rule = len(out) if first_rule is None else first_rule
        out.append(lines)

    extras = [_extra_paragraphs(f) for f in found if f.server.provider not in declared]
    if extras:
        assert first_rule is not None and last_provider is not None and last_provider < first_rule
        out[first_rule:first_rule] = [rule.split("\n") for _, rule in extras]
        out[last_provider + 1 : last_provider + 1] = [provider.split("\n") for provider, _ in extras]
    out[0] = _header(found, on, keys_set)
    return "\n\n".join("\n".join(lines) for lines in out) + "\n"


def _rule(lines: list[str], on: set[str], local_names: set[str], extras: list[str]) -> list[str]:
    rule = _table(lines)["routers"][0]
    if "provider" in rule and rule["provider"] not in on:
        return _comment_out(lines, f"provider '{rule['provider']}' is off")
    if "providers" in rule:
        listed = rule["providers"]
        kept = [p for p in listed if p in on]
        if any(p in local_names for p in listed):
            kept += [p for p in extras if p not in kept]
        if not kept:
            return _comment_out(lines, f"every provider it lists ({', '.join(listed)}) is off")
        if kept != listed:
            lines = [f"providers = {json.dumps(kept)}" if l.startswith("providers = ") else l for l in lines]
    return lines


def _header(found: list[Found], on: set[str], keys_set: set[str]) -> list[str]:
    seen = [f"{f.server.label} at 127.0.0.1:{f.port}" for f in found]
    seen += [f"${var}" for name, _, var in CLOUD if var in keys_set]
    lines = [
        "# llmrouter configuration, written by `llmrouter init` from config.example.toml.",
        *_wrap("# It found: ", seen or ["nothing running"]),
    ]
    if not found:
        lines.append("# No local server answered, so llama.cpp and Ollama stay on at their default ports.")
    lines += [
        "# What it did not find is commented out (\"# Off: ...\"): uncomment it when you need it.",
        "# `llmrouter check` prints what the router understands; docs/configuration.md",
        "# describes every key. Unknown keys are errors, so typos never go unnoticed.",
    ]
    return lines
