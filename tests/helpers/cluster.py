"""Clusters of real ``meridian node`` processes for integration tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .node import NodeProcess
from .ports import free_port

__all__ = ["SECRET", "cluster_node", "system_info", "table_info", "wait_until", "eventually", "poll"]

SECRET = "test-cluster-secret-0123456789"
T = TypeVar("T")


def cluster_node(workdir: Path, name: str, storage_url: str, **cluster: Any) -> NodeProcess:
    """A node of cluster ``meridian`` with fast discovery and pings (tests wait seconds, not minutes)."""
    settings = {"enabled": True, "secret": SECRET, "port": free_port(), "refresh_interval": 0.3,
                "ping_interval": 0.3, "ping_timeout": 1.5, **cluster}
    return NodeProcess(workdir / name, name=name, storage_url=storage_url, settings={"cluster": settings})


def system_info(node: NodeProcess) -> dict[str, Any]:
    res = node.ctl("cets", "system-info")
    return json.loads(res.stdout)["data"]["cets"]["systemInfo"]  # type: ignore[no-any-return]


def table_info(node: NodeProcess) -> dict[str, dict[str, Any]]:
    res = node.ctl("cets", "table-info")
    return {t["tableName"]: t for t in json.loads(res.stdout)["data"]["cets"]["tableInfo"]}


def poll(check: Callable[[], T], timeout: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def wait_until(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last value {value!r}")
        time.sleep(0.1)
        value = check()
    return value


async def eventually(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """:func:`wait_until` for async tests: sleeps without blocking the clients' event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last value {value!r}")
        await asyncio.sleep(0.1)
        value = check()
    return value
