"""Log lines about a misbehaving source at most once per period: a flood of refused connections or
stanzas must not turn into a flood of log lines (an attacker would fill the disk, an operator could
no longer read the log).  The line that is let through says how many were held back since."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["OncePer"]


class OncePer:
    """``allow(key, now)`` is True at most once per ``period`` seconds for each key; ``held(key)``
    then says how many calls were refused since the last True.  At most ``max_keys`` keys are
    remembered (the oldest forgotten first), so many sources cost bounded memory."""

    def __init__(self, period: float = 60.0, max_keys: int = 10_000) -> None:
        self.period = period
        self.max_keys = max_keys
        self._last: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()  # key -> (when said, held since)
        self._held_now = 0

    def allow(self, key: Hashable, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last[0] < self.period:
            self._last[key] = (last[0], last[1] + 1)
            return False
        self._held_now = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True

    def held(self) -> int:
        """How many lines about the key the last :meth:`allow` let through had been held back."""
        return self._held_now
