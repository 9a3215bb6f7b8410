"""Real coding agents through the router: Claude Code and the Codex CLI, from npm.

Each CLI runs non-interactively against the real router, whose model is routed
to a FakeUpstream speaking openai, anthropic or ollama in turn. The fake plays
the model: it answers with text, or with a call to one of the CLI's own tools
and then with text once the tool's result comes back, so these tests show that
the CLI got the answer, really ran the tool, and that the result went back
upstream in the upstream's own shape.

The CLIs are installed once per version into .cache/npm-agents/ (override with
LLMROUTER_AGENTS_CACHE) and reused. Without npm these tests are skipped (they
fail under CI=true: see tests/tiers.py). Both
packages ship native binaries inside registry packages; nothing is downloaded
at run time and neither CLI needs the network to answer through the router.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest

from fakes import FakeUpstream, Fault, RecordedRequest, Reply
from harness import provider_config, running_router
from tiers import need_tool

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LLMROUTER_AGENTS_CACHE") or REPO / ".cache" / "npm-agents")
# 2.1.197 is the last Claude Code whose package still declares node >= 18 (later
# ones want node 22); Codex 0.171 is the version issue 3 was written against.
CLAUDE_CODE = ("@anthropic-ai/claude-code", "2.1.197")
CODEX = ("@openai/codex", "0.171.0")
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 180
UPSTREAM_FORMATS = ["openai", "anthropic", "ollama"]
SECRET = "ZEBRA-4417-QUOKKA"  # only readable by running the tool on the note file


# --- installing the CLIs -------------------------------------------------------


def _runs(exe: Path, version: str) -> bool:
    if not exe.is_file():
        return False
    try:
        with tempfile.TemporaryDirectory() as home:  # the CLIs leave state in HOME
            out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60,
                                 env={"PATH": os.environ.get("PATH", ""), "HOME": home})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and version in out.stdout


def _npm_cli(package: str, version: str, candidates: list[str]) -> Path:
    """The CLI's executable, installed into the cache on first use."""
    prefix = CACHE / f"{package.rsplit('/', 1)[-1]}-{version}"
    paths = [prefix / "node_modules" / c for c in candidates]
    for exe in paths:
        if _runs(exe, version):
            return exe
    npm = need_tool("npm", hint=f"{package} comes from the npm registry (CI installs Debian's nodejs and npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", f"{package}@{version}"],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
    )
    assert done.returncode == 0, f"npm install {package}@{version} failed:\n{done.stderr[-3000:]}"
    for exe in paths:
        if _runs(exe, version):
            return exe
    raise AssertionError(f"{package}@{version} installed, but none of {candidates} runs `--version`")


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    # The wrapper's postinstall copies the platform binary over bin/claude.exe;
    # where npm did not run install scripts, the platform package's own binary works.
    return _npm_cli(*CLAUDE_CODE, [".bin/claude", "@anthropic-ai/claude-code-linux-x64/claude",
                                   "@anthropic-ai/claude-code-linux-arm64/claude"])


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    return _npm_cli(*CODEX, [".bin/codex"])


# --- the fake model ------------------------------------------------------------


def _router_config(fake: FakeUpstream, fmt: str) -> str:
    return ("[server]\nport = 0\n" + provider_config(fake.url, name="up", fmt=fmt)
            + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "up"\n')


def _is_chat(request: RecordedRequest) -> bool:
    return request.method == "POST" and request.format is not None  # not /api/tags or model lists


def _chat_requests(fake: FakeUpstream) -> list[RecordedRequest]:
    return [r for r in fake.requests if _is_chat(r)]


def _tool_names(request: RecordedRequest) -> list[str]:
    names = []
    for tool in request.json.get("tools") or []:
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        names.append(fn.get("name"))
    return names


def _tool_results(request: RecordedRequest) -> list[tuple[str, str]]:
    """(call id, result text) of every tool result in an upstream request, read
    from the upstream's own wire shape."""
    out = []
    for message in request.json.get("messages") or []:
        if request.format == "anthropic":
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") == "tool_result":
                    inner = block.get("content")
                    text = inner if isinstance(inner, str) else "".join(b.get("text", "") for b in inner or [])
                    out.append((block["tool_use_id"], text))
        elif message.get("role") == "tool":
            content = message.get("content")
            text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])
            out.append((message.get("tool_call_id") or message.get("tool_name") or "", text))
    return out


def _tool_then_text(tool: Callable[[RecordedRequest], tuple[str, dict] | None], final: str) -> Callable:
    """A script: requests that offer the tool and carry no tool result yet get a
    call to it; everything else gets `final`."""
    def script(request: RecordedRequest) -> Reply | None:
        if not _is_chat(request):
            return None  # model lists: the fake's defaults
        call = tool(request)
        if call is not None and not _tool_results(request):
            name, arguments = call
            return Reply.tool_calls([(name, json.dumps(arguments))])
        return Reply.text(final)
    return script


def _base_env(home: Path) -> dict[str, str]:
    # Nothing from the developer's environment (API keys, proxies, base URLs) leaks in.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(home),
            "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1"}


# --- Claude Code ---------------------------------------------------------------


def _run_claude(exe: Path, router_url: str, workdir: Path, home: Path, prompt: str) -> dict[str, Any]:
    env = _base_env(home) | {
        "ANTHROPIC_BASE_URL": router_url,
        "ANTHROPIC_API_KEY": "dummy",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    done = subprocess.run([str(exe), "-p", prompt, "--output-format", "json"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"claude exited {done.returncode}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


@pytest.mark.parametrize("fmt", UPSTREAM_FORMATS)
def test_claude_code_text_answer(claude_bin, tmp_path, fmt):
    with FakeUpstream() as fake:
        fake.script = lambda r: Reply.text("Routed answer from the fake upstream") if _is_chat(r) else None
        with running_router(_router_config(fake, fmt)) as router:
            result = _run_claude(claude_bin, router.url, tmp_path, tmp_path, "Say something.")
            records = router.wait_records(1)
        assert result["is_error"] is False and result["result"] == "Routed answer from the fake upstream"
        assert result["usage"]["output_tokens"] > 0
        assert records and all(r["status"] == 200 and r["client_format"] == "anthropic" for r in records)
        (request,) = _chat_requests(fake)
        assert request.format == fmt
        body = request.json
        assert len(_tool_names(request)) >= 20  # Claude Code offers two dozen tools
        if fmt == "anthropic":
            _check_claude_code_passthrough(request)
        else:
            # Translated: one system prompt (Claude Code's block array joined), no
            # Anthropic-only fields, every tool kept with its schema.
            system = body["messages"][0]
            assert system["role"] == "system" and "Claude" in system["content"]
            assert not {"thinking", "context_management", "metadata", "output_config", "system"} & set(body)
            assert "anthropic-beta" not in request.headers
            assert all(m["role"] != "system" for m in body["messages"][1:])


def _check_claude_code_passthrough(request: RecordedRequest) -> None:
    """What Claude Code 2.1.197 really sends, as an Anthropic upstream gets it
    (same format, so the router forwards the client's body)."""
    assert request.path == "/v1/messages"  # the client's ?beta=true is not forwarded
    assert request.headers.get("x-api-key") != "dummy"  # the client's key never goes upstream
    _check_claude_code_body(request)


def _check_claude_code_body(request: RecordedRequest) -> None:
    body, headers = request.json, request.headers
    assert "claude-code-20250219" in headers["anthropic-beta"]
    assert isinstance(body["system"], list)
    assert any(block.get("cache_control") == {"type": "ephemeral"} for block in body["system"])
    assert body["stream"] is True and body["max_tokens"] == 64000
    assert body["thinking"]["type"] in ("adaptive", "enabled")
    assert isinstance(body["context_management"], dict) and "user_id" in body["metadata"]
    assert "effort" in body["output_config"]
    assert any(m["role"] == "system" for m in body["messages"])  # mid-conversation system entries


def test_claude_code_request_as_sent(claude_bin, tmp_path):
    """What Claude Code sends before any router touches it (pointed straight at
    the fake): the facts the router's Anthropic client side is built on."""
    with FakeUpstream() as fake:
        fake.script = lambda r: Reply.text("ok") if _is_chat(r) else None
        result = _run_claude(claude_bin, fake.url, tmp_path, tmp_path, "Say something.")
    assert result["result"] == "ok"
    (request,) = _chat_requests(fake)
    assert request.path == "/v1/messages?beta=true"  # the router matches the path without its query
    assert request.headers["x-api-key"] == "dummy" and request.headers["anthropic-version"] == "2023-06-01"
    _check_claude_code_body(request)


@pytest.mark.parametrize("fmt", UPSTREAM_FORMATS)
def test_claude_code_tool_round_trip(claude_bin, tmp_path, fmt):
    """The fake asks Claude Code to Read a file; Claude Code reads it and sends
    the content back as a tool result, which reaches the upstream in its format."""
    workdir, home = tmp_path / "project", tmp_path / "home"
    workdir.mkdir(), home.mkdir()
    note = workdir / "note.txt"
    note.write_text(f"The secret word is {SECRET}.\n")

    def read_tool(request: RecordedRequest) -> tuple[str, dict] | None:
        return ("Read", {"file_path": str(note)}) if "Read" in _tool_names(request) else None

    with FakeUpstream() as fake:
        fake.script = _tool_then_text(read_tool, "I have read the note.")
        with running_router(_router_config(fake, fmt)) as router:
            result = _run_claude(claude_bin, router.url, workdir, home, "What does note.txt say?")
        assert result["is_error"] is False, result
        assert result["result"] == "I have read the note."
        assert result["num_turns"] >= 2
        requests = _chat_requests(fake)
        first = next(r for r in requests if "Read" in _tool_names(r))
        followups = [r for r in requests if r.index > first.index and _tool_results(r)]
        assert followups, f"no request carried the tool result; paths: {[r.path for r in requests]}"
        ((call_id, text),) = _tool_results(followups[0])
        assert SECRET in text  # Claude Code really ran Read on the file
        if fmt != "ollama":  # the fake's own call id came back (Ollama results carry the tool name)
            assert call_id.endswith(f"_{first.index}_0")
        else:
            assert call_id in (f"call_{first.index}_0", "Read")


# --- Codex ---------------------------------------------------------------------


def _codex_home(home: Path, router_url: str) -> Path:
    codex_home = home / "codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(f"""
model = "gpt-test"
model_provider = "router"
check_for_update_on_startup = false

[model_providers.router]
name = "llmrouter"
base_url = "{router_url}/v1"
wire_api = "responses"
env_key = "ROUTER_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false
""")
    return codex_home


def _run_codex(exe: Path, router_url: str, workdir: Path, home: Path, prompt: str,
               check: bool = True) -> list[dict[str, Any]]:
    env = _base_env(home) | {"CODEX_HOME": str(_codex_home(home, router_url)), "ROUTER_API_KEY": "dummy",
                             "RUST_LOG": "error"}
    args = [str(exe), "exec", "--skip-git-repo-check", "--json", "--color", "never",
            # The fake's commands are harmless; Codex's own Linux sandbox needs
            # kernel features a container may lack.
            "--dangerously-bypass-approvals-and-sandbox", "-C", str(workdir), prompt]
    done = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0 or not check, f"codex exited {done.returncode}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _agent_messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["item"]["text"] for e in events
            if e.get("type") == "item.completed" and e["item"].get("type") == "agent_message"]


@pytest.mark.parametrize("fmt", UPSTREAM_FORMATS)
def test_codex_text_answer(codex_bin, tmp_path, fmt):
    with FakeUpstream() as fake:
        fake.script = lambda r: Reply.text("Routed answer from the fake upstream") if _is_chat(r) else None
        with running_router(_router_config(fake, fmt)) as router:
            events = _run_codex(codex_bin, router.url, tmp_path, tmp_path, "Say something.")
            records = router.wait_records(1)
        assert _agent_messages(events) == ["Routed answer from the fake upstream"]
        completed = [e for e in events if e.get("type") == "turn.completed"]
        assert completed and completed[-1]["usage"]["output_tokens"] > 0
        assert not [e for e in events if e.get("type") in ("turn.failed", "error")]
        assert records and all(r["status"] == 200 and r["client_format"] == "responses" for r in records)
        (request,) = _chat_requests(fake)
        assert request.format == fmt
        body = request.json
        # Codex's developer items became the system prompt; its function tools
        # were kept, its built-in ones (web_search, namespaces) dropped.
        system = body["system"] if fmt == "anthropic" else body["messages"][0]["content"]
        assert "Codex" in (system if isinstance(system, str) else json.dumps(system))
        names = _tool_names(request)
        assert "exec_command" in names or "shell" in names
        assert None not in names and "web_search" not in names
        for key in ("reasoning", "include", "store", "prompt_cache_key", "client_metadata"):
            assert key not in body


def test_codex_request_as_sent(codex_bin, tmp_path):
    """What Codex sends, captured by a fake that does not speak the Responses
    API (so the run itself fails): the facts the router's Responses side is built on."""
    with FakeUpstream() as fake:
        _run_codex(codex_bin, fake.url, tmp_path, tmp_path, "Say something.", check=False)
    requests = [r for r in fake.requests if r.method == "POST"]
    assert requests, "codex sent nothing"
    request = requests[0]
    assert request.path == "/v1/responses"
    assert request.headers["accept-encoding"] == "zstd,gzip"
    assert request.headers["authorization"] == "Bearer dummy"
    assert "content-encoding" not in request.headers  # the body is plain JSON
    body = request.json
    assert body["stream"] is True and body["store"] is False
    assert isinstance(body["reasoning"], dict) and isinstance(body["include"], list)
    roles = [item.get("role") for item in body["input"] if item.get("type") == "message"]
    assert "developer" in roles and "user" in roles
    assert all(part["type"] == "input_text" for item in body["input"] for part in item.get("content", []))
    kinds = {tool["type"] for tool in body["tools"]}
    assert "function" in kinds and kinds - {"function"}  # built-in tool types besides functions


@pytest.mark.parametrize("fmt", UPSTREAM_FORMATS)
def test_codex_tool_round_trip(codex_bin, tmp_path, fmt):
    """The fake asks Codex to run a shell command; Codex runs it and returns
    the output as a function_call_output, which reaches the upstream."""
    workdir, home = tmp_path / "project", tmp_path / "home"
    workdir.mkdir(), home.mkdir()
    (workdir / "note.txt").write_text(f"The secret word is {SECRET}.\n")

    def shell_tool(request: RecordedRequest) -> tuple[str, dict] | None:
        names = _tool_names(request)
        if "exec_command" in names:  # Codex's unified exec tool
            return "exec_command", {"cmd": "cat note.txt"}
        if "shell" in names:  # older Codex releases
            return "shell", {"command": ["cat", "note.txt"]}
        return None

    with FakeUpstream() as fake:
        fake.script = _tool_then_text(shell_tool, "I have read the note.")
        with running_router(_router_config(fake, fmt)) as router:
            events = _run_codex(codex_bin, router.url, workdir, home, "What does note.txt say?")
        assert _agent_messages(events) == ["I have read the note."]
        commands = [e["item"] for e in events
                    if e.get("type") == "item.completed" and e["item"].get("type") == "command_execution"]
        assert commands and "cat note.txt" in commands[0]["command"] and SECRET in commands[0]["aggregated_output"]
        requests = _chat_requests(fake)
        first = next(r for r in requests if shell_tool(r) is not None)
        followups = [r for r in requests if r.index > first.index and _tool_results(r)]
        assert followups, f"no request carried the tool result; paths: {[r.path for r in requests]}"
        ((call_id, text),) = _tool_results(followups[0])
        assert SECRET in text
        if fmt != "ollama":
            assert call_id.endswith(f"_{first.index}_0")


@pytest.mark.parametrize("fmt", UPSTREAM_FORMATS)
def test_codex_shows_a_mid_stream_upstream_failure(codex_bin, tmp_path, fmt):
    """An upstream that fails mid-stream: Codex gets `response.failed` in a
    cleanly ended body and shows the upstream's own message (from a cut-off
    body it would only say "error decoding response body")."""
    with FakeUpstream() as fake:
        fake.script = lambda r: Reply.text("one two three four", fault=Fault(after=2, kind="error", message="upstream melted")) if _is_chat(r) else None
        with running_router(_router_config(fake, fmt)) as router:
            events = _run_codex(codex_bin, router.url, tmp_path, tmp_path, "Say something.", check=False)
            (record,) = router.wait_records(1)
        failed = [e for e in events if e.get("type") == "turn.failed"]
        assert failed and "upstream melted" in failed[0]["error"]["message"], events
        assert "upstream melted" in record["error"]
