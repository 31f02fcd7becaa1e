"""Session-wide fixtures: servers the tests start themselves (PostgreSQL), fresh databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers.postgres import PostgresServer, pg_bindir

# Property-based fuzzing (tests/unit/test_fuzz_*.py): a fixed, small budget in the normal suite,
# the same examples on every run (derandomize: CI is reproducible, nothing stored in .hypothesis/).
# MERIDIAN_FUZZ=long explores far more, with fresh random examples each run, for a session of hunting.
settings.register_profile("meridian", max_examples=200, deadline=None, derandomize=True, database=None,
                          print_blob=False, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", settings.get_profile("meridian"), max_examples=20_000, derandomize=False)
settings.load_profile("long" if os.environ.get("MERIDIAN_FUZZ") == "long" else "meridian")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if pg_bindir() is None:
        pytest.skip("PostgreSQL binaries are not installed (scripts/install-test-deps.sh installs them)")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_db_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database for one test."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def postgres_module_db_url(postgres_server: PostgresServer) -> str:
    """A fresh database shared by one test module."""
    return postgres_server.create_database(f"m_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'meridian.db'}"


from tests.helpers.redis import RedisServer, redis_server_binary  # noqa: E402


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server for one test (never the system one on 6379)."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer() as server:
        yield server
