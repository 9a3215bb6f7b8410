"""Circuit breakers: one per provider. Pure — the caller passes the time.

    closed ── `failures` failures in a row ──► open ── cool-down over ──► half-open
      ▲                                                                  │ one probe
      └────────────── the probe succeeds ◄───────────────────────────────┤
                      the probe fails: open again, cool-down doubled ◄───┘

While a provider's circuit is open, requests skip it and go straight to their
next routing decision; in half-open state exactly one request (the probe) is
let through. A failure is a provider fault: a connect error, a timeout, a
5xx, a malformed or cut reply. Any answer below 500 (even 429) shows the
provider is up and counts as a success. The cool-down doubles each time a
probe fails, up to MAX_COOLDOWN (or the base, if larger), and starts again
from the base once the circuit closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
MAX_COOLDOWN = 300.0


@dataclass
class Circuit:
    state: str = CLOSED
    failures: int = 0  # consecutive
    cooldown: float = 0.0  # the current (or last) cool-down, seconds
    retry_at: float = 0.0  # when an open circuit lets its probe through
    probing: bool = False  # the half-open probe is in flight


@dataclass(frozen=True)
class Change:
    """A state change, for the `breaker` event."""

    provider: str
    state: str
    failures: int
    cooldown: float  # seconds; the cool-down now running when state is "open"


class Breakers:
    def __init__(self, failures: int = 5, cooldown: float = 30.0, circuits: dict[str, Circuit] | None = None) -> None:
        self.threshold = failures
        self.base = cooldown
        # Per provider; a reload hands the surviving providers' circuits on (reload.carry_over).
        self._circuits: dict[str, Circuit] = {} if circuits is None else circuits

    @property
    def circuits(self) -> dict[str, Circuit]:
        return self._circuits

    def allow(self, name: str, now: float) -> tuple[bool, Change | None]:
        """Whether a request may try `name` now; an open circuit whose
        cool-down is over lets this request through as its probe."""
        c = self._circuits.get(name)
        if c is None or c.state == CLOSED:
            return True, None
        if c.state == OPEN:
            if now < c.retry_at:
                return False, None
            c.state, c.probing = HALF_OPEN, True
            return True, self._change(name, c)
        if c.probing:
            return False, None
        c.probing = True  # the last probe ended without an outcome
        return True, None

    def success(self, name: str) -> Change | None:
        c = self._circuits.get(name)
        if c is None:
            return None
        was = c.state
        c.state, c.failures, c.probing = CLOSED, 0, False
        return self._change(name, c) if was != CLOSED else None

    def failure(self, name: str, now: float) -> Change | None:
        c = self._circuits.setdefault(name, Circuit())
        c.failures += 1
        if c.state == HALF_OPEN:
            c.cooldown = min(c.cooldown * 2, max(MAX_COOLDOWN, self.base))
        elif c.state == CLOSED and c.failures >= self.threshold:
            c.cooldown = self.base
        else:
            return None  # already open: a request that started before it opened
        c.state, c.probing, c.retry_at = OPEN, False, now + c.cooldown
        return self._change(name, c)

    def abandon(self, name: str) -> None:
        """An attempt ended without telling anything about the provider
        (the client left, the request was invalid for it): free the probe slot."""
        c = self._circuits.get(name)
        if c is not None:
            c.probing = False

    def retry_in(self, names: list[str], now: float) -> float:
        """Seconds until the first of these open circuits lets a probe through."""
        waits = [self._circuits[n].retry_at - now for n in names if n in self._circuits]
        return max(0.0, min(waits, default=0.0))

    def snapshot(self, names: list[str], now: float) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name in names:
            c = self._circuits.get(name, Circuit())
            entry: dict[str, object] = {"state": c.state, "failures": c.failures}
            if c.state != CLOSED:
                entry["cooldown_s"] = c.cooldown
                entry["retry_in_s"] = round(max(0.0, c.retry_at - now), 3)
            out[name] = entry
        return out

    def _change(self, name: str, c: Circuit) -> Change:
        return Change(name, c.state, c.failures, c.cooldown)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
