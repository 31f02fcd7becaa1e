"""Database work asked for many keys at about the same moment, done as one statement.

A burst of logins (or of first stanzas, or of logouts) asks the database for a thousand rows,
each for one user.  Done one by one, each is a round trip — and with SQLite a hop to its thread
and back, which a busy event loop holding the GIL lets through only every few milliseconds: the
last of them waited seconds, for as long as the load lasted.  :class:`Batcher` keeps one call in
flight; the keys asked meanwhile wait for the next call, which takes them all (``max_batch`` at
a time).  An idle server calls at once with one key; a busy one makes a few calls per burst.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["Batcher"]

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
V = TypeVar("V")


class Batcher(Generic[K, A, V]):
    """``submit(key, arg)`` through ``call_many({key: arg}) -> {key: result}``, one call at a time.

    Reads submit no ``arg``; writes submit the value to write, and a key submitted again before
    its call starts keeps the last value (every submitter gets the one result).  A key missing
    from the results gets ``missing``; an exception of ``call_many`` is raised to every submitter
    of that call."""

    def __init__(self, call_many: Callable[[dict[K, A]], Awaitable[dict[K, V]]], missing: V, *,
                 max_batch: int = 500) -> None:
        self._call_many = call_many
        self._missing = missing
        self._max_batch = max_batch
        self._waiting: dict[K, tuple[A, list[asyncio.Future[V]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.calls = 0  # batches done (what a metric or a test may look at)

    def submit(self, key: K, arg: Any = None) -> asyncio.Future[V]:
        """A future for ``key``'s result, done with the keys submitted meanwhile."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[V] = loop.create_future()
        pending = self._waiting.get(key)
        self._waiting[key] = (arg, [*pending[1], fut] if pending is not None else [fut])
        if self._task is None:
            self._task = loop.create_task(self._run())
        return fut

    async def _run(self) -> None:
        try:
            while self._waiting:
                keys = list(self._waiting)[:self._max_batch]
                batch = {k: self._waiting.pop(k) for k in keys}
                self.calls += 1
                try:
                    found = await self._call_many({k: arg for k, (arg, _) in batch.items()})
                except asyncio.CancelledError:
                    for _, futs in batch.values():
                        for fut in futs:
                            fut.cancel()
                    raise
                except Exception as e:  # noqa: BLE001 — handed to every submitter of the batch
                    for _, futs in batch.values():
                        for fut in futs:
                            if not fut.done():
                                fut.set_exception(e)
                                fut.exception()  # retrieved: a submitter that went away logs nothing
                    continue
                for key, (_, futs) in batch.items():
                    value = found.get(key, self._missing)
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(value)
        finally:
            self._task = None

    def close(self) -> None:
        """Cancel the call in flight and everything waiting."""
        if self._task is not None:
            self._task.cancel()
        for _, futs in self._waiting.values():
            for fut in futs:
                fut.cancel()
        self._waiting.clear()
