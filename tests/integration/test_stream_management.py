"""XEP-0198 Stream Management against real node processes, over raw sockets (every counter on the
wire is checked) and with slixmpp's xep_0198 plugin: acks, resumption on the same node and on the
other node of a two-node region, the resume timeout handing messages to offline storage, h
mismatches, bad input, and a graceful shutdown whose clients resume on the surviving node."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import system_info
from tests.helpers.node import NodeProcess
from tests.helpers.topologies import logged_in, one_node, two_node_region
from tests.helpers.xmpp_client import Client
from tests.helpers.xmpp_raw import SM, RawClient, local

SM_SETTINGS = {"stream_management": {"ack_every": 2, "resume_timeout": 30}}


def body(el: object) -> str:
    b = el.find("{jabber:client}body")  # type: ignore[attr-defined]
    return b.text if b is not None else ""


def bodies(els: list) -> list[str]:  # type: ignore[type-arg]
    return [body(e) for e in els]


def accounts(*users: str) -> dict[str, str]:
    """Each user's password is ``<user>-secret``."""
    return {user: f"{user}-secret" for user in users}


def send_messages(sender: RawClient, to: str, texts: list[str]) -> None:
    for text in texts:
        sender.send(f"<message to='{to}' type='chat' id='{uuid.uuid4().hex[:8]}'><body>{text}</body></message>")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("sm-node"), "sm1", users=accounts("alice", "bob", "eve", "sam"),
                  settings={"modules": SM_SETTINGS}) as n:
        yield n


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with two_node_region(tmp_path_factory.mktemp("sm-region"), users=accounts("alice", "bob"),
                         settings={"modules": SM_SETTINGS}) as nodes:
        yield nodes


@pytest.fixture
async def bob(node: NodeProcess) -> AsyncIterator[RawClient]:
    c = RawClient(node.port, node.cert)
    await c.start("bob", "bob-secret", "desk", sm=False)
    yield c
    await c.close()


async def test_enable_and_acks_both_ways(node: NodeProcess, bob: RawClient) -> None:
    alice = RawClient(node.port, node.cert)
    await alice.connect()
    features = await alice.login("alice", "alice-secret")
    assert features.find(f"{{{SM}}}sm") is not None  # offered after authentication
    await alice.bind("acks")
    enabled = await alice.enable()
    assert local(enabled) == "enabled" and enabled.get("resume") == "true" and enabled.get("id")
    assert int(enabled.get("max", "0")) == 30
    # The server asks for an ack after ack_every (2) stanzas.
    send_messages(bob, "alice@localhost/acks", ["one", "two"])
    await alice.messages(2)
    r = await alice.next_named("r")
    assert r.tag == f"{{{SM}}}r"
    alice.send(f"<a xmlns='{SM}' h='2'/>")
    # Our own stanzas are counted: three sent, <r/> answered with h=3.
    for i in range(3):
        alice.send(f"<message to='bob@localhost/desk' type='chat'><body>from alice {i}</body></message>")
    alice.send(f"<r xmlns='{SM}'/>")
    a = await alice.next_named("a")
    assert a.get("h") == "3"
    assert bodies(await bob.messages(3)) == ["from alice 0", "from alice 1", "from alice 2"]
    # Enabling twice is refused, the stream stays up.
    second = await alice.enable()
    assert local(second) == "failed"
    assert second.find("{urn:ietf:params:xml:ns:xmpp-stanzas}unexpected-request") is not None
    alice.send(f"<r xmlns='{SM}'/>")
    assert (await alice.next_named("a")).get("h") == "3"
    await alice.close()


async def test_resume_on_the_same_node_resends_only_unacked_once_in_order(node: NodeProcess, bob: RawClient) -> None:
    alice = RawClient(node.port, node.cert)
    enabled = await alice.start("alice", "alice-secret", "same")
    previd = enabled.get("id")
    send_messages(bob, "alice@localhost/same", ["m1", "m2", "m3"])
    assert bodies(await alice.messages(3)) == ["m1", "m2", "m3"]
    alice.send(f"<a xmlns='{SM}' h='1'/>")  # m1 acknowledged, m2 and m3 not
    alice.send("<message to='bob@localhost/desk' type='chat'><body>before the crash</body></message>")
    assert bodies(await bob.messages(1)) == ["before the crash"]
    alice.die()
    await asyncio.sleep(0.3)
    send_messages(bob, "alice@localhost/same", ["m4", "m5"])  # while detached
    await asyncio.sleep(0.3)
    again = await logged_in(node, "alice", "alice-secret")
    resumed = await again.resume(previd, 1)
    assert local(resumed) == "resumed", resumed.attrib
    assert resumed.get("h") == "1"  # the one message alice sent was handled
    assert bodies(await again.messages(4)) == ["m2", "m3", "m4", "m5"]
    send_messages(bob, "alice@localhost/same", ["m6"])
    assert bodies(await again.messages(1)) == ["m6"]  # nothing else came before it: no duplicate
    # Still the same session: the counters went on (4 resent + m6 since h=1: 6 sent in all).
    again.send(f"<a xmlns='{SM}' h='6'/>")
    again.send(f"<r xmlns='{SM}'/>")
    assert (await again.next_named("a")).get("h") == "1"
    await again.close()


async def test_resume_while_the_old_connection_still_looks_alive(node: NodeProcess, bob: RawClient) -> None:
    """The client saw its network die before the server did: the new stream takes the session over
    and the old connection is closed."""
    alice = RawClient(node.port, node.cert)
    previd = (await alice.start("alice", "alice-secret", "halfopen")).get("id")
    send_messages(bob, "alice@localhost/halfopen", ["h1"])
    assert bodies(await alice.messages(1)) == ["h1"]
    again = await logged_in(node, "alice", "alice-secret")
    resumed = await again.resume(previd, 0)
    assert local(resumed) == "resumed"
    assert bodies(await again.messages(1)) == ["h1"]
    err = await alice.next_named("error")
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}conflict") is not None
    send_messages(bob, "alice@localhost/halfopen", ["h2"])
    assert bodies(await again.messages(1)) == ["h2"]
    await again.close()


async def test_an_idle_stream_is_asked_for_an_ack_after_ack_after(tmp_path: Path) -> None:
    """One unacknowledged stanza and then silence: the server still asks (ack_after), not only
    when the next stanza goes out."""
    with one_node(tmp_path, "sma", users=accounts("alice", "bob"),
                  settings={"modules": {"stream_management": {"ack_after": 1.0, "ack_every": 100}}}) as n:
        bob = RawClient(n.port, n.cert)
        await bob.start("bob", "bob-secret", "desk", sm=False)
        alice = RawClient(n.port, n.cert)
        await alice.start("alice", "alice-secret", "idle")
        send_messages(bob, "alice@localhost/idle", ["lonely"])
        assert bodies(await alice.messages(1)) == ["lonely"]
        r = await alice.next_named("r", timeout=5)
        assert r.tag == f"{{{SM}}}r"
        await alice.close()
        await bob.close()


async def test_resume_timeout_sends_unacked_and_queued_messages_to_offline_storage(
        tmp_path: Path) -> None:
    with one_node(tmp_path, "smt", users=accounts("alice", "bob"),
                  settings={"modules": {"stream_management": {"resume_timeout": 1}}}) as n:
        bob = RawClient(n.port, n.cert)
        await bob.start("bob", "bob-secret", "desk", sm=False)
        alice = RawClient(n.port, n.cert)
        enabled = await alice.start("alice", "alice-secret", "phone")
        assert enabled.get("max") == "1"
        send_messages(bob, "alice@localhost/phone", ["unacked"])
        assert bodies(await alice.messages(1)) == ["unacked"]
        alice.die()
        await asyncio.sleep(0.3)
        send_messages(bob, "alice@localhost/phone", ["while away"])
        await asyncio.sleep(2.5)  # past the resume timeout
        late = await logged_in(n, "alice", "alice-secret")
        failed = await late.resume(enabled.get("id"), 0)
        assert local(failed) == "failed"
        assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
        await late.bind("laptop")
        late.send("<presence/>")
        got = await late.messages(2)
        assert bodies(got) == ["unacked", "while away"]
        assert all(m.find("{urn:xmpp:delay}delay") is not None for m in got)  # from offline storage
        await late.close()
        await bob.close()


async def test_a_client_that_never_acks_is_closed_and_loses_nothing(tmp_path: Path) -> None:
    with one_node(tmp_path, "smq", users=accounts("alice", "bob"), settings={"modules": {"stream_management": {
            "max_unacked": 3, "ack_every": 100}}}) as n:
        bob = RawClient(n.port, n.cert)
        await bob.start("bob", "bob-secret", "desk", sm=False)
        alice = RawClient(n.port, n.cert)
        await alice.start("alice", "alice-secret", "mute")
        send_messages(bob, "alice@localhost/mute", [f"q{i}" for i in range(6)])
        err = await alice.next_named("error")
        assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
        await asyncio.sleep(0.5)
        back = RawClient(n.port, n.cert)
        await back.start("alice", "alice-secret", "fresh", sm=False)
        back.send("<presence/>")
        assert bodies(await back.messages(6)) == [f"q{i}" for i in range(6)]  # all of them, in order
        await back.close()
        await bob.close()


async def test_h_mismatch_and_bad_input(node: NodeProcess, bob: RawClient) -> None:
    alice = RawClient(node.port, node.cert)
    previd = (await alice.start("alice", "alice-secret", "bad")).get("id")
    send_messages(bob, "alice@localhost/bad", ["x"])
    await alice.messages(1)
    alice.die()
    await asyncio.sleep(0.3)
    # Resuming with an h above what was sent: failed, and the session stays resumable.
    c = await logged_in(node, "alice", "alice-secret")
    failed = await c.resume(previd, 5)
    assert local(failed) == "failed"
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}undefined-condition") is not None
    resumed = await c.resume(previd, 1)
    assert local(resumed) == "resumed"
    # A non-numeric h closes the stream with a stream error; the node stays up.
    c.send(f"<a xmlns='{SM}' h='abc'/>")
    err = await c.next_named("error")
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}bad-format") is not None
    # An ack above what was sent: undefined-condition.
    d = RawClient(node.port, node.cert)
    await d.start("alice", "alice-secret", "bad2")
    d.send(f"<a xmlns='{SM}' h='99'/>")
    err = await d.next_named("error")
    assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}undefined-condition") is not None


async def test_sm_elements_at_the_wrong_time_and_foreign_resumes(node: NodeProcess) -> None:
    c = await logged_in(node, "alice", "alice-secret")
    c.send(f"<enable xmlns='{SM}' resume='true'/>")  # before bind
    early = await c.next(lambda el: el.tag.startswith(f"{{{SM}}}"))
    assert local(early) == "failed"
    c.send(f"<resume xmlns='{SM}' previd='%%%not-an-id' h='0'/>")
    assert local(await c.next(lambda el: el.tag.startswith(f"{{{SM}}}"))) == "failed"
    await c.bind("late")
    c.send(f"<r xmlns='{SM}'/>")  # not enabled
    assert local(await c.next(lambda el: el.tag.startswith(f"{{{SM}}}"))) == "failed"
    c.send(f"<a xmlns='{SM}' h='0'/>")
    assert local(await c.next(lambda el: el.tag.startswith(f"{{{SM}}}"))) == "failed"
    enabled = await c.enable()
    assert local(enabled) == "enabled"
    # Another account cannot resume alice's session, even with its id.
    eve = await logged_in(node, "eve", "eve-secret")
    failed = await eve.resume(enabled.get("id"), 0)
    assert local(failed) == "failed"
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    # alice's session is untouched by the attempt.
    c.send(f"<r xmlns='{SM}'/>")
    assert local(await c.next_named("a")) == "a"
    await c.close()
    await eve.close()


async def test_slixmpp_xep_0198_resumes(node: NodeProcess, bob: RawClient) -> None:
    """slixmpp's own XEP-0198 plugin enables resumption and, reconnected after its socket died,
    resumes: what was sent meanwhile arrives, and no new session starts."""
    # An account of its own: the other tests leave unacked messages in alice's offline storage.
    alice = Client("sam@localhost/slix", "sam-secret", cert=node.cert)
    alice.register_plugin("xep_0198")
    alice.end_session_on_disconnect = False  # keep the SM state for a resumption
    await alice.online(node.port)
    sm_plugin = alice.plugin["xep_0198"]
    await asyncio.wait_for(_until(lambda: sm_plugin.sm_id is not None), 10)
    send_messages(bob, "sam@localhost/slix", ["s1"])
    assert (await alice.next_message()).get("body") == "s1"
    resumed = asyncio.get_running_loop().create_future()
    alice.add_event_handler("session_resumed", lambda _e: resumed.done() or resumed.set_result(True))
    starts: list[object] = []
    alice.add_event_handler("session_start", starts.append)
    gone = alice.disconnected
    alice.transport.abort()  # type: ignore[union-attr]
    await asyncio.wait_for(gone, 5)
    send_messages(bob, "sam@localhost/slix", ["s2"])
    await asyncio.sleep(0.2)
    alice.connect("127.0.0.1", node.port)
    await asyncio.wait_for(resumed, 15)
    assert (await alice.next_message(10)).get("body") == "s2"
    assert starts == []  # resumed, not a new session
    await alice.close()


async def _until(check) -> None:  # type: ignore[no-untyped-def]
    while not check():
        await asyncio.sleep(0.05)


# -- two nodes of a region --------------------------------------------------------------------------


async def test_resume_on_the_other_node_of_the_region(region: list[NodeProcess]) -> None:
    r1, r2 = region
    bob = RawClient(r2.port, r2.cert)
    await bob.start("bob", "bob-secret", "desk", sm=False)
    alice = RawClient(r1.port, r1.cert)
    previd = (await alice.start("alice", "alice-secret", "roam")).get("id")
    send_messages(bob, "alice@localhost/roam", ["a1", "a2"])
    assert bodies(await alice.messages(2)) == ["a1", "a2"]
    alice.send(f"<a xmlns='{SM}' h='1'/>")
    await asyncio.sleep(0.1)
    alice.die()
    await asyncio.sleep(0.3)
    send_messages(bob, "alice@localhost/roam", ["a3", "a4"])
    await asyncio.sleep(0.3)
    moved = await logged_in(r2, "alice", "alice-secret")
    resumed = await moved.resume(previd, 1)
    assert local(resumed) == "resumed", resumed.attrib
    assert bodies(await moved.messages(3)) == ["a2", "a3", "a4"]
    send_messages(bob, "alice@localhost/roam", ["a5"])
    assert bodies(await moved.messages(1)) == ["a5"]
    # Both members see the session on r2 now, without a conflict.
    for n in region:
        info = system_info(n)
        assert info["conflictTables"] == []
    # And from r1 too it is routable.
    carol = RawClient(r1.port, r1.cert)
    await carol.start("bob", "bob-secret", "other", sm=False)
    send_messages(carol, "alice@localhost/roam", ["from r1"])
    assert bodies(await moved.messages(1)) == ["from r1"]
    await moved.close()
    await bob.close()
    await carol.close()


async def test_graceful_shutdown_then_resume_on_the_survivor(tmp_path: Path) -> None:
    with two_node_region(tmp_path, names=("g1", "g2"), users=accounts("alice", "bob")) as (g1, g2):
        bob = RawClient(g2.port, g2.cert)
        await bob.start("bob", "bob-secret", "desk", sm=False)
        alice = RawClient(g1.port, g1.cert)
        previd = (await alice.start("alice", "alice-secret", "phone")).get("id")
        send_messages(bob, "alice@localhost/phone", ["b1"])
        assert bodies(await alice.messages(1)) == ["b1"]
        g1.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        err = await alice.next_named("error", timeout=10)
        assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}system-shutdown") is not None
        await asyncio.get_running_loop().run_in_executor(None, g1.proc.wait, 20)  # type: ignore[union-attr]
        send_messages(bob, "alice@localhost/phone", ["b2"])
        await asyncio.sleep(0.3)
        moved = await logged_in(g2, "alice", "alice-secret")
        resumed = await moved.resume(previd, 0)
        assert local(resumed) == "resumed", resumed.attrib
        assert bodies(await moved.messages(2)) == ["b1", "b2"]
        await moved.close()
        await bob.close()
