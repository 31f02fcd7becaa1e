"""The xmpp.js harness (tests/helpers/xmppjs.py) against a server that already implements XEP-0198.

Prosody 0.12 with its core ``mod_smacks``: user a is xmpp.js (SASL1, bind, ``<enable resume/>``;
Prosody 0.12 offers no SASL2), user b is slixmpp.  b sends 3 messages; xmpp.js's socket dies without
a stream close; b sends 3 more while a is away (Prosody queues them in the hibernating session);
xmpp.js reconnects, resumes (``<resume h previd/>`` → ``<resumed/>``) and ends up with all 6, once
each, in order.  Two routes back:

- ``same-service``: @xmpp/reconnect dials the same STARTTLS port again after its delay;
- ``other-listener``: the service is first pointed at a dead port (a stays away, retrying, for as long
  as the test wants), then at Prosody's direct-TLS port — what a resumption on another node does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from slixmpp import JID

from tests.helpers.ports import free_port
from tests.helpers.prosody import ProsodyServer, prosody_binary
from tests.helpers.xmpp_client import Client
from tests.helpers.xmppjs import js_client

HOST = "prosody.example.org"
PASSWORD = "sm-secret"

pytestmark = pytest.mark.skipif(prosody_binary() is None,
                                reason="Debian package prosody not installed (scripts/install-test-deps.sh)")


@pytest.fixture(scope="module")
def prosody() -> Iterator[ProsodyServer]:
    with ProsodyServer(HOST, modules=["smacks"], c2s_direct_tls=True) as p:
        yield p


@pytest.mark.parametrize("route", ["same-service", "other-listener"])
async def test_xmppjs_resumes_sm_session_on_prosody(prosody: ProsodyServer, route: str) -> None:
    tag = uuid.uuid4().hex[:8]
    a_user, b_user = f"a{tag}", f"b{tag}"
    prosody.register(a_user, PASSWORD)
    prosody.register(b_user, PASSWORD)
    a_jid = prosody.jid(a_user)
    a_bare = JID(a_jid)
    starttls = f"xmpp://127.0.0.1:{prosody.c2s_port}"

    b = Client(f"{prosody.jid(b_user)}/py", PASSWORD, cert=prosody.ca_cert)
    # same-service: xmpp.js' default reconnect delay, time enough for b to send while a is away
    delay = 1000 if route == "same-service" else 100
    async with js_client(starttls, domain=HOST, username=a_user, password=PASSWORD, resource="js",
                         ca=prosody.ca_cert, reconnect_delay=delay) as a:
        online = await a.wait_event("online", timeout=15)
        assert online["jid"] == f"{a_jid}/js" and online["resumed"] is False
        enabled = await a.wait_event("sm_enabled")
        assert enabled["resume"] == "true" and enabled["id"]
        await b.online(prosody.c2s_port)
        try:
            for i in range(1, 4):
                b.send_message(mto=a_bare, mbody=f"m{i}", mtype="chat")
            first = await a.messages_until(3)
            assert [m["body"] for m in first] == ["m1", "m2", "m3"]

            if route == "other-listener":
                await a.set_service(f"xmpp://127.0.0.1:{free_port()}")  # nothing listens: a stays away
            await a.kill_socket()
            await a.wait_event("status", predicate=lambda e: e["status"] == "disconnect")
            if route == "other-listener":  # it has tried the dead port and will keep trying
                await a.wait_event("error", predicate=lambda e: "ECONNREFUSED" in str(e.get("text")))
            for i in range(4, 7):
                b.send_message(mto=a_bare, mbody=f"m{i}", mtype="chat")
            await b.get_roster()  # a round trip: Prosody has routed m4..m6 (into the hibernating session)
            if route == "other-listener":
                assert prosody.c2s_tls_port is not None
                await a.set_service(f"xmpps://127.0.0.1:{prosody.c2s_tls_port}")

            resumed = await a.wait_event("resumed", timeout=15)
            assert resumed["id"] == enabled["id"] and resumed["jid"] == f"{a_jid}/js"
            assert resumed["h"] == "0"  # a's only stanza, its initial presence, went out before <enable/>
            resumed_el = await a.wait_event("sm_resumed")
            assert resumed_el["previd"] == enabled["id"]
            # a marker after the resumption: once it is in, nothing of m1..m6 can still be on its way
            b.send_message(mto=a_bare, mbody="marker", mtype="chat")
            got = await a.messages_until(7)
            bodies = [m["body"] for m in got]
            assert bodies == ["m1", "m2", "m3", "m4", "m5", "m6", "marker"], bodies
            assert all(m["from"] == f"{prosody.jid(b_user)}/py" for m in got)
            # m4..m6 were delivered through the resumed stream, not before the socket died
            events = a.events
            assert events.index(resumed_el) < events.index(got[3]), a.log()
            assert len(a.of("online")) == 1, "a resumed session must not be a new one (no second bind)"
            state = await a.state()
            assert state["status"] == "online" and state["sm"]["enabled"] and state["sm"]["id"] == enabled["id"]
            assert state["sm"]["inbound"] >= 7
            assert state["service"].startswith("xmpps://" if route == "other-listener" else "xmpp://")
            await a.stop()
            await a.wait_event("offline")
        finally:
            await b.close()
