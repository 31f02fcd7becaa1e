"""Batcher: keys submitted while a call is in flight go together in the next one."""

from __future__ import annotations

import asyncio

import pytest

from cluster_node.core.batching import Batcher


class Db:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail = False

    async def read_many(self, keys: dict[str, None]) -> dict[str, int]:
        self.batches.append(list(keys))
        await asyncio.sleep(0.01)
        if self.fail:
            raise OSError("database down")
        return {k: len(k) for k in keys if k != "absent"}


async def test_an_idle_reader_reads_at_once_and_a_burst_waits_for_one_more_query():
    db = Db()
    r: Batcher[str, None, int] = Batcher(db.read_many, -1)
    first = r.submit("a")
    await asyncio.sleep(0)  # the first read is in flight
    burst = [r.submit(k) for k in ("bb", "ccc", "absent", "bb")]
    assert await first == 1
    assert await asyncio.gather(*burst) == [2, 3, -1, 2]
    assert db.batches == [["a"], ["bb", "ccc", "absent"]]
    assert r.calls == 2


async def test_max_batch_splits_a_long_burst():
    db = Db()
    r: Batcher[str, None, int] = Batcher(db.read_many, -1, max_batch=2)
    values = await asyncio.gather(*(r.submit("k" * n) for n in range(1, 6)))
    assert values == [1, 2, 3, 4, 5]
    assert [len(b) for b in db.batches] == [2, 2, 1]


async def test_a_failed_batch_fails_its_readers_only():
    db = Db()
    r: Batcher[str, None, int] = Batcher(db.read_many, -1)
    db.fail = True
    first = r.submit("a")
    with pytest.raises(OSError):
        await first
    db.fail = False
    assert await r.submit("a") == 1  # read again, not a cached failure


async def test_close_cancels_what_waits():
    db = Db()
    r: Batcher[str, None, int] = Batcher(db.read_many, -1)
    first = r.submit("a")
    await asyncio.sleep(0)
    second = r.submit("b")
    r.close()
    await asyncio.sleep(0)
    assert first.cancelled() and second.cancelled()


async def test_a_key_written_twice_before_its_call_keeps_the_last_value():
    written: list[dict[str, int]] = []

    async def write_many(values: dict[str, int]) -> dict[str, bool]:
        written.append(dict(values))
        await asyncio.sleep(0.01)
        return dict.fromkeys(values, True)

    w: Batcher[str, int, bool] = Batcher(write_many, False)
    first = w.submit("alice", 1)
    await asyncio.sleep(0)
    later = [w.submit("alice", 2), w.submit("bob", 5), w.submit("alice", 3)]
    assert await first and all(await asyncio.gather(*later))
    assert written == [{"alice": 1}, {"alice": 3, "bob": 5}]


def test_padded_lists_take_a_few_sizes():
    from cluster_node.storage.user_rows import padded

    assert padded(["a"]) == ["a"]
    assert padded(["a", "b", "c"]) == ["a", "b", "c", "c"]
    assert len(padded([str(i) for i in range(300)])) == 512
    assert {len(padded(["x"] * n)) for n in range(1, 501)} == {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}
