"""Run a coroutine now, in the caller's turn of the event loop; make a task only if it waits.

What Python 3.12's eager task factory does, for the 3.11 we run on.  A client's stanza is handled
by a coroutine (a module may read a database first), yet almost every one never waits: handed to
a task it cost a task per read and waited for the next turn of the loop, which at load holds a
read of every busy connection — the latency of a message grew with the number of senders.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["start"]

T = TypeVar("T")


def start(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> asyncio.Task[T] | None:
    """Take ``coro``'s first step now, in a copy of the current context (as a task would have).

    Returns None when it finished in that step (its result is dropped: callers keep their outcome
    in their own state), else a task that runs it on from where it waits, in the same context.
    An exception raised by the first step is raised here."""
    ctx = contextvars.copy_context()
    try:
        waiting = ctx.run(coro.send, None)
    except StopIteration:
        return None
    return loop.create_task(_run_on(coro, waiting), context=ctx)


async def _run_on(coro: Coroutine[Any, Any, T], waiting: Any) -> T:
    """Go on with ``coro``, which yielded ``waiting`` (a future, or None for a bare yield) outside
    any task: wait for it here, then resume ``coro``, which reads its outcome itself."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            elif asyncio.isfuture(waiting):
                waiting._asyncio_future_blocking = False  # no task took it: as Task.__step would do
                await asyncio.wait((waiting,))  # done, with whatever outcome: coro raises it itself
            else:
                raise RuntimeError(f"a coroutine run eagerly yielded {waiting!r}, not a future")
        except asyncio.CancelledError as e:  # this task was cancelled: so is coro, where it waits
            try:
                waiting = coro.throw(e)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
