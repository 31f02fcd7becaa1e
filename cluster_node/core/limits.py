"""Per-connection budgets, with time as an argument (no clock inside, so tests never sleep)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

__all__ = ["Shaper", "ConnectionLimiter"]


@dataclass
class Shaper:
    """A token bucket over received bytes (like ejabberd's shaper).

    ``consume`` returns how long to pause reading so the sender stays within ``rate`` bytes/s
    after a ``burst``.  A sender held back without pause for longer than ``max_throttle``
    seconds is flooding: :attr:`flooding` turns true and the adapter closes the stream.
    """

    rate: float
    burst: float
    max_throttle: float
    tokens: float = -1.0
    last: float = 0.0
    throttled_since: float | None = None

    def consume(self, nbytes: int, now: float) -> float:
        if self.tokens < 0 and self.last == 0.0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= nbytes
        if self.tokens >= 0:
            self.throttled_since = None
            return 0.0
        if self.throttled_since is None:
            self.throttled_since = now
        return -self.tokens / self.rate

    def flooding(self, now: float) -> bool:
        return self.throttled_since is not None and now - self.throttled_since > self.max_throttle


class ConnectionLimiter:
    """Counts open connections, in all and per remote address."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self._per_ip: Counter[str] = Counter()
        self.total = 0

    def acquire(self, ip: str) -> str | None:
        """Take a slot; on refusal return the reason (and take nothing)."""
        if self.total >= self.max_total:
            return "too many connections to this server"
        if self._per_ip[ip] >= self.max_per_ip:
            return "too many connections from your address"
        self._per_ip[ip] += 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]
        self.total -= 1
