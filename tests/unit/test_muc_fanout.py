"""One stanza for many occupants: a room's broadcasts grouped back into (stanza, recipients) runs,
and the one-for-many frame a gateway relays to a region (its recipients, then the stanza)."""

from __future__ import annotations

import json

import pytest

from cluster_node.modules.muc.fanout import runs
from gateway import many
from tests.unit.test_muc_room import ALICE, BOB, CAROL, ROOM, join, make_room, send


def test_a_groupchat_message_is_one_run_for_every_session() -> None:
    room = make_room(fresh=True)
    join(room, ALICE, "alice")
    join(room, BOB, "bob")
    join(room, CAROL, "carol")
    join(room, "alice@example.com/tablet", "alice")  # a second session of one occupant
    out = send(room, f"<message from='{BOB}' to='{ROOM}' type='groupchat' id='m1'><body>hi</body></message>")
    grouped = runs(out)
    assert len(grouped) == 1
    stanza, recipients = grouped[0]
    assert sorted(recipients) == sorted([ALICE, BOB, CAROL, "alice@example.com/tablet"])
    assert stanza.to_bytes().replace(f"to='{stanza.to}'".encode(), b"") == \
        out[-1].to_bytes().replace(f"to='{out[-1].to}'".encode(), b"")


def test_different_stanzas_stay_apart_and_in_order() -> None:
    room = make_room(fresh=True)
    join(room, ALICE, "alice")
    out = join(room, BOB, "bob")  # alice's presence to bob, bob's to alice, bob's own (110), the subject
    grouped = runs(out)
    assert [r for _, r in grouped] == [[s.to] for s in out]  # each built on its own: nothing merged
    assert [s for s, _ in grouped] == out


def test_recipients_are_split_into_frames_that_fit() -> None:
    jids = [f"user{i}@example.com/res" for i in range(1000)]
    chunks = list(many.chunks(jids, limit=4096))
    assert [j for c in chunks for j in c] == jids
    assert all(len(many.encode(c, b"")[0]) <= 4096 for c in chunks) and len(chunks) > 1
    assert list(many.chunks(["x" * 100], limit=10)) == [["x" * 100]]  # one too long still goes


def test_a_frame_carries_its_recipients_then_the_stanza() -> None:
    stanza = b"<message type='groupchat'><body>hi</body></message>"
    data, meta = many.encode(["a@example.com/1", "b@example.com/2"], stanza)
    assert json.loads(json.dumps(meta)) == meta  # it travels as JSON
    assert many.decode(meta, data) == (["a@example.com/1", "b@example.com/2"], stanza)


@pytest.mark.parametrize("meta, data", [
    ({"many": True}, b'["a"]<m/>'),
    ({"many": 0}, b'["a"]<m/>'),
    ({"many": 50}, b'["a"]<m/>'),
    ({"many": 3}, b'["a"]<m/>'),
    ({"many": 5}, b'{"a":1}<m/>'),
    ({"many": 2}, b"[]<m/>"),
    ({"many": 5}, b"[1,2]<m/>"),
    ({"many": 4000}, b"[" * 4000 + b"<m/>"),
])
def test_a_bad_frame_is_refused(meta: dict[str, object], data: bytes) -> None:
    with pytest.raises(ValueError):
        many.decode(meta, data)
