"""Secrets (issue 6, item 9): canary keys for every provider and for the
router's own client key; a child-process router at debug log level is driven
through successes, every upstream error (with upstreams that echo the key they
received back in their error bodies and stream error events), invalid input,
refusals, /health?verbose, /v1/models, the dashboard and its feed, then
stopped. Afterwards no canary — raw, base64, hex, or any 8-character piece —
appears in any response, the feed, the log file, stdout or stderr.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket

from aclient import exchange
from fakes import Fault, FakeUpstream, RecordedRequest, Reply
from harness import FeedReader
from reliability_report import record
from subproc import RouterProcess
from test_chaos import dead_port

CANARIES = {
    "OPENAI_CANARY_KEY": "sk-canary-5f0c1d2e-9a8b-4c7d-b6e5-f4a3b2c1d0e9",
    "ANTHROPIC_CANARY_KEY": "sk-ant-canary-0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
    "OLLAMA_CANARY_KEY": "ol-canary-7e6d5c4b3a29",  # a short one: 20 characters
    "DEAD_CANARY_KEY": "sk-dead-canary-91b2c3d4e5f60718",
    "ROUTER_CANARY_KEY": "rk-canary-client-3c4d5e6f7a8b9c0d",
}
CLIENT_KEY = CANARIES["ROUTER_CANARY_KEY"]


def leaks(blob: bytes, where: str) -> list[str]:
    """Every canary form found in `blob`."""
    found = []
    text = blob.decode("utf-8", "replace")
    for name, key in CANARIES.items():
        forms = {key, base64.b64encode(key.encode()).decode(), base64.urlsafe_b64encode(key.encode()).decode(),
                 key.encode().hex(), json.dumps(key)[1:-1]}
        forms |= {key[i : i + 8] for i in range(len(key) - 7)}
        for form in forms:
            if form in text:
                found.append(f"{where}: {name} piece {form!r}")
                break
    return found


def echo_key(request: RecordedRequest) -> str:
    auth = request.headers.get("authorization", "")
    return request.headers.get("x-api-key") or auth.removeprefix("Bearer ")


def script(request: RecordedRequest) -> Reply:
    """Upstreams that misbehave and quote the key they were sent."""
    mode = request.json.get("model", "")
    key = echo_key(request)
    message = f"Incorrect API key provided: {key}. You can find your API key at https://example.invalid/keys ({key[:10]}...{key[-6:]})"
    if mode.startswith("status-"):
        return Reply.error(int(mode[7:]), message)
    if mode == "mid-stream-error":
        return Reply.text("one two three", chunks=3, fault=Fault(after=2, kind="error", message=message))
    if mode == "first-event-error":
        return Reply.text("one two three", chunks=3, fault=Fault(after=0, kind="error", message=message))
    if mode == "plain-text-error":
        return Reply.raw(401, [("content-type", "text/plain")], [message.encode()])
    return Reply.text("fine")


def config_for(url: str, dead: str, log: str) -> str:
    providers = [("oa", "openai", url + "/v1", "OPENAI_CANARY_KEY"), ("an", "anthropic", url, "ANTHROPIC_CANARY_KEY"),
                 ("ol", "ollama", url, "OLLAMA_CANARY_KEY"), ("dead", "openai", dead + "/v1", "DEAD_CANARY_KEY"),
                 ("unset", "openai", url + "/v1", "UNSET_CANARY_KEY")]
    text = (f'[server]\nport = 0\napi_key_env = "ROUTER_CANARY_KEY"\nbreaker_failures = 1000\n'
            f'[logging]\nenabled = true\npath = "{log}"\n')
    for name, fmt, base, env in providers:
        text += f'[[providers]]\nname = "{name}"\nformat = "{fmt}"\nbase_url = "{base}"\napi_key_env = "{env}"\n'
    for name, _, _, _ in providers:
        text += f'[[routers]]\ntype = "prefix"\nmodel_prefix = "{name}/"\nprovider = "{name}"\nstrip_prefix = true\n'
    return text


MODES = ["ok", "status-400", "status-401", "status-403", "status-404", "status-429", "status-500", "status-503",
         "plain-text-error", "first-event-error", "mid-stream-error"]


def test_no_canary_key_leaks_anywhere(tmp_path):
    log = tmp_path / "log.jsonl"
    captured: list[tuple[str, bytes]] = []
    with FakeUpstream() as fake:
        fake.script = script
        dead = f"http://127.0.0.1:{dead_port()}"
        env = {k: v for k, v in CANARIES.items()}
        with RouterProcess(config_for(fake.url, dead, str(log)), tmp_path, env=env, args=("--log-level", "debug")) as router:
            feed = FeedReader(router.port, b"x-api-key: " + CLIENT_KEY.encode() + b"\r\n")
            feed.until(b"\r\n\r\n")
            assert feed.data.startswith(b"HTTP/1.1 200")

            async def drive() -> None:
                auth = [{"authorization": f"Bearer {CLIENT_KEY}"}, {"x-api-key": CLIENT_KEY}]
                n = 0
                for provider in ("oa", "an", "ol", "dead", "unset"):
                    for mode in MODES:
                        for client, path in (("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")):
                            for stream in (False, True):
                                body = {"model": f"{provider}/{mode}", "stream": stream, "max_tokens": 9,
                                        "messages": [{"role": "user", "content": "hello"}]}
                                n += 1
                                reply = await exchange(router.port, path, body, headers={**auth[n % 2], "x-request-id": f"r{n}"})
                                captured.append((f"{path} {provider}/{mode} stream={stream}",
                                                 json.dumps(reply.headers).encode() + reply.body))
                # Refusals and invalid input, with a wrong key, a missing one and garbage.
                for headers, body in (({"authorization": "Bearer wrong"}, {"model": "oa/ok"}), ({}, {"model": "oa/ok"}),
                                      ({"x-api-key": CLIENT_KEY}, b"{broken"), ({"x-api-key": CLIENT_KEY}, {"model": 5})):
                    reply = await exchange(router.port, "/v1/chat/completions", body, headers=headers)
                    captured.append(("refusal", json.dumps(reply.headers).encode() + reply.body))

            asyncio.run(drive())
            for target in ("/health?verbose", "/v1/models", "/dashboard"):
                with socket.create_connection(("127.0.0.1", router.port)) as sock:
                    sock.sendall(f"GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {CLIENT_KEY}\r\nconnection: close\r\n\r\n".encode())
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                    assert data.startswith(b"HTTP/1.1 200"), data[:200]
                    captured.append((target, data))
            feed.until(b"event: complete", count=len(captured) - 3)  # every request's record (the 3 GETs make none)
            assert feed.thread.is_alive()  # the feed was never cut off
            assert router.stop() == 0  # ends the feed too
            feed.close()
            feed_data = bytes(feed.data)
        # The upstreams did get the keys (so the echo above really echoed them).
        sent = {echo_key(r) for r in fake.requests}
        assert {CANARIES["OPENAI_CANARY_KEY"], CANARIES["ANTHROPIC_CANARY_KEY"], CANARIES["OLLAMA_CANARY_KEY"]} <= sent
        assert not any(CLIENT_KEY in json.dumps(r.headers) for r in fake.requests)  # the client's key stays here
    found: list[str] = []
    for where, blob in captured:
        found += leaks(blob, where)
    found += leaks(feed_data, "event feed")
    found += leaks(log.read_bytes(), "request log")
    found += leaks(router.stdout.encode(), "stdout")
    found += leaks(router.stderr.encode(), "stderr")
    assert not found, "\n".join(found[:20]) + f"\n({len(found)} leaks)"
    # The redacted errors still say what happened.
    records = [json.loads(line) for line in log.read_text().splitlines()]
    denied = next(r for r in records if r["requested_model"] == "oa/status-401")
    assert "Incorrect API key provided" in denied["error"] and "[redacted]" in denied["error"]
    assert b"event: complete" in feed_data and len(records) >= len(captured) - 3
    record("secrets.leaks", 0, bound="0", canaries=len(CANARIES), responses_scanned=len(captured),
           feed_bytes=len(feed_data), log_lines=len(records), stderr_lines=len(router.stderr.splitlines()),
           forms="raw, base64, base64url, hex, JSON-escaped, every 8-character piece", log_level="debug")


def test_redactor_removes_every_run_of_key_pieces():
    from llmrouter.redact import Redactor

    key = "sk-proj-0123456789abcdef"
    r = Redactor([key, "tiny", None, ""])
    assert r(f"bad key {key} sent") == "bad key [redacted] sent"
    assert r(f"masked {key[:10]}...{key[-8:]}!") == "masked [redacted]...[redacted]!"
    assert r("a tiny one, tinytiny") == "a [redacted] one, [redacted]"
    assert r("nothing here: sk-proj") == "nothing here: sk-proj"  # 7 characters are no piece
    assert Redactor([])("sk-proj-0123456789abcdef") == "sk-proj-0123456789abcdef"
