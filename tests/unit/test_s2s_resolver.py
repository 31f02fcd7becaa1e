"""RFC 2782 ordering of SRV records (the pure part of the S2S resolver)."""

from __future__ import annotations

import random
from collections import Counter

from gateway.s2s.resolver import SrvRecord, srv_order


def test_priority_first() -> None:
    records = [SrvRecord(20, 0, "c", 1), SrvRecord(10, 0, "a", 1), SrvRecord(10, 0, "b", 1), SrvRecord(5, 0, "z", 1)]
    ordered = srv_order(records, random.Random(1))
    assert ordered[0].target == "z" and ordered[-1].target == "c"
    assert {r.target for r in ordered[1:3]} == {"a", "b"}


def test_weights_choose_in_proportion() -> None:
    records = [SrvRecord(10, 90, "heavy", 1), SrvRecord(10, 10, "light", 1)]
    rand = random.Random(7)
    firsts = Counter(srv_order(records, rand)[0].target for _ in range(2000))
    assert 0.85 < firsts["heavy"] / 2000 < 0.95
    assert all(len(srv_order(records, rand)) == 2 for _ in range(10))


def test_zero_weight_records_still_come() -> None:
    records = [SrvRecord(0, 0, "zero", 1), SrvRecord(0, 50, "fifty", 1)]
    rand = random.Random(3)
    seen = Counter(srv_order(records, rand)[0].target for _ in range(1000))
    assert seen["fifty"] > 900 and seen["zero"] >= 1  # rarely first, never dropped
    assert sorted(r.target for r in srv_order(records, rand)) == ["fifty", "zero"]
