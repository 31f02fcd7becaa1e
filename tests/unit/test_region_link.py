"""Two inter-region link cores pumped together, no sockets, time injected: handshake, refusals,
malformed frames, stanzas with their routing header, acks, resends, pings."""

from __future__ import annotations

import ast
import random
import struct
from pathlib import Path

import pytest

from gateway.link.dedup import RecentIds
from gateway.link.frames import (
    Ack,
    Frame,
    FrameDecoder,
    FrameError,
    Hello,
    Kind,
    LocalProtocolError,
    Ping,
    Pong,
    Refuse,
    StanzaFrame,
    encode,
    encode_stanza,
)
from gateway.link.protocol import (
    Acked,
    Closed,
    LinkEvent,
    Ready,
    RegionLink,
    SentStanza,
    StanzaReceived,
)

ROOT = Path(__file__).resolve().parents[2]


def pump(a: RegionLink, b: RegionLink, now: float = 0.0) -> tuple[list[LinkEvent], list[LinkEvent]]:
    """Carry bytes both ways until both are quiet; returns (events of a, events of b)."""
    ea: list[LinkEvent] = []
    eb: list[LinkEvent] = []
    for _ in range(50):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            break
        if da:
            eb += b.receive_data(da, now)
        if db:
            ea += a.receive_data(db, now)
    return ea, eb


def pair(**kw: object) -> tuple[RegionLink, RegionLink]:
    eu = RegionLink("eu", "gw-eu-1", 0.0, expect_region="us", **kw)  # type: ignore[arg-type]
    us = RegionLink("us", "gw-us-1", 0.0, **kw)  # type: ignore[arg-type]
    return eu, us


def ready_pair(**kw: object) -> tuple[RegionLink, RegionLink]:
    eu, us = pair(**kw)
    ea, eb = pump(eu, us)
    assert ea == [Ready("us", "gw-us-1")] and eb == [Ready("eu", "gw-eu-1")]
    return eu, us


def frame(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def sent_by(link: RegionLink) -> list[Frame]:
    """Decode what ``link`` wants to send (to look at its REFUSE)."""
    return decode_all(link.data_to_send())


def decode_all(data: bytes) -> list[Frame]:
    dec = FrameDecoder()
    dec.feed(data)
    out: list[Frame] = []
    while (f := dec.next_frame()) is not None:
        out.append(f)
    return out


# -- handshake ----------------------------------------------------------------------------------


def test_handshake_names_both_sides() -> None:
    eu, us = ready_pair()
    assert eu.peer_region == "us" and eu.peer_gateway == "gw-us-1"
    assert us.peer_region == "eu" and us.ready and eu.ready


def test_minor_version_difference_is_fine() -> None:
    a = RegionLink("eu", "g1", 0.0, version="1.0")
    b = RegionLink("us", "g2", 0.0, version="1.9")
    ea, eb = pump(a, b)
    assert isinstance(ea[0], Ready) and isinstance(eb[0], Ready)


def test_major_version_mismatch_is_refused_with_a_clear_reason() -> None:
    a = RegionLink("eu", "g1", 0.0, version="1.0")
    b = RegionLink("us", "g2", 0.0, version="2.0")
    ea, eb = pump(a, b)
    closed = [e for e in ea + eb if isinstance(e, Closed)]
    assert len(ea) == 1 and len(eb) == 1 and all(e.refused for e in closed)
    assert all("incompatible protocol version" in e.reason for e in closed), closed
    assert any("'2.0'" in e.reason for e in closed)
    assert not any(isinstance(e, Ready) for e in ea + eb)
    assert a.closed and b.closed


@pytest.mark.parametrize("a, b, reason", [
    (RegionLink("eu", "g1", 0.0), RegionLink("eu", "g2", 0.0), "claims our own region 'eu'"),
    (RegionLink("eu", "g1", 0.0, expect_region="ap"), RegionLink("us", "g2", 0.0),
     "expected region 'ap', peer is region 'us'"),
])
def test_wrong_region_is_refused(a: RegionLink, b: RegionLink, reason: str) -> None:
    ea, eb = pump(a, b)
    reasons = [e.reason for e in ea + eb if isinstance(e, Closed)]
    assert any(reason in r for r in reasons), reasons
    assert len(reasons) == 2 and all(e.refused for e in ea + eb if isinstance(e, Closed))
    assert not any(isinstance(e, Ready) for e in ea)  # the refusing side never became ready


def test_stanzas_before_ready_follow_hello() -> None:
    eu, us = pair()
    seq = eu.send_stanza("m1", "eu", 3, b"<message/>", "a@x/r", "b@x")
    _, eb = pump(eu, us)
    assert eb == [Ready("eu", "gw-eu-1"), StanzaReceived("m1", "eu", 3, "a@x/r", "b@x", b"<message/>", seq)]


# -- stanzas, acks, resends -----------------------------------------------------------------------


def test_stanza_header_and_bytes_are_carried_untouched() -> None:
    eu, us = ready_pair()
    raw = "<message to='b@x'><body>h\u00e9 \u2603 &amp; ]]&gt;</body></message>".encode() + b"\x00\xff"
    s1 = eu.send_stanza("id-1", "ap", 7, raw, "a@x/r", "b@x")
    s2 = eu.send_stanza("id-2", "eu", 1, b"<presence/>")
    ea, eb = pump(eu, us)
    assert eb == [StanzaReceived("id-1", "ap", 7, "a@x/r", "b@x", raw, s1),
                  StanzaReceived("id-2", "eu", 1, None, None, b"<presence/>", s2)]
    assert ea == [Acked(s2)]  # one cumulative ACK for the batch
    assert eu.unacked() == [] and eu.window == eu.max_unacked


def test_byte_at_a_time_gives_the_same_events() -> None:
    whole_eu, whole_us = pair()
    split_eu, split_us = pair()
    for link in (whole_eu, split_eu):
        for i in range(5):
            link.send_stanza(f"m{i}", "eu", 2, f"<message id='{i}'/>".encode(), f"a{i}@x", "b@x")
    expected = whole_us.receive_data(whole_eu.data_to_send(), 0.0)
    got: list[LinkEvent] = []
    for byte in split_eu.data_to_send():
        got += split_us.receive_data(bytes([byte]), 0.0)
    assert got == expected and len(got) == 6
    assert sent_by(split_us)[1:] == [Ack(i) for i in range(1, 6)]  # after its HELLO: one ACK per read


def test_random_splits_give_the_same_events() -> None:
    rng = random.Random(7)
    eu, us = pair()
    for i in range(200):
        eu.send_stanza(f"m{i}", "eu", 1 + i % 5, b"<m/>" * (i % 13 + 1), f"a{i % 3}@x", None)
    data = eu.data_to_send()
    events: list[LinkEvent] = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 300)
        events += us.receive_data(data[pos:pos + n], 0.0)
        pos += n
    got = [e for e in events if isinstance(e, StanzaReceived)]
    assert [e.id for e in got] == [f"m{i}" for i in range(200)]
    assert [e.seq for e in got] == list(range(1, 201))


def test_acks_release_the_unacked_and_reopen_the_window() -> None:
    eu, us = ready_pair(max_unacked=3)
    seqs = [eu.send_stanza(f"m{i}", "eu", 2, b"<m/>") for i in range(3)]
    assert eu.window == 0
    with pytest.raises(LocalProtocolError, match="window full"):
        eu.send_stanza("m3", "eu", 2, b"<m/>")
    assert [s.seq for s in eu.unacked()] == seqs
    ea, _ = pump(eu, us)
    assert ea == [Acked(3)] and eu.unacked() == [] and eu.window == 3 and eu.acked_seq == 3


def test_unacked_are_handed_back_in_order_when_the_connection_is_lost() -> None:
    eu, us = ready_pair()
    for i in range(5):
        eu.send_stanza(f"m{i}", "eu", 4, f"<m{i}/>".encode(), "a@x", "b@x")
    data = eu.data_to_send()
    got = us.receive_data(data[: len(data) // 2], 0.0)  # the receiver read some of them …
    delivered = [e.id for e in got if isinstance(e, StanzaReceived)]
    us.data_to_send()  # … and its ACK is lost with the connection
    assert eu.receive_data(b"", 1.0) == [Closed("connection closed by peer")]
    pending = eu.unacked()
    assert pending == [SentStanza(i + 1, f"m{i}", "eu", 4, f"<m{i}/>".encode(), "a@x", "b@x") for i in range(5)]

    # Resent on a new connection, the receiver's id window drops what already arrived.
    seen = RecentIds(100)
    for sid in delivered:
        assert seen.add(sid)
    eu2, us2 = ready_pair()
    for s in pending:
        eu2.send_stanza(s.id, s.origin, s.ttl, s.data, s.from_, s.to)
    _, eb = pump(eu2, us2)
    fresh = [e.id for e in eb if isinstance(e, StanzaReceived) and seen.add(e.id)]
    assert delivered + fresh == [f"m{i}" for i in range(5)]
    assert 0 < len(delivered) < 5


def deferred_pair() -> tuple[RegionLink, RegionLink]:
    """eu sends; us acks only what its consumer released (as the gateways' link server does)."""
    eu = RegionLink("eu", "gw-eu-1", 0.0, expect_region="us")
    us = RegionLink("us", "gw-us-1", 0.0, deferred_acks=True)
    ea, eb = pump(eu, us)
    assert ea == [Ready("us", "gw-us-1")] and eb == [Ready("eu", "gw-eu-1")]
    return eu, us


def test_deferred_acks_wait_for_the_consumer() -> None:
    eu, us = deferred_pair()
    for i in range(4):
        eu.send_stanza(f"m{i}", "eu", 2, b"<m/>")
    ea, eb = pump(eu, us)
    assert [e.seq for e in eb if isinstance(e, StanzaReceived)] == [1, 2, 3, 4]
    assert ea == [] and eu.in_flight == 4 and us.held == 4  # read, not handed on: nothing acked
    us.release(2)  # handed on out of order (another pair's queue): 1 still holds the ACK back
    us.send_ack()
    assert pump(eu, us)[0] == [] and eu.in_flight == 4
    us.release(1)
    us.send_ack()
    ea, _ = pump(eu, us)
    assert ea == [Acked(2)] and [s.id for s in eu.unacked()] == ["m2", "m3"] and us.held == 2
    us.release(4)
    us.release(3)
    us.release(3)  # twice: no harm
    us.send_ack()
    us.send_ack()  # nothing new: no second ACK
    ea, _ = pump(eu, us)
    assert ea == [Acked(4)] and eu.unacked() == [] and us.held == 0


def test_deferred_acks_a_receiver_lost_before_handing_on_leaves_the_stanza_unacked() -> None:
    eu, us = deferred_pair()
    eu.send_stanza("handed", "eu", 2, b"<m/>")
    eu.send_stanza("in hand", "eu", 2, b"<m/>")
    pump(eu, us)
    us.release(1)
    us.send_ack()
    pump(eu, us)
    assert eu.receive_data(b"", 1.0) == [Closed("connection closed by peer")]  # the receiver died
    assert [s.id for s in eu.unacked()] == ["in hand"]  # resent on the next connection


def test_deferred_acks_more_than_one_batch_of_bytes_acks_nothing_by_itself() -> None:
    eu, us = deferred_pair()
    eu.send_stanza("a", "eu", 2, b"<m/>")
    data = eu.data_to_send()
    us.receive_data(data[:5], 0.0)
    us.receive_data(data[5:], 0.0)
    assert decode_all(us.data_to_send()) == []
    us.release(1)
    us.send_ack()
    assert decode_all(us.data_to_send()) == [Ack(1)]


def test_frames_before_a_bad_frame_are_delivered_and_acked() -> None:
    eu, us = ready_pair()
    eu.send_stanza("ok", "eu", 1, b"<m/>")
    events = us.receive_data(eu.data_to_send() + frame(99, b""), 0.0)
    assert isinstance(events[0], StanzaReceived) and isinstance(events[1], Closed)
    out = sent_by(us)
    assert out[0] == Ack(1) and isinstance(out[1], Refuse)


def test_local_misuse_raises() -> None:
    eu, us = ready_pair()
    with pytest.raises(LocalProtocolError, match="ttl"):
        eu.send_stanza("m", "eu", 0, b"<m/>")
    with pytest.raises(LocalProtocolError, match="ttl"):
        eu.send_stanza("m", "eu", 256, b"<m/>")
    with pytest.raises(LocalProtocolError, match="id"):
        eu.send_stanza("", "eu", 1, b"<m/>")
    with pytest.raises(LocalProtocolError, match="empty stanza"):
        eu.send_stanza("m", "eu", 1, b"")
    eu.receive_data(b"", 0.0)
    with pytest.raises(LocalProtocolError, match="closed"):
        eu.send_stanza("m", "eu", 1, b"<m/>")
    assert eu.unacked() == []


# -- malformed input ------------------------------------------------------------------------------


def _stanza_body(seq: int = 1, ttl: int = 1, flags: int = 0, id: bytes = b"i", origin: bytes = b"eu") -> bytes:
    return (struct.pack(">QBB", seq, ttl, flags) + struct.pack(">H", len(id)) + id
            + struct.pack(">H", len(origin)) + origin + b"<m/>")


MALFORMED = [
    (frame(42, b"{}"), "unknown frame kind 42"),
    (struct.pack(">IB", 0, 1), "frame length 0 out of range"),
    (struct.pack(">IB", 1 << 30, 3), "out of range"),
    (frame(Kind.STANZA, b"\x00\x01"), "STANZA: truncated header"),
    (frame(Kind.STANZA, _stanza_body(ttl=0)), "ttl 0"),
    (frame(Kind.STANZA, _stanza_body(flags=8)), "unknown flags"),
    (frame(Kind.STANZA, _stanza_body(id=b"\xff\xfe")), "id is not UTF-8"),
    (frame(Kind.STANZA, _stanza_body()[:-4]), "no stanza bytes"),
    (frame(Kind.STANZA, _stanza_body(flags=1)[:-4] + b"\x10\x00"), "from of 4096 bytes does not fit"),
    (frame(Kind.STANZA, _stanza_body(seq=5)), "seq 5 out of order (expected 1)"),
    (frame(Kind.ACK, b"\x00"), "ACK: body of 1 bytes"),
    (encode(Ack(9)), "ACK 9 for a stanza never sent"),
    (frame(Kind.PING, b"not json"), "PING: bad JSON"),
    (frame(Kind.PING, b"[1]"), "PING: body is not an object"),
    (frame(Kind.PING, b'{"t": "x"}'), "'t' must be a finite number"),
    (frame(Kind.PONG, b'{"t": true}'), "'t' must be a finite number"),
    (frame(Kind.PING, b'{"t": 1, "pad": "' + b"x" * 5000 + b'"}'), "at most 4096"),
    (encode(Hello("eu", "g", "1.0")), "unexpected Hello in state ready"),
]


@pytest.mark.parametrize("data, reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_malformed_frames_close_with_a_reason(data: bytes, reason: str) -> None:
    eu, us = ready_pair()
    events = us.receive_data(data, 1.0)
    assert len(events) == 1 and isinstance(events[0], Closed), events
    assert events[0].refused and events[0].reason.startswith("protocol error: ")
    assert reason in events[0].reason, events[0].reason
    refuse = sent_by(us)
    assert len(refuse) == 1 and isinstance(refuse[0], Refuse) and reason in refuse[0].reason
    # The peer learns why.
    ea = eu.receive_data(encode(refuse[0]), 1.0)
    assert ea == [Closed(f"refused by peer: {refuse[0].reason}", refused=True)]
    assert us.receive_data(encode(Ping(1.0)), 2.0) == []  # closed: nothing more happens


@pytest.mark.parametrize("data, reason", [
    (encode_stanza(1, "m", "eu", 1, b"<m/>", None, None), "unexpected StanzaFrame in state hello"),
    (frame(Kind.HELLO, b'{"region": "eu", "gateway": "g"}'), "'version' must be a non-empty string"),
    (frame(Kind.HELLO, b'{"region": 5, "gateway": "g", "version": "1.0"}'), "'region' must be"),
    (encode(Ack(0)), "unexpected Ack in state hello"),
])
def test_bad_handshake_is_refused(data: bytes, reason: str) -> None:
    us = RegionLink("us", "g", 0.0)
    events = us.receive_data(data, 0.0)
    assert len(events) == 1 and isinstance(events[0], Closed) and events[0].refused
    assert reason in events[0].reason


def test_decoder_stays_broken_after_an_error() -> None:
    dec = FrameDecoder()
    dec.feed(frame(77, b""))
    with pytest.raises(FrameError):
        dec.next_frame()
    dec.feed(encode(Ack(1)))
    with pytest.raises(FrameError):
        dec.next_frame()


def test_frame_roundtrip() -> None:
    frames: list[Frame] = [Hello("eu", "g", "1.0"), Refuse("because"), Ack(2**64 - 1), Ping(1.5), Pong(2.0),
              StanzaFrame(3, "i", "us", 255, "a@b/c", None, b"<x/>"), StanzaFrame(4, "j", "us", 1, None, "d@e", b"y")]
    assert decode_all(b"".join(encode(f) for f in frames)) == frames


# -- time ---------------------------------------------------------------------------------------------


def test_pings_measure_rtt_and_keep_the_link_alive() -> None:
    eu, us = ready_pair(ping_interval=1.0, ping_timeout=3.0)
    assert eu.get_timer() == 1.0
    assert eu.handle_timer(0.5) == [] and eu.data_to_send() == b""
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):
        assert eu.handle_timer(t) == [] and us.handle_timer(t) == []
        ping = eu.data_to_send()
        assert decode_all(ping) == [Ping(t)]
        us.receive_data(ping, t + 0.01)
        us.data_to_send()  # us's pings are not delivered: its PONGs keep eu alive anyway
        eu.receive_data(encode(Pong(t)), t + 0.02)
    assert eu.rtt == pytest.approx(0.02) and eu.ready and us.ready


def test_ping_timeout_closes_a_silent_link() -> None:
    eu, us = ready_pair(ping_interval=1.0, ping_timeout=3.0)
    assert eu.handle_timer(2.9) == []
    assert eu.handle_timer(3.0) == [Closed("no traffic for 3s (ping timeout)")]
    assert eu.closed and eu.get_timer() is None and eu.handle_timer(10.0) == []


def test_handshake_timeout() -> None:
    eu = RegionLink("eu", "g", 100.0, ping_timeout=2.0)
    assert eu.handle_timer(101.0) == []
    assert eu.handle_timer(102.0) == [Closed("no HELLO within 2s")]


def test_eof() -> None:
    eu = RegionLink("eu", "g", 0.0)
    assert eu.receive_data(b"", 0.0) == [Closed("connection closed during handshake")]


# -- receiver dedup window ----------------------------------------------------------------------------


def test_recent_ids_window_is_bounded() -> None:
    seen = RecentIds(3)
    assert [seen.add(i) for i in "abca"] == [True, True, True, False]
    assert seen.add("d") and "a" not in seen and len(seen) == 3
    assert seen.add("a")  # forgotten: the window must exceed what can be in flight


# -- layering -------------------------------------------------------------------------------------------

IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "aiosqlite", "asyncpg", "redis", "aiohttp"}


@pytest.mark.parametrize("name", ["frames", "protocol", "dedup", "errors"])
def test_link_cores_do_no_io(name: str) -> None:
    tree = ast.parse((ROOT / "gateway" / "link" / f"{name}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    assert not names & IO_MODULES
