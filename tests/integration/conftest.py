"""Fixtures that start real ``meridian node`` processes (SQLite, and PostgreSQL via tests/conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.node import NodeProcess

USERS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}


def _start(tmp: Path, storage_url: str | None, settings: dict | None = None) -> NodeProcess:
    node = NodeProcess(tmp, storage_url=storage_url, settings=settings)
    for user, password in USERS.items():
        node.register(user, password)
    return node.start()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node per test module and backend; users alice, bob, carol registered through ctl."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_module_db_url")
    n = _start(tmp_path_factory.mktemp(f"node-{request.param}"), url)
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()
