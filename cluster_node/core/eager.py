"""Start a task whose first step runs now, in the caller's turn of the event loop.

What Python 3.12's eager tasks do, for the 3.11 we run on.  A client's stanza is handled by a
coroutine (a module may read a database first), yet almost every one never waits: as an ordinary
task it waited for the next turn of the loop, which at load holds a read of every busy
connection — the latency of a message grew with the number of senders.  The task is a real one
all the same (``current_task()`` is it, ``asyncio.timeout`` and cancellation work), only its first
step is not queued behind the others.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["start"]

T = TypeVar("T")


def start(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> asyncio.Task[T]:
    """A task running ``coro``, its first step taken before this returns (the task may be done
    then).  Called from inside another task, or on an event loop other than asyncio's own on
    Python 3.11 (uvloop), it is an ordinary task: its first step runs at the next turn."""
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    task = loop.create_task(coro)
    # create_task appended the task's first step to the loop's queue of ready callbacks (asyncio's
    # BaseEventLoop._ready): run it now instead.  Not inside a running task: a task's step must
    # not start while another one's is under way.
    ready = getattr(loop, "_ready", None)
    if type(ready) is collections.deque and ready and asyncio.current_task(loop) is None:
        ready.pop()._run()
    return task
