"""core/eager.start: a task whose first step runs before start returns."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import pytest

from cluster_node.core import eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test", default="unset")


async def from_a_callback(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a plain callback of the loop (as a protocol's data_received), not in a task."""
    loop = asyncio.get_running_loop()
    out: asyncio.Future[Any] = loop.create_future()

    def call() -> None:
        assert asyncio.current_task() is None
        out.set_result(fn())

    loop.call_soon(call)
    return await out


async def test_a_coroutine_that_never_waits_is_done_when_start_returns():
    done: list[str] = []

    async def route() -> None:  # awaited, but waits for nothing (a module with its data at hand)
        done.append("routed")

    async def handle() -> int:
        await route()
        done.append("handled")
        return 3

    def call() -> bool:
        task = eager.start(handle(), asyncio.get_running_loop())
        return task.done() and task.result() == 3 and done == ["routed", "handled"]

    assert await from_a_callback(call)


async def test_the_first_step_runs_in_its_own_task():
    """asyncio.timeout and current_task() work in the first step (a database driver uses them)."""
    seen: list[object] = []

    async def handle() -> None:
        async with asyncio.timeout(5):
            seen.append(asyncio.current_task())

    task = await from_a_callback(lambda: eager.start(handle(), asyncio.get_running_loop()))
    assert seen == [task] and task.done() and task.exception() is None


async def test_a_coroutine_that_waits_goes_on_in_its_task():
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def handle() -> int:
        seen.append("first step")
        seen.append(await fut)
        return 7

    task = await from_a_callback(lambda: eager.start(handle(), loop))
    assert seen == ["first step"] and not task.done()
    fut.set_result(42)
    assert await task == 7
    assert seen == ["first step", 42]


async def test_the_context_is_a_copy_as_for_any_task():
    async def handle() -> None:
        VAR.set("mine")

    await from_a_callback(lambda: eager.start(handle(), asyncio.get_running_loop()))
    assert VAR.get() == "unset"


async def test_inside_a_running_task_the_first_step_waits_for_the_next_turn():
    """A task's step cannot start inside another's (Python 3.11); 3.12's eager tasks may."""
    ran: list[str] = []

    async def handle() -> None:
        ran.append("ran")

    task = eager.start(handle(), asyncio.get_running_loop())  # this test is a task
    assert ran == [] or task.done()  # 3.11: queued; 3.12+: taken now
    await task
    assert ran == ["ran"]


async def test_an_exception_is_the_task_s_as_for_any_task():
    async def handle() -> None:
        raise KeyError("bad")

    task = await from_a_callback(lambda: eager.start(handle(), asyncio.get_running_loop()))
    with pytest.raises(KeyError):
        task.result()
