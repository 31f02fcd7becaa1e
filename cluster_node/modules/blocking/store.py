"""The block lists' SQL: one table in the domain database, so every node and region of a deployment
enforces the same lists.  The same statements on SQLite and PostgreSQL (``?`` placeholders).

``blocklist`` holds the lists; ``created`` (µs) keeps a list in the order its JIDs were blocked.
``blocklist_changes`` holds, per account, when its list last changed (µs, written in the same
transaction as the change): every member polls it to forget the lists changed elsewhere.  Both
are user tables of the storage (``user_tables``): emptied for an account when it is removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from ...storage import Storage
from ...storage.user_rows import padded

__all__ = ["BlocklistStore", "ListFull", "STEPS"]

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS blocklist (
               domain TEXT NOT NULL, username TEXT NOT NULL, jid TEXT NOT NULL, created {bigint} NOT NULL,
               PRIMARY KEY (domain, username, jid))""",
    ]),
    (2, [
        """CREATE TABLE IF NOT EXISTS blocklist_changes (
               domain TEXT NOT NULL, username TEXT NOT NULL, changed {bigint} NOT NULL,
               PRIMARY KEY (domain, username))""",
        "CREATE INDEX IF NOT EXISTS blocklist_changes_by_time ON blocklist_changes (changed)",
    ]),
]

_TOUCH = ("INSERT INTO blocklist_changes (domain, username, changed) VALUES (?, ?, ?) "
          "ON CONFLICT (domain, username) DO UPDATE SET changed = excluded.changed")


class ListFull(Exception):
    """Blocking these JIDs would make the list longer than its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a block list holds at most {limit} JIDs")
        self.limit = limit


class BlocklistStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def migrate(self) -> None:
        await self.storage.migrate_module("blocking", STEPS, user_tables=("blocklist", "blocklist_changes"))

    async def items(self, domain: str, username: str) -> list[str]:
        """The user's blocked JIDs, in the order they were blocked."""
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall("SELECT jid FROM blocklist WHERE domain = ? AND username = ? "
                                     "ORDER BY created, jid", domain, username)
        return [str(r[0]) for r in rows]

    async def items_many(self, users: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        """The lists of ``users`` ((username, domain) keys), one query per domain (the batches of
        :class:`~cluster_node.core.batching.Batcher`); an empty list is absent."""
        by_domain: dict[str, list[str]] = {}
        for username, domain in users:
            by_domain.setdefault(domain, []).append(username)
        found: dict[tuple[str, str], list[str]] = {}
        async with self.storage.transaction() as tx:
            for domain, names in by_domain.items():
                names = padded(names)
                marks = ", ".join("?" * len(names))
                rows = await tx.fetchall(f"SELECT username, jid FROM blocklist WHERE domain = ? AND username IN "
                                         f"({marks}) ORDER BY username, created, jid", domain, *names)
                for username, jid in rows:
                    found.setdefault((str(username), domain), []).append(str(jid))
        return found

    async def add(self, domain: str, username: str, jids: list[str], limit: int) -> list[str]:
        """Block ``jids``; the ones that were not blocked yet.  Raises :class:`ListFull` (and
        blocks nothing) when the list would hold more than ``limit`` JIDs."""
        async with self.storage.transaction(write=True) as tx:
            rows = await tx.fetchall("SELECT jid FROM blocklist WHERE domain = ? AND username = ?",
                                     domain, username)
            present = {str(r[0]) for r in rows}
            new = [j for j in jids if j not in present]
            if not new:
                return []
            if len(present) + len(new) > limit:
                raise ListFull(limit)
            now = time.time_ns() // 1000
            added = []
            for i, jid in enumerate(new):
                n = await tx.execute("INSERT INTO blocklist (domain, username, jid, created) VALUES (?, ?, ?, ?) "
                                     "ON CONFLICT DO NOTHING", domain, username, jid, now + i)
                if n:
                    added.append(jid)
            await tx.execute(_TOUCH, domain, username, time.time_ns() // 1000)
        return added

    async def remove(self, domain: str, username: str, jids: list[str] | None) -> list[str]:
        """Unblock ``jids`` (``None``: all); the ones that were blocked."""
        async with self.storage.transaction(write=True) as tx:
            if jids is None:
                rows = await tx.fetchall("SELECT jid FROM blocklist WHERE domain = ? AND username = ? "
                                         "ORDER BY created, jid", domain, username)
                await tx.execute("DELETE FROM blocklist WHERE domain = ? AND username = ?", domain, username)
                removed = [str(r[0]) for r in rows]
            else:
                removed = []
                for jid in jids:
                    if await tx.execute("DELETE FROM blocklist WHERE domain = ? AND username = ? AND jid = ?",
                                        domain, username, jid):
                        removed.append(jid)
            if removed:
                await tx.execute(_TOUCH, domain, username, time.time_ns() // 1000)
        return removed

    async def changes(self, since_us: int) -> list[tuple[str, str, int]]:
        """(domain, username, changed µs) of the lists changed after ``since_us``."""
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall("SELECT domain, username, changed FROM blocklist_changes WHERE changed > ?",
                                     since_us)
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]
