"""XEP-0198 protocol core: parsers, builders, counters, queue, export/import and resume ids."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from cluster_node.modules.stream_management.protocol import (
    FEATURE,
    NS,
    Enable,
    Resume,
    SmError,
    SmSession,
    ack,
    effective_max,
    enabled,
    failed,
    handled_count_too_high,
    make_resume_id,
    parse_ack,
    parse_enable,
    parse_resume,
    request,
    resumed,
    split_resume_id,
    stream_error_too_high,
)

TOP = 2**32 - 1


def el(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def sm(tag: str, **attrs: str) -> ET.Element:
    e = ET.Element(f"{{{NS}}}{tag}")
    for k, v in attrs.items():
        e.set(k, v)
    return e


def bad_request(fn: Any, arg: ET.Element) -> SmError:
    with pytest.raises(SmError) as info:
        fn(arg)
    assert info.value.condition == "bad-request"
    return info.value


def stanzas(n: int, start: int = 0) -> list[bytes]:
    return [f"<message id='m{i}'/>".encode() for i in range(start, start + n)]


# -- parse_enable ----------------------------------------------------------------------------------------


def test_enable_plain() -> None:
    assert parse_enable(el(f"<enable xmlns='{NS}'/>")) == Enable(resume=False, max=None)


@pytest.mark.parametrize("value", ["true", "1", " true "])
def test_enable_resume_true(value: str) -> None:
    assert parse_enable(sm("enable", resume=value)) == Enable(resume=True, max=None)


@pytest.mark.parametrize("value", ["false", "0"])
def test_enable_resume_false(value: str) -> None:
    assert parse_enable(sm("enable", resume=value)).resume is False


@pytest.mark.parametrize("value", ["yes", "TRUE", "", "2"])
def test_enable_resume_bad(value: str) -> None:
    bad_request(parse_enable, sm("enable", resume=value))


def test_enable_max() -> None:
    assert parse_enable(el(f"<enable xmlns='{NS}' resume='true' max='300'/>")) == Enable(resume=True, max=300)
    assert parse_enable(sm("enable", max=str(TOP))).max == TOP


@pytest.mark.parametrize("value", ["0", "-5", "abc", "", "1.5", "4294967296", "+3", "9" * 5000, "\u0663"])
def test_enable_max_bad(value: str) -> None:
    bad_request(parse_enable, sm("enable", resume="true", max=value))


def test_enable_wrong_element() -> None:
    bad_request(parse_enable, el("<enable xmlns='urn:xmpp:sm:2'/>"))
    bad_request(parse_enable, sm("resume", previd="x", h="0"))


# -- parse_resume ----------------------------------------------------------------------------------------


def test_resume_good() -> None:
    assert parse_resume(el(f"<resume xmlns='{NS}' previd='abc' h='7'/>")) == Resume(previd="abc", h=7)
    assert parse_resume(sm("resume", previd="a" * 256, h=str(TOP))) == Resume(previd="a" * 256, h=TOP)
    assert parse_resume(sm("resume", previd="p", h="0")).h == 0
    assert parse_resume(sm("resume", previd="p", h="007")).h == 7


def test_resume_missing_previd() -> None:
    assert "previd" in str(bad_request(parse_resume, sm("resume", h="1")))
    bad_request(parse_resume, sm("resume", previd="", h="1"))


def test_resume_previd_too_long() -> None:
    bad_request(parse_resume, sm("resume", previd="a" * 257, h="1"))


def test_resume_missing_h() -> None:
    err = bad_request(parse_resume, sm("resume", previd="abc"))
    assert "'h'" in str(err)


@pytest.mark.parametrize("value", ["-1", "x", "", "4294967296", "99999999999", "1 2", "0x10", "1e3"])
def test_resume_h_bad(value: str) -> None:
    bad_request(parse_resume, sm("resume", previd="abc", h=value))


# -- parse_ack -------------------------------------------------------------------------------------------


def test_ack_good() -> None:
    assert parse_ack(el(f"<a xmlns='{NS}' h='0'/>")) == 0
    assert parse_ack(sm("a", h="42")) == 42
    assert parse_ack(sm("a", h=str(TOP))) == TOP
    assert parse_ack(sm("a", h="00000000000000000000005")) == 5  # leading zeros are still an unsignedInt


@pytest.mark.parametrize("value", ["-1", "-0x1", "four", "", " ", "4294967296", "18446744073709551616"])
def test_ack_h_bad(value: str) -> None:
    bad_request(parse_ack, sm("a", h=value))


def test_ack_missing_h() -> None:
    bad_request(parse_ack, sm("a"))


def test_ack_wrong_element() -> None:
    bad_request(parse_ack, sm("r"))


# -- builders ---------------------------------------------------------------------------------------------


def test_feature_and_request() -> None:
    assert FEATURE == b"<sm xmlns='urn:xmpp:sm:3'/>"
    assert request() == b"<r xmlns='urn:xmpp:sm:3'/>"
    assert ET.fromstring(request()).tag == f"{{{NS}}}r"


def test_enabled_full() -> None:
    out = enabled("some-id", True, 300, "[2001:db8::1]:5222")
    assert out == (b"<enabled xmlns='urn:xmpp:sm:3' id='some-id' resume='true' max='300' "
                   b"location='[2001:db8::1]:5222'/>")


def test_enabled_minimal() -> None:
    assert enabled(None, False, None, None) == b"<enabled xmlns='urn:xmpp:sm:3'/>"


def test_enabled_escapes_attributes() -> None:
    out = enabled("a'b<c&\"", True, None, "x'y")
    parsed = ET.fromstring(out)
    assert parsed.tag == f"{{{NS}}}enabled"
    assert parsed.get("id") == "a'b<c&\""
    assert parsed.get("location") == "x'y"
    assert parsed.get("resume") == "true"


def test_enabled_resume_needs_id() -> None:
    with pytest.raises(ValueError):
        enabled(None, True, None, None)


def test_resumed() -> None:
    assert resumed("abc", 5) == b"<resumed xmlns='urn:xmpp:sm:3' previd='abc' h='5'/>"
    parsed = ET.fromstring(resumed("q'uote", TOP))
    assert (parsed.get("previd"), parsed.get("h")) == ("q'uote", str(TOP))
    with pytest.raises(ValueError):
        resumed("abc", 2**32)


def test_failed() -> None:
    assert failed("item-not-found", 3) == (
        b"<failed xmlns='urn:xmpp:sm:3' h='3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"</failed>")
    assert failed("unexpected-request") == (
        b"<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"</failed>")


def test_failed_with_text_escaped() -> None:
    parsed = ET.fromstring(failed("bad-request", None, "h < 0 & more"))
    assert parsed.get("h") is None
    children = [c.tag for c in parsed]
    assert children == ["{urn:ietf:params:xml:ns:xmpp-stanzas}bad-request", "{urn:ietf:params:xml:ns:xmpp-stanzas}text"]
    assert parsed[1].text == "h < 0 & more"


def test_failed_rejects_unknown_condition() -> None:
    with pytest.raises(ValueError):
        failed("item-not-found'/><x", 0)
    with pytest.raises(ValueError):
        failed("no-such-condition")


def test_sm_error_to_failed() -> None:
    err = SmError("feature-not-implemented", h=4)
    assert err.condition == "feature-not-implemented" and err.text is None and err.h == 4
    assert err.to_failed() == failed("feature-not-implemented", 4)


def test_ack_builder() -> None:
    assert ack(0) == b"<a xmlns='urn:xmpp:sm:3' h='0'/>"
    assert ack(TOP) == b"<a xmlns='urn:xmpp:sm:3' h='4294967295'/>"
    with pytest.raises(ValueError):
        ack(-1)


def test_handled_count_too_high() -> None:
    assert handled_count_too_high(10, 8) == b"<handled-count-too-high xmlns='urn:xmpp:sm:3' h='10' send-count='8'/>"
    out = stream_error_too_high(10, 8)
    assert out.startswith(b"<stream:error><undefined-condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
    assert out.endswith(b"send-count='8'/></stream:error>")


# -- counting -------------------------------------------------------------------------------------------------


def test_received_counts_and_wraps() -> None:
    s = SmSession(handled_in=TOP - 1)
    assert s.received() == TOP
    assert s.received() == 0
    assert s.received() == 1
    assert s.handled_in == 1
    assert s.ack_reply() == b"<a xmlns='urn:xmpp:sm:3' h='1'/>"


def test_session_is_truthy_when_empty() -> None:
    s = SmSession()
    assert len(s) == 0
    assert bool(s) is True


def test_ack_drops_acknowledged() -> None:
    s = SmSession(ack_every=100)
    for data in stanzas(5):
        s.sent(data, 0.0)
    assert len(s) == 5 and s.sent_out == 5
    assert s.acked(2) == 2
    assert s.unacked() == stanzas(3, start=2)
    assert s.acked(2) == 0  # repeated ack
    assert s.acked(5) == 3
    assert s.unacked() == [] and len(s) == 0 and s.acked_out == 5


def test_ack_zero_on_fresh_session() -> None:
    s = SmSession()
    assert s.acked(0) == 0
    assert s.unacked() == []


def test_wraparound() -> None:
    start = 2**32 - 3
    s = SmSession(sent_out=start, ack_every=100)
    for data in stanzas(6):
        s.sent(data, 0.0)
    assert s.sent_out == 3  # 2**32-3 + 6 wrapped
    assert s.acked(TOP) == 2  # stanzas numbered 2**32-2 and 2**32-1
    assert s.unacked() == stanzas(4, start=2)
    assert s.acked(1) == 2  # across the wrap: 0 and 1
    assert s.unacked() == stanzas(2, start=4)
    assert s.acked(3) == 2
    assert len(s) == 0 and s.acked_out == 3
    with pytest.raises(SmError):
        s.acked(4)


def test_wraparound_in_one_ack() -> None:
    s = SmSession(sent_out=2**32 - 3, ack_every=100)
    for data in stanzas(5):
        s.sent(data, 0.0)
    assert s.acked(2) == 5
    assert len(s) == 0


def test_wraparound_from_state() -> None:
    state = SmSession(ack_every=100).to_state()
    state.update(sent_out=TOP - 1, acked_out=TOP - 1, handled_in=TOP)
    s = SmSession.from_state(state, ack_every=100)
    assert s.received() == 0
    for data in stanzas(4):
        s.sent(data, 0.0)
    assert s.sent_out == 2
    assert s.acked(0) == 2
    assert s.unacked() == stanzas(2, start=2)


def test_h_larger_than_sent() -> None:
    s = SmSession(ack_every=100)
    s.received()
    s.received()
    for data in stanzas(3):
        s.sent(data, 0.0)
    with pytest.raises(SmError) as info:
        s.acked(4)
    err = info.value
    assert err.condition == "undefined-condition"
    assert err.h == 2  # the server's handled_in
    assert (err.client_h, err.send_count) == (4, 3)
    assert len(s) == 3  # nothing dropped


def test_h_larger_than_sent_on_fresh_session() -> None:
    s = SmSession()
    with pytest.raises(SmError) as info:
        s.acked(1)
    assert info.value.condition == "undefined-condition"
    with pytest.raises(SmError):
        s.acked(TOP)  # not an "old" ack: nothing was ever acknowledged


def test_h_larger_than_sent_after_partial_ack() -> None:
    s = SmSession(ack_every=100)
    for data in stanzas(4):
        s.sent(data, 0.0)
    s.acked(2)
    with pytest.raises(SmError):
        s.acked(5)
    assert s.acked_out == 2 and len(s) == 2


def test_old_ack_ignored() -> None:
    s = SmSession(ack_every=100)
    for data in stanzas(6):
        s.sent(data, 0.0)
    assert s.acked(4) == 4
    assert s.acked(1) == 0
    assert s.acked(3) == 0
    assert s.acked_out == 4
    assert s.unacked() == stanzas(2, start=4)
    assert s.acked(6) == 2


def test_old_ack_ignored_across_wrap() -> None:
    s = SmSession(sent_out=TOP - 1, ack_every=100)
    for data in stanzas(4):
        s.sent(data, 0.0)
    assert s.acked(1) == 3
    assert s.acked(TOP) == 0  # older than 1 across the wrap
    assert s.acked(0) == 0
    assert s.unacked() == stanzas(1, start=3)


# -- request cadence -------------------------------------------------------------------------------------------


def test_request_by_count() -> None:
    s = SmSession(ack_every=3, ack_after=1000.0)
    results = [s.sent(data, 0.0) for data in stanzas(7)]
    assert results == [False, False, True, False, False, True, False]


def test_request_not_repeated_while_outstanding() -> None:
    s = SmSession(ack_every=3, ack_after=10.0)
    assert [s.sent(d, 0.0) for d in stanzas(3)] == [False, False, True]
    assert s.request_pending
    # the oldest stanza is now overdue, but a request is outstanding
    assert s.sent(b"<m/>", 50.0) is False
    assert s.request_due(60.0) is False
    assert s.sent(b"<m/>", 51.0) is False
    assert s.sent(b"<m/>", 52.0) is True  # ack_every more went out since the request


def test_ack_clears_pending_request() -> None:
    s = SmSession(ack_every=2, ack_after=10.0)
    s.sent(b"<m1/>", 0.0)
    assert s.sent(b"<m2/>", 0.0) is True
    assert s.acked(1) == 1
    assert not s.request_pending
    # the remaining stanza is old: the next send asks again
    assert s.sent(b"<m3/>", 11.0) is True


def test_old_ack_does_not_clear_pending_request() -> None:
    s = SmSession(ack_every=2, ack_after=1000.0)
    s.sent(b"<m1/>", 0.0)
    s.sent(b"<m2/>", 0.0)
    s.acked(2)
    s.sent(b"<m3/>", 0.0)
    assert s.sent(b"<m4/>", 0.0) is True
    assert s.acked(1) == 0
    assert s.request_pending


def test_request_by_time() -> None:
    s = SmSession(ack_every=100, ack_after=30.0)
    assert s.sent(b"<m1/>", 100.0) is False
    assert s.sent(b"<m2/>", 129.9) is False
    assert s.sent(b"<m3/>", 130.0) is True
    assert s.sent(b"<m4/>", 200.0) is False  # outstanding


def test_request_due_timer() -> None:
    s = SmSession(ack_every=100, ack_after=30.0)
    assert s.request_due(1000.0) is False  # empty queue
    s.sent(b"<m1/>", 0.0)
    assert s.request_due(29.0) is False
    assert s.request_due(30.0) is True
    assert s.request_due(31.0) is False  # already requested
    s.acked(1)
    assert s.request_due(100.0) is False  # nothing unacked


def test_time_uses_oldest_unacked() -> None:
    s = SmSession(ack_every=100, ack_after=30.0)
    s.sent(b"<m1/>", 0.0)
    s.sent(b"<m2/>", 20.0)
    s.acked(1)
    assert s.request_due(35.0) is False  # the oldest left was sent at 20
    assert s.request_due(50.0) is True


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        SmSession(ack_every=0)
    with pytest.raises(ValueError):
        SmSession(ack_after=0.0)
    with pytest.raises(ValueError):
        SmSession(max_queue=0)
    with pytest.raises(ValueError):
        SmSession(sent_out=2**32)
    with pytest.raises(ValueError):
        SmSession(handled_in=-1)


# -- overflow -------------------------------------------------------------------------------------------------


def test_overflow() -> None:
    s = SmSession(max_queue=3, ack_every=100)
    for data in stanzas(3):
        s.sent(data, 0.0)
    assert s.overflow is False
    s.sent(b"<m/>", 0.0)
    assert s.overflow is True
    assert len(s) == 4  # kept, so the adapter can store them offline
    s.acked(1)
    assert s.overflow is False


# -- resumption -----------------------------------------------------------------------------------------------


def test_resume_from_resends_unacked_in_order() -> None:
    s = SmSession(ack_every=100)
    for data in stanzas(5):
        s.sent(data, 0.0)
    s.acked(1)
    again = s.resume_from(3)
    assert again == stanzas(2, start=3)
    assert s.unacked() == stanzas(2, start=3)  # still unacked: they were sent again
    assert s.sent_out == 5
    s.sent(b"<new/>", 0.0)
    assert s.sent_out == 6
    assert s.acked(4) == 1
    assert s.unacked() == [stanzas(5)[4], b"<new/>"]
    assert s.acked(6) == 2


def test_resume_from_all_acked() -> None:
    s = SmSession(ack_every=100)
    for data in stanzas(2):
        s.sent(data, 0.0)
    assert s.resume_from(2) == []
    assert len(s) == 0


def test_resume_from_old_h_resends_from_last_ack() -> None:
    s = SmSession(ack_every=100)
    for data in stanzas(4):
        s.sent(data, 0.0)
    s.acked(2)
    assert s.resume_from(1) == stanzas(2, start=2)


def test_resume_from_h_too_high() -> None:
    s = SmSession(ack_every=100)
    s.received()
    s.sent(b"<m/>", 0.0)
    with pytest.raises(SmError) as info:
        s.resume_from(2)
    assert info.value.condition == "undefined-condition"
    assert info.value.h == 1


def test_resume_from_clears_request_and_restamps() -> None:
    s = SmSession(ack_every=2, ack_after=30.0)
    s.sent(b"<m1/>", 0.0)
    s.sent(b"<m2/>", 0.0)
    assert s.request_pending
    s.resume_from(0, now=500.0)
    assert not s.request_pending
    assert s.request_due(529.0) is False
    assert s.request_due(530.0) is True


def test_resume_after_import_resends_exactly_once() -> None:
    a = SmSession(id="sid", resume=True, max=300, ack_every=100)
    for data in stanzas(4):
        a.sent(data, 0.0)
    a.acked(1)
    b = SmSession.from_state(json.loads(json.dumps(a.to_state())), ack_every=100)
    assert b.resume_from(2) == stanzas(2, start=2)
    assert b.resume_from(2) == stanzas(2, start=2)  # a second resumption sends the same, not more
    assert b.acked(4) == 2
    assert b.resume_from(4) == []


# -- export / import -------------------------------------------------------------------------------------------


def test_state_round_trip() -> None:
    s = SmSession(id="abc", resume=True, max=120, sent_out=TOP - 1, handled_in=7, ack_every=100)
    payloads = [b"<message>\x00\xff binary-safe</message>", b"<iq/>", b"<presence/>"]
    for data in payloads:
        s.sent(data, 0.0)
    s.acked(TOP)
    state = json.loads(json.dumps(s.to_state()))
    assert state["unacked"] == [base64.b64encode(p).decode() for p in payloads[1:]]
    t = SmSession.from_state(state, ack_every=3, ack_after=5.0, max_queue=10)
    assert (t.id, t.resume, t.max) == ("abc", True, 120)
    assert (t.handled_in, t.sent_out, t.acked_out) == (7, 1, TOP)
    assert t.unacked() == payloads[1:]
    assert (t.ack_every, t.ack_after, t.max_queue) == (3, 5.0, 10)
    assert t.acked(TOP - 1) == 0  # the acknowledgement history travelled too: an old ack
    assert t.acked(1) == 2
    assert t.to_state()["acked_out"] == 1


def test_state_without_resume() -> None:
    s = SmSession()
    t = SmSession.from_state(s.to_state())
    assert (t.id, t.resume, t.max, len(t)) == (None, False, None, 0)


def _good_state() -> dict[str, Any]:
    s = SmSession(id="abc", resume=True, max=60, ack_every=100)
    s.sent(b"<m1/>", 0.0)
    s.sent(b"<m2/>", 0.0)
    return s.to_state()


@pytest.mark.parametrize("change", [
    {"version": 2},
    {"version": "1"},
    {"id": 5},
    {"id": ""},
    {"id": "x" * 257},
    {"id": None},  # resume=True needs an id
    {"resume": "true"},
    {"resume": 1},
    {"max": 0},
    {"max": "60"},
    {"max": True},
    {"handled_in": -1},
    {"handled_in": 2**32},
    {"handled_in": 1.0},
    {"handled_in": True},
    {"sent_out": "2"},
    {"acked_out": None},
    {"acked_total": -1},
    {"unacked": "PG0xLz4="},
    {"unacked": [1, 2]},
    {"unacked": ["PG0xLz4=", "not base64!"]},
    {"unacked": ["PG0xLz4=", "\u00e9"]},
    {"unacked": ["PG0xLz4="]},  # one too few for sent_out - acked_out
    {"unacked": ["PG0xLz4="] * 3},
    {"acked_out": 1},
])
def test_from_state_rejects(change: dict[str, Any]) -> None:
    state = _good_state()
    SmSession.from_state(dict(state))  # the unchanged state is fine
    state.update(change)
    with pytest.raises(ValueError):
        SmSession.from_state(state)


@pytest.mark.parametrize("key", ["version", "id", "resume", "max", "handled_in", "sent_out", "acked_out",
                                 "acked_total", "unacked"])
def test_from_state_missing_key(key: str) -> None:
    state = _good_state()
    del state[key]
    with pytest.raises(ValueError, match=key):
        SmSession.from_state(state)


@pytest.mark.parametrize("bad", [None, [], "state", 3])
def test_from_state_not_a_dict(bad: object) -> None:
    with pytest.raises(ValueError):
        SmSession.from_state(bad)


# -- resume ids -------------------------------------------------------------------------------------------------


def test_resume_id_round_trip() -> None:
    previd = make_resume_id("alice@example.com/phone.2", "tok3n")
    assert "=" not in previd and "." not in previd and "/" not in previd and "+" not in previd
    assert split_resume_id(previd) == ("alice@example.com/phone.2", "tok3n")


def test_resume_id_unicode_jid() -> None:
    previd = make_resume_id("ñandú@exämple.com/résumé", "t")
    assert split_resume_id(previd) == ("ñandú@exämple.com/résumé", "t")


def test_resume_id_is_urlsafe_base64_of_jid_dot_token() -> None:
    previd = make_resume_id("a@b/c", "xyz")
    assert base64.urlsafe_b64decode(previd + "=" * (-len(previd) % 4)) == b"a@b/c.xyz"


def test_make_resume_id_rejects() -> None:
    for jid, token in [("", "t"), ("a@b/c", ""), ("a@b/c", "t.t")]:
        with pytest.raises(ValueError):
            make_resume_id(jid, token)
    with pytest.raises(ValueError):
        make_resume_id("a@b/" + "r" * 300, "t")  # would not fit in a previd


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("previd", [
    "",
    "!!!!",
    "abc$",
    "YWJj=",  # padding is never issued
    _b64(b"a@b/c.xyz") + "=",
    "a",  # impossible length
    _b64(b"no-dot-here"),
    _b64(b"a@b/c."),  # empty token
    _b64(b".token"),  # empty JID
    _b64(b"\xff\xfe.tok"),  # not UTF-8
    base64.b64encode(b"a@b/c?.x>y").decode(),  # standard alphabet, not urlsafe
    "A" * 2000,
])
def test_split_resume_id_malformed(previd: str) -> None:
    assert split_resume_id(previd) is None


def test_split_resume_id_rejects_non_canonical() -> None:
    good = _b64(b"a@b/c.xy")  # 8 bytes: the last character carries 4 unused bits
    assert split_resume_id(good) == ("a@b/c", "xy")
    last = good[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tweaked = good[:-1] + alphabet[alphabet.index(last) + 1]
    assert split_resume_id(tweaked) is None


def test_split_resume_id_non_str() -> None:
    assert split_resume_id(None) is None  # type: ignore[arg-type]


# -- timeouts ---------------------------------------------------------------------------------------------------


def test_effective_max() -> None:
    assert effective_max(None, 300, 600) == 300
    assert effective_max(60, 300, 600) == 60
    assert effective_max(6000, 300, 600) == 600
    assert effective_max(600, 300, 600) == 600
