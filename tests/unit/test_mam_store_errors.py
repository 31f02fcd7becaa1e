"""An archive write that fails because the database is away is an expected outage (one warning a
minute, the message delivered and its write kept for later); anything else is a bug and keeps its
traceback."""

from __future__ import annotations

import logging
import sqlite3
from collections import deque

import pytest

from cluster_node.core.log_throttle import OncePer
from cluster_node.modules.mam.module import Mam, MamSettings, Write, _storage_unavailable
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.jid import Jid


def bookkeeping(**settings: int) -> Mam:
    """A MAM module with only its failure bookkeeping: no host, no storage."""
    mam = Mam.__new__(Mam)
    mam.cfg = MamSettings(**settings)
    mam.counters = {"archived": 0, "failed": 0, "queries": 0, "cleaned": 0, "late": 0, "dropped": 0}
    mam.backlog = deque()
    mam._once = OncePer(60.0)
    return mam


def write(n: int) -> Write:
    """The n-th failed write (its time is n)."""
    return Write(Jid.parse("a@b"), Jid.parse("c@d"), "in", parse_stanza(b"<message><body>x</body></message>"), n)


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
    mam = bookkeeping(outage_backlog=100)
    with caplog.at_level(logging.WARNING, logger="meridian.mam"):
        for i in range(50):
            mam._failed(ConnectionRefusedError(111, "Connect call failed"), "a message for a@b", write(i))
        try:
            raise ValueError("a bug")
        except ValueError as e:  # as in the module: inside the handler
            mam._failed(e, "a message for a@b", write(50))
    records = [r for r in caplog.records if r.name == "meridian.mam"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.ERROR]
    assert records[0].exc_info is None and "archive storage unavailable" in records[0].getMessage()
    assert records[1].exc_info is not None and records[1].exc_info[0] is ValueError  # the bug's traceback
    assert mam.counters["failed"] == 51
    # The outage's writes wait, in order, to be archived once the database is back; the bug's does not.
    assert [w[4] for w in mam.backlog] == list(range(50))


def test_a_full_backlog_drops_its_oldest_writes_and_counts_them() -> None:
    mam = bookkeeping(outage_backlog=3)
    for i in range(5):
        mam._failed(TimeoutError(), "a message for a@b", write(i))
    assert [w[4] for w in mam.backlog] == [2, 3, 4] and mam.counters["dropped"] == 2
    off = bookkeeping(outage_backlog=0)
    off._failed(TimeoutError(), "a message for a@b", write(0))
    assert not off.backlog and off.counters["dropped"] == 0
