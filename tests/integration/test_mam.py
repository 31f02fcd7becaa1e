"""XEP-0313 Message Archive Management against real processes, paged with slixmpp's own xep_0313
and xep_0059 plugins: one node; a two-node region (written on one node, read on the other); two
regions of one domain with a gateway each and Redis (written in eu, read in us); two domains
federating over S2S (each archive holding both sides).  The archive is the shared domain
database, so every node and region reads the same one."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp.exceptions import IqError

from tests.helpers.cluster import eventually
from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN, Region
from tests.helpers.topologies import fresh_users, lookup, need_redis, one_node, two_node_region, two_regions
from tests.helpers.xmpp_client import Client
from tests.integration.test_s2s import EU, PASSWORD as S2S_PASSWORD, US, Site, two_sites

MAM = "urn:xmpp:mam:2"
SID = "{urn:xmpp:sid:0}stanza-id"
PASSWORD = "mam-secret"


def mam_client(node: NodeProcess, jid: str, password: str = PASSWORD) -> Client:
    c = Client(jid, password, cert=node.cert)
    c.register_plugin("xep_0059")
    c.register_plugin("xep_0313")
    return c


async def archive(c: Client, *, page: int = 3, reverse: bool = False, **kwargs: Any) -> list[tuple[str, str]]:
    """(archive id, body) of every message of the account's archive, paged with slixmpp's iterator."""
    out = []
    async for msg in c.plugin["xep_0313"].iterate(rsm={"max": page}, reverse=reverse, **kwargs):
        out.append((msg["mam_result"]["id"], msg["mam_result"]["forwarded"]["stanza"]["body"]))
    return out


def bodies(items: list[tuple[str, str]]) -> list[str]:
    return [body for _, body in items]


async def live(c: Client, n: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    """The next ``n`` messages with a body, as (stanza-id by the account, body)."""
    out = []
    for _ in range(n):
        msg = await c.next_message(timeout)
        sid = msg.xml.find(SID)
        assert sid is not None and sid.get("by") == str(c.boundjid.bare), msg
        out.append((sid.get("id"), msg["body"]))
    return out


# -- one node --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("mam-node"), "mam1", users=("alice", "bob", "carol"), password=PASSWORD,
                  settings={"modules": {"mam": {"max_page": 5}}}) as n:
        yield n


async def test_one_node_archive_paged_with_slixmpp(node: NodeProcess) -> None:
    # Accounts of this test's own: another test's messages would be in their archives.
    alice, bob = fresh_users(node, PASSWORD, "alice", "bob", domain="localhost")
    a = await mam_client(node, f"{alice}/laptop").online(node.port)
    b = await mam_client(node, f"{bob}/phone").online(node.port)
    try:
        sent = [f"hello {i}" for i in range(7)]
        for text in sent:
            a.send_message(mto=bob, mbody=text, mtype="chat")
        received = await live(b, 7)
        assert bodies(received) == sent
        a.send_message(mto=bob, mbody=None, mtype="chat")  # no body: a chat state, not archived
        # bob's archive, page by page: the ids are the stanza-ids his client saw.
        assert await archive(b) == received
        assert await archive(b, reverse=True) == list(reversed(received))
        # alice's side of the conversation, and a filter.
        mine = await archive(a, page=4, with_jid=bob)
        assert bodies(mine) == sent
        assert await archive(a, with_jid="carol@localhost") == []
        # A max far above max_page (5 here) is clamped: one page of 5, not everything at once.
        iq = await a.plugin["xep_0313"].retrieve(rsm={"max": 1000000000})
        assert len(iq["mam"]["results"]) == 5 and iq["mam_fin"]["complete"] == "false"
        assert iq["mam_fin"]["rsm"]["count"] == "7" and iq["mam_fin"]["rsm"]["last"] == mine[4][0]
        # Metadata and someone else's archive.
        meta = await a.plugin["xep_0313"].get_archive_metadata()
        assert meta["mam_metadata"]["start"]["id"] == mine[0][0] and meta["mam_metadata"]["end"]["id"] == mine[-1][0]
        with pytest.raises(IqError) as e:
            await a.plugin["xep_0313"].retrieve(jid=bob)
        assert e.value.iq["error"]["condition"] == "forbidden"
        with pytest.raises(IqError) as e:
            await a.plugin["xep_0313"].retrieve(rsm={"after": "no-such-id"})
        assert e.value.iq["error"]["condition"] == "bad-request"
        with pytest.raises(IqError) as e:
            await a.plugin["xep_0313"].retrieve(rsm={"after": "12345"})
        assert e.value.iq["error"]["condition"] == "item-not-found"
        info = await a.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        assert {MAM, f"{MAM}#extended"} <= set(info["disco_info"]["features"])
        assert bodies(await archive(b)) == sent  # still answering after the errors
    finally:
        await a.close()
        await b.close()


async def test_one_node_offline_message_is_archived_once(node: NodeProcess) -> None:
    alice, carol = fresh_users(node, PASSWORD, "alice", "carol", domain="localhost")
    a = await mam_client(node, f"{alice}/desk").online(node.port)
    try:
        a.send_message(mto=carol, mbody="while you were out", mtype="chat")
        await asyncio.sleep(0.5)
        c = await mam_client(node, f"{carol}/phone").online(node.port)
        try:
            stored = await live(c, 1)
            assert await archive(c) == stored
        finally:
            await c.close()
    finally:
        await a.close()


# -- a two-node region -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with two_node_region(tmp_path_factory.mktemp("mam-region"), names=("m1", "m2"),
                         users=("alice", "bob", "carol", "dave"), password=PASSWORD) as nodes:
        yield nodes


async def test_region_written_on_one_node_read_on_the_other(region: list[NodeProcess]) -> None:
    m1, m2 = region
    a = await mam_client(m1, "alice@localhost/one").online(m1.port)
    b = await mam_client(m2, "bob@localhost/two").online(m2.port)
    try:
        # To a full JID on the other member: both copies are written by m1's router; the answers by m2's.
        for i in range(2):
            a.send_message(mto="bob@localhost/two", mbody=f"to bob {i}", mtype="chat")
        received = await live(b, 2)
        for i in range(2):
            b.send_message(mto="alice@localhost/one", mbody=f"to alice {i}", mtype="chat")
        await live(a, 2)
        conversation = [f"to bob {i}" for i in range(2)] + [f"to alice {i}" for i in range(2)]
        a2 = await mam_client(m2, "alice@localhost/other").online(m2.port)
        b2 = await mam_client(m1, "bob@localhost/else").online(m1.port)
        try:
            assert bodies(await archive(a2)) == conversation  # queried on m2
            mine = await archive(b2)  # queried on m1
            assert bodies(mine) == conversation and mine[:2] == received
            assert await archive(b) == mine  # the same archive from either node
        finally:
            await a2.close()
            await b2.close()
    finally:
        await a.close()
        await b.close()


async def set_prefs(c: Client, default: str, never: tuple[str, ...] = ()) -> None:
    """XEP-0441 preferences (slixmpp's xep_0313 has no call for them)."""
    iq = c.Iq()
    iq["type"] = "set"
    prefs = ET.SubElement(iq.xml, f"{{{MAM}}}prefs", {"default": default})
    ET.SubElement(prefs, f"{{{MAM}}}always")
    listed = ET.SubElement(prefs, f"{{{MAM}}}never")
    for jid in never:
        ET.SubElement(listed, f"{{{MAM}}}jid").text = jid
    await iq.send(timeout=10)


async def test_region_preferences_set_on_one_node_apply_on_the_other_at_once(region: list[NodeProcess]) -> None:
    """Messages from carol (on m2) to dave are archived for dave by m2's router, which queues the
    row without waiting for it unless dave has preferences: dave setting them on m1 must reach m2
    before his command is answered, or m2 would deliver carol's next message with a stanza-id
    that names no row."""
    m1, m2 = region
    d = await mam_client(m1, "dave@localhost/one").online(m1.port)
    c = await mam_client(m2, "carol@localhost/two").online(m2.port)
    try:
        c.send_message(mto="dave@localhost/one", mbody="kept", mtype="chat")
        (kept_id, _), = await live(d, 1)
        await set_prefs(d, "always", never=("carol@localhost",))
        c.send_message(mto="dave@localhost/one", mbody="not kept", mtype="chat")
        msg = await d.next_message()
        assert msg["body"] == "not kept" and msg.xml.find(SID) is None, msg
        await set_prefs(d, "always")
        c.send_message(mto="dave@localhost/one", mbody="kept again", mtype="chat")
        (again_id, _), = await live(d, 1)
        assert await archive(d) == [(kept_id, "kept"), (again_id, "kept again")]
    finally:
        await c.close()
        await d.close()


# -- two regions of one domain -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region]]:
    need_redis()
    base = tmp_path_factory.mktemp("mam-regions")
    with RedisServer() as redis, two_regions(base, redis, users=("alice", "bob"), password=PASSWORD) as both:
        yield both.eu, both.us


async def test_two_regions_written_in_eu_paged_from_us(regions: tuple[Region, Region]) -> None:
    eu, us = regions
    tag = uuid.uuid4().hex[:4]
    a = await mam_client(eu.nodes[0], f"alice@{DOMAIN}/eu-{tag}").online(eu.nodes[0].port)
    try:
        # bob is nowhere: kept in offline storage, archived once, in the region that stored it.
        for i in range(3):
            a.send_message(mto=f"bob@{DOMAIN}", mbody=f"stored {i}", mtype="chat")
        await asyncio.sleep(1.0)
        b = await mam_client(us.nodes[0], f"bob@{DOMAIN}/us-{tag}").online(us.nodes[0].port)
        try:
            received = await live(b, 3)
            await eventually(lambda: lookup(eu.gateways[0], f"bob@{DOMAIN}").get(f"us-{tag}"), 5, "bob mapped")
            # bob online in us: relayed from eu, archived in us where it is delivered.
            for i in range(2):
                a.send_message(mto=f"bob@{DOMAIN}", mbody=f"live {i}", mtype="chat")
            received += await live(b, 2)
            expected = [f"stored {i}" for i in range(3)] + [f"live {i}" for i in range(2)]
            assert bodies(received) == expected
            assert await archive(b, page=2) == received  # once each, whichever region wrote it
            a_us = await mam_client(us.nodes[0], f"alice@{DOMAIN}/us-{tag}").online(us.nodes[0].port)
            try:
                assert bodies(await archive(a_us, page=2)) == expected  # alice's archive, written in eu
                assert bodies(await archive(a_us, page=2, reverse=True)) == list(reversed(expected))
            finally:
                await a_us.close()
        finally:
            await b.close()
    finally:
        await a.close()


# -- another domain over S2S ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    with two_sites(tmp_path_factory.mktemp("mam-s2s")) as world:
        yield world.eu, world.us


async def test_with_a_contact_of_another_domain_over_s2s(domains: tuple[Site, Site]) -> None:
    """bob (us1) writes to alice (eu1) over S2S and she answers: each archive holds both sides,
    and each received message carries the stanza-id of its row in the recipient's archive (made
    where the message came in, each domain's gateway, and written with its next group commit)."""
    eu, us = domains
    alice_jid, bob_jid = f"{eu.user('alice')}@{EU}", f"{us.user('bob')}@{US}"
    a = await mam_client(eu.node, f"{alice_jid}/phone", S2S_PASSWORD).online(eu.node.port)
    b = await mam_client(us.node, f"{bob_jid}/pc", S2S_PASSWORD).online(us.node.port)
    try:
        b.send_message(mto=f"{alice_jid}/phone", mbody="over s2s", mtype="chat")
        (alice_id, _), = await live(a, 1, timeout=20)  # the first S2S stream is set up
        a.send_message(mto=bob_jid, mbody="and back", mtype="chat")
        (bob_id, _), = await live(b, 1, timeout=20)
        mine, theirs = await archive(a), await archive(b)
        assert bodies(mine) == bodies(theirs) == ["over s2s", "and back"]
        assert mine[0][0] == alice_id and theirs[1][0] == bob_id
    finally:
        await a.close()
        await b.close()
