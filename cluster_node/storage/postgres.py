"""PostgreSQL backend: an asyncpg pool; ``?`` placeholders become ``$n``."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from typing import Any

import asyncpg

from .sql import SqlStorage, Tx

__all__ = ["PostgresStorage"]

MIGRATION_LOCK = 0x6D657269  # advisory lock id: concurrent first starts migrate one at a time


@lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


class _PgTx:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self.conn.execute(_pg(sql), *args)
        try:
            return int(status.rsplit(" ", 1)[-1])
        except ValueError:
            return 0

    async def execute_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        return [await self.execute(sql, *args) for sql, args in statements]

    async def fetchone(self, sql: str, *args: Any) -> Sequence[Any] | None:
        return await self.conn.fetchrow(_pg(sql), *args)  # type: ignore[no-any-return]

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return list(await self.conn.fetch(_pg(sql), *args))


class PostgresStorage(SqlStorage):
    dialect = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        # No connection floor: with min_size > 0 asyncpg keeps reconnecting in the background while
        # PostgreSQL is away and logs each failure with its traceback ("Failed to restore the pool
        # connection floor"); without one, connections are made when a query needs them, and a
        # database that is down fails those queries (their callers report it).
        self._pool = await asyncpg.create_pool(self.url, min_size=0, max_size=10)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await self._migrate(_PgTx(conn))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def _tx(self, write: bool = False) -> AsyncIterator[Tx]:
        if self._pool is None:
            raise RuntimeError("storage is not open")
        async with self._pool.acquire() as conn:
            if not write:
                yield _PgTx(conn)
                return
            async with conn.transaction():
                yield _PgTx(conn)

    async def _lock_migrations(self, tx: Tx) -> None:
        await tx.fetchone("SELECT pg_advisory_xact_lock(?)", MIGRATION_LOCK)

    async def _lock_user(self, tx: Tx, domain: str, username: str) -> None:
        await tx.fetchone("SELECT pg_advisory_xact_lock(hashtext(? || '/' || ?))", domain, username)

    async def _lock_discovery(self, tx: Tx, cluster: str) -> None:
        await tx.fetchone("SELECT pg_advisory_xact_lock(hashtext('discovery/' || ?))", cluster)
