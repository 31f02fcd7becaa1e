"""An archive write that fails because the database is away is an expected outage (one warning a
minute, the message delivered unarchived); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from cluster_node.core.log_throttle import OncePer
from cluster_node.modules.mam.module import Mam, _storage_unavailable


@pytest.mark.parametrize("error, outage", [
    (ConnectionRefusedError(111, "Connect call failed"), True),
    (TimeoutError(), True),
    (sqlite3.OperationalError("database is locked"), True),
    (ValueError("a bug"), False),
    (KeyError("x"), False),
])
def test_what_counts_as_the_database_being_away(error: Exception, outage: bool) -> None:
    assert _storage_unavailable(error) is outage


def test_an_outage_is_one_warning_a_minute_and_a_bug_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    mam = Mam.__new__(Mam)  # only the failure bookkeeping is exercised: no host, no storage
    mam.counters = {"archived": 0, "failed": 0, "queries": 0, "cleaned": 0}
    mam._once = OncePer(60.0)
    with caplog.at_level(logging.WARNING, logger="meridian.mam"):
        for _ in range(50):
            mam._failed(ConnectionRefusedError(111, "Connect call failed"), "a message for a@b")
        try:
            raise ValueError("a bug")
        except ValueError as e:  # as in the module: inside the handler
            mam._failed(e, "a message for a@b")
    records = [r for r in caplog.records if r.name == "meridian.mam"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.ERROR]
    assert records[0].exc_info is None and "archive storage unavailable" in records[0].getMessage()
    assert records[1].exc_info is not None and records[1].exc_info[0] is ValueError  # the bug's traceback
    assert mam.counters["failed"] == 51
