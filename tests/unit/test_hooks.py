"""Hooks: order by priority then insertion, STOP, first answers, folds, sync and async handlers, owners."""

from __future__ import annotations

from cluster_node.core.hooks import STOP, Hooks


def recorder(calls: list[str], tag: str, result: object = None):
    def handler(*args: object) -> object:
        calls.append(tag)
        return result
    return handler


def async_recorder(calls: list[str], tag: str, result: object = None):
    async def handler(*args: object) -> object:
        calls.append(tag)
        return result
    return handler


# -- order ------------------------------------------------------------------------------------------


def test_lower_priority_number_runs_first_ties_in_insertion_order():
    hooks, calls = Hooks(), []
    hooks.add("h", recorder(calls, "p50-a"))  # default priority 50
    hooks.add("h", recorder(calls, "p10"), 10)
    hooks.add("h", recorder(calls, "p90"), 90)
    hooks.add("h", recorder(calls, "p50-b"), 50)
    hooks.add("h", recorder(calls, "p10-b"), 10)
    assert hooks.run("h") is True
    assert calls == ["p10", "p10-b", "p50-a", "p50-b", "p90"]


def test_handlers_lists_them_in_run_order():
    hooks = Hooks()
    a, b, c = recorder([], "a"), recorder([], "b"), recorder([], "c")
    hooks.add("h", a, 30)
    hooks.add("h", b, 20)
    hooks.add("h", c, 30)
    assert hooks.handlers("h") == [b, a, c]
    assert hooks.handlers("other") == []


def test_arguments_are_passed_through():
    hooks, seen = Hooks(), []
    hooks.add("h", lambda *args: seen.append(args))
    hooks.run("h", 1, "two", None)
    assert seen == [(1, "two", None)]


def test_hooks_are_separate_per_name_and_per_registry():
    one, two, calls = Hooks(), Hooks(), []
    one.add("h", recorder(calls, "one"))
    two.add("g", recorder(calls, "two"))
    assert one.run("g") is True and two.run("h") is True
    assert calls == []


# -- run ------------------------------------------------------------------------------------------


def test_run_without_handlers_is_true():
    assert Hooks().run("nothing") is True


def test_run_stops_at_stop_and_returns_false():
    hooks, calls = Hooks(), []
    hooks.add("h", recorder(calls, "first", "ignored value"), 1)
    hooks.add("h", recorder(calls, "stopper", STOP), 2)
    hooks.add("h", recorder(calls, "never"), 3)
    assert hooks.run("h") is False
    assert calls == ["first", "stopper"]


def test_run_ignores_other_return_values():
    hooks, calls = Hooks(), []
    hooks.add("h", recorder(calls, "a", False), 1)
    hooks.add("h", recorder(calls, "b", True), 2)
    hooks.add("h", recorder(calls, "c", 0), 3)
    assert hooks.run("h") is True
    assert calls == ["a", "b", "c"]


async def test_run_async_mixes_sync_and_async_handlers_in_order():
    hooks, calls = Hooks(), []
    hooks.add("h", async_recorder(calls, "async-20"), 20)
    hooks.add("h", recorder(calls, "sync-10"), 10)
    hooks.add("h", recorder(calls, "sync-30"), 30)
    hooks.add("h", async_recorder(calls, "async-25"), 25)
    assert await hooks.run_async("h", "x") is True
    assert calls == ["sync-10", "async-20", "async-25", "sync-30"]


async def test_run_async_stops_at_an_awaited_stop():
    hooks, calls = Hooks(), []
    hooks.add("h", recorder(calls, "sync"), 1)
    hooks.add("h", async_recorder(calls, "async-stop", STOP), 2)
    hooks.add("h", async_recorder(calls, "never"), 3)
    assert await hooks.run_async("h") is False
    assert calls == ["sync", "async-stop"]


async def test_run_async_stops_at_a_sync_stop():
    hooks, calls = Hooks(), []
    hooks.add("h", recorder(calls, "sync-stop", STOP), 1)
    hooks.add("h", async_recorder(calls, "never"), 2)
    assert await hooks.run_async("h") is False
    assert calls == ["sync-stop"]


# -- first ----------------------------------------------------------------------------------------


def test_first_returns_the_first_non_none_answer():
    hooks, calls = Hooks(), []
    hooks.add("h", recorder(calls, "pass"), 1)
    hooks.add("h", recorder(calls, "answer", "taken"), 2)
    hooks.add("h", recorder(calls, "never", "other"), 3)
    assert hooks.first("h") == "taken"
    assert calls == ["pass", "answer"]


def test_first_treats_false_as_an_answer():
    hooks, calls = Hooks(), []
    hooks.add("h", recorder(calls, "no", False), 1)
    hooks.add("h", recorder(calls, "never", True), 2)
    assert hooks.first("h") is False
    assert calls == ["no"]


def test_first_treats_zero_and_empty_as_answers():
    hooks = Hooks()
    hooks.add("h", lambda: 0)
    hooks.add("h", lambda: 1)
    assert hooks.first("h") == 0
    hooks.add("g", lambda: "")
    hooks.add("g", lambda: "x")
    assert hooks.first("g") == ""


def test_first_is_none_when_no_handler_answers():
    hooks, calls = Hooks(), []
    hooks.add("h", recorder(calls, "a"))
    hooks.add("h", recorder(calls, "b"))
    assert hooks.first("h") is None
    assert calls == ["a", "b"]
    assert Hooks().first("h") is None


async def test_first_async_awaits_and_takes_the_first_answer():
    hooks, calls = Hooks(), []
    hooks.add("h", async_recorder(calls, "async-pass"), 1)
    hooks.add("h", recorder(calls, "sync-pass"), 2)
    hooks.add("h", async_recorder(calls, "async-answer", 42), 3)
    hooks.add("h", recorder(calls, "never", 7), 4)
    assert await hooks.first_async("h") == 42
    assert calls == ["async-pass", "sync-pass", "async-answer"]


async def test_first_async_false_is_an_answer():
    hooks, calls = Hooks(), []
    hooks.add("h", async_recorder(calls, "no", False), 1)
    hooks.add("h", async_recorder(calls, "never", True), 2)
    assert await hooks.first_async("h") is False
    assert calls == ["no"]


async def test_first_async_without_answer_is_none():
    hooks, calls = Hooks(), []
    hooks.add("h", async_recorder(calls, "a"))
    hooks.add("h", recorder(calls, "b"))
    assert await hooks.first_async("h", 1, 2) is None
    assert calls == ["a", "b"]


# -- fold -----------------------------------------------------------------------------------------


def test_fold_threads_the_accumulator_in_order_with_args():
    hooks = Hooks()
    hooks.add("f", lambda acc, stage: acc + [f"b:{stage}"], 20)
    hooks.add("f", lambda acc, stage: acc + [f"a:{stage}"], 10)
    hooks.add("f", lambda acc, stage: acc + [f"c:{stage}"], 30)
    assert hooks.fold("f", ["start"], "post_auth") == ["start", "a:post_auth", "b:post_auth", "c:post_auth"]


def test_fold_without_handlers_returns_the_initial_value():
    initial = {"x"}
    assert Hooks().fold("f", initial) is initial


def test_fold_stop_ends_with_the_value_so_far():
    hooks, calls = Hooks(), []

    def add_one(acc: int) -> int:
        calls.append("add")
        return acc + 1

    def stop(acc: int) -> object:
        calls.append("stop")
        return STOP

    def never(acc: int) -> int:
        calls.append("never")
        return 1000

    hooks.add("f", add_one, 1)
    hooks.add("f", stop, 2)
    hooks.add("f", never, 3)
    assert hooks.fold("f", 10) == 11
    assert calls == ["add", "stop"]


async def test_fold_async_mixes_sync_and_async_and_honours_stop():
    hooks = Hooks()

    async def double(acc: int) -> int:
        return acc * 2

    async def stop(acc: int) -> object:
        return STOP

    hooks.add("f", lambda acc: acc + 3, 1)
    hooks.add("f", double, 2)
    assert await hooks.fold_async("f", 1) == 8
    hooks.add("f", stop, 3)
    hooks.add("f", lambda acc: -1, 4)
    assert await hooks.fold_async("f", 1) == 8


# -- owners and has -----------------------------------------------------------------------------


def test_remove_owner_takes_out_only_that_owners_handlers_everywhere():
    hooks, calls = Hooks(), []
    mod_a, mod_b = object(), object()
    hooks.add("h", recorder(calls, "a1"), 10, owner=mod_a)
    hooks.add("h", recorder(calls, "b1"), 20, owner=mod_b)
    hooks.add("h", recorder(calls, "none"), 30)
    hooks.add("g", recorder(calls, "a2"), owner=mod_a)
    hooks.remove_owner(mod_a)
    hooks.run("h")
    hooks.run("g")
    assert calls == ["b1", "none"]
    assert hooks.has("g") is False
    assert hooks.has("h") is True


def test_remove_owner_compares_identity_not_equality():
    class Owner:
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = object.__hash__

    hooks, calls = Hooks(), []
    one, other = Owner(), Owner()
    hooks.add("h", recorder(calls, "first"), owner=one)
    hooks.add("h", recorder(calls, "second"), owner=other)
    hooks.remove_owner(Owner())  # equal to both, the same as neither: removes nothing
    hooks.run("h")
    assert calls == ["first", "second"]
    hooks.remove_owner(one)
    calls.clear()
    hooks.run("h")
    assert calls == ["second"]


def test_remove_owner_keeps_order_of_the_rest_and_new_handlers_slot_in():
    hooks, calls = Hooks(), []
    owner = object()
    hooks.add("h", recorder(calls, "kept-20"), 20)
    hooks.add("h", recorder(calls, "gone-10"), 10, owner=owner)
    hooks.add("h", recorder(calls, "kept-30"), 30)
    hooks.remove_owner(owner)
    hooks.add("h", recorder(calls, "new-25"), 25)
    hooks.run("h")
    assert calls == ["kept-20", "new-25", "kept-30"]


def test_has():
    hooks = Hooks()
    assert hooks.has("h") is False
    hooks.add("h", lambda: None, owner="m")
    assert hooks.has("h") is True
    assert hooks.has("other") is False
    hooks.remove_owner("m")
    assert hooks.has("h") is False


def test_stop_is_a_named_singleton():
    assert repr(STOP) == "STOP"
    assert STOP is not None and STOP is not False
