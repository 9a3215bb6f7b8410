"""`llmrouter init [PATH] [--force]`: write a config for this host.

It asks 127.0.0.1, and nothing else, whether llama.cpp, Ollama, vLLM or LM
Studio answer on their ports (each with a short timeout), reads which
cloud keys are set in the environment (names only: a key is never read
out or printed), and writes config.example.toml turned on for what it
found (init_template.py). An existing file is replaced only with --force.
"""

from __future__ import annotations

import http.client
import os
import sys
from importlib.resources import files
from typing import Mapping

from llmrouter import config, errors
from llmrouter.init_template import CLOUD, SERVERS, Found, LocalServer, models_in_reply, render

PROBE_TIMEOUT = 0.5  # seconds per server: loopback answers at once or not at all
HOST = "127.0.0.1"  # the only address init ever connects to


def probe(server: LocalServer, port: int) -> Found | str:
    """What answers on 127.0.0.1:`port`: the server with its models, or
    why it is not taken (a sentence)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=PROBE_TIMEOUT)
    try:
        connection.request("GET", server.path, headers={"accept": "application/json"})
        response = connection.getresponse()
        body = response.read(4 << 20)
    except OSError:
        return "nothing answers"
    except http.client.HTTPException:
        return f"something answers, but not HTTP like {server.label}"
    finally:
        connection.close()
    models = models_in_reply(server, body) if response.status == 200 else None
    if models is None:
        return f"something answers (HTTP {response.status}), but not like {server.label}"
    return Found(server, port, models)


def parse_ports(items: list[str]) -> dict[str, int]:
    """`--port KEY=PORT` values; raises ValueError with the message to print."""
    keys = {s.key: s for s in SERVERS}
    ports = {}
    for item in items:
        key, _, port = item.partition("=")
        if key not in keys or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--port {item}: expected SERVER=PORT with SERVER one of {', '.join(keys)}")
        ports[key] = int(port)
    return ports


def run(path: str | None, force: bool, port_overrides: list[str], environ: Mapping[str, str] = os.environ) -> int:
    path = path or config.DEFAULT_PATH
    try:
        ports = parse_ports(port_overrides)
    except ValueError as exc:
        print(f"llmrouter init: {exc}", file=sys.stderr)
        return 2
    if os.path.exists(path) and not force:
        print(f"llmrouter init: {path} exists; nothing was written (--force replaces it)", file=sys.stderr)
        return 1
    found = []
    for server in SERVERS:
        port = ports.get(server.key, server.port)
        result = probe(server, port)
        if isinstance(result, Found):
            found.append(result)
            models = ", ".join(result.models) or "no model loaded"
            print(f"  {server.label:<10} {HOST}:{port:<6} found: {models}")
        else:
            print(f"  {server.label:<10} {HOST}:{port:<6} {result}")
    keys_set = {var for _, _, var in CLOUD if environ.get(var)}
    for name, label, var in CLOUD:
        state = "set: on, with strict = true" if var in keys_set else "not set: off"
        print(f"  {label:<10} ${var} {state}")
    if not found:
        print("  no local server answered: llama.cpp and Ollama stay on at their default ports")

    example = files("llmrouter").joinpath("config.example.toml").read_text()
    text = render(example, found, keys_set)
    try:  # the file must be one the router starts with
        config.parse(config.tomllib.loads(text), source=path, environ=environ)
    except errors.ConfigError as exc:  # a bug in init_template: say so rather than write it
        print("\n".join(["llmrouter init: the config it made is invalid:", *exc.problems]), file=sys.stderr)
        return 1
    try:
        with open(path, "w" if force else "x", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        print(f"llmrouter init: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}; `llmrouter check {path}` shows what it means, `llmrouter {path}` serves it")
    return 0
