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


def test_one_and_several_resources_of_an_account_through_inserts_and_deletes():
    """The bare-JID index holds one session's record as such and a dict only for several."""
    table = SessionTable("n1")
    bare = Jid.parse("user1@localhost")
    changes: list[tuple[str, str]] = []
    table.subscribe(lambda c: changes.append((c[0], str(c[1].jid))))
    a = SessionRecord(Jid.parse("user1@localhost/a"), "n1", "n1.1", 1.0)
    b = SessionRecord(Jid.parse("user1@localhost/b"), "n1", "n1.2", 2.0)
    c = SessionRecord(Jid.parse("user1@localhost/c"), "n1", "n1.3", 3.0)
    table.insert(a)
    assert table.resources(bare) == [a]
    table.insert(b)
    table.insert(c)
    assert table.resources(bare) == [a, b, c]
    a2 = a.with_presence(available=True, priority=5)  # the same resource again: replaced, not added
    table.insert(a2)
    assert table.resources(bare) == [a2, b, c]
    assert table.delete(b.jid) == b
    assert table.delete(a.jid, sid="other") is None  # not that session: kept
    assert table.delete(a.jid) == a2
    assert table.resources(bare) == [c]
    assert table.lookup(c.jid) == c
    assert table.delete(c.jid) == c
    assert table.resources(bare) == [] and len(table) == 0
    assert ("delete", "user1@localhost/c") in changes


def test_any_flagged_with_one_and_several_resources():
    """What carbons asks for every message: whether any resource of the account has its flag."""
    table = SessionTable("n1")
    bare = Jid.parse("user1@localhost")
    a = SessionRecord(Jid.parse("user1@localhost/a"), "n1", "n1.1", 1.0)
    b = SessionRecord(Jid.parse("user1@localhost/b"), "n1", "n1.2", 2.0)
    assert not table.any_flagged(bare, "carbons")  # no resource at all
    table.insert(a)
    assert not table.any_flagged(bare, "carbons")
    table.insert(a.with_flag("carbons", "on"))  # one resource, held as such
    assert table.any_flagged(bare, "carbons") and not table.any_flagged(bare, "sm")
    table.insert(b)  # several: the flagged one is not the last
    assert table.any_flagged(bare, "carbons")
    table.insert(a)  # flag cleared
    assert not table.any_flagged(bare, "carbons")
    table.insert(b.with_flag("carbons", "on"))
    assert table.any_flagged(bare, "carbons")
    assert not table.any_flagged(Jid.parse("user2@localhost"), "carbons")


def test_a_held_session_record_reads_as_its_value_and_dumps_plain_dicts():
    """The table keeps a view of the parsed session, not the dict it arrived as: reads, conflicts
    and dumps see the same items (a dump is sent as JSON-like frames: plain dicts)."""
    table = SessionTable("n1")
    mine = SessionRecord(Jid.parse("user1@localhost/r"), "n1", "n1.1", 5.0, 3, True, False, prev="n2.9",
                         flags={"sm": "on"})
    table.insert(mine)
    held = table.replicated.lookup("user1@localhost/r")
    assert held is not None and not isinstance(held.value, dict)
    assert dict(held.value) == mine.to_value() and held.value.get("prev") == "n2.9"
    assert held.value["flags"] == {"sm": "on"} and len(held.value) == 8
    assert table.replicated.dump() == [["user1@localhost/r", mine.to_value(), "n1"]]
    assert isinstance(table.replicated.dump()[0][1], dict)
    # A newer login of the same full JID on another member wins the conflict on both sides.
    lost: list[Record] = []
    table.replicated.on_lost = lost.append
    theirs = SessionRecord(Jid.parse("user1@localhost/r"), "n2", "n2.1", 9.0)
    table.replicated.merge("n2", [Record("user1@localhost/r", theirs.to_value(), "n2")])
    assert table.lookup(mine.jid) == theirs and [r.owner for r in lost] == ["n1"]
    assert SessionRecord(Jid.parse("u@d/r"), "n1", "s", 1.0).flags == {}


def test_a_session_held_from_another_member_costs_under_800_bytes():
    """A region's table holds every session of the region on every member: what one costs is
    what a million cost.  ~1,300 bytes (traced) before the compact form, ~670 with it."""
    import json
    import tracemalloc

    n = 20_000
    dump = json.dumps([[f"user{i}@localhost/res{i}", SessionRecord(Jid.parse(f"user{i}@localhost/res{i}"),
                        "n2", f"n2.abc.{i}", 1.5 + i, 0, True, True).to_value(), "n2"] for i in range(n)])
    table = SessionTable("n1")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        records = [Record(k, v, o) for k, v, o in json.loads(dump)]  # as a dump frame decodes
        table.replicated.merge("n2", records)
        del records
        gc.collect()
        per_session = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(table) == n
    assert per_session < 800, per_session
