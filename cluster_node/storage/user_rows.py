"""A per-user read that every login makes, done for many users of a domain in one statement.

A login reads its account's credentials, roster, pending subscription requests, offline
messages and vCard photo hash: five statements.  In a login storm, read one login at a time,
they queue on the database (SQLite: one connection, each statement a hop to its thread, which a
busy event loop lets have the GIL only every few milliseconds), and logins waited seconds for
reads of a millisecond.  :class:`UserRows` reads the rows of every user asked while its previous
read was in flight in one ``... AND username IN (...)`` statement
(:class:`~cluster_node.core.batching.Batcher`): an idle server reads at once, a busy one
reads a burst in a few statements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from ..core.batching import Batcher

__all__ = ["UserRows", "padded"]

Rows = list[Sequence[Any]]


def padded(names: list[str]) -> list[str]:
    """``names`` lengthened to a power of two by repeating the last (a repeat in ``IN (...)``
    changes nothing): a batch's statement then has one of a few texts, and the database's cache of
    prepared statements keeps them instead of one per batch size pushing out the hot ones."""
    size = 1 << (len(names) - 1).bit_length()
    return names + names[-1:] * (size - len(names))


class UserRows:
    """``rows(domain, username)``: the rows of one user that ``sql`` selects for many.

    ``sql`` takes the domain as its one ``?`` and has ``{users}`` where the usernames' placeholders
    go (``WHERE domain = ? AND username IN ({users})``); its first column is the username (not
    returned) and its ORDER BY starts with it, so each user's rows keep their order."""

    def __init__(self, transaction: Callable[[], AbstractAsyncContextManager[Any]], sql: str,
                 max_batch: int = 500) -> None:
        self._transaction = transaction
        self._sql = sql
        self._max_batch = max_batch
        self._domains: dict[str, Batcher[str, None, Rows]] = {}

    def rows(self, domain: str, username: str) -> asyncio.Future[Rows]:
        """The user's rows (none: an empty list), read with those asked meanwhile."""
        reader = self._domains.get(domain)
        if reader is None:
            reader = self._domains[domain] = Batcher(lambda names: self._read(domain, list(names)), [],
                                                         max_batch=self._max_batch)
        return reader.submit(username)

    @property
    def queries(self) -> int:
        """Statements run so far (a test or a metric may look)."""
        return sum(r.calls for r in self._domains.values())

    async def _read(self, domain: str, usernames: list[str]) -> dict[str, Rows]:
        found: dict[str, Rows] = {}
        usernames = padded(usernames)
        sql = self._sql.format(users=", ".join("?" * len(usernames)))
        async with self._transaction() as tx:
            for row in await tx.fetchall(sql, domain, *usernames):
                found.setdefault(str(row[0]), []).append(tuple(row)[1:])
        return found
