"""The archive's SQL: one table of messages per deployment (every node and region of a domain reads
and writes the same rows), one of preferences.  The same statements on SQLite and PostgreSQL
(``?`` placeholders; ``{bigint}``/``{blob}`` in the schema).

Indexes for archives of millions of messages per user: the primary key (domain, username, id)
serves paging, time ranges (an id range: ids start with the time) and id look-ups;
(domain, username, with_bare, id) serves the same with a 'with' filter; (ts) serves the retention
clean-up, which deletes across users.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from ...storage import Storage
from ...storage.migrations import render
from .query import Filters, Prefs

__all__ = ["ArchiveStore", "STEPS", "Row"]

Row = tuple[int, int, bytes]  # (id, ts µs, stanza)

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS mam_messages (
               domain TEXT NOT NULL, username TEXT NOT NULL, id {bigint} NOT NULL, ts {bigint} NOT NULL,
               with_bare TEXT NOT NULL, with_resource TEXT NOT NULL DEFAULT '',
               direction TEXT NOT NULL, stanza {blob} NOT NULL,
               PRIMARY KEY (domain, username, id))""",
        "CREATE INDEX IF NOT EXISTS mam_by_with ON mam_messages (domain, username, with_bare, id)",
        "CREATE INDEX IF NOT EXISTS mam_by_ts ON mam_messages (ts)",
        """CREATE TABLE IF NOT EXISTS mam_prefs (
               domain TEXT NOT NULL, username TEXT NOT NULL, default_mode TEXT NOT NULL,
               always_json TEXT NOT NULL DEFAULT '[]', never_json TEXT NOT NULL DEFAULT '[]',
               PRIMARY KEY (domain, username))""",
    ]),
    (2, [
        # When a user's preferences last changed (µs, the writer's clock): every member polls the
        # changes (which users have preferences: their received messages wait for their rows).
        "ALTER TABLE mam_prefs ADD COLUMN changed_us {bigint} NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS mam_prefs_by_change ON mam_prefs (changed_us)",
    ]),
]

_COLUMNS = "id, ts, stanza"
_INSERT_MANY_PG = (
    "INSERT INTO mam_messages (domain, username, id, ts, with_bare, with_resource, direction, stanza) "
    "SELECT t.domain, t.username, t.id, t.ts, t.with_bare, t.with_resource, t.direction, t.stanza "
    "FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[]), CAST(? AS BIGINT[]), CAST(? AS BIGINT[]), CAST(? AS TEXT[]), "
    "CAST(? AS TEXT[]), CAST(? AS TEXT[]), CAST(? AS BYTEA[]), CAST(? AS BOOLEAN[])) "
    "AS t(domain, username, id, ts, with_bare, with_resource, direction, stanza, unless_prefs) "
    "WHERE NOT (t.unless_prefs AND EXISTS (SELECT 1 FROM mam_prefs p WHERE p.domain = t.domain "
    "AND p.username = t.username)) ON CONFLICT DO NOTHING RETURNING domain, username, id")
_INSERT = ("INSERT INTO mam_messages (domain, username, id, ts, with_bare, with_resource, direction, stanza) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")


def _where(domain: str, username: str, f: Filters) -> tuple[str, list[Any]]:
    sql = ["domain = ?", "username = ?"]
    args: list[Any] = [domain, username]
    if f.with_bare is not None:
        sql.append("with_bare = ?")
        args.append(f.with_bare)
        if f.with_resource is not None:
            sql.append("with_resource = ?")
            args.append(f.with_resource)
    if f.min_id is not None:
        sql.append("id >= ?")
        args.append(f.min_id)
    if f.max_id is not None:
        sql.append("id <= ?")
        args.append(f.max_id)
    if f.ids is not None:
        if f.ids:
            sql.append(f"id IN ({', '.join('?' * len(f.ids))})")
            args.extend(f.ids)
        else:
            sql.append("1 = 0")
    return " AND ".join(sql), args


def _row(r: Any) -> Row:
    return int(r[0]), int(r[1]), bytes(r[2])


class ArchiveStore:
    """The archive's queries over the node's storage (``transaction`` for a module's own SQL)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        # Group commit: archive rows written while a transaction is in flight wait for the next one,
        # together (one BEGIN/COMMIT and, on SQLite, one hop to its thread for all of them instead
        # of one each: a hop per row waited for a busy loop's GIL, capping a relay near 2,400/s).  A caller
        # awaits its row (insert) or takes a future (queue) and moves on.
        self._waiting: list[tuple[list[Any], bool, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        # Rows queued and rows whose transaction has ended (committed or failed), and who waits
        # for the rows queued before they asked (:meth:`written`).
        self._queued = 0
        self._settled = 0
        self._barriers: list[tuple[int, asyncio.Future[None]]] = []

    async def migrate(self) -> None:
        await self.storage.migrate_module("mam", STEPS, user_tables=("mam_messages", "mam_prefs"))

    # -- writing -------------------------------------------------------------------------------------

    async def insert(self, domain: str, username: str, archive_id: int, ts: int, with_bare: str,
                     with_resource: str, direction: str, stanza: bytes, *, unless_prefs: bool = False) -> bool:
        """False when ``archive_id`` is taken in this archive (the caller retries with another) or,
        with ``unless_prefs``, when the user has preferences (the caller reads them first): users
        without any, nearly all, are archived in one statement."""
        return await self.queue(domain, username, archive_id, ts, with_bare, with_resource, direction, stanza,
                                unless_prefs=unless_prefs)

    def queue(self, domain: str, username: str, archive_id: int, ts: int, with_bare: str, with_resource: str,
              direction: str, stanza: bytes, *, unless_prefs: bool = False) -> asyncio.Future[bool]:
        """:meth:`insert` for a caller that does not wait for the commit: the row goes with the
        next group commit, the future tells how it went."""
        args = [domain, username, archive_id, ts, with_bare, with_resource, direction, stanza]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((args, unless_prefs, future))
        self._queued += 1
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_batches())
        return future

    @property
    def pending(self) -> int:
        """Rows queued and not yet committed (or failed)."""
        return self._queued - self._settled

    async def written(self) -> None:
        """Return once every row queued before the call is committed (or has failed): a query
        sees what this node archived before it (read-your-writes for a session's own node)."""
        if self._settled >= self._queued:
            return
        barrier: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers.append((self._queued, barrier))
        await barrier

    def _settle(self, n: int) -> None:
        self._settled += n
        if self._barriers:
            due = [b for b in self._barriers if b[0] <= self._settled]
            self._barriers = [b for b in self._barriers if b[0] > self._settled]
            for _, barrier in due:
                if not barrier.done():
                    barrier.set_result(None)

    async def _write_batches(self, most: int = 500) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:most], self._waiting[most:]
            try:
                done = await self._insert_batch(batch)
            except Exception as e:  # the whole batch failed: every caller hears it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                self._settle(len(batch))
                continue
            for (_, _, future), ok in zip(batch, done, strict=True):
                if not future.done():
                    future.set_result(ok)
            self._settle(len(batch))

    async def _insert_batch(self, batch: list[tuple[list[Any], bool, asyncio.Future[bool]]]) -> list[bool]:
        """Each row of a group commit inserted or not (id taken; preferences, where asked)."""
        if self.storage.dialect != "postgres":
            statements = [(self._insert_unless_prefs, [*args, args[0], args[1]]) if unless_prefs
                          else (_INSERT, args) for args, unless_prefs, _ in batch]
            return [n > 0 for n in await self.storage.write_all(statements)]
        # PostgreSQL: the whole batch as one statement over arrays (one round trip, not one per
        # row: 7,200 rows/s and 70 µs of the node's CPU per row that way).  One statement is
        # atomic on its own: no BEGIN/COMMIT round trips.
        columns = [list(c) for c in zip(*(args for args, _, _ in batch), strict=True)]
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall(_INSERT_MANY_PG, *columns, [unless for _, unless, _ in batch])
        inserted = {(r[0], r[1], r[2]) for r in rows}
        done = []
        for args, _, _ in batch:
            key = (args[0], args[1], args[2])
            done.append(key in inserted)
            inserted.discard(key)  # the same key twice in a batch: the first went in
        return done

    @functools.cached_property
    def _insert_unless_prefs(self) -> str:
        # Typed parameters: PostgreSQL infers none from an INSERT's SELECT list.
        return render(
            "INSERT INTO mam_messages (domain, username, id, ts, with_bare, with_resource, direction, stanza) "
            "SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS {bigint}), CAST(? AS {bigint}), CAST(? AS TEXT), "
            "CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS {blob}) "
            "WHERE NOT EXISTS (SELECT 1 FROM mam_prefs WHERE domain = ? AND username = ?) ON CONFLICT DO NOTHING",
            self.storage.dialect)

    async def delete_older(self, ts: int) -> int:
        """Retention: every archive's messages archived before ``ts`` (µs)."""
        async with self.storage.transaction(write=True) as tx:
            n: int = await tx.execute("DELETE FROM mam_messages WHERE ts < ?", ts)
        return n

    # -- reading -------------------------------------------------------------------------------------

    async def page(self, domain: str, username: str, filters: Filters, *, after: int | None = None,
                   before: int | None = None, backward: bool = False, limit: int) -> list[Row]:
        """Up to ``limit`` rows after ``after`` (forward, oldest first) or before ``before``
        (``backward``: newest first, from the end when ``before`` is None)."""
        where, args = _where(domain, username, filters)
        if after is not None:
            where += " AND id > ?"
            args.append(after)
        if before is not None:
            where += " AND id < ?"
            args.append(before)
        order = "DESC" if backward else "ASC"
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall(f"SELECT {_COLUMNS} FROM mam_messages WHERE {where} "
                                     f"ORDER BY id {order} LIMIT ?", *args, limit)
        return [_row(r) for r in rows]

    async def count(self, domain: str, username: str, filters: Filters, limit: int | None = None) -> int | None:
        """How many messages ``filters`` select; None when more than ``limit`` do (counting is a
        scan of the matching index entries: a few hundred ms for a million)."""
        where, args = _where(domain, username, filters)
        if limit is None:
            sql = f"SELECT COUNT(*) FROM mam_messages WHERE {where}"
        else:
            sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM mam_messages WHERE {where} LIMIT ?) AS matching"
            args.append(limit + 1)
        async with self.storage.transaction() as tx:
            row = await tx.fetchone(sql, *args)
        n = int(row[0]) if row else 0
        return None if limit is not None and n > limit else n

    async def existing(self, domain: str, username: str, ids: tuple[int, ...]) -> set[int]:
        """Which of ``ids`` are in the archive."""
        if not ids:
            return set()
        marks = ", ".join("?" * len(ids))
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall(f"SELECT id FROM mam_messages WHERE domain = ? AND username = ? "
                                     f"AND id IN ({marks})", domain, username, *ids)
        return {int(r[0]) for r in rows}

    async def received(self, domain: str, username: str, archive_id: int, with_bare: str) -> bool:
        """Whether ``archive_id`` is a message from ``with_bare`` received into this archive."""
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT 1 FROM mam_messages WHERE domain = ? AND username = ? AND id = ? "
                                    "AND with_bare = ? AND direction = 'in'", domain, username, archive_id, with_bare)
        return row is not None

    async def bounds(self, domain: str, username: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(id, ts) of the first and the last message of the archive; None when it is empty."""
        async with self.storage.transaction() as tx:
            first = await tx.fetchone("SELECT id, ts FROM mam_messages WHERE domain = ? AND username = ? "
                                      "ORDER BY id ASC LIMIT 1", domain, username)
            last = await tx.fetchone("SELECT id, ts FROM mam_messages WHERE domain = ? AND username = ? "
                                     "ORDER BY id DESC LIMIT 1", domain, username)
        if first is None or last is None:
            return None
        return (int(first[0]), int(first[1])), (int(last[0]), int(last[1]))

    # -- preferences ---------------------------------------------------------------------------------

    async def get_prefs(self, domain: str, username: str) -> Prefs | None:
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT default_mode, always_json, never_json FROM mam_prefs "
                                    "WHERE domain = ? AND username = ?", domain, username)
        if row is None:
            return None
        return Prefs(str(row[0]), tuple(json.loads(row[1])), tuple(json.loads(row[2])))

    async def set_prefs(self, domain: str, username: str, prefs: Prefs, now_us: int) -> None:
        async with self.storage.transaction(write=True) as tx:
            await tx.execute(
                "INSERT INTO mam_prefs (domain, username, default_mode, always_json, never_json, changed_us) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, username) DO UPDATE SET "
                "default_mode = excluded.default_mode, always_json = excluded.always_json, "
                "never_json = excluded.never_json, changed_us = excluded.changed_us",
                domain, username, prefs.default, json.dumps(list(prefs.always)), json.dumps(list(prefs.never)),
                now_us)

    async def prefs_changed(self, since_us: int) -> list[tuple[str, str, int]]:
        """(domain, username, changed µs) of the preferences set after ``since_us``."""
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall("SELECT domain, username, changed_us FROM mam_prefs WHERE changed_us > ?",
                                     since_us)
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]
