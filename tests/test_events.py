"""Events and the JSONL log, over real sockets: every way a request ends, concurrency, stalls."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpcore
import pytest

from fakes import FakeUpstream, Hang, Reply
from harness import make_config, provider_config, running_router
from llmrouter import app as app_module
from llmrouter import events
from llmrouter.bus import EventBus

MESSAGES = [{"role": "user", "content": "hello"}]


def config_for(url: str, log_path: str | None = None, extra: str = "") -> str:
    text = "[server]\nport = 0\n"
    if log_path:
        text += f'[logging]\nenabled = true\npath = "{log_path}"\n'
    text += provider_config(url) + '[[routers]]\ntype = "prefix"\nmodel_prefix = "ok/"\nprovider = "fake"\n' + extra
    return text


@pytest.fixture
def fake():
    with FakeUpstream() as upstream:
        yield upstream


def post(url: str, body: object, path: str = "/v1/chat/completions") -> httpcore.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpcore.ConnectionPool() as pool:
        return pool.request("POST", url + path, headers={"content-type": "application/json"}, content=data)


def sequence(router, request_id: int) -> list[str]:
    return [e["type"] for e in router.events if e.get("id") == request_id]


@pytest.mark.parametrize(
    "case, body, status, expected",
    [
        ("success", {"model": "ok/m", "messages": MESSAGES}, 200, ["start", "classified", "routed", "complete"]),
        ("stream", {"model": "ok/m", "messages": MESSAGES, "stream": True}, 200, ["start", "classified", "routed", "complete"]),
        ("invalid json", b"{nope", 400, ["start", "complete"]),
        ("invalid field", {"model": "ok/m", "messages": 3}, 400, ["start", "complete"]),
        ("no route", {"model": "other", "messages": MESSAGES}, 404, ["start", "classified", "complete"]),
        (
            "plugin error",
            {"model": "ok/m", "messages": MESSAGES, "plugins": [{"id": "pareto-router", "tier": "nope", "tiers": {"low": ["fake"]}}]},
            500,
            ["start", "classified", "complete"],  # pareto-router runs in pre_request
        ),
    ],
)
def test_each_ending_has_one_complete(fake, tmp_path, case, body, status, expected):
    log_path = tmp_path / "log.jsonl"
    with running_router(config_for(fake.url, str(log_path))) as router:
        response = post(router.url, body)
        assert response.status == status, response.content
        (record,) = router.wait_records(1)
        assert sequence(router, record["id"]) == expected
        assert record["status"] == status
        assert (record["error"] is None) == (status == 200)
        if case == "plugin error":
            assert "plugin 'pareto-router' failed" in record["error"]
            assert "pareto-router" in json.loads(response.content)["error"]["message"]
    lines = log_path.read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [record["request_id"]]


def test_upstream_error_and_disconnect_each_complete_once(fake):
    fake.enqueue(Reply.error(500, "boom"), Reply.raw(200, [], [Hang()]))
    with running_router(config_for(fake.url)) as router:
        assert post(router.url, {"model": "ok/m", "messages": MESSAGES}).status == 500
        payload = json.dumps({"model": "ok/m", "messages": MESSAGES}).encode()
        with socket.create_connection(("127.0.0.1", router.port)) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            fake.wait_until(lambda f: len(f.requests) == 2)
        records = router.wait_records(2)
        assert [r["status"] for r in records] == [500, 499]
        assert [r["error_code"] for r in records] == ["upstream_status_error", "client_disconnected"]
        assert [sequence(router, r["id"]).count("complete") for r in records] == [1, 1]


def test_200_concurrent_requests_make_200_valid_lines(fake, tmp_path):
    log_path = tmp_path / "log.jsonl"
    with running_router(config_for(fake.url, str(log_path))) as router:
        def one(i: int) -> int:
            return post(router.url, {"model": "ok/m", "messages": [{"role": "user", "content": f"n{i} " + "x" * 3000}]}).status

        with ThreadPoolExecutor(32) as pool:
            assert set(pool.map(one, range(200))) == {200}
        router.wait_records(200)
    lines = log_path.read_text().splitlines()
    assert len(lines) == 200
    records = [json.loads(line) for line in lines]
    assert sorted(int(r["messages"][0]["content"].split()[0][1:]) for r in records) == list(range(200))


def test_stalled_subscriber_loses_events_but_requests_go_on(fake, monkeypatch):
    # A subscriber stalled this long would be cut off (test_load.py); here it
    # must survive to read again and learn what it lost.
    monkeypatch.setattr(app_module, "FEED_SEND_TIMEOUT", 600.0)
    with running_router(config_for(fake.url)) as router:
        stalled = socket.create_connection(("127.0.0.1", router.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /dashboard/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        body = {"model": "ok/m", "messages": [{"role": "user", "content": "y" * 2000}]}
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: post(router.url, body).status, range(600)))
        assert set(statuses) == {200}
        stats = router.app.bus.statistics()
        assert stats["dropped"] > 0  # the stalled subscriber lost events instead of blocking anyone
        # Once it reads again, it is told how many it lost.
        stalled.settimeout(5)
        seen = b""
        while b'"type":"dropped"' not in seen:
            chunk = stalled.recv(65536)
            assert chunk, "feed closed before a dropped event"
            seen += chunk
        stalled.close()


def test_feed_streams_typed_events(fake):
    with running_router(config_for(fake.url)) as router:
        got: list[bytes] = []
        ready = threading.Event()

        def listen() -> None:
            with httpcore.ConnectionPool() as pool:
                with pool.stream("GET", router.url + "/dashboard/events") as response:
                    for chunk in response.iter_stream():
                        got.append(chunk)
                        ready.set()
                        if b"event: measured" in b"".join(got):
                            return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        assert ready.wait(5)
        post(router.url, {"model": "ok/m", "messages": MESSAGES})
        thread.join(5)
        text = b"".join(got).decode()
        frames = [f for f in text.split("\n\n") if f.startswith("event:")]
        assert [f.split("\n")[0] for f in frames] == ["event: start", "event: classified", "event: routed", "event: complete", "event: measured"]
        for frame in frames:
            name = frame.split("\n")[0].split(": ")[1]
            assert json.loads(frame.split("\n")[1][len("data: "):])["type"] == name


def test_unwritable_log_still_serves_and_warns_once(fake, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="llmrouter.reqlog"):
        with running_router(config_for(fake.url, str(blocker / "log.jsonl"))) as router:
            for _ in range(3):
                assert post(router.url, {"model": "ok/m", "messages": MESSAGES}).status == 200
            router.wait_records(3)
    warnings = [r for r in caplog.records if "cannot write request log" in r.getMessage()]
    assert len(warnings) == 1


def test_log_after_a_cut_short_line_starts_on_a_new_line(fake, tmp_path):
    log_path = tmp_path / "log.jsonl"
    log_path.write_text('{"type":"complete","id":0,"partial')  # what a hard kill can leave
    with running_router(config_for(fake.url, str(log_path))) as router:
        post(router.url, {"model": "ok/m", "messages": MESSAGES})
        router.wait_records(1)
    lines = log_path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["status"] == 200


def test_config_is_parsed_with_relative_log_path(tmp_path):
    cfg = make_config(config_for("http://127.0.0.1:9", "logs/x.jsonl"), base_dir=str(tmp_path))
    assert cfg.logging.path == str(tmp_path / "logs" / "x.jsonl")


def test_each_event_is_encoded_once_for_all_subscribers(fake, monkeypatch):
    """Fan-out copies bytes: an event becomes its SSE frame once, however
    many subscribers get it (and not at all while nobody listens)."""
    from harness import FeedReader

    encoded: list[str] = []

    def counting_sse(event: dict, text: str | None = None) -> bytes:
        encoded.append(event["type"])
        return app_module._sse(event, text)

    monkeypatch.setattr(app_module, "EventBus", lambda encode: EventBus(counting_sse))
    with running_router(config_for(fake.url)) as router:
        assert post(router.url, {"model": "ok/m", "messages": MESSAGES}).status == 200
        router.wait_records(1)
        assert encoded == []  # no subscriber: nothing encoded
        readers = [FeedReader(router.port) for _ in range(3)]
        try:
            for reader in readers:
                reader.until(b": connected")
            assert post(router.url, {"model": "ok/m", "messages": MESSAGES}).status == 200
            for reader in readers:
                reader.until(b"event: measured")  # published right after the complete record
            assert encoded == ["start", "classified", "routed", "complete", "measured"]
            frames = [bytes(r.data[r.data.index(b"event: start"):]) for r in readers]
            assert frames[0] == frames[1] == frames[2]
        finally:
            for reader in readers:
                reader.close()


def test_with_nobody_listening_requests_build_no_events_but_their_record(fake, tmp_path, monkeypatch):
    """Publish lazily: while nobody listens to the feed a request builds only
    its `complete` record (the log, the metrics and the live measurements
    still get it); a subscriber gets every event of the requests that start
    after it connected, in order, and once it leaves nothing is built again."""
    from harness import FeedReader

    built: list[str] = []
    for name in ("start", "classified", "routed", "measured"):
        def counting(*args, _make=getattr(events, name), _name=name, **kwargs):
            built.append(_name)
            return _make(*args, **kwargs)

        monkeypatch.setattr(events, name, counting)
    log_path = tmp_path / "log.jsonl"
    body = {"model": "ok/m", "messages": MESSAGES}
    with running_router(config_for(fake.url, str(log_path)), listen=False) as router:
        assert post(router.url, body).status == 200
        router.wait_records(1)
        assert built == [] and [e["type"] for e in router.events] == ["complete"]
        assert router.app.measurements.get("fake").samples == 1  # measured, not published
        assert b'llmrouter_requests_total{' in post_metrics(router.url)

        reader = FeedReader(router.port)
        try:
            reader.until(b": connected")
            assert post(router.url, body).status == 200
            reader.until(b"event: measured")
            assert built == ["start", "classified", "routed", "measured"]
            got = [json.loads(data) for data in re.findall(rb"event: \w+\ndata: ([^\n]*)\n\n", reader.data)]
            assert [e["type"] for e in got] == ["start", "classified", "routed", "complete", "measured"]
            assert {e["id"] for e in got[:4]} == {1}
        finally:
            reader.close()
        deadline = time.monotonic() + 10
        while router.app.bus.listeners:
            assert time.monotonic() < deadline, "the closed subscriber was never removed"
            time.sleep(0.01)
        assert post(router.url, body).status == 200
        router.wait_records(3)
        assert len(built) == 4
    assert [json.loads(line)["id"] for line in log_path.read_text().splitlines()] == [0, 1, 2]


def post_metrics(url: str) -> bytes:
    with httpcore.ConnectionPool() as pool:
        return pool.request("GET", url + "/metrics", headers={"host": "127.0.0.1"}).content


def test_a_quiet_feed_gets_keep_alives(fake, monkeypatch):
    """The feed's one repeating timer: a comment once nothing was sent for
    KEEPALIVE_EVERY (up to a third more), and events still flow after it."""
    from harness import FeedReader

    monkeypatch.setattr(app_module, "KEEPALIVE_EVERY", 0.3)
    with running_router(config_for(fake.url)) as router:
        feed = FeedReader(router.port)
        try:
            feed.until(b": connected")
            feed.until(b": keep-alive", count=2)
            assert post(router.url, {"model": "ok/m", "messages": [{"role": "user", "content": "hi"}]}).status == 200
            feed.until(b"event: complete")
            feed.until(b": keep-alive", count=3)  # quiet again
        finally:
            feed.close()
