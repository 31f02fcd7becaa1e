"""SQLite backend (the embedded default): one aiosqlite connection, WAL, short transactions.

Several processes on one machine may share the file (a cluster on one host): writes take the
database lock with ``BEGIN IMMEDIATE`` and wait up to ``busy_timeout`` for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random

from .sql import SqlStorage, Tx

__all__ = ["SqliteStorage"]

_T = TypeVar("_T")


def _execute(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
    cur = conn.execute(sql, args)
    try:
        return cur.rowcount
    finally:
        cur.close()


def _execute_all(conn: sqlite3.Connection, statements: tuple[Any, ...]) -> list[int]:
    return [_execute(conn, sql, tuple(args)) for sql, args in statements]


def _write_all(conn: sqlite3.Connection, statements: tuple[Any, ...]) -> list[int]:
    """BEGIN, every statement, COMMIT (ROLLBACK on an error) in the database thread: one hop."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        counts = _execute_all(conn, statements)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return counts


def _fetchone(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> Sequence[Any] | None:
    cur = conn.execute(sql, args)
    try:
        row: Sequence[Any] | None = cur.fetchone()
        return row
    finally:
        cur.close()


def _fetchall(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Sequence[Any]]:
    cur = conn.execute(sql, args)
    try:
        return list(cur.fetchall())
    finally:
        cur.close()


async def _in_db_thread(db: aiosqlite.Connection, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(conn, *args)`` in the database thread, in one hop there and back (see :class:`_SqliteTx`)."""
    result: _T = await db._execute(fn, db._conn, *args)  # type: ignore[no-untyped-call]
    return result


class _SqliteTx:
    """Each statement is one hop to the database thread and back: run, read the rows and close
    the cursor there in one call.  (aiosqlite's cursor API takes three hops — execute, fetch, close
    — each a queue put and a wake-up of the event loop through its self-pipe: a login's five
    statements cost fifteen.)  ``Connection._execute`` is the queue every public aiosqlite method
    goes through (present from 0.17 to 0.22 at least); what runs there is plain ``sqlite3``."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def execute(self, sql: str, *args: Any) -> int:
        return await _in_db_thread(self.db, _execute, sql, args)

    async def execute_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Every statement in one hop to the database thread (an archive's group commit: a hop
        per row waited for the GIL as long as the rows took to write)."""
        return await _in_db_thread(self.db, _execute_all, tuple(statements))

    async def fetchone(self, sql: str, *args: Any) -> Sequence[Any] | None:
        return await _in_db_thread(self.db, _fetchone, sql, args)

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return await _in_db_thread(self.db, _fetchall, sql, args)


@contextlib.asynccontextmanager
async def _exclusive(lock_path: Path) -> AsyncIterator[None]:
    """An advisory lock (``flock``) shared by every process opening the same database file."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


WAL_CHECKPOINT_PAGES = 10_000


class SqliteStorage(SqlStorage):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
        await self._db.execute("PRAGMA busy_timeout = 30000")
        # Switching to WAL and migrating need the file alone.  Two processes doing both at the same
        # instant could wait on each other's locks for a whole busy_timeout (a 60 s stall was seen
        # with two `ctl` calls on a new file): take turns under an OS lock beside the file.
        async with _exclusive(self.path.with_name(self.path.name + ".open-lock")):
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(sqlite3.OperationalError),
                                               wait=wait_random(0.05, 0.3), stop=stop_after_delay(30),
                                               reraise=True):
                with attempt:
                    await self._db.execute("PRAGMA journal_mode = WAL")
                    async with self._tx(write=True) as tx:
                        await self._migrate(tx)
        await self._db.execute("PRAGMA synchronous = NORMAL")
        # A checkpoint every 10,000 WAL pages (40 MB), not SQLite's 1,000: a page written again and
        # again (an index leaf taking rows in turn) is copied into the file once per checkpoint.
        # Archiving at 8,000 rows/s into 1.1 M rows cost SQLite 71 µs of CPU a row, 41-49 after.
        await self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def write_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """One hop to the database thread for the whole transaction (three with :meth:`_tx`:
        BEGIN, the statements, COMMIT, each a wake-up of the event loop)."""
        if self._db is None:
            raise RuntimeError("storage is not open")
        async with self._lock:
            return await _in_db_thread(self._db, _write_all, tuple(statements))

    @contextlib.asynccontextmanager
    async def _tx(self, write: bool = False) -> AsyncIterator[Tx]:
        if self._db is None:
            raise RuntimeError("storage is not open")
        async with self._lock:  # one connection: coroutines must not interleave transactions
            if not write:
                yield _SqliteTx(self._db)
                return
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._db)
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            else:
                await self._db.execute("COMMIT")
