"""Graceful shutdown and hard kills (issue 6, item 8), on the router as a child process.

SIGTERM with 32 streams in flight and feed subscribers: new connections are
refused at once, every stream finishes, the subscribers' feeds end cleanly,
a stream longer than the drain timeout is cut (and still logged), the log is
flushed (one line per request) and the exit code is 0. SIGKILL in the middle
of a logging load leaves at most one partial last line, and the next start
appends cleanly after it.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import time

from aclient import exchange
from fakes import FakeUpstream, Reply
from harness import provider_config
from reliability_report import record
from subproc import RouterProcess


def config_for(url: str, log: str, drain: float = 30.0) -> str:
    return (
        f"[server]\nport = 0\ndrain_timeout = {drain}\n"
        f'[logging]\nenabled = true\npath = "{log}"\n'
        + provider_config(url)
        + '[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "fake"\n'
    )


def script(request) -> Reply:
    if request.json["model"] == "long":
        return Reply.text("x " * 40, chunks=40, delay=0.25)  # 10 s: longer than the drain
    return Reply.text("a b c d e f g h i j", chunks=10, delay=0.15)  # 1.5 s


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        # A reset during connect() is a handshake the closing listener
        # aborted: turned away as surely as a refusal (accepted connections
        # only fail later, when read).
        return True
    return False


def test_sigterm_drains_32_streams_closes_feeds_flushes_and_exits_0(tmp_path):
    log = tmp_path / "log.jsonl"
    with FakeUpstream() as fake:
        fake.script = script
        router = RouterProcess(config_for(fake.url, str(log), drain=4.0), tmp_path)
        port = router.port

        async def subscriber(ready: asyncio.Event, results: list) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /dashboard/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            data = b""
            while b": connected" not in data:
                data += await reader.read(65536)
            ready.set()
            while chunk := await reader.read(65536):
                data += chunk
            results.append((data.endswith(b"0\r\n\r\n"), time.monotonic()))  # the feed ended properly
            writer.close()

        async def main():
            subs: list = []
            readies = [asyncio.Event() for _ in range(10)]
            feeds = [asyncio.create_task(subscriber(r, subs)) for r in readies]
            for r in readies:
                await r.wait()
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            streams = [asyncio.create_task(exchange(port, "/v1/chat/completions", body, headers={"x-request-id": f"s{i}"}))
                       for i in range(32)]
            long = asyncio.create_task(exchange(port, "/v1/chat/completions", {**body, "model": "long"},
                                                headers={"x-request-id": "long"}))
            deadline = time.monotonic() + 15
            while len(fake.requests) < 33:  # every request is in flight
                assert time.monotonic() < deadline, f"{len(fake.requests)} of 33 requests reached the upstream"
                await asyncio.sleep(0.01)
            router.signal(signal.SIGTERM)
            signalled = time.monotonic()
            refused_after = None
            while refused_after is None and time.monotonic() - signalled < 2:
                if await asyncio.to_thread(refused, port):
                    refused_after = time.monotonic() - signalled
            replies = await asyncio.gather(*streams)
            long_reply = await long
            await asyncio.gather(*feeds)
            return replies, long_reply, subs, signalled, refused_after

        replies, long_reply, subs, signalled, refused_after = asyncio.run(main())
        code = router.wait(15)
        exited_after = time.monotonic() - signalled
    assert code == 0, router.stderr
    assert refused_after is not None  # new connections refused while the streams still ran
    assert all(r.status == 200 and r.complete and r.body.rstrip().endswith(b"data: [DONE]") for r in replies)
    assert long_reply.status == 200 and not long_reply.complete  # cut at the drain timeout
    assert len(subs) == 10 and all(ended for ended, _ in subs)
    feeds_closed_after = max(t for _, t in subs) - signalled
    lines = log.read_text().split("\n")
    assert lines[-1] == ""  # flushed, whole lines
    records = {json.loads(line)["request_id"]: json.loads(line) for line in lines[:-1]}
    assert len(records) == 33 == len(lines) - 1
    assert all(records[f"s{i}"]["status"] == 200 and records[f"s{i}"]["error"] is None for i in range(32))
    assert records["long"]["error"] is not None
    assert "Traceback" not in router.stderr
    record("shutdown.streams_finished", 32, bound="32 of 32", drain_timeout_s=4.0,
           refused_new_connections_after_s=round(refused_after, 3), feeds_closed_after_s=round(feeds_closed_after, 3),
           exit_code=0, exited_after_s=round(exited_after, 2), log_lines=33, longer_than_drain="cut, logged")


def test_sigkill_mid_write_leaves_at_most_one_partial_line_and_restart_appends(tmp_path, soak):
    kills = 20 if soak else 3
    log = tmp_path / "log.jsonl"
    rng = random.Random(8)
    big = "y " * 50_000  # 100 KB records: long writes, so a kill can land in one
    partial = 0
    synthetic = False
    with FakeUpstream() as fake:
        fake.script = lambda r: Reply.text("ok")
        for k in range(kills + 1):
            if k == kills and not partial:
                # No kill happened to land inside a write: leave the worst case
                # by hand, so the restart below always appends after one.
                with open(log, "ab") as f:
                    f.write(b'{"type":"complete","v":1,"id":9,"messages":[{"role":"user","content":"cut sh')
                partial, synthetic = 1, True
            router = RouterProcess(config_for(fake.url, str(log)), tmp_path)

            async def load(end: float) -> None:
                body = {"model": "m", "messages": [{"role": "user", "content": big}]}
                while time.monotonic() < end:
                    try:
                        await exchange(router.port, "/v1/chat/completions", body, timeout=5)
                    except OSError:  # killed: connections are refused from now on
                        await asyncio.sleep(0.05)

            async def main(seconds: float) -> None:
                end = time.monotonic() + seconds
                await asyncio.gather(*(load(end) for _ in range(8)))

            if k == kills:  # the last start: one request, a clean stop
                reply = asyncio.run(exchange(router.port, "/v1/chat/completions",
                                             {"model": "m", "messages": [{"role": "user", "content": "after"}]}))
                assert reply.status == 200
                assert router.stop() == 0
                break
            killer = asyncio.run(_kill_during(router, main, rng.uniform(0.3, 1.0)))
            assert killer == -signal.SIGKILL
            lines = log.read_bytes().split(b"\n")
            # Every line but the last is whole JSON; the last is "" (ended with a
            # newline) or the one partial line a kill may leave.
            _, tail = lines[:-1], lines[-1]
            if tail:
                partial += 1
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b""
    bad = [line for line in lines[:-1] if not _is_json(line)]
    assert len(bad) == partial  # earlier partial lines stay where they were, each on its own line
    assert json.loads(lines[-2])["messages"][0]["content"] == "after"  # appended cleanly
    record("crash.sigkills", kills, partial_lines_from_kills=0 if synthetic else partial, bound="at most 1 partial line per kill",
           synthetic_partial_line=synthetic,
           lines=len(lines) - 1, clean_append_after_restart=True)


async def _kill_during(router: RouterProcess, load, after: float) -> int:
    task = asyncio.create_task(load(after + 2))
    await asyncio.sleep(after)
    router.signal(signal.SIGKILL)
    await task
    return router.wait(10)


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
