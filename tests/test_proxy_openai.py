"""POST /v1/chat/completions end to end: the official openai SDK → router → fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpcore
import openai
import pytest

from fakes import Close, Delay, FakeUpstream, Fault, Hang, Reply
from harness import provider_config, running_router

MESSAGES = [{"role": "user", "content": "hello router"}]


def config_for(*upstreams: str, extra_server: str = "", provider_extra: str = "") -> str:
    text = f"[server]\nport = 0\n{extra_server}\n"
    for i, url in enumerate(upstreams):
        text += provider_config(url, name=f"up{i}", extra=provider_extra)
    for i in range(len(upstreams)):
        text += f'[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "up{i}"\n'
    return text


@pytest.fixture
def fake():
    with FakeUpstream() as upstream:
        yield upstream


def client(router, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="client-key", max_retries=0, **kwargs)


def test_sync_non_streaming_round_trip(fake):
    """The SDK's typed reply carries the upstream's text, usage and the router's headers."""
    with running_router(config_for(fake.url)) as router:
        raw = client(router).chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
        reply = raw.parse()
        assert reply.choices[0].message.content == "echo: hello router"
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
        assert raw.headers["x-router-provider"] == "up0"
        assert raw.headers["x-router-model"] == "gpt-test"
        assert raw.headers["x-request-id"]
        sent = fake.requests[-1]
        assert sent.path == "/v1/chat/completions"
        assert sent.json["model"] == "gpt-test" and sent.json["messages"] == MESSAGES
        assert "authorization" not in sent.headers  # the client's key is never forwarded
        (record,) = router.wait_records(1)
        assert record["status"] == 200 and record["provider"] == "up0"
        assert record["response"]["content"] == "echo: hello router"


def test_sync_streaming_round_trip(fake):
    fake.enqueue(Reply.text("one two three four", chunks=4))
    with running_router(config_for(fake.url)) as router:
        stream = client(router).chat.completions.create(model="m", messages=MESSAGES, stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "one two three four"
        assert chunks[-1].choices[0].finish_reason == "stop"
        # The client did not ask for usage: the usage-only frame is not forwarded...
        assert all(c.choices for c in chunks)
        # ...but the router asked for it, so the log has token counts.
        assert fake.requests[-1].json["stream_options"] == {"include_usage": True}
        (record,) = router.wait_records(1)
        assert record["stream"] is True and record["response"]["content"] == text
        assert record["usage"]["output_tokens"] > 0


def test_streaming_usage_forwarded_when_asked(fake):
    with running_router(config_for(fake.url)) as router:
        chunks = list(
            client(router).chat.completions.create(
                model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_async_client_streaming_and_not(fake):
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0) as aclient:
            reply = await aclient.chat.completions.create(model="m", messages=MESSAGES)
            assert reply.choices[0].message.content == "echo: hello router"
            stream = await aclient.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            assert "".join(parts) == "echo: hello router"

    with running_router(config_for(fake.url)) as router:
        asyncio.run(main())


def test_streamed_tool_calls_reassemble(fake):
    fake.enqueue(Reply.tool_calls([("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')], chunks=4))
    with running_router(config_for(fake.url)) as router:
        tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("get_weather", "get_time")]
        stream = client(router).chat.completions.create(model="m", messages=MESSAGES, tools=tools, stream=True)
        calls: dict[int, dict] = {}
        finish = None
        for chunk in stream:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or []:
                    slot = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    slot["id"] = delta.id or slot["id"]
                    slot["name"] += (delta.function.name or "") if delta.function else ""
                    slot["arguments"] += (delta.function.arguments or "") if delta.function else ""
        assert finish == "tool_calls"
        assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
            ("get_weather", {"city": "Paris"}),
            ("get_time", {"tz": "CET"}),
        ]
        assert all(c["id"] for c in calls.values())


def test_connections_are_reused(fake):
    with running_router(config_for(fake.url)) as router:
        c = client(router)
        for _ in range(5):
            c.chat.completions.create(model="m", messages=MESSAGES)
        assert len(fake.requests) == 5
        assert fake.connections_opened == 1


def test_upstream_error_keeps_status_and_message(fake):
    fake.enqueue(Reply.error(404, "The model `nope` does not exist"))
    with running_router(config_for(fake.url)) as router:
        with pytest.raises(openai.NotFoundError) as info:
            client(router).chat.completions.create(model="nope", messages=MESSAGES)
        assert "does not exist" in info.value.message
        body = info.value.body
        assert set(body) >= {"message", "type", "param", "code"}
        (record,) = router.wait_records(1)
        assert record["status"] == 404 and "does not exist" in record["error"]


def test_rate_limit_passes_retry_after(fake):
    fake.enqueue(Reply.error(429, "slow down", retry_after=7))
    with running_router(config_for(fake.url, extra_server="fallback_on_error = false")) as router:
        with pytest.raises(openai.RateLimitError) as info:
            client(router).chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.response.headers["retry-after"] == "7"


def test_connect_failure_is_502():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        with running_router(config_for(dead)) as router:
            with pytest.raises(openai.APIStatusError) as info:
                client(router).chat.completions.create(model="m", messages=MESSAGES)
            assert info.value.status_code == 502
            assert "cannot connect" in info.value.message
            (record,) = router.wait_records(1)
            assert record["error_code"] == "upstream_connect_error"


def test_timeout_is_504(fake):
    fake.enqueue(Reply.text("late").delayed(5))
    with running_router(config_for(fake.url, provider_extra="first_byte_timeout = 0.2")) as router:
        with pytest.raises(openai.APIStatusError) as info:  # the late reply would be a 200
            client(router).chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.status_code == 504


def test_stream_cut_short_ends_with_error_chunk_and_no_done(fake):
    head = [("content-type", "text/event-stream")]
    first = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"par"},"finish_reason":null}]}\n\n'
    fake.enqueue(Reply.raw(200, head, [first, Delay(0.05), Close()]))
    with running_router(config_for(fake.url)) as router:
        body = _raw_stream(router.port)
        assert b'"content":"par"' in body
        assert b'"error"' in body
        assert b"[DONE]" not in body
        (record,) = router.wait_records(1)
        assert record["error"] and record["response"]["content"] == "par"


def _raw_stream(port: int, model: str = "m") -> bytes:
    """POSTs a streaming request with httpcore and returns the body bytes received."""
    payload = json.dumps({"model": model, "messages": MESSAGES, "stream": True}).encode()
    body = b""
    with httpcore.ConnectionPool() as pool:
        with pool.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", headers={"content-type": "application/json"}, content=payload
        ) as response:
            try:
                for chunk in response.iter_stream():
                    body += chunk
            except httpcore.RemoteProtocolError:
                pass  # the router closed without the terminating chunk, on purpose
    return body


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": 5, "messages": MESSAGES}, "model"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
    ],
)
def test_bad_input_is_400_naming_the_field(fake, payload, param):
    with running_router(config_for(fake.url)) as router:
        with pytest.raises(openai.BadRequestError) as info:
            client(router).chat.completions.create(**payload) if False else client(router).post(
                "/chat/completions", body=payload, cast_to=object
            )
        assert info.value.status_code == 400
        assert param in info.value.message
        assert info.value.body["param"] is None or param in info.value.body["param"]
        assert fake.requests == []
        (record,) = router.wait_records(1)
        assert record["status"] == 400


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b'{"model": NaN}'])
def test_malformed_json_is_400(fake, body):
    with running_router(config_for(fake.url)) as router:
        with httpcore.ConnectionPool() as pool:
            response = pool.request(
                "POST", router.url + "/v1/chat/completions", headers={"content-type": "application/json"}, content=body
            )
        assert response.status == 400
        error = json.loads(response.content)["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        router.wait_records(1)


def test_client_disconnect_mid_stream_closes_upstream(fake):
    fake.enqueue(Reply.text("a b c d", fault=Fault(after=2, kind="hang")))  # never ends by itself
    with running_router(config_for(fake.url)) as router:
        payload = json.dumps({"model": "m", "messages": MESSAGES, "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", router.port)) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            assert b"200" in sock.recv(4096)
        fake.wait_peer_closed(1, timeout=10)  # only the router can have closed it
        (record,) = router.wait_records(1)
        assert record["error_code"] == "client_disconnected"


def test_client_disconnect_while_waiting_closes_upstream(fake):
    fake.enqueue(Reply.raw(200, [], [Hang()]))
    with running_router(config_for(fake.url)) as router:
        payload = json.dumps({"model": "m", "messages": MESSAGES}).encode()
        with socket.create_connection(("127.0.0.1", router.port)) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            fake.wait_until(lambda f: len(f.requests) == 1)
        fake.wait_peer_closed(1, timeout=3)
        (record,) = router.wait_records(1)
        assert record["error_code"] == "client_disconnected"


def test_slow_client_slows_the_upstream_instead_of_queueing():
    """Backpressure: while the client does not read, the router stops reading the upstream."""
    chunk = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"' + b"x" * 8000 + b'"},"finish_reason":null}]}\n\n'
    total_chunks = 4000  # ~32 MB: far more than any socket buffers can hold
    sent = [0]
    listener = socket.create_server(("127.0.0.1", 0))

    def upstream() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        try:
            for _ in range(total_chunks):
                conn.sendall(chunk)
                sent[0] += 1
            conn.sendall(b"data: [DONE]\n\n")
        except OSError:
            pass
        finally:
            conn.close()

    import threading

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    with running_router(config_for(url)) as router:
        payload = json.dumps({"model": "m", "messages": MESSAGES, "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", router.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            sock.recv(4096)  # the head and a little data; then the client stalls
            deadline = time.monotonic() + 5
            previous = -1
            while sent[0] != previous and time.monotonic() < deadline:  # wait until the upstream is blocked
                previous = sent[0]
                time.sleep(0.3)
            stalled_at = sent[0]
            assert stalled_at < total_chunks // 4, f"the router kept reading: {stalled_at} chunks sent"
            tail = b""
            sock.settimeout(10)
            # The client reads again: everything arrives, up to the final empty
            # chunk (the connection stays open for the next request).
            while not tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):
                data = sock.recv(1 << 20)
                assert data, "the router closed the stream before its end"
                tail = (tail + data)[-64:]
        assert sent[0] == total_chunks
    listener.close()
