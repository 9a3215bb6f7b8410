"""The completion and embedding formats on their own (pure, no sockets):
their stream decoders against golden streams at every byte split, their
client replies checked with the official SDKs' types, the vectors' two
encodings, and the upstream bodies they build."""

from __future__ import annotations

import base64
import json
import struct

import ollama
import openai.types
import pytest

from golden import WIRE as WIRES
from golden import assert_golden, tagged
from llmrouter import canonical as c
from llmrouter import errors
from llmrouter.config import Provider
from llmrouter.formats import ollama_embed, ollama_generate, openai_completions, openai_embeddings

WIRE = WIRES / "completions"
DECODERS = {"openai_stream.upstream.sse": openai_completions, "ollama_generate_stream.upstream.ndjson": ollama_generate}
OPENAI = Provider(name="oa", format="openai", base_url="http://127.0.0.1:8080/v1", api_key="sk-test", headers=(("x-extra", "1"),))
OLLAMA = Provider(name="ol", format="ollama", base_url="http://127.0.0.1:11434")


def completion(**fields) -> c.Request:
    return c.completion_request("coder", "def add(a, b):\n    ", now=1735689600.5, id_seed="5eed", **fields)


def decode(module, data: bytes, chunks) -> tuple[list, bytes]:
    decoder = module.Decoder(completion())
    frames = [f for chunk in chunks for f in decoder.feed(chunk)]
    frames += decoder.close()
    return tagged([e for f in frames for e in f.events]), b"".join(f.raw for f in frames)


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoders_match_their_golden_events_at_every_byte_split(name):
    data = (WIRE / name).read_bytes()
    expected = decode(DECODERS[name], data, [data])
    assert expected[1] == data  # every byte is in some frame, for a byte-exact relay
    assert_golden("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in expected[0]), WIRE / f"{name.split('.')[0]}.events.jsonl")
    for cut in range(1, len(data)):
        assert decode(DECODERS[name], data, [data[:cut], data[cut:]]) == expected, cut
    assert decode(DECODERS[name], data, [data[i : i + 1] for i in range(len(data))]) == expected


@pytest.mark.parametrize("module, truncated", [
    (openai_completions, b'data: {"id":"cmpl-1","choices":[{"text":"x","index":0}]}\n\n'),
    (ollama_generate, b'{"model":"m","response":"x","done":false}\n'),
])
def test_a_stream_cut_before_its_end_is_a_protocol_error(module, truncated):
    decoder = module.Decoder(completion())
    decoder.feed(truncated)
    with pytest.raises(errors.UpstreamProtocolError):
        decoder.close()


def test_the_openai_client_reply_is_what_the_sdk_reads():
    req = completion()
    resp = c.Response(id="", model="coder", content=[c.Text("total = a + b")], stop_reason="max_tokens", usage=c.Usage(11, 4))
    body = openai_completions.render_response(resp, req)
    parsed = openai.types.Completion.model_validate(body)
    assert parsed.id == "cmpl-5eed1" and parsed.created == 1735689600 and parsed.choices[0].finish_reason == "length"
    assert parsed.choices[0].text == "total = a + b" and parsed.usage.total_tokens == 15
    upstream_id = c.Response(id="cmpl-up1", model="coder", content=[c.Text("x")])
    assert openai_completions.render_response(upstream_id, completion())["id"] == "cmpl-up1"


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_openai_client_stream(include_usage):
    """Ollama's stream (no ids) re-encoded for an OpenAI client: one id for
    every chunk, text first (no role chunk), the finish, usage only when asked."""
    req = completion(include_usage=include_usage, stream=True)
    encoder = openai_completions.Encoder(req, "coder")
    data = (WIRE / "ollama_generate_stream.upstream.ndjson").read_bytes()
    decoder = ollama_generate.Decoder(req)
    out = b"".join(encoder.encode(e) for f in decoder.feed(data) + decoder.close() for e in f.events) + encoder.finish()
    frames = [json.loads(f[len(b"data: "):]) for f in out.split(b"\n\n")[:-2]]
    assert out.endswith(b"data: [DONE]\n\n")
    assert [f["choices"][0]["text"] for f in frames if f["choices"]] == ["total", " = a < b", ""]
    assert [f["choices"][0]["finish_reason"] for f in frames if f["choices"]] == [None, None, "stop"]
    assert {(f["id"], f["object"], f["created"], f["model"]) for f in frames} == {("cmpl-5eed1", "text_completion", 1735689600, "qwen2.5-coder:1.5b")}
    usage = [f["usage"] for f in frames if "usage" in f]
    assert usage == ([{"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}] if include_usage else [])


def test_upstream_bodies():
    req = completion(suffix="\n    return total\n", max_tokens=16, temperature=0.2, seed=7, stop=["\n\n"], stream=True)
    call = openai_completions.build_request(req, "qwen", OPENAI)
    assert call.path == "/completions" and ("authorization", "Bearer sk-test") in call.headers and ("x-extra", "1") in call.headers
    assert json.loads(call.body) == {"model": "qwen", "prompt": "def add(a, b):\n    ", "stream": True, "suffix": "\n    return total\n",
                                     "max_tokens": 16, "temperature": 0.2, "seed": 7, "stop": ["\n\n"],
                                     "stream_options": {"include_usage": True}}
    call = ollama_generate.build_request(req, "qwen", OLLAMA)
    assert call.path == "/api/generate" and call.warnings == []
    assert json.loads(call.body) == {"model": "qwen", "prompt": "def add(a, b):\n    ", "stream": True, "suffix": "\n    return total\n",
                                     "options": {"num_predict": 16, "temperature": 0.2, "seed": 7, "stop": ["\n\n"]}}
    plain = json.loads(ollama_generate.build_request(completion(), "qwen", OLLAMA).body)
    assert plain == {"model": "qwen", "prompt": "def add(a, b):\n    ", "stream": False, "raw": True}
    with_system = json.loads(ollama_generate.build_request(completion(system="be brief"), "qwen", OLLAMA).body)
    assert with_system["system"] == "be brief" and "raw" not in with_system


# --- embeddings -------------------------------------------------------------------------------

VECTORS = [[0.5, -0.25, 1.0], [0.125, 0.0, -2.0]]


def packed(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def test_vectors_round_trip_through_base64():
    assert openai_embeddings.encode_vector(VECTORS[0]) == packed(VECTORS[0])
    assert openai_embeddings.decode_vector(packed(VECTORS[1])) == VECTORS[1]
    assert openai_embeddings.decode_vector([1, 2.5]) == [1.0, 2.5]
    for broken in ("not base64!", base64.b64encode(b"abc").decode(), [True], [[0.1, 0.2]], None):
        with pytest.raises(errors.UpstreamProtocolError):
            openai_embeddings.decode_vector(broken)


def test_openai_upstream_reply_in_either_encoding_and_any_order():
    reply = {"object": "list", "model": "e", "usage": {"prompt_tokens": 7, "total_tokens": 7},
             "data": [{"object": "embedding", "index": 1, "embedding": packed(VECTORS[1])},
                      {"object": "embedding", "index": 0, "embedding": VECTORS[0]}]}
    parsed = openai_embeddings.parse_response(json.dumps(reply).encode(), c.embedding_request("e", ["a", "b"]))
    assert parsed.vectors == VECTORS and parsed.usage.input_tokens == 7 and parsed.model == "e"
    with pytest.raises(errors.UpstreamProtocolError):
        openai_embeddings.parse_response(b'{"object": "list"}', c.embedding_request("e", ["a"]))


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_openai_client_reply_is_what_the_sdk_reads(encoding):
    req = c.embedding_request("e", ["a", "b"], encoding_format=encoding)
    body = openai_embeddings.render_response(c.Embeddings("e", VECTORS, c.Usage(7)), req)
    if encoding == "base64":  # the SDK's type says list; it decodes base64 before validating
        assert [d["embedding"] for d in body["data"]] == [packed(v) for v in VECTORS]
        body["data"] = [{**d, "embedding": openai_embeddings.decode_vector(d["embedding"])} for d in body["data"]]
    parsed = openai.types.CreateEmbeddingResponse.model_validate(body)
    assert [d.index for d in parsed.data] == [0, 1] and parsed.usage.prompt_tokens == parsed.usage.total_tokens == 7
    assert [d.embedding for d in parsed.data] == VECTORS


def test_ollama_client_replies_are_what_the_official_client_reads():
    resp = c.Embeddings("nomic", VECTORS, c.Usage(7), {"total_duration": 9, "load_duration": 1})
    embed = ollama_embed.embed_client.render_response(resp, c.embedding_request("nomic", ["a", "b"]))
    assert ollama.EmbedResponse.model_validate(embed).embeddings == VECTORS
    assert embed == {"model": "nomic", "embeddings": VECTORS, "total_duration": 9, "load_duration": 1, "prompt_eval_count": 7}
    legacy = ollama_embed.embeddings_client.render_response(c.Embeddings("nomic", VECTORS[:1]), c.embedding_request("nomic", ["a"]))
    assert ollama.EmbeddingsResponse.model_validate(legacy).embedding == VECTORS[0]


def test_embedding_upstream_bodies():
    req = c.embedding_request("e", ["a", "b"], dimensions=3, encoding_format="base64",
                              extras={"openai": {"user": "u"}, "ollama": {"keep_alive": "5m", "truncate": False}})
    assert json.loads(openai_embeddings.build_request(req, "text-embed", OPENAI).body) == {
        "model": "text-embed", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 3, "user": "u"}
    assert openai_embeddings.build_request(req, "text-embed", OPENAI).warnings == [
        "dropped embedding field 'keep_alive' for an openai upstream", "dropped embedding field 'truncate' for an openai upstream"]
    call = ollama_embed.build_request(req, "nomic", OLLAMA)
    assert call.path == "/api/embed" and call.warnings == ["dropped embedding field 'user' for an ollama upstream"]
    assert json.loads(call.body) == {"model": "nomic", "input": ["a", "b"], "dimensions": 3, "keep_alive": "5m", "truncate": False}
    reply = {"model": "nomic", "embeddings": VECTORS, "total_duration": 9, "load_duration": 1, "prompt_eval_count": 7}
    parsed = ollama_embed.parse_response(json.dumps(reply).encode(), req)
    assert parsed.vectors == VECTORS and parsed.durations == {"total_duration": 9, "load_duration": 1} and parsed.usage.input_tokens == 7
