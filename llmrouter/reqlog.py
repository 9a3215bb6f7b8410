"""The JSONL request log: one line per finished request.

Requests only append to an in-memory batch (never waiting on the disk); a
writer task writes each batch with a single O_APPEND write, so lines from
concurrent requests never interleave. A batch gathers for BATCH_WINDOW after
its first line: under load that is one write (and one wakeup of the writer)
for many requests instead of one each. A log that cannot be written does not
stop the router: the problem is reported at most once a minute.
"""

from __future__ import annotations

import logging
import os
import time

import anyio

log = logging.getLogger("llmrouter.reqlog")

REPORT_EVERY = 60.0
BATCH_WINDOW = 0.005  # seconds


class RequestLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._pending: list[str] = []
        self._wakeup = anyio.Event()
        self._fd: int | None = None
        self._last_report = -REPORT_EVERY
        self.lost = 0

    def append(self, line: str) -> None:
        self._pending.append(line)
        self._wakeup.set()

    async def run(self) -> None:
        """Writes batches until cancelled; then writes what is left."""
        try:
            while True:
                await self._wakeup.wait()
                await anyio.sleep(BATCH_WINDOW)
                self._wakeup = anyio.Event()
                self.flush()
        finally:
            self.flush()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        data = ("\n".join(batch) + "\n").encode("utf-8", "replace")
        try:
            if self._fd is None:
                self._fd = _open_for_append(self.path)
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.lost += len(batch)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            now = time.monotonic()
            if now - self._last_report >= REPORT_EVERY:
                self._last_report = now
                log.warning("cannot write request log %s: %s (%d lines lost so far)", self.path, exc, self.lost)


def check_writable(path: str) -> str | None:
    """None if the log can be opened for appending, else why not."""
    try:
        os.close(_open_for_append(path))
    except OSError as exc:
        return f"cannot open {path!r} for appending: {exc.strerror or exc}"
    return None


def _open_for_append(path: str) -> int:
    """Opens the log; a last line cut short by a hard kill gets its newline,
    so the next record starts on a line of its own."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")
    return fd
