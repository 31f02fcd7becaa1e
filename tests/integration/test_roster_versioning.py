"""RFC 6121 §2.6 / XEP-0237 roster versioning with diffs, with real slixmpp clients (which send
their cached version when the server announces ``urn:xmpp:features:rosterver``): a client back
with an old version gets an empty result and then only what changed, as pushes, each with its
own version; an unknown version gets the whole roster."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.helpers.xmpp_client import Client

PASSWORD = "pw-rosterver"


async def login(node, user: str, resource: str, cached_ver: str | None = None) -> Client:
    c = Client(f"{user}@localhost/{resource}", PASSWORD, cert=node.cert)
    if cached_ver is not None:
        c.client_roster.version = cached_ver  # what a client keeps with its cached roster
    return await c.login(node.port)


def items(iq: Any) -> dict[str, str]:
    return {str(jid): item["name"] for jid, item in iq["roster"]["items"].items()}


async def roster_events(c: Client, pushes: int) -> list[Any]:
    """What the client received about its roster (results and pushes), until ``pushes`` pushes."""
    out: list[Any] = []
    while sum(iq["type"] == "set" for iq in out) < pushes:
        out.append(await asyncio.wait_for(c.roster_pushes.get(), 5))
    return out


async def test_a_client_back_with_an_old_version_gets_only_the_changes(node):
    user = f"rv{uuid.uuid4().hex[:6]}"
    node.register(user, PASSWORD)
    first = await login(node, user, "phone")
    try:
        for n in range(6):
            await first.update_roster(f"c{n}@localhost", name=f"C{n}")
        cached = await first.get_roster()  # the client caches the roster and its version
    finally:
        await first.close()
    cache, cached_ver = items(cached), cached["roster"]["ver"]
    assert sorted(cache) == [f"c{n}@localhost" for n in range(6)] and cached_ver

    other = await login(node, user, "desktop")  # meanwhile, another resource changes the roster
    try:
        await other.update_roster("c1@localhost", name="Renamed")
        await other.update_roster("c2@localhost", subscription="remove")
        await other.update_roster("new@localhost", name="New")
    finally:
        await other.close()

    back = await login(node, user, "phone", cached_ver)
    try:
        result = await back.get_roster()  # slixmpp sends its cached version itself
        # RFC 6121 §2.6.3: empty (a whole roster would carry its version).
        assert result["type"] == "result" and not result["roster"]["ver"] and not result["roster"]["items"]
        events = await roster_events(back, 3)
        assert [iq["type"] for iq in events] == ["result", "set", "set", "set"]  # the result first
        got = events[1:]
        changes = [(iq["roster"]["ver"], jid, item["subscription"], item["name"])
                   for iq in got for jid, item in iq["roster"]["items"].items()]
        assert [(str(jid), sub, name) for _, jid, sub, name in changes] == [
            ("c1@localhost", "none", "Renamed"), ("c2@localhost", "remove", ""), ("new@localhost", "none", "New")]
        vers = [int(v) for v, *_ in changes]
        assert vers == sorted(vers) and vers[0] > int(cached_ver)
        await asyncio.sleep(0.3)
        assert back.roster_pushes.empty()  # nothing else: only the changes
        assert back.client_roster.version == changes[-1][0]

        # The cache with the pushes applied is the server's roster, at the server's version.
        for _, jid, sub, name in changes:
            if sub == "remove":
                cache.pop(str(jid), None)
            else:
                cache[str(jid)] = name
        fresh = await login(node, user, "check", "")
        try:
            whole = await fresh.get_roster()
        finally:
            await fresh.close()
        assert items(whole) == cache and whole["roster"]["ver"] == back.client_roster.version

        iq = back.make_iq_get(queryxmlns="jabber:iq:roster")  # its version is now current: nothing at all
        iq["roster"]["ver"] = back.client_roster.version
        unchanged = await iq.send(timeout=5)
        assert unchanged.xml.find("{jabber:iq:roster}query") is None  # on the wire: an empty result
        await asyncio.sleep(0.3)
        assert back.roster_pushes.empty()
    finally:
        await back.close()


async def test_an_unknown_version_gets_the_whole_roster(node):
    user = f"rv{uuid.uuid4().hex[:6]}"
    node.register(user, PASSWORD)
    first = await login(node, user, "a")
    try:
        for n in range(3):
            await first.update_roster(f"c{n}@localhost", name=f"C{n}")
    finally:
        await first.close()
    for ver in ("999999", "not-ours"):
        c = await login(node, user, "b", ver)
        try:
            whole = await c.get_roster()
            assert sorted(items(whole)) == ["c0@localhost", "c1@localhost", "c2@localhost"]
            assert whole["roster"]["ver"] not in ("", ver)
        finally:
            await c.close()
