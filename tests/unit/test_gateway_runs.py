"""A room's runs through the gateways (GlobalRouter on fake nodes, the link replaced by a list):
a joiner's presences cross in a frame or a few, not one per occupant; the receiving gateway
delivers them in order, hands a broadcast's copies to its region in one route_run, and bounces a
run whose recipient moved as a whole, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.xmpp.stanza import Stanza
from gateway import many
from gateway.mapping import Location, MappingCache
from gateway.relay import GlobalRouter, Relayed
from tests.helpers.fake_host import FakeNode, fake_node, stanza

ROOM = "room@conference.example.com"
BOB = "bob@example.com/us"


class Store:
    """The mapping: bare JID → resource → region (what ``MappingStore.lookup_bare`` answers)."""

    def __init__(self, regions: dict[str, str]) -> None:
        self.regions = regions

    async def lookup_bare(self, bare: str) -> dict[str, Location]:
        return {full.partition("/")[2]: Location(region, "n1", "s1", 0.0)
                for full, region in self.regions.items() if full.partition("/")[0] == bare}


class Gateway:
    def __init__(self, node: FakeNode, region: str, regions: dict[str, str]) -> None:
        self.sent: list[tuple[str, Relayed]] = []
        self.store = Store(regions)

        async def send(to: str, relayed: Relayed) -> None:
            self.sent.append((to, relayed))

        self.router = GlobalRouter(node.services, self.store, MappingCache(), send,  # type: ignore[arg-type]
                                   region=region, resend_after=0.001, max_retries=2)

    async def settled(self) -> None:
        await self.router.pairs.drain(5.0)


@pytest.fixture
async def eu_us(tmp_path: Path) -> AsyncIterator[tuple[FakeNode, FakeNode]]:
    async with fake_node(tmp_path / "eu", node_name="eu-gw") as eu, fake_node(tmp_path / "us", node_name="us-gw") as us:
        yield eu, us


def presences(n: int, to: str = BOB) -> list[Stanza]:
    """What the room sends a joiner of a room of ``n``: every occupant's presence, then its own."""
    return [stanza(f"<presence xmlns='jabber:client' from='{ROOM}/u{i}' to='{to}'>"
                   f"<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant'/>"
                   f"</x><occupant-id xmlns='urn:xmpp:occupant-id:0' id='{'x' * 40}{i}'/></presence>")
            for i in range(n)] + [stanza(f"<presence xmlns='jabber:client' from='{ROOM}/bob' to='{to}'>"
                                         f"<x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x>"
                                         f"</presence>")]


async def cross(frm: Gateway, to: Gateway) -> None:
    """Hand what ``frm`` sent to ``to``'s ``received``, as the link does, and wait until handed on."""
    sent, frm.sent = frm.sent, []
    for _, relayed in sent:
        done = to.router.received(relayed)
        if done is not None:
            await done


@pytest.mark.parametrize("occupants, frames", [(30, 1), (1000, 5)])  # 64 KB a frame
async def test_a_join_crosses_in_a_few_frames_and_arrives_in_order(eu_us: tuple[FakeNode, FakeNode],
                                                                    occupants: int, frames: int) -> None:
    eu_node, us_node = eu_us
    eu, us = Gateway(eu_node, "eu", {BOB: "us"}), Gateway(us_node, "us", {BOB: "us"})
    session = us_node.bind(BOB)
    run = presences(occupants)
    assert eu.router.many(run, [BOB])
    await eu.settled()
    assert len(eu.sent) == frames and {r for r, _ in eu.sent} == {"us"}
    assert all(many.MANY in (relayed.meta or {}) for _, relayed in eu.sent)
    assert all(len(relayed.data) < 200_000 for _, relayed in eu.sent)  # under the link's frame limit
    assert eu.router.counters.relayed["us"] == frames and eu.router.counters.many_copies["us"] == occupants + 1
    await cross(eu, us)
    assert [s.to_bytes() for s in session.take()] == [s.to_bytes() for s in run]  # in order, as sent
    assert us.router.counters.expanded == occupants + 1 and us.router.counters.bounced == 0


async def test_a_broadcasts_copies_go_to_the_region_in_one_route_run(eu_us: tuple[FakeNode, FakeNode]) -> None:
    """us's gateway hands a frame's copies to its region as a run: a member holding several
    sessions gets one cluster frame; a recipient gone from us gets its copy handled at once (an
    error back to the room), not bounced."""
    eu_node, us_node = eu_us
    users = [f"u{i}@example.com/us" for i in range(4)]
    eu = Gateway(eu_node, "eu", dict.fromkeys(users, "us"))
    us = Gateway(us_node, "us", dict.fromkeys(users, "us"))
    for u in users[:3]:
        us_node.bind_remote(u, "us-n1")
    member_frames: list[tuple[str, list[str], int]] = []
    us_node.hooks.add(Hook.DELIVER_MANY_TO_MEMBER, lambda member, copies, run: member_frames.append(
        (member, [to for _, to in copies], len(run))) or True)
    message = stanza(f"<message xmlns='jabber:client' from='{ROOM}/alice' to='{users[0]}' type='groupchat'>"
                     f"<body>hi</body></message>")
    assert eu.router.many([message], users)
    await eu.settled()
    assert len(eu.sent) == 1
    await cross(eu, us)
    assert member_frames == [("us-n1", users[:3], 1)]
    assert us.router.counters.bounced == 0 and us.router.counters.expanded == 4


async def test_a_run_whose_recipient_moved_is_resent_whole_in_order(eu_us: tuple[FakeNode, FakeNode]) -> None:
    """bob left us for ap between the room's sending and the frames' arrival: us's gateway waits
    once, looks bob up again and relays the run to ap (a hop less), in order; nothing is lost."""
    eu_node, us_node = eu_us
    eu = Gateway(eu_node, "eu", {BOB: "us"})
    us = Gateway(us_node, "us", {BOB: "ap"})  # (no session of bob in us any more)
    run = presences(1000)
    eu.router.many(run, [BOB])
    await eu.settled()
    sent = len(eu.sent)
    await cross(eu, us)
    await us.settled()
    assert us.router.counters.bounced == sent  # one wait per frame, not per stanza
    assert [r for r, _ in us.sent] == ["ap"] * len(us.sent)
    resent: list[bytes] = []
    for _, relayed in us.sent:
        assert relayed.ttl == eu.router.ttl - 1
        recipients, pieces = many.decode(relayed.meta or {}, relayed.data)
        assert recipients == [BOB]
        resent += pieces
    assert resent == [s.to_bytes() for s in run]


async def test_a_run_for_a_recipient_no_region_holds_is_handled_here(eu_us: tuple[FakeNode, FakeNode]) -> None:
    eu_node, us_node = eu_us
    eu = Gateway(eu_node, "eu", {BOB: "us"})
    us = Gateway(us_node, "us", {})
    routed: list[Any] = []
    us_node.hooks.add(Hook.FILTER_LOCAL_PACKET, lambda s, sender, to: routed.append(s.from_))
    run = presences(5)
    eu.router.many(run, [BOB])
    await eu.settled()
    await cross(eu, us)
    assert us.sent == [] and us.router.counters.bounced == 2  # max_retries waits, then here
    assert routed == [s.from_ for s in run]  # each through the routing chain, in order


async def test_a_fanout_the_cache_knows_has_nowhere_to_go_is_skipped(eu_us: tuple[FakeNode, FakeNode]) -> None:
    """A carbon for an account online in this region only: the first fan-out looks it up (nothing
    to relay); the next ones are skipped at once while the answer is cached; once the account has
    a resource in another region, the fan-out goes there again."""
    from cluster_node.core.router import Fanout
    from cluster_node.xmpp.jid import Jid

    eu_node, _ = eu_us
    regions = {"alice@example.com/eu": "eu"}
    eu = Gateway(eu_node, "eu", regions)
    alice = Jid.parse("alice@example.com")
    carbon = stanza("<message xmlns='jabber:client' from='alice@example.com' type='chat'><body>c</body></message>")
    eu.router.fanout(carbon, alice, Fanout(flag="carbons"))
    await eu.settled()
    lookups = eu.router.counters.lookups
    assert eu.sent == [] and lookups == 1
    hits = eu.router.cache.hits
    for _ in range(3):
        eu.router.fanout(carbon, alice, Fanout(flag="carbons"))
    assert eu.router._only_here(alice)
    await eu.settled()
    assert eu.sent == [] and eu.router.counters.lookups == lookups
    assert eu.router.cache.hits == hits  # skipped: no job ran (its locate would count a hit)
    regions["alice@example.com/phone"] = "us"  # a resource in us, once the cached answer is gone
    eu.router.cache.invalidate("alice@example.com")
    assert not eu.router._only_here(alice)
    eu.router.fanout(carbon, alice, Fanout(flag="carbons"))
    await eu.settled()
    assert [to for to, _ in eu.sent] == ["us"]
