from __future__ import annotations

from cluster_node.core.log_throttle import OncePer


def test_once_a_period_per_key_with_the_count_held_back() -> None:
    once = OncePer(period=60.0)
    assert once.allow("1.2.3.4", 0.0) and once.held() == 0
    assert [once.allow("1.2.3.4", t) for t in (1.0, 10.0, 59.0)] == [False, False, False]
    assert once.allow("5.6.7.8", 2.0)  # another source has its own budget
    assert once.allow("1.2.3.4", 60.0) and once.held() == 3


def test_memory_is_bounded() -> None:
    once = OncePer(period=60.0, max_keys=100)
    for i in range(1_000):
        assert once.allow(i, 0.0)
    assert len(once._last) == 100
    assert once.allow(0, 1.0)  # forgotten: said again
    assert not once.allow(999, 1.0)  # remembered
