"""c2s and offline settings that change behaviour, each seen on the wire of a real node:
``c2s.resource_conflict`` (refuse, rename; kick_old is in test_im.py), ``c2s.handshake_timeout``,
``c2s.idle_timeout``, ``c2s.park_parser_after``, ``offline.max_messages`` and ``scram_iterations``.  Two nodes, so that
each timeout can be told from the other (the one that fires is the short one)."""

from __future__ import annotations

import asyncio
import base64
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.raw import HEADER, read_all, stream_error
from tests.helpers.xmpp_client import Client
from tests.helpers.xmpp_raw import RawClient, local

STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"
USERS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
SCRAM_ITERATIONS = 10_000


def _node(tmp_path_factory: pytest.TempPathFactory, name: str, settings: dict[str, dict[str, object]]) -> NodeProcess:
    n = NodeProcess(tmp_path_factory.mktemp(name), name=name, settings=settings)
    for user, password in USERS.items():
        n.register(user, password)
    return n.start()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """refuse a resource in use, 1 s to finish the handshake, 2 offline messages per user."""
    n = _node(tmp_path_factory, "strict", {"c2s": {"resource_conflict": "refuse", "handshake_timeout": 1.0,
                                                   "idle_timeout": 600.0, "park_parser_after": 0.4},
                                           "offline": {"max_messages": 2}})
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """rename a resource in use, 2 s of silence closes a session, the default handshake (30 s),
    passwords hashed with more PBKDF2 rounds than the default."""
    n = _node(tmp_path_factory, "lenient", {"c2s": {"resource_conflict": "rename", "idle_timeout": 2.0},
                                            "scram_iterations": SCRAM_ITERATIONS})
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


async def _ping(c: RawClient, iq_id: str) -> ET.Element:
    c.send(f"<iq type='get' id='{iq_id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    return await c.next(lambda el: el.get("id") == iq_id)


async def test_refuse_answers_conflict_to_the_new_bind_and_keeps_the_old(strict: NodeProcess) -> None:
    old = RawClient(strict.port, strict.cert)
    new = RawClient(strict.port, strict.cert)
    try:
        await old.start("alice", USERS["alice"], "same", sm=False)
        await new.connect()
        await new.login("alice", USERS["alice"])
        new.send("<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 "<resource>same</resource></bind></iq>")
        reply = await new.next(lambda el: el.get("id") == "b2")
        assert reply.get("type") == "error", ET.tostring(reply)
        assert reply.find(f".//{{{STANZAS}}}conflict") is not None, ET.tostring(reply)
        assert (await _ping(old, "p1")).get("type") == "result"  # the old session is untouched
    finally:
        await old.close()
        await new.close()


async def test_rename_gives_the_new_session_another_resource(lenient: NodeProcess) -> None:
    old = RawClient(lenient.port, lenient.cert)
    new = RawClient(lenient.port, lenient.cert)
    try:
        await old.start("alice", USERS["alice"], "same", sm=False)
        await new.connect()
        await new.login("alice", USERS["alice"])
        jid = await new.bind("same")
        assert jid.startswith("alice@localhost/same-") and jid != old.jid, jid
        assert (await _ping(old, "p1")).get("type") == "result"  # both live
        assert (await _ping(new, "p2")).get("type") == "result"
    finally:
        await old.close()
        await new.close()


async def test_handshake_timeout_closes_a_stream_that_never_authenticates(strict: NodeProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.port)
    try:
        started = time.monotonic()
        writer.write(HEADER)  # then nothing: no STARTTLS, no SASL
        data = await read_all(reader, timeout=20)
        assert stream_error(data, "connection-timeout"), data
        assert time.monotonic() - started < 15  # the 1 s handshake timeout, not the idle one (600 s)
    finally:
        writer.close()


async def test_idle_timeout_closes_a_silent_session(lenient: NodeProcess) -> None:
    c = RawClient(lenient.port, lenient.cert)
    try:
        await c.start("bob", USERS["bob"], "quiet", sm=False)
        started = time.monotonic()
        error = await c.next(lambda el: local(el) == "error", timeout=20)  # the default handshake: 30 s
        assert error.find(f"{{{STREAMS}}}connection-timeout") is not None, ET.tostring(error)
        assert time.monotonic() - started >= 1.5  # after the 2 s of silence, not at once
    finally:
        await c.close()


async def test_offline_storage_keeps_max_messages_and_refuses_the_next(strict: NodeProcess) -> None:
    a = await Client("alice@localhost/desk", USERS["alice"], cert=strict.cert).online(strict.port)
    try:
        for i in range(3):
            a.send_message(mto="carol@localhost", mbody=f"offline {i}", mtype="chat")
        # The third does not fit: the sender learns it (XEP-0160 §3), the first two are kept.
        error = await a.next_message(timeout=10, body=False)
        assert error["type"] == "error" and error["error"]["condition"] == "service-unavailable", error
        c = await Client("carol@localhost/phone", USERS["carol"], cert=strict.cert).online(strict.port)
        try:
            got = [await c.next_message(timeout=10) for _ in range(2)]
            assert [m["body"] for m in got] == ["offline 0", "offline 1"]
            assert all(m["delay"]["stamp"] is not None for m in got)  # from storage, not live
            with pytest.raises(TimeoutError):
                await c.next_message(timeout=1)  # and not the third
        finally:
            await c.close()
    finally:
        await a.close()


async def _parked(node: NodeProcess) -> int:
    status, text = await node.http("GET", f"{node.admin_url}/metrics", auth=("admin", "admin-secret-for-tests"))
    assert status == 200
    line = next(x for x in text.splitlines() if x.startswith("meridian_c2s_parsers_parked_total "))
    return int(float(line.split()[1]))


async def test_an_idle_stream_parks_its_parser_and_goes_on_where_it_was(strict: NodeProcess) -> None:
    """``park_parser_after`` 0.4 s: both sessions fall silent, their parsers are parked (counted),
    and the next stanzas — an extension namespace, non-ASCII text, xml:lang — arrive whole."""
    alice, bob = RawClient(strict.port, strict.cert), RawClient(strict.port, strict.cert)
    try:
        await alice.start("alice", USERS["alice"], "quiet", sm=False)
        await bob.start("bob", USERS["bob"], "quiet", sm=False)
        before = await _parked(strict)
        deadline = time.monotonic() + 10
        while await _parked(strict) < before + 2:
            assert time.monotonic() < deadline, "no parser parked"
            await asyncio.sleep(0.1)
        for n in range(2):  # parked again between the two rounds
            bob.send(f"<message to='alice@localhost/quiet' type='chat' xml:lang='fr' id='p{n}'><body>après {n}</body>"
                     "<x xmlns='urn:example:ext'><y a='1'/></x></message>")
            got = await alice.next(lambda el: local(el) == "message")
            assert got.get("id") == f"p{n}" and got.findtext("{jabber:client}body") == f"après {n}"
            assert got.find("{urn:example:ext}x/{urn:example:ext}y") is not None, ET.tostring(got)
            assert got.get("{http://www.w3.org/XML/1998/namespace}lang") == "fr"
            alice.send(f"<message to='bob@localhost/quiet' type='chat' id='r{n}'><body>reçu {n}</body></message>")
            back = await bob.next(lambda el: local(el) == "message")
            assert back.get("id") == f"r{n}" and back.findtext("{jabber:client}body") == f"reçu {n}"
            parked = await _parked(strict)
            while await _parked(strict) < parked + 2:
                assert time.monotonic() < deadline + 10 * (n + 1), "not parked again"
                await asyncio.sleep(0.1)
    finally:
        await alice.close()
        await bob.close()


async def scram_challenge(node: NodeProcess, user: str) -> dict[str, str]:
    """The server's first SCRAM-SHA-1 message for ``user``, as attribute -> value."""
    c = await RawClient(node.port, node.cert).connect()
    try:
        first = base64.b64encode(f"n,,n={user},r=fyko+d2lbbFgONRv9qkxdawL".encode()).decode()
        c.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{first}</auth>")
        challenge = await c.next()
        assert local(challenge) == "challenge", ET.tostring(challenge)
        text = base64.b64decode(challenge.text or "").decode()
        return dict(part.split("=", 1) for part in text.split(","))
    finally:
        await c.close()


async def test_an_unknown_user_gets_the_same_scram_challenge_as_a_real_one(lenient: NodeProcess) -> None:
    """``scram_iterations`` raised: a real account's challenge names that count, and so does a
    missing account's decoy, with a salt that stays the same from one try to the next — the
    challenge does not tell a guesser which accounts exist."""
    real = await scram_challenge(lenient, "alice")
    assert int(real["i"]) == SCRAM_ITERATIONS and len(base64.b64decode(real["s"])) == 16, real
    decoy = await scram_challenge(lenient, "nobody")
    again = await scram_challenge(lenient, "nobody")
    assert int(decoy["i"]) == SCRAM_ITERATIONS and len(base64.b64decode(decoy["s"])) == 16, decoy
    assert decoy["s"] == again["s"] and decoy["s"] != real["s"]
