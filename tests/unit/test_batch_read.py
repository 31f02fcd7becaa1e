"""BatchReader: keys asked while a read is in flight are read together by the next one."""

from __future__ import annotations

import asyncio

import pytest

from cluster_node.core.batch_read import BatchReader


class Db:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail = False

    async def read_many(self, keys: list[str]) -> dict[str, int]:
        self.batches.append(keys)
        await asyncio.sleep(0.01)
        if self.fail:
            raise OSError("database down")
        return {k: len(k) for k in keys if k != "absent"}


async def test_an_idle_reader_reads_at_once_and_a_burst_waits_for_one_more_query():
    db = Db()
    r: BatchReader[str, int] = BatchReader(db.read_many, -1)
    first = r.read("a")
    await asyncio.sleep(0)  # the first read is in flight
    burst = [r.read(k) for k in ("bb", "ccc", "absent", "bb")]
    assert await first == 1
    assert await asyncio.gather(*burst) == [2, 3, -1, 2]
    assert db.batches == [["a"], ["bb", "ccc", "absent"]]
    assert r.queries == 2


async def test_max_batch_splits_a_long_burst():
    db = Db()
    r: BatchReader[str, int] = BatchReader(db.read_many, -1, max_batch=2)
    values = await asyncio.gather(*(r.read("k" * n) for n in range(1, 6)))
    assert values == [1, 2, 3, 4, 5]
    assert [len(b) for b in db.batches] == [2, 2, 1]


async def test_a_failed_batch_fails_its_readers_only():
    db = Db()
    r: BatchReader[str, int] = BatchReader(db.read_many, -1)
    db.fail = True
    first = r.read("a")
    with pytest.raises(OSError):
        await first
    db.fail = False
    assert await r.read("a") == 1  # read again, not a cached failure


async def test_close_cancels_what_waits():
    db = Db()
    r: BatchReader[str, int] = BatchReader(db.read_many, -1)
    first = r.read("a")
    await asyncio.sleep(0)
    second = r.read("b")
    r.close()
    await asyncio.sleep(0)
    assert first.cancelled() and second.cancelled()
