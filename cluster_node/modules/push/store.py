"""The push registrations' SQL: one table in the domain database, so every node and region of a
deployment notifies through the same registrations.  The same statements on SQLite and PostgreSQL
(``?`` placeholders).

A registration is keyed by (account, app server JID, node) and remembers the resource that enabled
it and the publish-options form.  The table is a user table of the storage (``user_tables``): it is
emptied for an account when the account is removed.  ``created`` (µs) orders a user's
registrations: beyond the limit, the oldest goes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...storage import Storage

__all__ = ["PushStore", "Registration", "STEPS"]

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS push_registrations (
               domain TEXT NOT NULL, username TEXT NOT NULL, jid TEXT NOT NULL, node TEXT NOT NULL,
               resource TEXT NOT NULL, options TEXT NOT NULL, created {bigint} NOT NULL,
               PRIMARY KEY (domain, username, jid, node))""",
    ]),
]

_COLUMNS = "jid, node, resource, options, created"


@dataclass(frozen=True, slots=True)
class Registration:
    jid: str  # the app server
    node: str
    resource: str  # the resource that enabled it
    options: str  # publish-options form, serialized ("" for none)
    created: int = 0


def _row(r: Sequence[Any]) -> Registration:
    jid, node, resource, options, created = r
    return Registration(str(jid), str(node), str(resource), str(options or ""), int(created))


class PushStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def migrate(self) -> None:
        await self.storage.migrate_module("push", STEPS, user_tables=("push_registrations",))

    async def registrations(self, domain: str, username: str, resource: str | None = None) -> list[Registration]:
        """The user's registrations (those ``resource`` enabled, when given), oldest first."""
        sql = f"SELECT {_COLUMNS} FROM push_registrations WHERE domain = ? AND username = ?"
        args: list[object] = [domain, username]
        if resource is not None:
            sql += " AND resource = ?"
            args.append(resource)
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall(sql + " ORDER BY created, jid, node", *args)
        return [_row(r) for r in rows]

    async def enable(self, domain: str, username: str, reg: Registration, limit: int) -> list[Registration]:
        """Add ``reg`` (or replace the one with its app server and node); the oldest others that
        had to go to keep at most ``limit``."""
        now = time.time_ns() // 1000
        async with self.storage.transaction(write=True) as tx:
            await tx.execute("DELETE FROM push_registrations WHERE domain = ? AND username = ? AND jid = ? "
                             "AND node = ?", domain, username, reg.jid, reg.node)
            await tx.execute(f"INSERT INTO push_registrations (domain, username, {_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             domain, username, reg.jid, reg.node, reg.resource, reg.options, now)
            rows = await tx.fetchall(f"SELECT {_COLUMNS} FROM push_registrations WHERE domain = ? AND "
                                     "username = ? ORDER BY created, jid, node", domain, username)
            others = [r for r in map(_row, rows) if (r.jid, r.node) != (reg.jid, reg.node)]
            evicted = others[:max(0, len(others) + 1 - limit)]
            for old in evicted:
                await tx.execute("DELETE FROM push_registrations WHERE domain = ? AND username = ? AND jid = ? "
                                 "AND node = ?", domain, username, old.jid, old.node)
        return evicted

    async def disable(self, domain: str, username: str, jid: str, node: str | None) -> list[Registration]:
        """Remove the registrations with app server ``jid`` (and ``node``, unless None: all of
        them); the ones removed."""
        where = "domain = ? AND username = ? AND jid = ?"
        args: list[object] = [domain, username, jid]
        if node is not None:
            where += " AND node = ?"
            args.append(node)
        async with self.storage.transaction(write=True) as tx:
            rows = await tx.fetchall(f"SELECT {_COLUMNS} FROM push_registrations WHERE {where}", *args)
            await tx.execute(f"DELETE FROM push_registrations WHERE {where}", *args)
        return [_row(r) for r in rows]
