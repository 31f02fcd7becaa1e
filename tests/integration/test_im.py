"""A real node and real slixmpp clients: login, roster, subscriptions, presence, messages, offline,
disco, ping, version (RFC 6120, RFC 6121, XEP-0160/0030/0199/0092)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.helpers.xmpp_client import AuthFailed, Client

from .conftest import USERS


def client(node, user: str, resource: str | None = None, **kw) -> Client:
    jid = f"{user}@localhost" + (f"/{resource}" if resource else "")
    return Client(jid, USERS.get(user, "x"), cert=node.cert, **kw)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
async def test_login_with_each_mechanism(node, mechanism):
    c = client(node, "alice", "mech", mechanism=mechanism)
    await c.login(node.port)
    assert str(c.boundjid) == "alice@localhost/mech"
    await c.close()


async def test_direct_tls_login(node):
    c = client(node, "alice", "direct", direct_tls=True)
    await c.login(node.tls_port)
    await c.close()


async def test_wrong_password_is_rejected(node):
    c = Client("alice@localhost/x", "wrong", cert=node.cert)
    with pytest.raises(AuthFailed) as refused:
        await c.login(node.port, timeout=10)
    assert refused.value.sasl == "not-authorized", refused.value
    await c.close()


async def test_server_generates_a_resource(node):
    c = client(node, "bob")
    await c.login(node.port)
    assert c.boundjid.resource
    await c.close()


async def test_chat_full_and_bare_with_priorities(node):
    a = await client(node, "alice", "a1").online(node.port)
    hi = await client(node, "bob", "high").online(node.port, priority=10)
    lo = await client(node, "bob", "low").online(node.port, priority=1)
    try:
        a.send_message(mto="bob@localhost", mbody="to-bare", mtype="chat")
        m = await hi.next_message()
        assert m["body"] == "to-bare" and str(m["from"]) == "alice@localhost/a1"
        a.send_message(mto="bob@localhost/low", mbody="to-low", mtype="chat")
        assert (await lo.next_message())["body"] == "to-low"
        with pytest.raises(asyncio.TimeoutError):
            await lo.next_message(timeout=0.5, body=True)  # the bare message went only to 'high'
        hi.send_message(mto="alice@localhost/a1", mbody="reply")
        assert (await a.next_message())["body"] == "reply"
    finally:
        for c in (a, hi, lo):
            await c.close()


async def test_iq_ping_version_disco(node):
    a = await client(node, "alice", "iq").online(node.port)
    try:
        await a.plugin["xep_0199"].ping("localhost", timeout=5)
        version = await a.plugin["xep_0092"].get_version("localhost", timeout=5)
        assert version["software_version"]["name"] == "Meridian"
        info = await a.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        features = info["disco_info"]["features"]
        assert "urn:xmpp:ping" in features and "jabber:iq:version" in features
        await a.plugin["xep_0030"].get_items(jid="localhost", timeout=5)
    finally:
        await a.close()


async def test_unknown_iq_gets_service_unavailable(node):
    a = await client(node, "alice", "unk").online(node.port)
    try:
        iq = a.make_iq_get(queryxmlns="urn:example:nothing", ito="localhost")
        from slixmpp.exceptions import IqError

        with pytest.raises(IqError) as err:
            await iq.send(timeout=5)
        assert err.value.condition == "service-unavailable"
    finally:
        await a.close()


async def test_subscription_dance_roster_pushes_and_presence(node):
    # Fresh users so the module-scoped node's other tests do not interfere.
    u1, u2 = f"u{uuid.uuid4().hex[:6]}", f"v{uuid.uuid4().hex[:6]}"
    node.register(u1, "pw-one-1")
    node.register(u2, "pw-two-2")
    x = Client(f"{u1}@localhost/one", "pw-one-1", cert=node.cert)
    x2 = Client(f"{u1}@localhost/two", "pw-one-1", cert=node.cert)
    y = Client(f"{u2}@localhost/one", "pw-two-2", cert=node.cert)
    await x.online(node.port)
    await x2.online(node.port)
    await y.online(node.port)
    try:
        # Roster add pushes to every interested resource of x.
        x.update_roster(f"{u2}@localhost", name="Friend", groups=["Pals"])
        for c in (x, x2):
            push = await asyncio.wait_for(c.roster_pushes.get(), 5)
            while push["type"] != "set":  # the roster_update of the initial get comes first
                push = await asyncio.wait_for(c.roster_pushes.get(), 5)
            assert push["roster"]["items"][f"{u2}@localhost"]["groups"] == ["Pals"]
        x.send_presence(pto=f"{u2}@localhost", ptype="subscribe")
        req = await y.next_presence("subscribe")
        assert str(req["from"]) == f"{u1}@localhost"
        y.send_presence(pto=f"{u1}@localhost", ptype="subscribed")
        await x.next_presence("subscribed", sender=f"{u2}@localhost")
        # x now sees y's presence (sent on approval), and y's later updates.
        await x.next_presence("available", sender=f"{u2}@localhost/one")
        y.send_presence(pshow="away")
        p = await x.next_presence("away", sender=f"{u2}@localhost/one")
        assert p["show"] == "away"
        assert x.client_roster[f"{u2}@localhost"]["subscription"] == "to"  # kept current by pushes
        # y goes away: x receives unavailable.
        await y.close()
        await x.next_presence("unavailable", sender=f"{u2}@localhost/one")
        # y's roster on the server says 'from'; after relogin y's presence reaches x again.
        y = Client(f"{u2}@localhost/one", "pw-two-2", cert=node.cert)
        await y.online(node.port)
        assert y.client_roster[f"{u1}@localhost"]["subscription"] == "from"
        await x.next_presence("available", sender=f"{u2}@localhost/one")
        # Unsubscribe: x stops seeing y.
        x.send_presence(pto=f"{u2}@localhost", ptype="unsubscribe")
        await y.next_presence("unsubscribe", sender=f"{u1}@localhost")
        await x.next_presence("unavailable", sender=f"{u2}@localhost/one")
        for _ in range(20):
            if x.client_roster[f"{u2}@localhost"]["subscription"] == "none":
                break
            await asyncio.sleep(0.1)
        assert x.client_roster[f"{u2}@localhost"]["subscription"] == "none"
    finally:
        for c in (x, x2, y):
            await c.close()


async def test_subscription_request_to_offline_user_is_kept(node):
    u1, u2 = f"p{uuid.uuid4().hex[:6]}", f"q{uuid.uuid4().hex[:6]}"
    node.register(u1, "pw-one-1")
    node.register(u2, "pw-two-2")
    x = await Client(f"{u1}@localhost/r", "pw-one-1", cert=node.cert).online(node.port)
    try:
        x.send_presence(pto=f"{u2}@localhost", ptype="subscribe")
        await asyncio.sleep(0.3)
        y = await Client(f"{u2}@localhost/r", "pw-two-2", cert=node.cert).online(node.port)
        req = await y.next_presence("subscribe")
        assert str(req["from"]) == f"{u1}@localhost"
        await y.close()
    finally:
        await x.close()


async def test_offline_message_stored_and_delivered(node):
    u = f"o{uuid.uuid4().hex[:6]}"
    node.register(u, "pw-off-1")
    a = await client(node, "alice", "off").online(node.port)
    try:
        a.send_message(mto=f"{u}@localhost", mbody="while you were out", mtype="chat")
        await asyncio.sleep(0.5)
        res = node.ctl("account", "check-user", "--domain", "localhost", "--username", u)
        assert '"exist": true' in res.stdout
        o = await Client(f"{u}@localhost/r", "pw-off-1", cert=node.cert).online(node.port)
        m = await o.next_message()
        assert m["body"] == "while you were out"
        assert m["delay"]["stamp"] is not None
        await o.close()
        # Delivered once: a second login gets nothing.
        o = await Client(f"{u}@localhost/r", "pw-off-1", cert=node.cert).online(node.port)
        with pytest.raises(asyncio.TimeoutError):
            await o.next_message(timeout=1)
        await o.close()
    finally:
        await a.close()


async def test_message_to_unknown_user_bounces(node):
    a = await client(node, "alice", "bounce").online(node.port)
    try:
        a.send_message(mto="nobody@localhost", mbody="hello?", mtype="chat")
        m = await a.next_message(body=False)
        while m["type"] != "error":
            m = await a.next_message(body=False)
        assert m["error"]["condition"] == "service-unavailable"
    finally:
        await a.close()


async def test_duplicate_resource_kicks_the_old_session(node):
    first = await client(node, "carol", "same").online(node.port)
    second = await client(node, "carol", "same").online(node.port)
    try:
        for _ in range(100):
            if first.stream_errors:
                break
            await asyncio.sleep(0.1)
        # RFC 6120 §7.7.2.2: the old session gets <conflict/>, not just any disconnect.
        assert [e["condition"] for e in first.stream_errors] == ["conflict"]
        await second.plugin["xep_0199"].ping("localhost", timeout=5)
    finally:
        await first.close()
        await second.close()


async def test_directed_presence_and_unavailable_on_disconnect(node):
    a = await client(node, "alice", "dir").online(node.port)
    c = await client(node, "carol", "dir").online(node.port)
    try:
        a.send_presence(pto="carol@localhost/dir", pstatus="just for you")
        p = await c.next_presence(None, sender="alice@localhost/dir")
        assert p["status"] == "just for you"
        await a.close()  # RFC 6121 §4.6.3: directed-presence recipients learn we left
        await c.next_presence("unavailable", sender="alice@localhost/dir")
    finally:
        await a.close()
        await c.close()


async def test_roster_versioning(node):
    u = f"r{uuid.uuid4().hex[:6]}"
    node.register(u, "pw-ver-1")
    x = await Client(f"{u}@localhost/v", "pw-ver-1", cert=node.cert).login(node.port)
    try:
        def roster_get(ver):
            iq = x.make_iq_get(queryxmlns="jabber:iq:roster")
            iq["roster"]["ver"] = ver
            return iq.send(timeout=5)

        first = await roster_get("")
        ver = first["roster"]["ver"]
        assert ver
        unchanged = await roster_get(ver)
        assert unchanged.xml.find("{jabber:iq:roster}query") is None  # RFC 6121 §2.6.3: empty result
        x.update_roster("someone@localhost", name="S")
        await asyncio.sleep(0.3)
        changed = await roster_get(ver)
        assert changed["roster"]["ver"] != ver
        assert "someone@localhost" in changed["roster"]["items"]
    finally:
        await x.close()
