"""Per-conversation order: the stanzas between two accounts are handled one after another.

Relaying awaits (a Redis lookup on a cache miss, a link with no room, a bounce waiting
``resend_after_ms``), and independent awaits finish in any order.  Putting every stanza of a
pair through one queue keeps the order the sender chose, through lookups and bounces alike
(https://github.com/esl/MongooseIM/issues/1666), while different pairs proceed in parallel.

A pair is two *bare* JIDs (:func:`pair`): a ``subscribed`` (from the account) and the presence
that follows it (from one of its resources) must not overtake each other (RFC 6120 §10.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["PairQueues", "pair"]

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


def pair(from_: str | None, to: str | None) -> tuple[str, str]:
    """The queue of a stanza from ``from_`` to ``to``: their bare JIDs (the resource dropped)."""
    return (from_ or "").split("/", 1)[0], (to or "").split("/", 1)[0]


class PairQueues:
    def __init__(self) -> None:
        self._queues: dict[tuple[str, str], deque[Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, pair: tuple[str, str], job: Job) -> None:
        """Run ``job`` after every job submitted earlier for ``pair``."""
        queue = self._queues.get(pair)
        if queue is not None:
            queue.append(job)
            return
        self._queues[pair] = deque([job])
        task = asyncio.get_running_loop().create_task(self._drain(pair))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, pair: tuple[str, str]) -> None:
        queue = self._queues[pair]
        try:
            while queue:
                job = queue[0]
                try:
                    await job()
                except Exception:
                    log.exception("relaying a stanza from %s to %s failed", *pair)
                queue.popleft()
        finally:
            del self._queues[pair]

    @property
    def depth(self) -> int:
        """Stanzas waiting behind another of their conversation (for metrics)."""
        return sum(len(q) for q in self._queues.values())

    async def drain(self, timeout: float) -> None:
        """Until every job submitted so far has run, or ``timeout``: a stopping gateway lets what
        it already accepted (and acked) go on its way rather than dropping it in :meth:`close`."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
