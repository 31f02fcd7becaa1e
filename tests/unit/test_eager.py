"""core/eager.start: a coroutine's first step now, a task only when it waits."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from cluster_node.core import eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test", default="unset")


async def test_a_coroutine_that_never_waits_runs_entirely_in_the_call():
    done: list[str] = []

    async def route() -> None:  # awaited, but waits for nothing (a module with its data at hand)
        done.append("routed")

    async def handle() -> None:
        await route()
        done.append("handled")

    assert eager.start(handle(), asyncio.get_running_loop()) is None
    assert done == ["routed", "handled"]  # before any turn of the loop


async def test_a_coroutine_that_waits_goes_on_in_a_task_and_reads_what_it_waited_for():
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def handle() -> int:
        seen.append("first step")
        seen.append(await fut)
        await asyncio.sleep(0)  # a bare yield, after the first wait
        return 7

    task = eager.start(handle(), loop)
    assert task is not None and seen == ["first step"]
    loop.call_soon(fut.set_result, 42)
    assert await task == 7
    assert seen == ["first step", 42]


async def test_the_exception_of_a_future_is_raised_inside_the_coroutine():
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    caught: list[BaseException] = []

    async def handle() -> None:
        try:
            await fut
        except ValueError as e:
            caught.append(e)

    task = eager.start(handle(), loop)
    assert task is not None
    fut.set_exception(ValueError("no"))
    await task
    assert [str(e) for e in caught] == ["no"]


async def test_the_context_is_a_copy_kept_across_the_wait():
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def handle() -> None:
        VAR.set("mine")
        await fut
        seen.append(VAR.get())
        loop.create_task(spawned())  # a task it spawns inherits its context, as from a task

    async def spawned() -> None:
        seen.append("spawned " + VAR.get())

    task = eager.start(handle(), loop)
    assert VAR.get() == "unset"  # the caller's context is untouched
    fut.set_result(None)
    assert task is not None
    await task
    await asyncio.sleep(0)
    assert seen == ["mine", "spawned mine"]


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits():
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    cleaned: list[str] = []

    async def handle() -> None:
        try:
            await fut
        finally:
            cleaned.append("finally")

    task = eager.start(handle(), loop)
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]


async def test_an_exception_of_the_first_step_is_raised_by_start():
    async def handle() -> None:
        raise KeyError("bad")

    with pytest.raises(KeyError):
        eager.start(handle(), asyncio.get_running_loop())
