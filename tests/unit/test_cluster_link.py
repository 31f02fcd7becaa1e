"""Two cluster link cores pumped together: handshake, refusals, ops and acks, pings."""

import pytest

from cluster_node.cluster.frames import Kind, encode
from cluster_node.cluster.link import (
    Acked,
    Closed,
    ClusterLink,
    DumpReceived,
    Joined,
    Knocked,
    LinkConfig,
    OpReceived,
    StanzaArrived,
)
from cluster_node.cluster.table import Op


def cfg(node: str, **kw) -> LinkConfig:
    base = {"cluster": "eu", "node": node, "incarnation": "1", "secret": b"s3cret"}
    base.update(kw)
    return LinkConfig(**base)


def pump(a: ClusterLink, b: ClusterLink, now: float = 0.0) -> tuple[list, list]:
    ea, eb = [], []
    for _ in range(10):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            break
        if da:
            eb += b.receive_data(da, now)
        if db:
            ea += a.receive_data(db, now)
    return ea, eb


def test_join():
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b"), 0)
    ea, eb = pump(a, b)
    assert ea == [Joined("b", "1", "", None)] and eb == [Joined("a", "1", "", None)]


@pytest.mark.parametrize("other, reason", [
    (cfg("b", secret=b"wrong"), "wrong cluster secret"),
    (cfg("b", cluster="us"), "cluster name mismatch"),
    (cfg("a"), "duplicate node name"),
    (cfg("b", version="2.0"), "incompatible protocol version"),
])
def test_refusals_are_clear(other, reason):
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(other, 0)
    ea, eb = pump(a, b)
    closed = [e for e in ea + eb if isinstance(e, Closed)]
    assert closed and any(reason in e.reason for e in closed), closed
    assert not any(isinstance(e, Joined) for e in ea + eb)


def test_minor_version_difference_joins():
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b", version="1.7"), 0)
    ea, eb = pump(a, b)
    assert isinstance(ea[0], Joined) and isinstance(eb[0], Joined)


def test_ops_are_acked_in_order_and_stanzas_pass_through():
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b"), 0)
    pump(a, b)
    s1 = a.send_op(Op("sessions", "insert", "k1", "a", {"x": 1}))
    s2 = a.send_op(Op("sessions", "delete", "k1", "a"))
    a.send_stanza({"to": "u@d/r"}, b"<message/>")
    ea, eb = pump(a, b)
    assert [e.op.key for e in eb if isinstance(e, OpReceived)] == ["k1", "k1"]
    assert [e.seq for e in ea if isinstance(e, Acked)] == [s1, s2]
    assert StanzaArrived({"to": "u@d/r"}, b"<message/>") in eb


def test_dump_with_foreign_records_is_refused():
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b"), 0)
    pump(a, b)
    a.send_dump("sessions", [["k", {}, "a"]])
    _, eb = pump(a, b)
    assert any(isinstance(e, DumpReceived) for e in eb)
    a.send_dump("sessions", [["k", {}, "c"]])
    _, eb = pump(a, b)
    assert any(isinstance(e, Closed) and "own records" in e.reason for e in eb)


def test_pings_keep_a_link_alive_and_silence_closes_it():
    a, b = ClusterLink(cfg("a", ping_interval=1, ping_timeout=3), 0), ClusterLink(cfg("b"), 0)
    pump(a, b)
    for t in range(1, 10):
        assert a.handle_timer(float(t)) == []
        pump(a, b, float(t))
    assert a.rtt == 0.0
    assert a.handle_timer(20.0) and a.state.value == "closed"


def test_garbage_closes_with_a_reason():
    a = ClusterLink(cfg("a"), 0)
    events = a.receive_data(b"\x00\x00\x00\x02\x63\x00GET / HTTP/1.1", 0)
    assert isinstance(events[-1], Closed) and "malformed frame" in events[-1].reason


@pytest.mark.parametrize("kind, body", [(Kind.PONG, b'{"t": ' + b"9" * 400 + b"}"),
                                        (Kind.ACK, b'{"seq": Infinity}')])
def test_a_joined_member_sending_an_absurd_number_is_refused_not_crashing(kind, body):
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b"), 0)
    pump(a, b)
    events = a.receive_data(encode(kind, body), 1.0)
    assert isinstance(events[-1], Closed) and "malformed frame" in events[-1].reason


def test_a_knock_is_a_hello_and_nothing_more():
    """A member says it has started (it waits to be dialled): the other learns its name, no AUTH is
    sent either way, and neither side is joined."""
    knocker, b = ClusterLink(cfg("z"), 0, knock=True), ClusterLink(cfg("a"), 0)
    assert knocker.closed  # it writes its HELLO and is done
    b.data_to_send()  # b's own HELLO, written when the connection opened
    events = b.receive_data(knocker.data_to_send(), 0)
    assert events == [Knocked("z")] and b.closed
    assert b.data_to_send() == b""  # nothing back: no AUTH for a knock


@pytest.mark.parametrize("other, reason", [
    (cfg("z", cluster="us"), "cluster name mismatch"),
    (cfg("a"), "duplicate node name"),
])
def test_a_knock_from_a_stranger_is_refused_like_a_hello(other, reason):
    knocker, b = ClusterLink(other, 0, knock=True), ClusterLink(cfg("a"), 0)
    events = b.receive_data(knocker.data_to_send(), 0)
    assert [type(e) for e in events] == [Closed] and reason in events[0].reason


@pytest.mark.parametrize("peer_version, parts", [("1.1", 3), ("1.0", 1)])
def test_a_large_dump_goes_in_parts_to_a_peer_that_takes_them(peer_version, parts):
    """A million sessions in one frame would hold the receiver for seconds: a 1.1 peer gets the
    dump in parts of DUMP_PART records, first and last marked; a 1.0 peer (which would take each
    part for the whole dump) gets one frame."""
    from cluster_node.cluster.link import DUMP_PART

    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b", version=peer_version), 0)
    pump(a, b)
    n = 2 * DUMP_PART + 5
    a.send_dump("sessions", [[f"k{i}", {"i": i}, "a"] for i in range(n)])
    _, eb = pump(a, b)
    dumps = [e for e in eb if isinstance(e, DumpReceived)]
    assert len(dumps) == parts
    assert [(d.first, d.last) for d in dumps] == [(i == 0, i == parts - 1) for i in range(parts)]
    assert [r.key for d in dumps for r in d.records] == [f"k{i}" for i in range(n)]
    a.send_dump("sessions", [["k", {}, "a"]])  # the next dump starts afresh
    _, eb = pump(a, b)
    assert [(e.first, e.last) for e in eb if isinstance(e, DumpReceived)] == [(True, True)]


def test_stanzas_the_peer_read_are_released_and_the_unread_given_back():
    """The receiver says how many STANZA frames it read (READ, taken before it hands them on);
    the sender keeps only the stanzas it was asked to keep, until then.  What is left when the
    link dies is what the peer never read."""
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b"), 0)
    pump(a, b)
    a.send_stanza({"to": "u@d/1"}, b"<message>1</message>", keep=True)
    a.send_stanza({"to": "u@d/1"}, b"<presence/>")  # not kept, but counted
    a.send_stanza({"to": "u@d/1"}, b"<message>3</message>", keep=True)
    eb = b.receive_data(a.data_to_send(), 0)
    assert [e.data for e in eb if isinstance(e, StanzaArrived)] == [b"<message>1</message>", b"<presence/>",
                                                                   b"<message>3</message>"]
    read = b.take_read()
    assert read and b.take_read() == b""  # one READ for what was read since the last
    a.send_stanza({"to": "u@d/1"}, b"<message>4</message>", keep=True)  # sent; not read before the READ comes
    sent = a.data_to_send()
    assert a.kept == 3
    assert a.receive_data(read, 0) == []
    assert a.kept == 1
    assert a.unconfirmed() == [({"to": "u@d/1"}, b"<message>4</message>")]
    assert a.kept == 0
    assert a.unconfirmed() == []  # given back once
    b.receive_data(sent, 0)
    a.receive_data(b.take_read(), 0)  # a READ for stanzas no longer kept changes nothing
    assert a.unconfirmed() == []


@pytest.mark.parametrize("old", ["a", "b"])
def test_a_peer_older_than_1_2_gets_no_read_frames_and_nothing_is_kept_for_it(old):
    """A 1.1 member would refuse a frame kind it does not know, and never says what it read."""
    a = ClusterLink(cfg("a", version="1.1" if old == "a" else "1.2"), 0)
    b = ClusterLink(cfg("b", version="1.1" if old == "b" else "1.2"), 0)
    pump(a, b)
    new, older = (b, a) if old == "a" else (a, b)
    older.send_stanza({}, b"<message/>")
    new.receive_data(older.data_to_send(), 0)
    assert new.take_read() == b""
    new.send_stanza({}, b"<message/>", keep=True)
    assert new.unconfirmed() == []


def test_what_is_kept_for_a_peer_is_bounded(monkeypatch):
    from cluster_node.cluster import link

    monkeypatch.setattr(link, "MAX_KEPT", 3)
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b"), 0)
    pump(a, b)
    for i in range(5):
        a.send_stanza({}, b"%d" % i, keep=True)
    assert [d for _, d in a.unconfirmed()] == [b"2", b"3", b"4"] and a.kept_dropped == 2


def test_a_malformed_read_frame_closes_the_link():
    a, b = ClusterLink(cfg("a"), 0), ClusterLink(cfg("b"), 0)
    pump(a, b)
    events = a.receive_data(encode(Kind.READ, {"n": "many"}), 0)
    assert [type(e) for e in events] == [Closed] and "malformed frame" in events[0].reason
