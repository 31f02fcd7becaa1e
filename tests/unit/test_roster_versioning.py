"""RFC 6121 §2.6 / XEP-0237 roster versioning with diffs, on a node without a network
(tests/helpers/fake_host.py): an older known version gets an empty result and then only the
changes as pushes; an unknown or forgotten one the whole roster."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.modules.roster import Roster
from cluster_node.storage import RosterItem
from cluster_node.xmpp import ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, fake_node, stanza

ALICE = "alice@example.com"
R = f"{{{ns.ROSTER}}}"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        await n.create_account(ALICE)
        yield n


async def roster_get(node: FakeNode, who: FakeSession, ver: str | None, id_: str = "g1") -> list[Stanza]:
    """Everything the resource received for its get: the result first, then any pushes."""
    ver_attr = f" ver='{ver}'" if ver is not None else ""
    await node.route(stanza(f"<iq xmlns='jabber:client' from='{who.record.jid}' type='get' id='{id_}'>"
                            f"<query xmlns='{ns.ROSTER}'{ver_attr}/></iq>"))
    got = who.take()
    assert got and (got[0].type, got[0].id) == ("result", id_), got
    return got


async def roster_set(node: FakeNode, who: FakeSession, item: str, id_: str = "s1") -> None:
    await node.route(stanza(f"<iq xmlns='jabber:client' from='{who.record.jid}' type='set' id='{id_}'>"
                            f"<query xmlns='{ns.ROSTER}'>{item}</query></iq>"))


def pushes(stanzas: list[Stanza]) -> list[tuple[str | None, str | None, str | None, str | None]]:
    """(ver, jid, subscription, name) of each roster push."""
    out = []
    for s in stanzas:
        assert (s.name, s.type) == ("iq", "set") and s.id and s.id.startswith("push")
        q = s.child(ns.ROSTER, "query")
        assert q is not None
        (item,) = q.findall(R + "item")
        out.append((q.get("ver"), item.get("jid"), item.get("subscription"), item.get("name")))
    return out


def full(result: Stanza) -> list[str | None]:
    q = result.child(ns.ROSTER, "query")
    assert q is not None and q.get("ver")
    return sorted(i.get("jid") for i in q.findall(R + "item"))


async def fill(node: FakeNode, n: int) -> str:
    for i in range(n):
        await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(f"c{i}@example.net", name=f"C{i}"))
    return await node.storage.roster_version(DOMAIN, "alice")


async def test_an_older_version_gets_an_empty_result_then_the_changes_in_order(node: FakeNode):
    await node.start(Roster)
    old = await fill(node, 6)
    a = node.bind(f"{ALICE}/a")
    other = node.bind(f"{ALICE}/other", interested=True)
    await roster_set(node, other, "<item jid='c1@example.net' name='Renamed'><group>G</group></item>")
    await roster_set(node, other, "<item jid='c2@example.net' subscription='remove'/>", id_="s2")
    await roster_set(node, other, "<item jid='new@example.net' name='New'/>", id_="s3")
    other.take()
    _, now = await node.storage.get_roster(DOMAIN, "alice")

    got = await roster_get(node, a, old)
    result, rest = got[0], got[1:]
    assert len(result.element) == 0  # RFC 6121 §2.6.3: empty, the pushes follow
    assert pushes(rest) == [(str(int(old) + 1), "c1@example.net", "none", "Renamed"),
                            (str(int(old) + 2), "c2@example.net", "remove", None),
                            (now, "new@example.net", "none", "New")]
    assert [g.text for g in rest[0].element[0][0].findall(R + "group")] == ["G"]
    assert all(s.to == f"{ALICE}/a" for s in rest)
    assert other.delivered == []  # the diff is for the resource that asked
    assert node.table.lookup(a.record.jid).interested  # and it gets the live pushes from now on
    await roster_set(node, other, "<item jid='later@example.net'/>", id_="s4")
    assert pushes(a.take()) == [(str(int(now) + 1), "later@example.net", "none", None)]


async def test_the_current_version_gets_an_empty_result_and_no_pushes(node: FakeNode):
    await node.start(Roster)
    ver = await fill(node, 3)
    a = node.bind(f"{ALICE}/a")
    got = await roster_get(node, a, ver)
    assert len(got) == 1 and len(got[0].element) == 0


@pytest.mark.parametrize("ver", [None, "", "stale", "99", "-1"])
async def test_no_or_an_unknown_version_gets_the_whole_roster(node: FakeNode, ver: str | None):
    await node.start(Roster)
    current = await fill(node, 3)
    a = node.bind(f"{ALICE}/a")
    (result,) = await roster_get(node, a, ver)
    assert full(result) == ["c0@example.net", "c1@example.net", "c2@example.net"]
    assert result.child(ns.ROSTER, "query").get("ver") == current  # type: ignore[union-attr]


async def test_a_diff_no_shorter_than_the_roster_gets_the_whole_roster(node: FakeNode):
    await node.start(Roster)
    old = await fill(node, 2)
    a = node.bind(f"{ALICE}/a", interested=True)
    await roster_set(node, a, "<item jid='c0@example.net' name='x'/>")
    await roster_set(node, a, "<item jid='c1@example.net' name='y'/>", id_="s2")
    a.take()
    (result,) = await roster_get(node, a, old)
    assert full(result) == ["c0@example.net", "c1@example.net"]


async def test_a_version_older_than_the_removals_kept_gets_the_whole_roster(node: FakeNode):
    await node.start(Roster, tombstones=2)
    old = await fill(node, 10)
    a = node.bind(f"{ALICE}/a", interested=True)
    for i in range(3):
        await roster_set(node, a, f"<item jid='c{i}@example.net' subscription='remove'/>", id_=f"r{i}")
    a.take()
    (result,) = await roster_get(node, a, old)  # the first removal is forgotten
    assert len(full(result)) == 7
    after_first = str(int(old) + 1)
    got = await roster_get(node, a, after_first, id_="g2")
    assert pushes(got[1:]) == [(str(int(old) + 2), "c1@example.net", "remove", None),
                               (str(int(old) + 3), "c2@example.net", "remove", None)]


async def test_removals_made_elsewhere_are_pruned_too(node: FakeNode):
    """The admin API and the presence module remove through roster_changed: pruning follows."""
    await node.start(Roster, tombstones=1)
    old = await fill(node, 10)
    for i in range(2):
        ver = await node.storage.delete_roster_item(DOMAIN, "alice", f"c{i}@example.net")
        node.hooks.run(Hook.ROSTER_CHANGED, Jid.parse(ALICE), None, ver, f"c{i}@example.net")
    await node.settle()
    a = node.bind(f"{ALICE}/a")
    (result,) = await roster_get(node, a, old)
    assert len(full(result)) == 8
    got = await roster_get(node, a, str(int(old) + 1), id_="g2")
    assert pushes(got[1:]) == [(str(int(old) + 2), "c1@example.net", "remove", None)]


async def test_removals_older_than_the_max_age_are_forgotten(node: FakeNode):
    await node.start(Roster, tombstone_max_age=3600)
    old = await fill(node, 10)
    a = node.bind(f"{ALICE}/a", interested=True)
    await roster_set(node, a, "<item jid='c0@example.net' subscription='remove'/>")
    a.take()
    got = await roster_get(node, a, old)
    assert pushes(got[1:]) == [(str(int(old) + 1), "c0@example.net", "remove", None)]
    async with node.storage.transaction(write=True) as tx:
        await tx.execute("UPDATE roster_tombstones SET removed_at = ?", int(time.time()) - 7200)
    (result,) = await roster_get(node, a, old, id_="g2")
    assert len(full(result)) == 9


async def test_bootstrap_then_diff_keeps_a_cached_roster_equal_to_the_servers(node: FakeNode):
    """A client's cache (items and version), updated only by what it receives, ends equal."""
    await node.start(Roster)
    await fill(node, 8)
    a = node.bind(f"{ALICE}/a")
    (result,) = await roster_get(node, a, "")
    q = result.child(ns.ROSTER, "query")
    assert q is not None
    cache = {i.get("jid"): i.get("name") for i in q.findall(R + "item")}
    cached_ver = q.get("ver")
    a2 = node.bind(f"{ALICE}/b", interested=True)
    for i, item in enumerate(["<item jid='c3@example.net' subscription='remove'/>",
                              "<item jid='c4@example.net' name='four'/>",
                              "<item jid='c3@example.net' name='three again'/>",
                              "<item jid='z@example.net'/>",
                              "<item jid='z@example.net' subscription='remove'/>",
                              "<item jid='c5@example.net' subscription='remove'/>"]):
        await roster_set(node, a2, item, id_=f"s{i}")
    again = node.bind(f"{ALICE}/again")  # the client, back with its cache
    got = await roster_get(node, again, cached_ver, id_="g2")
    assert len(got) > 1
    for ver, jid, subscription, name in pushes(got[1:]):
        if subscription == "remove":
            cache.pop(jid, None)  # (z came and went: a removal of what it never had)
        else:
            cache[jid] = name
        cached_ver = ver
    items, ver = await node.storage.get_roster(DOMAIN, "alice")
    assert cache == {i.jid: i.name for i in items}
    assert cached_ver == ver
