"""The replicated table engine and the link frames, without sockets."""

import random

import pytest

from cluster_node.cluster.frames import FrameDecoder, FrameError, Kind, decode_stanza, encode, encode_stanza
from cluster_node.cluster.table import Op, Record, ReplicatedTable


def pair():
    return ReplicatedTable("t", "a"), ReplicatedTable("t", "b")


def join(x: ReplicatedTable, y: ReplicatedTable) -> None:
    """Both sides send their dumps, as on a (re)join."""
    dx, dy = x.dump(), y.dump()
    y.merge(x.me, [Record(*r) for r in dx])
    x.merge(y.me, [Record(*r) for r in dy])


def test_ops_replicate_and_deletes_apply_only_from_the_owner():
    a, b = pair()
    b.apply(a.insert("k", {"v": 1}))
    assert b.lookup("k") == Record("k", {"v": 1}, "a")
    b.apply(Op("t", "delete", "k", "c"))  # not the owner: ignored
    assert b.lookup("k") is not None
    b.apply(a.delete("k"))
    assert b.lookup("k") is None and a.lookup("k") is None


def test_delete_during_partition_stays_deleted_after_heal():
    a, b = pair()
    b.apply(a.insert("x", {"n": 1}))
    b.apply(a.insert("y", {"n": 2}))
    a.delete("x")  # partitioned: b never hears of it
    a.insert("z", {"n": 3})
    join(a, b)
    assert b.lookup("x") is None  # CETS would resurrect it
    assert {r.key for r in b} == {"y", "z"}
    assert {r.key for r in a} == {"y", "z"}


def test_member_down_drops_its_records_only():
    a, b = pair()
    b.apply(a.insert("a1", {}))
    b.insert("b1", {})
    gone = b.drop_owner("a")
    assert [r.key for r in gone] == ["a1"] and b.lookup("b1") is not None


def test_conflict_is_resolved_the_same_on_both_sides_and_the_loser_is_told():
    newer = lambda x, y: x if x.value["created"] >= y.value["created"] else y  # noqa: E731
    a = ReplicatedTable("s", "a", on_conflict=newer)
    b = ReplicatedTable("s", "b", on_conflict=newer)
    lost: list[Record] = []
    a.on_lost = lost.append
    b.on_lost = lost.append
    a.insert("alice@x/r", {"created": 1.0})
    b.insert("alice@x/r", {"created": 2.0})
    join(a, b)
    assert a.lookup("alice@x/r") == b.lookup("alice@x/r") == Record("alice@x/r", {"created": 2.0}, "b")
    assert lost == [Record("alice@x/r", {"created": 1.0}, "a")]
    assert a.conflicts == 1 and b.conflicts == 1


def test_listeners_see_every_change():
    a, b = pair()
    seen = []
    b.listeners.append(seen.append)
    b.apply(a.insert("k", {"v": 1}))
    b.apply(a.insert("k", {"v": 2}))
    b.drop_owner("a")
    assert [c[0] for c in seen] == ["insert", "insert", "delete"]


def test_ten_members_converge_whatever_the_order():
    rng = random.Random(7)
    tables = [ReplicatedTable("t", f"n{i}") for i in range(10)]
    for t in tables:
        for j in range(5):
            t.insert(f"{t.me}/{j}", {"j": j})
    pairs = [(x, y) for x in tables for y in tables if x is not y]
    rng.shuffle(pairs)
    for x, y in pairs:
        y.merge(x.me, [Record(*r) for r in x.dump()])
    expected = {(r.key, r.owner) for t in tables for r in t.owned_by(t.me)}
    for t in tables:
        assert {(r.key, r.owner) for r in t} == expected


def test_op_json_round_trip_and_validation():
    op = Op("sessions", "insert", "k", "a", {"x": 1})
    assert Op.from_json(op.to_json(5)) == op
    for bad in ({"op": "exec", "key": "k", "owner": "a", "table": "t"}, {"op": "insert", "key": "k", "owner": "a",
                                                                          "table": "t"}):
        with pytest.raises(ValueError):
            Op.from_json(bad)


def test_frames_whole_and_bytewise():
    data = encode(Kind.HELLO, {"node": "a"}) + encode_stanza({"to": "b@x/r"}, b"<message/>") + encode(Kind.PING, {})
    whole = FrameDecoder().feed(data)
    dec = FrameDecoder()
    bytewise = [f for i in range(len(data)) for f in dec.feed(data[i:i + 1])]
    assert whole == bytewise and [f.kind for f in whole] == [Kind.HELLO, Kind.STANZA, Kind.PING]
    assert whole[0].json() == {"node": "a"}
    assert decode_stanza(whole[1]) == ({"to": "b@x/r"}, b"<message/>")


@pytest.mark.parametrize("data", [b"\x00\x00\x00\x00\x01", b"\x7f\xff\xff\xff\x01", b"\x00\x00\x00\x01\xee"])
def test_malformed_frames_raise(data):
    with pytest.raises(FrameError):
        FrameDecoder(max_frame=1 << 20).feed(data)


def test_frame_with_bad_json_raises():
    (frame,) = FrameDecoder().feed(encode(Kind.HELLO, b"not json"))
    with pytest.raises(FrameError):
        frame.json()


def test_a_dump_in_parts_replaces_the_owners_records_at_its_last_part():
    """What the owner no longer has goes when its dump ends, not at each part; a dump cut short
    by the owner going down leaves nothing behind, and the next dump starts afresh."""
    from cluster_node.cluster.table import Record, ReplicatedTable

    t = ReplicatedTable("sessions", "me")
    t.merge("p", [Record(k, {"v": 0}, "p") for k in ("old", "kept", "also")])
    t.merge("p", [Record("kept", {"v": 1}, "p")], first=True, last=False)
    assert {r.key for r in t.owned_by("p")} == {"old", "kept", "also"}  # nothing dropped mid-dump
    t.merge("p", [Record("new", {"v": 1}, "p"), Record("x", {}, "q")], first=False, last=False)
    t.merge("p", [Record("also", {"v": 1}, "p")], first=False, last=True)
    assert {r.key: r.value for r in t.owned_by("p")} == {"kept": {"v": 1}, "new": {"v": 1}, "also": {"v": 1}}
    assert t.lookup("x") is None  # not p's record: not taken from p's dump
    t.merge("p", [Record("half", {}, "p")], first=True, last=False)
    assert {r.key for r in t.drop_owner("p")} == {"kept", "new", "also", "half"}
    t.merge("p", [Record("back", {}, "p")], first=False, last=True)  # no first seen: a dump of one part
    assert [r.key for r in t.owned_by("p")] == ["back"]
