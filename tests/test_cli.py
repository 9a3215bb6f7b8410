"""The command line as a user runs it: check, serve, signals, .env, and the README's install."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import httpcore
import pytest

from fakes import FakeUpstream, Reply
from llmrouter import cli

ROOT = Path(__file__).resolve().parent.parent
CANARY = "sk-canary-7f3a9c1e5b2d4a60"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "llmrouter", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout
    )


def fake_config(url: str, extra: str = "") -> str:
    return (
        f'[server]\nport = 0\n[logging]\nenabled = true\npath = "requests.jsonl"\n{extra}\n'
        f'[[providers]]\nname = "fake"\nformat = "openai"\nbase_url = "{url}/v1"\napi_key_env = "FAKE_KEY"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'
    )


def test_version_and_help_for_every_command():
    assert run_cli("--version").stdout.startswith("llmrouter ")
    for command in ([], ["serve"], ["check"], ["init"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0 and "usage: llmrouter" in result.stdout


def test_check_prints_what_it_understood():
    result = run_cli("check", str(ROOT / "config.example.toml"), env={"OPENAI_API_KEY": CANARY})
    assert result.returncode == 0, result.stderr
    for word in ("providers", "routers", "listen", "openai"):
        assert word in result.stdout
    assert CANARY not in result.stdout + result.stderr


def test_check_names_each_rule_as_its_warnings_do(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[providers]]\nname = "free"\nformat = "openai"\nbase_url = "http://127.0.0.1:1/v1"\n'
                   '[[routers]]\ntype = "prefix"\nmodel_prefix = "x/"\nprovider = "free"\n'
                   '[[routers]]\ntype = "price"\n')
    result = run_cli("check", str(cfg))
    assert result.returncode == 0, result.stderr
    listing = [line for line in result.stdout.splitlines() if line.startswith("  routers[")]
    assert listing == ["  routers[0] prefix: model starts with 'x/' -> free", "  routers[1] price: cheapest over all providers"]
    assert "  - routers[1] (price): free declare no cost_per_1m_tokens and count as free" in result.stdout


def test_check_without_argument_prints_the_built_in_default(tmp_path):
    result = run_cli("check", cwd=tmp_path)
    assert result.returncode == 0
    assert "<built-in default>" in result.stdout and "127.0.0.1:8090" in result.stdout


def test_broken_config_exits_2_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[providers]]\nname = "x"\nformat = "openai"\nbase_ur1 = "http://h"\n')
    for command in (["check", str(bad)], [str(bad)], ["serve", str(bad)]):
        result = run_cli(*command)
        assert result.returncode == 2
        assert f"{bad}: providers[0].base_ur1" in result.stderr
        assert "Traceback" not in result.stderr
    # How fast: test_config_cli.py measures it (and bounds it with --soak).


def test_check_refuses_a_log_path_it_cannot_open_as_serve_does(tmp_path):
    (tmp_path / "afile").write_text("")
    for where in ("afile/requests.jsonl", "."):  # under a file; a directory
        config = tmp_path / "config.toml"
        config.write_text(fake_config("http://127.0.0.1:9").replace('path = "requests.jsonl"', f'path = "{where}"'))
        for command in ("check", "serve"):
            result = run_cli(command, str(config), env={"FAKE_KEY": CANARY})
            assert result.returncode == 2, (command, where, result.stderr)
            assert f"{config}: logging.path: cannot open" in result.stderr and "Traceback" not in result.stderr
            assert "listening" not in result.stderr and "listen:" not in result.stdout


def test_a_busy_port_exits_3_with_one_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(fake_config("http://127.0.0.1:9"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_cli("--log-level", "error", "serve", str(config), "--port", str(port), env={"FAKE_KEY": CANARY})
    assert result.returncode == 3
    assert result.stderr == f"llmrouter: cannot listen on 127.0.0.1:{port}: Address already in use (server.host / server.port in {config})\n"


def test_dotenv_is_loaded_without_overriding(tmp_path):
    (tmp_path / "config.toml").write_text(fake_config("http://127.0.0.1:9"))
    (tmp_path / ".env").write_text(f'export FAKE_KEY="{CANARY}"  # the key\nOTHER=1\n')
    result = run_cli("check", cwd=tmp_path)
    assert "key from $FAKE_KEY: set" in result.stdout
    assert CANARY not in result.stdout + result.stderr
    result = run_cli("check", cwd=tmp_path, env={"FAKE_KEY": ""})
    assert "key from $FAKE_KEY: missing" in result.stdout  # an empty variable that is set wins over .env


def start_router(tmp_path: Path, config_text: str, *args: str) -> tuple[subprocess.Popen, str]:
    (tmp_path / "config.toml").write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(PYTHONPATH=str(ROOT), FAKE_KEY=CANARY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmrouter", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    line = proc.stderr.readline()
    match = re.search(r"listening on (http://\S+)", line)
    assert match, line + proc.stderr.read()
    return proc, match.group(1)


def test_serve_answers_then_stops_cleanly_on_sigterm(tmp_path):
    with FakeUpstream() as fake:
        fake.script = lambda request: Reply.text("slow reply", chunks=4, delay=0.15)
        proc, url = start_router(tmp_path, fake_config(fake.url))
        try:
            with httpcore.ConnectionPool() as pool:
                assert pool.request("GET", url + "/health").content == b"ok"
                payload = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
                with pool.stream("POST", url + "/v1/chat/completions", headers={"content-type": "application/json"}, content=payload.encode()) as response:
                    chunks = response.iter_stream()
                    first = next(chunks)
                    proc.send_signal(signal.SIGTERM)  # mid-stream: the stream must still finish
                    rest = b"".join(chunks)
                assert b"[DONE]" in first + rest
            assert proc.wait(10) == 0
        finally:
            proc.kill()
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr and CANARY not in stderr
        (line,) = (tmp_path / "requests.jsonl").read_text().splitlines()
        record = json.loads(line)
        assert record["status"] == 200 and record["response"]["content"] == "slow reply"
        assert fake.requests[0].headers["authorization"] == f"Bearer {CANARY}"
        assert CANARY not in line


def test_startup_line_names_url_config_providers_and_dashboard(tmp_path):
    (tmp_path / "config.toml").write_text(fake_config("http://127.0.0.1:9"))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(PYTHONPATH=str(ROOT), FAKE_KEY=CANARY)
    proc = subprocess.Popen([sys.executable, "-m", "llmrouter", "serve", "config.toml"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"  # the `fast` extra, when installed
    assert re.search(
        r"listening on http://127\.0\.0\.1:\d+ \(config: config\.toml, 1 provider\(s\), dashboard http://\S+/dashboard, %s event loop\)" % loop, line
    ), line


def test_event_loop_is_uvloop_when_installed_unless_asyncio_is_asked_for():
    assert cli.event_loop({"LLMROUTER_LOOP": "asyncio"}) == ("asyncio", {})
    installed = importlib.util.find_spec("uvloop") is not None
    assert cli.event_loop({}) == (("uvloop", {"use_uvloop": True}) if installed else ("asyncio", {}))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)], check=True, timeout=300
    )
    (built,) = out.glob("llmrouter-*.whl")
    return built


def test_wheel_holds_only_the_package(wheel):
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"llmrouter", next(t for t in tops if t.endswith(".dist-info"))}
    assert not any(n.endswith(".pth") for n in names)
    assert "llmrouter/default_config.toml" in names
    # init needs the example: the package links to the top-level file, the wheel holds its bytes.
    assert zipfile.ZipFile(wheel).read("llmrouter/config.example.toml") == (ROOT / "config.example.toml").read_bytes()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = sorted(line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert [re.split(r"[ <>=;]", r)[0] for r in requires] == ["anyio", "h11", "httpcore", "tomli"]


def test_ci_runs_the_readme_test_command_exactly():
    """.ci/run ends with the README's one-line test command, and sets CI=true
    (tests whose tool is missing fail there instead of skipping)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("# 2. install the test dependencies and run the whole test suite\n", 1)[1]
    command = block.split("\n", 1)[0]
    assert command.endswith("python3 -m pip install -e '.[test,e2e]' && python3 -m pytest"), command
    assert 'CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF' in command  # a portable llama-cpp-python build
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == command
    assert "export CI=true" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    result = subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr


def test_readme_install_command_serves_an_answer(tmp_path):
    """`python3 -m pip install . && llmrouter`, in a fresh virtualenv, then a request through it."""
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m pip install . && llmrouter" in readme
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python3"), "-m", "pip", "install", "-q", "."], cwd=ROOT, check=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert_installed_router_answers(str(venv / "bin" / "llmrouter"), work, env, "from the readme")


def assert_installed_router_answers(llmrouter: str, workdir: Path, env: dict[str, str], text: str) -> None:
    """Runs an installed `llmrouter` with no arguments in `workdir` (so on its
    config.toml, written here for a fake upstream): it answers a chat with
    `text`, and a SIGTERM stops it cleanly."""
    with FakeUpstream() as fake:
        (workdir / "config.toml").write_text(fake_config(fake.url))
        proc = subprocess.Popen([llmrouter], cwd=workdir, env={**env, "FAKE_KEY": CANARY}, stderr=subprocess.PIPE, text=True)
        try:
            match = re.search(r"listening on (http://\S+)", proc.stderr.readline())
            assert match
            payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
            with httpcore.ConnectionPool() as pool:
                response = pool.request("POST", match.group(1) + "/v1/chat/completions", headers={"content-type": "application/json"}, content=payload)
            assert json.loads(response.content)["choices"][0]["message"]["content"] == f"echo: {text}"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
