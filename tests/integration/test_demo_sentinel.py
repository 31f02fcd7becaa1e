"""``meridian demo --sentinel``: eu's Redis killed with SIGKILL, the Sentinels promote us's
replica, alice and bob go on chatting, the demo keeps running and stops cleanly, Sentinels too."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers.topologies import need_redis
from tests.integration.test_demo import DemoRun, _chat, _free_base, _wait_gone

pytestmark = pytest.mark.timeout(900)


def _redis_pid(port: int) -> int:
    """The redis-server serving ``port`` (it names its address in its process title)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in cmdline and f"127.0.0.1:{port}".encode() in cmdline and b"sentinel" not in cmdline:
            return int(proc.name)
    raise AssertionError(f"no redis-server on port {port}")


def _primary(state: dict[str, Any]) -> tuple[str, int] | None:
    for address in state["sentinels"]["addresses"]:
        host, _, port = address.rpartition(":")
        try:
            with redis.Redis(host=host, port=int(port), socket_timeout=2, decode_responses=True) as s:
                found = s.sentinel_get_master_addr_by_name(state["sentinels"]["master"])
            return (str(found[0]), int(found[1])) if found else None
        except redis.RedisError:
            continue
    return None


async def test_demo_with_sentinels_survives_its_primary(tmp_path: Path) -> None:
    need_redis()
    base = _free_base()
    demo = DemoRun(tmp_path, base, "--sentinel")
    try:
        state = demo.start()
        assert state["sentinels"] == {"master": "meridian",
                                      "addresses": [f"127.0.0.1:{base + i}" for i in (1, 2, 3)]}
        assert _primary(state) == ("127.0.0.1", base)  # eu's Redis
        await _chat(state, "alice", "bob")

        os.kill(_redis_pid(base), signal.SIGKILL)
        await _chat(state, "bob", "alice")  # at once: routed from the gateways' caches
        deadline = time.monotonic() + 60
        while _primary(state) != ("127.0.0.1", base + 100):
            assert time.monotonic() < deadline, demo.output()
            time.sleep(0.2)
        await _chat(state, "alice", "bob")  # new logins, published to the promoted replica
        assert demo.proc is not None and demo.proc.poll() is None, demo.output()
        assert "redis-eu exited; the Sentinels fail over" in demo.output()

        pids = [int(p) for p in json.loads((demo.dir / "pids.json").read_text())]
        assert demo.stop(signal.SIGINT) == 0, demo.output()
        assert _wait_gone(pids, 10) == [], "processes (Sentinels?) left after Ctrl-C"
        log = "\n".join(p.read_text(errors="replace") for p in demo.dir.glob("*-gw1/*-gw1.log"))
        assert "Traceback" not in log, log
    finally:
        demo.stop(signal.SIGKILL)
