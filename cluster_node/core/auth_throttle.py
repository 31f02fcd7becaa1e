"""Authentication throttling per source address, in the manner of ejabberd's mod_fail2ban.

A password guesser opens connection after connection; the per-stream limit of SASL failures
does not slow it.  So failures are counted per address over a window: past ``delay_after`` of
them each further failure is answered late (the guesser waits, a mistyped password barely
notices), and at ``max_failures`` the address is banned for ``ban_seconds``: its connections
are refused with ``<policy-violation/>`` before any authentication.  Whether the user exists
plays no part (the SCRAM server fails unknown users at the proof, like wrong passwords).

Sans-IO: the caller passes the time; the c2s connections, the user API and the admin API ask
the same instance, and a ban is shared with the other members of the region.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import AuthThrottleSettings

__all__ = ["AuthThrottle", "Ban", "ThrottleRules"]


@dataclass(frozen=True)
class ThrottleRules:
    max_failures: int = 20  # in ``window`` seconds: then the address is banned
    window: float = 600.0
    delay_after: int = 3  # failures answered at once; later ones wait
    failure_delay: float = 1.0  # seconds added per failure past ``delay_after``
    max_delay: float = 5.0
    ban_seconds: float = 900.0
    exempt: tuple[str, ...] = ()  # addresses or networks never throttled (health checkers, NAT of a trusted office)


@dataclass(frozen=True)
class Ban:
    address: str
    until: float  # on the clock the throttle is given
    reason: str


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)


class AuthThrottle:
    """Counts authentication failures per address; says how long to delay and who is banned."""

    def __init__(self, rules: ThrottleRules, *, enabled: bool = True) -> None:
        self.rules = rules
        self.enabled = enabled
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in rules.exempt]
        self._failures: dict[str, _Failures] = {}
        self._bans: dict[str, Ban] = {}
        self.counters = {"failures": 0, "delayed": 0, "bans": 0, "refused": 0}

    def _exempted(self, address: str) -> bool:
        if not self._exempt:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._exempt)

    def banned(self, address: str, now: float) -> Ban | None:
        """The ban in force on ``address``, if any (an expired one is forgotten here)."""
        ban = self._bans.get(address)
        if ban is None:
            return None
        if ban.until <= now:
            del self._bans[address]
            return None
        return ban

    def refuse(self, address: str, now: float) -> str | None:
        """The text of a refusal for a connection or request from ``address``, or None."""
        ban = self.banned(address, now) if self.enabled else None
        if ban is None:
            return None
        self.counters["refused"] += 1
        return f"too many authentication failures from {address}: try again in {int(ban.until - now) + 1} s"

    def failed(self, address: str, now: float) -> tuple[float, Ban | None]:
        """Record a failure: (seconds to wait before answering it, the ban it caused or None)."""
        if not self.enabled or self._exempted(address):
            return 0.0, None
        self.counters["failures"] += 1
        entry = self._failures.setdefault(address, _Failures())
        times = entry.times
        times.append(now)
        while times and times[0] <= now - self.rules.window:
            times.popleft()
        count = len(times)
        if len(self._failures) > 100_000:
            self._prune(now)
        if count >= self.rules.max_failures:
            del self._failures[address]
            ban = self.ban(address, now, self.rules.ban_seconds, f"{count} authentication failures")
            return 0.0, ban
        if count <= self.rules.delay_after:
            return 0.0, None
        self.counters["delayed"] += 1
        return min(self.rules.failure_delay * (count - self.rules.delay_after), self.rules.max_delay), None

    def ban(self, address: str, now: float, seconds: float, reason: str) -> Ban:
        """Ban ``address`` (also how a ban decided by another member arrives)."""
        ban = Ban(address, now + seconds, reason)
        current = self._bans.get(address)
        if current is None or current.until < ban.until:
            if current is None:
                self.counters["bans"] += 1
            self._bans[address] = ban
        return self._bans[address]

    def lift(self, address: str) -> bool:
        """Lift a ban and forget the address's failures; False when it was not banned."""
        self._failures.pop(address, None)
        return self._bans.pop(address, None) is not None

    def bans(self, now: float) -> list[Ban]:
        for address in [a for a, b in self._bans.items() if b.until <= now]:
            del self._bans[address]
        return sorted(self._bans.values(), key=lambda b: b.address)

    def _prune(self, now: float) -> None:
        """Forget addresses whose failures all left the window (bounded memory under a scan)."""
        cutoff = now - self.rules.window
        for address in [a for a, f in self._failures.items() if not f.times or f.times[-1] <= cutoff]:
            del self._failures[address]

    @classmethod
    def from_settings(cls, s: AuthThrottleSettings) -> AuthThrottle:
        rules = ThrottleRules(s.max_failures, s.window, s.delay_after, s.failure_delay, s.max_delay,
                              s.ban_seconds, tuple(s.exempt))
        return cls(rules, enabled=s.enabled)
