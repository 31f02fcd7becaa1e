"""Per-connection budgets, with time as an argument (no clock inside, so tests never sleep)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ..xmpp.c2s import SASL_FAILURES
from ..xmpp.errors import StreamError
from ..xmpp.parser import TOO_DEEP, TOO_LARGE

__all__ = ["Shaper", "ConnectionLimiter", "parser_limit"]


def parser_limit(error: StreamError | None) -> str | None:
    """The limit a client's or component's stream was closed for by its sans-IO core, which
    knows no settings (its adapter counts the refusal), or None.  Besides the ``[limits]``
    settings, the fixed number (3) of SASL failures one stream may have."""
    text = error.text if error is not None else None
    return {TOO_LARGE: "limits.max_stanza_size", TOO_DEEP: "limits.max_depth",
            SASL_FAILURES: "sasl.failures_per_stream"}.get(text or "")


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
    """Counts open connections, in all, per remote address, and those not yet authenticated (a
    flood of idle TLS handshakes and stream headers costs memory without ever logging in).
    ``refused`` counts each refusal by the setting whose limit it is (``Services.refused``)."""

    def __init__(self, max_total: int, max_per_ip: int, max_pre_auth: int | None = None,
                 refused: Callable[[str], None] = lambda limit: None) -> None:
        self.refused = refused
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_pre_auth = max_total if max_pre_auth is None else max_pre_auth
        self._per_ip: Counter[str] = Counter()
        self.total = 0
        self.pre_auth = 0

    def acquire(self, ip: str) -> str | None:
        """Take a slot (counted as not authenticated); on refusal return the reason (and take nothing)."""
        if self.total >= self.max_total:
            self.refused("limits.max_connections")
            return "too many connections to this server"
        if self.pre_auth >= self.max_pre_auth:
            self.refused("limits.max_pre_auth_connections")
            return "too many connections waiting to authenticate"
        if self._per_ip[ip] >= self.max_per_ip:
            self.refused("limits.max_connections_per_ip")
            return "too many connections from your address"
        self._per_ip[ip] += 1
        self.total += 1
        self.pre_auth += 1
        return None

    def authenticated(self) -> None:
        """A connection of the slots taken logged in."""
        self.pre_auth -= 1

    def release(self, ip: str, *, pre_auth: bool = True) -> None:
        """Give a slot back (``pre_auth``: its connection never logged in)."""
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]
        self.total -= 1
        if pre_auth:
            self.pre_auth -= 1
