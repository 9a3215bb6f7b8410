"""`llmrouter init`: the config it renders for what it finds (pure), and the
command against fake local servers, watched by an audit hook that records
every address the process connects to or looks up: loopback only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import FakeUpstream
from test_watch import free_port
from llmrouter import config
from llmrouter.init_template import SERVERS, Found, models_in_reply, render

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "config.example.toml").read_text()
SERVER = {s.key: s for s in SERVERS}
CANARY = "sk-canary-init-4b7e19d2a6c3"


def rendered(found: list[Found], keys: dict[str, str] | None = None) -> tuple[str, config.Config]:
    text = render(EXAMPLE, found, set(keys or {}))
    return text, config.parse(tomllib.loads(text), source="config.toml", environ={"HOME": "/h", **(keys or {})})


def test_the_package_ships_the_example_itself():
    """One file, two places: the package's copy is a link to the top-level
    example (the wheel test checks that the built wheel holds its bytes)."""
    packaged = ROOT / "llmrouter" / "config.example.toml"
    assert packaged.is_symlink() and packaged.resolve() == (ROOT / "config.example.toml").resolve()


def test_model_lists_of_each_server_and_of_something_else():
    assert models_in_reply(SERVER["ollama"], b'{"models":[{"name":"llama3.2:latest"},{"name":"qwen"}]}') == ("llama3.2:latest", "qwen")
    assert models_in_reply(SERVER["vllm"], b'{"object":"list","data":[{"id":"Qwen/Qwen2.5-0.5B"}]}') == ("Qwen/Qwen2.5-0.5B",)
    assert models_in_reply(SERVER["llama.cpp"], b'{"data":[]}') == ()
    for junk in (b"<html>", b'{"data":[{"name":"x"}]}', b'{"models":"x"}', b"[]", b'{"data":[{"id":3}]}'):
        assert models_in_reply(SERVER["lmstudio"], junk) is None
    # A name is written into a comment: nothing in it can end the comment.
    assert models_in_reply(SERVER["ollama"], b'{"models":[{"name":"evil\\n[server]\\nport = 1"}]}') == ("evil[server]port = 1",)


def test_nothing_found_keeps_the_local_defaults_and_turns_the_cloud_off():
    text, cfg = rendered([])
    assert [p.name for p in cfg.providers] == ["local-llama", "ollama"] and cfg.skipped_providers == ()
    assert "# It found: nothing running" in text
    assert "# Off: $OPENAI_API_KEY was not set when llmrouter init ran." in text
    assert "# [[providers]]\n# name = \"anthropic\"" in text
    assert {r.provider for r in cfg.routers if r.provider} == {"ollama", "local-llama"}


def test_what_is_found_is_on_at_its_address_with_its_models_listed():
    found = [Found(SERVER["ollama"], 11435, ("llama3.2:latest", "qwen2.5:0.5b"))]
    text, cfg = rendered(found, {"OPENAI_API_KEY": CANARY})
    assert {p.name: p.base_url for p in cfg.providers} == {"ollama": "http://127.0.0.1:11435", "openai": "https://api.openai.com/v1"}
    assert cfg.provider("openai").strict and cfg.provider("openai").api_key == CANARY
    assert "# Found by llmrouter init at 127.0.0.1:11435, serving 2 model(s): llama3.2:latest,\n#   qwen2.5:0.5b\n" in text
    assert "# Off: llmrouter init found no llama.cpp at 127.0.0.1:8080." in text
    fallback = next(r for r in cfg.routers if r.type == "fallback")
    assert fallback.providers == ("ollama",)
    assert [r.tag for r in cfg.routers if r.type == "tag"] == ["vision"]  # "code" goes to anthropic, which is off
    assert CANARY not in text


def test_servers_the_example_lacks_get_a_provider_and_a_prefix_rule():
    many = tuple(f"model-{i}" for i in range(30))
    found = [Found(SERVER["vllm"], 8000, many), Found(SERVER["lmstudio"], 1234, ())]
    text, cfg = rendered(found, {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"})
    assert [p.name for p in cfg.providers] == ["openai", "anthropic", "vllm", "lmstudio"]
    assert cfg.provider("vllm").base_url == "http://127.0.0.1:8000/v1" and cfg.provider("anthropic").strict
    prefixes = {r.model_prefix: r.provider for r in cfg.routers if r.type == "prefix"}
    assert prefixes["vllm/"] == "vllm" and prefixes["lmstudio/"] == "lmstudio"
    assert next(r for r in cfg.routers if r.type == "fallback").providers == ("vllm", "lmstudio")
    assert all(len(line) <= 88 for line in text.splitlines() if "model-" in line)
    assert "model-29" in text and "with no model loaded" in text


def run_init(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`llmrouter init ...` in a child whose audit hook logs every connect and lookup."""
    log = tmp_path / f"net-{len(list(tmp_path.glob('net-*')))}.log"
    code = (
        "import sys\n"
        "log = open(sys.argv[1], 'w', buffering=1)\n"
        "def hook(event, args):\n"
        "    if event == 'socket.connect': log.write(f'connect {args[1]!r}\\n')\n"
        "    elif event == 'socket.getaddrinfo': log.write(f'lookup {args[0]!r}\\n')\n"
        "sys.addaudithook(hook)\n"
        "from llmrouter.cli import main\n"
        "raise SystemExit(main(sys.argv[2:]))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    environ.update(PYTHONPATH=str(ROOT), **(env or {}))
    result = subprocess.run([sys.executable, "-c", code, str(log), "init", *args], cwd=tmp_path, env=environ,
                            capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines()


def assert_loopback_only(network: list[str]) -> None:
    assert network, "the audit hook saw nothing"
    for line in network:
        assert re.fullmatch(r"lookup '127\.0\.0\.1'|connect \('127\.0\.0\.1', \d+\)", line), line


def test_init_finds_llama_cpp_and_ollama_and_connects_nowhere_else(tmp_path):
    closed = free_port()
    with FakeUpstream(models=("smollm2",)) as llama, FakeUpstream(models=("llama3.2:latest",)) as ollama:
        ports = ["--port", f"llama.cpp={llama.port}", "--port", f"ollama={ollama.port}",
                 "--port", f"vllm={closed}", "--port", f"lmstudio={closed}"]
        result, network = run_init(tmp_path, *ports, env={"ANTHROPIC_API_KEY": CANARY})
        assert result.returncode == 0, result.stderr
        assert [r.route for r in llama.requests] == ["/v1/models"] and [r.route for r in ollama.requests] == ["/api/tags"]
    assert_loopback_only(network)
    out = result.stdout
    assert re.search(rf"llama\.cpp +127\.0\.0\.1:{llama.port} +found: smollm2", out)
    assert re.search(rf"Ollama +127\.0\.0\.1:{ollama.port} +found: llama3\.2:latest", out)
    assert re.search(rf"vLLM +127\.0\.0\.1:{closed} +nothing answers", out)
    assert "$ANTHROPIC_API_KEY set: on, with strict = true" in out and "$OPENAI_API_KEY not set: off" in out
    assert "wrote config.toml" in out and CANARY not in out + result.stderr

    written = (tmp_path / "config.toml").read_text()
    checked = subprocess.run([sys.executable, "-m", "llmrouter", "check"], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "ANTHROPIC_API_KEY": CANARY}, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert f"local-llama  openai     http://127.0.0.1:{llama.port}/v1" in checked.stdout
    assert "anthropic" in checked.stdout.split("routers")[0] and "skipped" not in checked.stdout

    again, _ = run_init(tmp_path, "--port", f"llama.cpp={closed}")
    assert again.returncode == 1 and "config.toml exists; nothing was written (--force replaces it)" in again.stderr
    assert (tmp_path / "config.toml").read_text() == written
    forced, _ = run_init(tmp_path, "--force", *(f"--port={key}={closed}" for key in SERVER))
    assert forced.returncode == 0 and "no local server answered" in forced.stdout
    assert (tmp_path / "config.toml").read_text() != written


def test_init_on_the_default_ports_asks_loopback_only(tmp_path):
    """Whatever runs on this machine's default ports, init asks 127.0.0.1
    and nothing else (the canary is the audit hook), and writes a valid file."""
    result, network = run_init(tmp_path, "here.toml", env={"OPENAI_API_KEY": CANARY})
    assert result.returncode == 0, result.stderr
    assert_loopback_only(network)
    assert {int(re.search(r", (\d+)\)", l).group(1)) for l in network if l.startswith("connect")} == {8080, 11434, 8000, 1234}
    config.load(str(tmp_path / "here.toml"), environ={"OPENAI_API_KEY": CANARY})


def test_bad_port_option_is_refused(tmp_path):
    result, _ = run_init(tmp_path, "--port", "redis=6379")
    assert result.returncode == 2 and "--port redis=6379: expected SERVER=PORT" in result.stderr
    assert not (tmp_path / "config.toml").exists()
