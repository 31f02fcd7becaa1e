"""XEP-0352 Client State Indication against a real node process, over raw sockets: an inactive
client gets no presence updates (the latest per contact waits) and no chat states, a message with a
body arrives at once after the presence held before it, ``<active/>`` flushes the rest, and with
stream management a client whose socket died finds the held presence in the resumed stream."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.xmpp_raw import SM, RawClient, local

CSI = "urn:xmpp:csi:0"
C = "{jabber:client}"
STANZAS = ("message", "presence", "iq")


class Client(RawClient):
    """A raw client that counts the stanzas it has read (its XEP-0198 ``h``)."""

    handled = 0

    async def next(self, match: Callable[[ET.Element], bool] | None = None, timeout: float = 10.0) -> ET.Element:
        def counting(el: ET.Element) -> bool:
            if local(el) in STANZAS:
                self.handled += 1
            return match is None or match(el)

        return await super().next(counting, timeout)

    async def stanza(self, timeout: float = 10.0) -> ET.Element:
        """The next stanza (XEP-0198 ``<r/>`` and the like skipped)."""
        return await self.next(lambda el: local(el) in STANZAS, timeout)

    async def nothing(self, seconds: float = 0.7) -> None:
        """No stanza arrives for ``seconds``."""
        try:
            el = await self.stanza(timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected: {ET.tostring(el).decode()}")

    async def sync(self, tag: str = "sync") -> None:
        """A ping to the server, answered after everything before it: skips what came so far."""
        self.send(f"<iq type='get' id='{tag}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        await self.next(lambda el: el.get("id") == tag)


def show(el: ET.Element) -> str | None:
    return el.findtext(f"{C}show")


def what(el: ET.Element) -> tuple[str, str | None, str | None]:
    """(kind, sender, show or body)."""
    return local(el), el.get("from"), show(el) if local(el) == "presence" else el.findtext(f"{C}body")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("csi-node"), name="csi1")
    for user in ("alice", "bob", "carol", "dave", "erin"):
        n.register(user, f"{user}-secret")
    n.start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


async def online(node: NodeProcess, user: str, resource: str, *, sm: bool = False) -> tuple[Client, ET.Element | None]:
    c = Client(node.port, node.cert)
    await c.connect()
    features = await c.login(user, f"{user}-secret")
    assert features.find(f"{{{CSI}}}csi") is not None  # offered after authentication
    await c.bind(resource)
    enabled = await c.enable() if sm else None
    c.handled = 0
    c.send("<presence/>")
    return c, enabled


async def befriend(a: Client, a_bare: str, b: Client, b_bare: str) -> None:
    """Mutual subscription, the way clients do it."""
    for x, y, y_bare, x_bare in ((a, b, b_bare, a_bare), (b, a, a_bare, b_bare)):
        x.send(f"<presence to='{y_bare}' type='subscribe'/>")
        await y.next(lambda el: local(el) == "presence" and el.get("type") == "subscribe")
        y.send(f"<presence to='{x_bare}' type='subscribed'/>")
        await x.next(lambda el: local(el) == "presence" and el.get("type") == "subscribed")
    await a.sync()
    await b.sync()


def presence(c: Client, show_: str) -> None:
    c.send(f"<presence><show>{show_}</show></presence>")


async def test_inactive_holds_presence_drops_chat_states_and_flushes(node: NodeProcess) -> None:
    alice, _ = await online(node, "alice", "phone")
    bob, _ = await online(node, "bob", "desk")
    await befriend(alice, "alice@localhost", bob, "bob@localhost")
    alice.send(f"<inactive xmlns='{CSI}'/>")
    await alice.sync("after-inactive")  # handled in order: inactive from here on
    # Presence updates wait, the latest per sender; a chat state is dropped.
    presence(bob, "away")
    presence(bob, "dnd")
    bob.send("<message to='alice@localhost/phone' type='chat'>"
             "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await alice.nothing()
    # A message with a body goes out at once, after the presence held before it.
    bob.send("<message to='alice@localhost/phone' type='chat' id='m1'><body>wake up</body>"
             "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    first, second = await alice.stanza(), await alice.stanza()
    assert [what(first), what(second)] == [("presence", "bob@localhost/desk", "dnd"),
                                           ("message", "bob@localhost/desk", "wake up")]
    # A subscription request is important too: it comes at once, after what is held.
    presence(bob, "xa")
    await alice.nothing(0.4)
    erin, _ = await online(node, "erin", "pad")
    erin.send("<presence to='alice@localhost' type='subscribe'/>")
    first, second = await alice.stanza(), await alice.stanza()
    assert what(first) == ("presence", "bob@localhost/desk", "xa")
    assert (local(second), second.get("from"), second.get("type")) == ("presence", "erin@localhost", "subscribe")
    # <active/> flushes the rest; from then on everything passes.
    presence(bob, "away")
    await alice.nothing(0.4)
    alice.send(f"<active xmlns='{CSI}'/>")
    assert what(await alice.stanza()) == ("presence", "bob@localhost/desk", "away")
    bob.send("<message to='alice@localhost/phone' type='chat'>"
             "<paused xmlns='http://jabber.org/protocol/chatstates'/></message>")
    got = await alice.stanza()
    assert local(got) == "message" and got.find("{http://jabber.org/protocol/chatstates}paused") is not None
    # Inactive again: an unavailable replaces the held available of the same resource, and an
    # XEP-0198 <r/> (here without SM: answered <failed/>) flushes first.
    alice.send(f"<inactive xmlns='{CSI}'/>")
    await alice.sync("again")
    presence(bob, "chat")
    bob.send("<presence type='unavailable'/>")
    await alice.nothing()
    alice.send(f"<r xmlns='{SM}'/>")
    flushed = await alice.stanza()
    assert (local(flushed), flushed.get("from"), flushed.get("type")) == ("presence", "bob@localhost/desk",
                                                                          "unavailable")
    failed = await alice.next(lambda el: el.tag.startswith(f"{{{SM}}}"))
    assert local(failed) == "failed"  # stream management still saw the <r/>
    await alice.nothing(0.3)
    await alice.close()
    await bob.close()
    await erin.close()


async def test_held_presence_survives_a_dead_socket_into_the_resumed_stream(node: NodeProcess) -> None:
    carol, enabled = await online(node, "carol", "phone", sm=True)
    assert enabled is not None and local(enabled) == "enabled"
    dave, _ = await online(node, "dave", "desk")
    await befriend(carol, "carol@localhost", dave, "dave@localhost")
    carol.send(f"<inactive xmlns='{CSI}'/>")
    await carol.sync("after-inactive")
    presence(dave, "away")
    presence(dave, "xa")
    dave.send("<message to='carol@localhost/phone' type='chat'>"
              "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await carol.nothing()
    h = carol.handled  # every stanza carol read: nothing held is among them
    carol.die()
    again = Client(node.port, node.cert)
    await again.connect()
    await again.login("carol", "carol-secret")
    resumed = await again.resume(enabled.get("id"), h)
    assert local(resumed) == "resumed", resumed.attrib
    # Only the latest held presence was queued for the detached session, and it is resent now.
    assert what(await again.stanza()) == ("presence", "dave@localhost/desk", "xa")
    await again.nothing(0.4)
    # The resumed stream starts active (XEP-0352: the state is not restored).
    presence(dave, "dnd")
    assert what(await again.stanza()) == ("presence", "dave@localhost/desk", "dnd")
    await again.close()
    await dave.close()
