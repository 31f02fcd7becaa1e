"""MUC over S2S between two Meridian deployments of different domains (each a node and a gateway,
the gateways found through SRV records on a loopback DNS server, dialback over verified TLS):
carol of us1 joins a room of ``conference.eu1.example.com``, gets its history and subject and
chats with alice; alice joins a room of ``conference.us1.example.com``; carol registers a nick in
alice's room over S2S and it is kept for her.  The gateways serve the
MUC subdomain over S2S (``s2s.service_domains``) with a certificate naming it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from slixmpp import JID
from slixmpp.exceptions import PresenceError

from tests.helpers.dns import DnsServer

from .test_muc import MucClient, condition, create
from .test_muc_register import REGISTER, ask, reserved_nick, submit
from .test_s2s import EU, PASSWORD, US, Site, service_site, two_sites


def muc_site(base: Path, name: str, domain: str, redis_url: str, dns: DnsServer) -> Site:
    """A :class:`Site` whose gateway also speaks S2S for ``conference.<domain>``."""
    return service_site(base, name, domain, redis_url, dns, f"conference.{domain}")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    with two_sites(tmp_path_factory.mktemp("muc-s2s"), muc_site) as world:
        yield world.eu, world.us


async def user(site: Site, prefix: str) -> MucClient:
    name = site.user(prefix)
    c = MucClient(site.node, f"{name}@{site.domain}/{uuid.uuid4().hex[:4]}", PASSWORD)
    await c.online(site.node.port, roster=False)
    return c


async def test_a_user_of_another_domain_joins_over_s2s(sites: tuple[Site, Site]) -> None:
    eu, us = sites
    alice, carol = await user(eu, "alice"), await user(us, "carol")
    room = JID(f"lobby{uuid.uuid4().hex[:4]}@conference.{EU}")
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_roomname": "Federated"})
        alice.muc.set_subject(room, "Across domains")
        alice.send_message(mto=room, mbody="before carol", mtype="groupchat")
        await alice.said("before carol")
        pres, subject, _, history = await carol.muc.join_muc_wait(room, "Carol", timeout=30)
        assert 110 in pres["muc"]["status_codes"] and subject["subject"] == "Across domains"
        assert [h["body"] for h in history] == ["before carol"]
        joined = await alice.presence_of("Carol", timeout=15)
        assert str(joined["muc"]["jid"]) == str(carol.boundjid)
        carol.send_message(mto=room, mbody="hello from us1", mtype="groupchat")
        assert (await alice.said("hello from us1", timeout=15))["from"] == JID(f"{room}/Carol")
        await carol.said("hello from us1", timeout=15)

        theirs = JID(f"hall{uuid.uuid4().hex[:4]}@conference.{US}")
        await create(carol, theirs, "Carol")
        await alice.muc.join_muc_wait(theirs, "Alice", timeout=30)
        alice.send_message(mto=theirs, mbody="visiting", mtype="groupchat")
        await asyncio.gather(carol.said("visiting", timeout=15), alice.said("visiting", timeout=15))
    finally:
        await alice.close()
        await carol.close()


async def test_a_user_of_another_domain_registers_a_nick_over_s2s(sites: tuple[Site, Site]) -> None:
    """XEP-0045 §7.10 across domains: carol (us1) registers a nick in a room of eu1; it is hers
    there (bob of eu1 gets conflict joining with it), she finds it, and removes it."""
    eu, us = sites
    alice, bob, carol = await user(eu, "alice"), await user(eu, "bob"), await user(us, "carol")
    room = JID(f"club{uuid.uuid4().hex[:4]}@conference.{EU}")
    try:
        await create(alice, room, "Alice")
        form = (await ask(carol, room)).find("{jabber:x:data}x")
        assert form is not None and form.get("type") == "form"
        await submit(carol, room, "Carol")
        assert await reserved_nick(carol, room) == "Carol"
        assert (await ask(carol, room)).find(f"{{{REGISTER}}}registered") is not None
        with pytest.raises(PresenceError) as pe:
            await bob.muc.join_muc_wait(room, "Carol", timeout=15)
        assert condition(pe.value) == "conflict"
        await submit(carol, room, None, extra=f"<remove xmlns='{REGISTER}'/>")
        assert await reserved_nick(carol, room) is None
        await bob.muc.join_muc_wait(room, "Carol", timeout=15)
    finally:
        for c in (alice, bob, carol):
            await c.close()
