"""The session table over the replicated table: JIDs of keys, the bare-JID index through merges and
member-down drops, and the collector held during bulk changes."""

from __future__ import annotations

import gc
import time

import pytest

from cluster_node.cluster.frames import FrameDecoder, Kind, encode
from cluster_node.cluster.table import Record, collector_paused
from cluster_node.core.sessions import SessionRecord, SessionTable, _key_jid
from cluster_node.xmpp.jid import InvalidJid, Jid


@pytest.mark.parametrize("key", [
    "user1@localhost/res", "a.b_c-d+e@x-1.example.com/Gajim.ABC 12/x", "u@d/@", "u@d/ r", "u@d/r ",
    "User@localhost/res", "u@LOCALHOST/r", "ünïcode@localhost/r", "u@localhost/résumé", "u@localhost./r",
    "u@[::1]/r", "u@192.168.0.1/r", "u@localhost", "localhost/r", "u@localhost/", "@localhost/r", "u@@d/r",
    "u@d..e/r", "u@" + "a" * 63 + "/r", "u@" + "a" * 64 + "/r", "x" * 1023 + "@d/r", "x" * 1024 + "@d/r",
    "u@d/" + "r" * 1024, "u@d/r\n", "u\n@d/r", "u@d/\x7f",
])
def test_key_jid_is_jid_parse(key):
    try:
        expected: Jid | str = Jid.parse(key)
    except InvalidJid as e:
        expected = f"invalid: {e}"
    try:
        got: Jid | str = _key_jid(key)
    except InvalidJid as e:
        got = f"invalid: {e}"
    assert got == expected


def record(i: int, node: str, resource: str = "res") -> Record:
    r = SessionRecord(Jid.parse(f"user{i}@localhost/{resource}"), node, f"{node}.{i}", time.time(), 0, True, True)
    return Record(str(r.jid), r.to_value(), node)


def test_merge_and_drop_keep_the_indexes_and_tell_listeners():
    table = SessionTable("me")
    seen: list[tuple[str, str]] = []
    table.subscribe(lambda change: seen.append((change[0], str(change[1].jid))))
    a = [record(i, "a", r) for i in range(30) for r in ("phone", "laptop")]
    table.replicated.merge("a", a)
    assert len(table) == 60 and len(seen) == 60
    alice = Jid.parse("user7@localhost")
    assert {str(r.jid) for r in table.resources(alice)} == {"user7@localhost/phone", "user7@localhost/laptop"}
    got = table.lookup(Jid.parse("user7@localhost/phone"))
    assert got is not None and got.node == "a" and got.available and got.interested
    table.replicated.merge("a", a[:2])  # a's new dump: the rest is gone
    assert len(table) == 2 and table.resources(alice) == []
    assert len(table.resources(Jid.parse("user0@localhost"))) == 2
    table.replicated.drop_owner("a")
    assert len(table) == 0 and table.resources(Jid.parse("user0@localhost")) == []
    assert seen.count(("delete", "user7@localhost/phone")) == 1 and len(seen) == 120


def test_a_large_merge_holds_the_collector_and_restores_it():
    table = SessionTable("me")
    states: list[bool] = []
    table.subscribe(lambda change: states.append(gc.isenabled()))
    assert gc.isenabled()
    table.replicated.merge("a", [record(i, "a") for i in range(12_000)])
    assert len(table) == 12_000 and not any(states) and gc.isenabled()


def test_collector_paused_keeps_the_process_choice_and_survives_errors():
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused(lambda: True):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_large_frame_decodes_like_a_small_one():
    body = {"table": "sessions", "records": [r.key for r in [record(i, "a") for i in range(20_000)]]}
    data = encode(Kind.DUMP, body)
    assert len(data) > 256 * 1024
    (frame,) = FrameDecoder().feed(data)
    assert frame.json() == body and gc.isenabled()
