"""``s2s.domain_certs``: a gateway serving several domains shows each peer the certificate of the
domain it asks for (SNI), with certificate verification on at both ends.

eu1's gateway serves eu1.example.com (the default certificate), eu2.example.com (a certificate of
its own in ``domain_certs``) and eu3.example.com (none of its own: the default certificate, which
does not name it).  us1.example.com federates with eu2 both ways; a message from us1 to eu3 is
refused by us1's own verification and bounces, so the test tells a per-domain certificate from
none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dns import DnsServer

from .test_s2s import EU, US, Site, World, two_sites

EU2, EU3 = "eu2.example.com", "eu3.example.com"


def make(base: Path, name: str, domain: str, redis_url: str, dns: DnsServer) -> Site:
    more = {EU2: True, EU3: False} if domain == EU else None
    return Site(base, name, domain, redis_url, dns, more_domains=more)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with two_sites(tmp_path_factory.mktemp("s2s-certs"), make) as w:
        yield w


async def test_a_domain_with_a_certificate_of_its_own_federates_both_ways(world: World) -> None:
    carol, bob = world.eu.user("carol", EU2), world.us.user("bob")
    c = await world.eu.client(carol, "desk", EU2).online(world.eu.node.port)
    b = await world.us.client(bob, "phone").online(world.us.node.port)
    try:
        c.send_message(mto=f"{bob}@{US}/phone", mbody="from eu2", mtype="chat")
        m = await b.next_message(timeout=20)
        assert m["body"] == "from eu2" and str(m["from"]) == f"{carol}@{EU2}/desk"
        b.send_message(mto=f"{carol}@{EU2}", mbody="to eu2", mtype="chat")
        m = await c.next_message(timeout=20)
        assert m["body"] == "to eu2" and str(m["from"]) == f"{bob}@{US}/phone"
    finally:
        await c.close()
        await b.close()
    conns = await world.eu.connections()
    assert any(x["direction"] == "out" and x["peer"] == US and x["localDomain"] == EU2 and x["tls"]
               for x in conns), conns
    assert not any(x["localDomain"] == EU for x in conns), conns  # eu1 itself never spoke


async def test_a_domain_the_certificate_does_not_name_is_refused_by_a_verifying_peer(world: World) -> None:
    dave, bob = world.eu.user("dave", EU3), world.us.user("bob")
    d = await world.eu.client(dave, "desk", EU3).online(world.eu.node.port)
    b = await world.us.client(bob, "phone").online(world.us.node.port)
    try:
        b.send_message(mto=f"{dave}@{EU3}", mbody="to eu3", mtype="chat")
        err = await b.next_message(timeout=30, body=False)
        while err["type"] != "error":
            err = await b.next_message(timeout=30, body=False)
        assert err["error"]["condition"] in ("remote-server-not-found", "remote-server-timeout"), err
        with pytest.raises(TimeoutError):
            await d.next_message(timeout=1)
    finally:
        await d.close()
        await b.close()
    assert not any(x["peer"] == EU3 for x in await world.us.connections())
    assert f"certificate is not valid for '{EU3}'" in world.us.gateway.log()  # refused for that reason
