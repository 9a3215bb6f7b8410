"""Scale-out with existing tools (issue 13 §5): two router instances behind
Debian's nginx, configured as docs/deploy.md says, all on loopback.

nginx runs in the foreground with its own prefix, config, pid file and logs
in a temporary directory: nothing of the system's nginx set-up is used."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path

from aclient import exchange
from fakes import FakeUpstream, Reply
from harness import provider_config
from subproc import RouterProcess
from tiers import need_tool

NGINX = "/usr/sbin/nginx"
PACE = 0.4  # seconds between the fake's stream frames
FRAMES = 6

# The `location` block is docs/deploy.md's, word for word (test_docs_show_this_location_block).
LOCATION = """\
    location / {
        proxy_pass http://llmrouter;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout 900s;
        proxy_send_timeout 900s;
        proxy_next_upstream error;
        proxy_next_upstream_tries 2;
    }
"""


def nginx_path() -> str:
    """Debian's nginx lives in /usr/sbin, off a normal user's PATH."""
    if os.path.exists(NGINX):
        return NGINX
    return need_tool("nginx", hint="Debian package `nginx` (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_conf(prefix: Path, listen: int, instances: list[int]) -> str:
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;" for port in instances)
    return f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
    upstream llmrouter {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen};
        client_max_body_size 32m;
{LOCATION}    }}
}}
"""


class Nginx:
    def __init__(self, binary: str, prefix: Path, instances: list[int]) -> None:
        prefix.mkdir()
        os.chmod(prefix, 0o755)
        self.port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, self.port, instances))
        self.proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.error_log = prefix / "error.log"
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                                       f"{self.error_log.read_text() if self.error_log.exists() else ''}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def instance_config(fake_url: str, name: str) -> str:
    # Each instance names its provider differently: the reply header tells which one served.
    return "[server]\nport = 0\n" + provider_config(fake_url, name) + f'[[routers]]\ntype = "prefix"\nmodel_prefix = ""\nprovider = "{name}"\n'


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def timed_stream(port: int) -> tuple[str, list[float]]:
    """Streams through nginx and notes when each SSE data event arrived."""
    body = json.dumps({**CHAT, "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    started = time.monotonic()
    raw, arrivals, seen = b"", [], 0
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 30):
            raw += chunk
            count = raw.count(b"\ndata: {") + raw.startswith(b"data: {")
            arrivals += [time.monotonic() - started] * (count - seen)
            seen = count
    finally:
        writer.close()
    return raw.decode(errors="replace"), arrivals


def test_two_instances_behind_nginx_survive_one_stopping_and_stream_event_by_event(tmp_path):
    binary = nginx_path()
    with FakeUpstream() as fake:
        fake.script = lambda r: Reply.text(" ".join(f"w{i}" for i in range(FRAMES)), chunks=FRAMES, delay=PACE) if r.stream else Reply.text("ok")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with RouterProcess(instance_config(fake.url, "via-a"), tmp_path / "a") as a, RouterProcess(instance_config(fake.url, "via-b"), tmp_path / "b") as b:
            nginx = Nginx(binary, tmp_path / "nginx", [a.port, b.port])
            try:
                before = [asyncio.run(exchange(nginx.port, "/v1/chat/completions", CHAT)) for _ in range(6)]
                streamed, arrivals = asyncio.run(timed_stream(nginx.port))
                a.stop()
                after = [asyncio.run(exchange(nginx.port, "/v1/chat/completions", CHAT)) for _ in range(10)]
            finally:
                nginx.stop()
    assert all(r.status == 200 for r in before)
    assert {r.headers["x-router-provider"] for r in before} == {"via-a", "via-b"}  # both instances serve
    assert [r.status for r in after] == [200] * 10  # one instance gone: nginx retried the connect error
    assert {r.headers["x-router-provider"] for r in after} == {"via-b"}

    assert "HTTP/1.1 200" in streamed and "data: [DONE]" in streamed
    # Event by event: each frame left the fake PACE seconds after the previous
    # one, and arrived through nginx that far apart, not all at the end.
    assert len(arrivals) >= FRAMES
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert sum(gap >= PACE / 2 for gap in gaps) >= FRAMES - 2, arrivals
    assert arrivals[-1] - arrivals[0] >= PACE * (FRAMES - 2), arrivals


def test_docs_show_this_location_block():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text()
    assert LOCATION in docs
