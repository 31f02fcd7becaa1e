"""Authentication throttling per address (the sans-IO counter; the c2s and API tests use it live)."""

from __future__ import annotations

from cluster_node.core.auth_throttle import AuthThrottle, ThrottleRules
from cluster_node.settings import NodeSettings

RULES = ThrottleRules(max_failures=5, window=60, delay_after=2, failure_delay=1.0, max_delay=2.5, ban_seconds=100)


def test_first_failures_are_answered_at_once_then_later_and_later() -> None:
    t = AuthThrottle(RULES)
    delays = [t.failed("192.0.2.1", float(i))[0] for i in range(4)]
    assert delays == [0.0, 0.0, 1.0, 2.0]
    assert t.failed("192.0.2.2", 4.0) == (0.0, None)  # another address has its own count


def test_delay_is_capped() -> None:
    t = AuthThrottle(ThrottleRules(max_failures=50, delay_after=0, failure_delay=1.0, max_delay=2.5))
    assert [t.failed("a", 0.0)[0] for _ in range(4)] == [1.0, 2.0, 2.5, 2.5]


def test_max_failures_bans_for_the_ban_period() -> None:
    t = AuthThrottle(RULES)
    results = [t.failed("192.0.2.1", 10.0) for _ in range(5)]
    ban = results[-1][1]
    assert ban is not None and ban.until == 110.0 and all(b is None for _, b in results[:-1])
    refusal = t.refuse("192.0.2.1", 50.0)
    assert refusal is not None and "192.0.2.1" in refusal and "61 s" in refusal
    assert t.refuse("192.0.2.9", 50.0) is None
    assert t.refuse("192.0.2.1", 110.0) is None  # over
    assert t.counters["bans"] == 1 and t.counters["refused"] == 1


def test_failures_leave_the_window() -> None:
    t = AuthThrottle(RULES)
    for i in range(4):
        t.failed("a", float(i))
    assert t.failed("a", 100.0) == (0.0, None)  # the four earlier ones are older than the window


def test_lift_and_list() -> None:
    t = AuthThrottle(RULES)
    t.ban("a", 0.0, 10.0, "test")
    t.ban("b", 0.0, 20.0, "test")
    assert [b.address for b in t.bans(5.0)] == ["a", "b"]
    assert [b.address for b in t.bans(15.0)] == ["b"]
    assert t.lift("b") and not t.lift("b")
    assert t.bans(15.0) == []


def test_a_shorter_ban_never_shortens_a_longer_one() -> None:
    t = AuthThrottle(RULES)
    t.ban("a", 0.0, 100.0, "here")
    assert t.ban("a", 0.0, 10.0, "from another member").until == 100.0


def test_exempt_networks_and_disabled() -> None:
    t = AuthThrottle(ThrottleRules(max_failures=1, exempt=("10.0.0.0/8",)))
    assert t.failed("10.1.2.3", 0.0) == (0.0, None)
    assert t.failed("192.0.2.1", 0.0)[1] is not None
    off = AuthThrottle(ThrottleRules(max_failures=1), enabled=False)
    assert off.failed("a", 0.0) == (0.0, None) and off.refuse("a", 0.0) is None


def test_memory_is_bounded_under_a_scan() -> None:
    t = AuthThrottle(ThrottleRules(max_failures=10, window=10))
    for i in range(100_001):
        t.failed(f"a{i}", 0.0)
    t.failed("last", 20.0)  # past the bound: addresses outside the window are pruned
    assert len(t._failures) == 1


def test_from_settings() -> None:
    s = NodeSettings(auth_throttle={"max_failures": 7, "exempt": ["127.0.0.0/8"]})
    t = AuthThrottle.from_settings(s.auth_throttle)
    assert t.rules.max_failures == 7 and t.rules.exempt == ("127.0.0.0/8",)
