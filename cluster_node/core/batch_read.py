"""Reads of many keys asked at about the same moment, done as one database query.

A burst of first stanzas (a thousand users who just logged in, each sending its first message)
asks a module for a thousand rows it has not cached yet.  Read one by one, each read is a round
trip to the database — and with SQLite one hop to its thread and back, which a busy event loop
holding the GIL lets through only every few milliseconds: the last of those stanzas waited
seconds, for as long as the load lasted.  :class:`BatchReader` keeps one read in flight; the keys
asked meanwhile wait for the next one, which reads them all (``max_batch`` at a time).  An idle
node reads a key at once; a busy one makes a few queries of the burst instead of one per key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BatchReader"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BatchReader(Generic[K, V]):
    """``read(key)`` through ``read_many(keys) -> {key: value}``, one batch in flight at a time.

    A key missing from what ``read_many`` returns gets ``missing``; an exception of ``read_many``
    is raised to every reader of that batch.  Two reads of one key pending together share it."""

    def __init__(self, read_many: Callable[[list[K]], Awaitable[dict[K, V]]], missing: V, *,
                 max_batch: int = 500) -> None:
        self._read_many = read_many
        self._missing = missing
        self._max_batch = max_batch
        self._waiting: dict[K, asyncio.Future[V]] = {}
        self._task: asyncio.Task[None] | None = None
        self.queries = 0  # batches read (what a metric or a test may look at)

    def read(self, key: K) -> asyncio.Future[V]:
        """A future for ``key``'s value (read with the keys asked meanwhile)."""
        fut = self._waiting.get(key)
        if fut is None:
            fut = self._waiting[key] = asyncio.get_running_loop().create_future()
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run())
        return fut

    async def _run(self) -> None:
        try:
            while self._waiting:
                keys = list(self._waiting)[:self._max_batch]
                batch = {k: self._waiting.pop(k) for k in keys}
                self.queries += 1
                try:
                    found = await self._read_many(keys)
                except asyncio.CancelledError:
                    for fut in batch.values():
                        fut.cancel()
                    raise
                except Exception as e:  # noqa: BLE001 — handed to every reader of the batch
                    for fut in batch.values():
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for key, fut in batch.items():
                    if not fut.done():
                        fut.set_result(found.get(key, self._missing))
        finally:
            self._task = None

    def close(self) -> None:
        """Cancel the batch in flight and every read waiting."""
        if self._task is not None:
            self._task.cancel()
        for fut in self._waiting.values():
            fut.cancel()
        self._waiting.clear()
