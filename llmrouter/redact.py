"""Keeps configured secrets out of text that leaves the router. Pure.

Upstreams quote the key they were sent in their error messages, whole or in
part ("Incorrect API key provided: sk-abc...xyz"). Those messages reach
clients, the log and the event feed, so every run of text made of pieces of
a configured secret — any 8 consecutive characters of it, or a shorter secret
whole — is replaced by `[redacted]`.
"""

from __future__ import annotations

from collections.abc import Iterable

PIECE = 8
MARK = "[redacted]"


class Redactor:
    def __init__(self, secrets: Iterable[str | None]) -> None:
        keys = [s for s in secrets if s]
        self._pieces = frozenset(k[i : i + PIECE] for k in keys if len(k) >= PIECE for i in range(len(k) - PIECE + 1))
        self._short = sorted((k for k in keys if len(k) < PIECE), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text or not (self._pieces or self._short):
            return text
        hit = bytearray(len(text))
        for i in range(len(text) - PIECE + 1):
            if text[i : i + PIECE] in self._pieces:
                hit[i : i + PIECE] = b"\x01" * PIECE
        for key in self._short:
            start = text.find(key)
            while start != -1:
                hit[start : start + len(key)] = b"\x01" * len(key)
                start = text.find(key, start + 1)
        if not any(hit):
            return text
        out, i = [], 0
        while i < len(text):
            if hit[i]:
                while i < len(text) and hit[i]:
                    i += 1
                out.append(MARK)
            else:
                j = hit.find(1, i)
                j = len(text) if j == -1 else j
                out.append(text[i:j])
                i = j
        return "".join(out)
