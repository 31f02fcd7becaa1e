"""Which accounts changed something kept in the shared database (a block list, archive
preferences), learned by polling a table of (domain, username, changed µs) rows: how a member
hears of changes made on other members and in other regions without reading on the message path.
Sans-IO: the module runs the query, this decides what is new."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from .log_throttle import OncePer

__all__ = ["ChangeWatch", "Key", "poll_changes"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (username, domain)
Row = tuple[str, str, int]  # (domain, username, changed µs)


class ChangeWatch:
    """The accounts whose data changed, from polls of a change table: each row is an account
    and the time (µs, the writer's clock) of its last change.  A poll asks for the rows changed
    after :meth:`since` — ``window`` µs before the newest change seen (or before the start), so a
    change committed late or stamped by a clock a little behind is still seen — and
    :meth:`changed` returns the accounts whose time is new."""

    def __init__(self, start_us: int, window_us: int) -> None:
        self.window = window_us
        self.high = start_us
        self._seen: dict[Key, int] = {}

    def since(self) -> int:
        return self.high - self.window

    def changed(self, rows: Iterable[tuple[str, str, int]]) -> list[Key]:
        """(domain, username, changed µs) rows → the keys changed since they were last seen."""
        out: list[Key] = []
        for domain, username, changed in rows:
            key = (username, domain)
            if self._seen.get(key) != changed:
                self._seen[key] = changed
                out.append(key)
            if changed > self.high:
                self.high = changed
        floor = self.high - self.window
        if self._seen and min(self._seen.values()) < floor:
            self._seen = {k: t for k, t in self._seen.items() if t >= floor}
        return out


async def poll_changes(watch: ChangeWatch, query: Callable[[int], Awaitable[Iterable[Row]]], what: str,
                       counters: dict[str, int], prefix: str = "") -> list[Key] | None:
    """One poll of a change table through ``query(since)``: the keys changed, or None when the
    query failed.  Counts ``{prefix}polls`` and ``{prefix}poll_failures``; a failure is logged at
    most once a minute (a database away for an hour is one line a minute, not one a poll)."""
    try:
        rows = await query(watch.since())
    except Exception as e:
        counters[f"{prefix}poll_failures"] += 1
        if _FAILURES.allow(what, time.monotonic()):
            held = _FAILURES.held()
            log.warning("reading the changed %s failed (%s: %s)%s", what, type(e).__name__, e,
                        f"; {held} more failed polls since the last line" if held else "")
        return None
    counters[f"{prefix}polls"] += 1
    return watch.changed(rows)


_FAILURES = OncePer(60.0, max_keys=100)  # keyed by what is polled
