"""A room's output as runs: broadcasts grouped back into ([stanza], recipients), what one occupant
gets in a row (a join) into (stanzas, [recipient]); and the run frames a gateway relays to a
region (a JSON head of recipients, and of sizes for several stanzas, then the stanzas)."""

from __future__ import annotations

import json

import pytest

from cluster_node.clustering import pack, split, unpack
from cluster_node.modules.muc.fanout import runs
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.stanza import Stanza
from gateway import many
from tests.unit.test_muc_room import ALICE, BOB, CAROL, ROOM, codes, join, make_room, say, send


def per_recipient(grouped: list[tuple[list[Stanza], list[str]]]) -> dict[str, list[bytes]]:
    """What each recipient gets from the runs, in order (``to`` left out: it is set on the copies)."""
    got: dict[str, list[bytes]] = {}
    for stanzas, recipients in grouped:
        for r in recipients:
            got.setdefault(r, []).extend(without_to(s) for s in stanzas)
    return got


def without_to(s: Stanza) -> bytes:
    return s.to_bytes().replace(f" to='{s.to}'".encode(), b"")


def test_a_groupchat_message_is_one_run_for_every_session() -> None:
    room = make_room(fresh=True)
    join(room, ALICE, "alice")
    join(room, BOB, "bob")
    join(room, CAROL, "carol")
    join(room, "alice@example.com/tablet", "alice")  # a second session of one occupant
    out = send(room, f"<message from='{BOB}' to='{ROOM}' type='groupchat' id='m1'><body>hi</body></message>")
    grouped = runs(out)
    assert len(grouped) == 1
    stanzas, recipients = grouped[0]
    assert len(stanzas) == 1
    assert sorted(recipients) == sorted([ALICE, BOB, CAROL, "alice@example.com/tablet"])
    assert without_to(stanzas[0]) == without_to(out[-1])


def test_a_join_is_one_run_for_the_joiner_then_its_presence_to_the_others_then_one_more() -> None:
    """The joiner's presences (every occupant's, its own with 110 last) go as one run, its
    presence to the others as one broadcast, history and subject as one run."""
    room = make_room(fresh=True)
    occupants = [f"user{i}@example.com/r" for i in range(30)]
    for i, jid in enumerate(occupants):
        join(room, jid, f"u{i}")
    say(room, occupants[0], "before")
    out = join(room, BOB, "bob", "<history maxstanzas='5'/>")
    grouped = runs(out)
    first, *middle, last = grouped
    assert len(first[0]) == 31 and first[1] == [BOB]
    assert len(last[0]) == 2 and last[1] == [BOB]
    # its presence to the others: one broadcast per variant (the owner, a moderator, sees its JID)
    assert len(middle) == 2 and all(len(s) == 1 for s, _ in middle)
    assert sorted(r for _, rs in middle for r in rs) == sorted(occupants)
    presences = first[0]
    assert 110 in codes(presences[-1]) and not any(110 in codes(p) for p in presences[:-1])
    assert [s.name for s in last[0]] == ["message", "message"]  # the history, then the subject
    assert last[0][-1].element.find("{jabber:client}subject") is not None


def test_runs_give_each_recipient_exactly_what_the_room_sent_it_in_order() -> None:
    room = make_room(fresh=True)
    join(room, ALICE, "alice")
    out: list[Stanza] = []
    out += join(room, BOB, "bob")
    out += say(room, ALICE, "one")
    out += join(room, CAROL, "carol")
    out += send(room, f"<message from='{BOB}' to='{ROOM}/alice' type='chat'><body>pm</body></message>")
    out += say(room, BOB, "two")
    out += send(room, f"<presence from='{CAROL}' to='{ROOM}/carol' type='unavailable'/>")
    grouped = runs(out)
    expected: dict[str, list[bytes]] = {}
    for s in out:
        expected.setdefault(str(s.to), []).append(without_to(s))
    assert per_recipient(grouped) == expected
    assert all(len(s) == 1 or len(r) == 1 for s, r in grouped)  # a run is long on one side only
    where = {id(s): i for i, s in enumerate(out)}
    order = [where[id(s)] for stanzas, _ in grouped for s in stanzas]
    assert order == sorted(order)  # the runs in the room's order


def test_copies_to_one_recipient_of_the_same_stanza_stay_a_broadcast() -> None:
    message = parse_stanza(b"<message from='r@c/x' to='a@e/1' type='groupchat'><body>hi</body></message>")
    assert runs([message, message.with_attrs(to="b@e/1"), message.with_attrs(to="a@e/1")]) == [
        ([message], ["a@e/1", "b@e/1", "a@e/1"])]


# -- the frames ---------------------------------------------------------------------------------------


def test_recipients_are_split_into_frames_that_fit() -> None:
    jids = [f"user{i}@example.com/res" for i in range(1000)]
    frames = list(many.frames(jids, [b"<m/>"], limit=4096))
    assert [j for f in frames for j in f.recipients] == jids
    assert all(len(many.encode(f.recipients, f.stanzas)[0]) <= 4096 + 4 for f in frames) and len(frames) > 1
    assert list(many.chunks(["x" * 100], len, limit=10)) == [["x" * 100]]  # one too long still goes


def test_a_long_run_for_one_recipient_is_split_in_order() -> None:
    stanzas = [f"<presence from='r@c/u{i}' to='bob@e/1'/>".encode() for i in range(1000)]
    frames = list(many.frames(["bob@e/1"], stanzas, limit=4096))
    assert len(frames) > 1 and all(f.recipients == ["bob@e/1"] for f in frames)
    assert [s for f in frames for s in f.stanzas] == stanzas
    assert [f.first for f in frames] == [sum(len(g.stanzas) for g in frames[:k]) for k in range(len(frames))]
    for f in frames:
        data, meta = many.encode(f.recipients, f.stanzas)
        assert len(data) <= 4096 + 64
        assert many.decode(meta, data) == (["bob@e/1"], f.stanzas)


def test_a_frame_carries_its_recipients_then_the_stanza() -> None:
    """One stanza: the head is the list of recipients (the format from before runs)."""
    stanza = b"<message type='groupchat'><body>hi</body></message>"
    data, meta = many.encode(["a@example.com/1", "b@example.com/2"], [stanza])
    assert json.loads(json.dumps(meta)) == meta  # it travels as JSON
    assert data.startswith(b'["a@example.com/1","b@example.com/2"]<message')
    assert many.decode(meta, data) == (["a@example.com/1", "b@example.com/2"], [stanza])


def test_a_frame_carries_a_run_with_its_sizes() -> None:
    run = [b"<presence from='r@c/a'/>", b"<presence from='r@c/b'><x/></presence>", b"<message><subject/></message>"]
    data, meta = many.encode(["bob@e/1"], run)
    assert json.loads(data[:meta["many"]]) == {"to": ["bob@e/1"], "sizes": [len(s) for s in run]}
    assert many.decode(meta, data) == (["bob@e/1"], run)


@pytest.mark.parametrize("meta, data", [
    ({"many": True}, b'["a"]<m/>'),
    ({"many": 0}, b'["a"]<m/>'),
    ({"many": 50}, b'["a"]<m/>'),
    ({"many": 3}, b'["a"]<m/>'),
    ({"many": 5}, b'{"a":1}<m/>'),
    ({"many": 2}, b"[]<m/>"),
    ({"many": 5}, b"[1,2]<m/>"),
    ({"many": 4000}, b"[" * 4000 + b"<m/>"),
    *(({"many": len(head)}, head + body) for head, body in [
        (b'{"to":["a"],"sizes":[2]}', b"<m/>"),  # the sizes do not add up
        (b'{"to":["a"],"sizes":[6,-2]}', b"<m/>"),
        (b'{"to":["a"],"sizes":"4"}', b"<m/>"),
        (b'{"to":"a","sizes":[4]}', b"<m/>"),
        (b'{"to":[],"sizes":[4]}', b"<m/>"),
    ]),
])
def test_a_bad_frame_is_refused(meta: dict[str, object], data: bytes) -> None:
    with pytest.raises(ValueError):
        many.decode(meta, data)


def test_a_cluster_frame_packs_a_run_and_one_stanza_as_ever() -> None:
    one = parse_stanza(b"<message xmlns='jabber:client' from='r@c/x' to='a@e/1'><body>hi</body></message>")
    assert pack([one]) == ({}, one.to_bytes())
    run = [one, parse_stanza(b"<presence xmlns='jabber:client' from='r@c/y' to='a@e/1'/>")]
    keys, data = pack(run)
    assert keys == {"sizes": [len(s.to_bytes()) for s in run]}
    back = unpack(keys, data)
    assert isinstance(back, list) and [s.to_bytes() for s in back] == [s.to_bytes() for s in run]
    assert [s.name for s in back] == ["message", "presence"] and back[1].from_ == "r@c/y"
    for bad in ([3], [0, len(data)], [len(data) + 1], "x", [], [True, len(data) - 1]):
        with pytest.raises(ValueError):
            split(data, bad)
