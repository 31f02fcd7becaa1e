"""XEP-0388 SASL2, XEP-0386 Bind 2 and XEP-0484 FAST against real ``meridian node`` processes.

* xmpp.js (a client no one here wrote) logs in to a node with its default configuration through
  SASL2 + Bind 2 + inline stream management, gets a FAST token, and logs in again with it — after
  a graceful logout (a new session) and after a dead socket (FAST and an inline resumption in the
  same round trip).  The node says so too: its ``fast status`` query counts the token logins.
* Raw sockets check what is on the wire: the advertised feature, each mechanism, Bind 2's inline
  features, no restart, failures that leave the stream open, the errors XEP-0388 asks for, FAST's
  replay counter, rotation, invalidation, revocation by the operator and by a password change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from cluster_node.net.control import control_socket, query_control
from tests.helpers.node import NodeProcess
from tests.helpers.topologies import fresh, secret
from tests.helpers.xmpp_raw import SM, RawClient, local
from tests.helpers.xmppjs import js_client, node_binary

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
SASL2 = "urn:xmpp:sasl:2"
BIND2 = "urn:xmpp:bind:0"
FAST = "urn:xmpp:fast:0"
CARBONS = "urn:xmpp:carbons:2"
CSI = "urn:xmpp:csi:0"
DOMAIN = "localhost"

needs_node = pytest.mark.skipif(node_binary() is None, reason="Node.js is not installed")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with its default configuration (every built-in module, FAST among them)."""
    n = NodeProcess(tmp_path_factory.mktemp("sasl2"), name="s2")
    n.start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()




async def control(node: NodeProcess, category: str, op: str, **args: str) -> Any:
    status, body = await query_control(control_socket(node.workdir / "data"), category, op, args)
    assert status == 200, body
    return body["data"][category][op]


# -- a raw SASL2 client -----------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plain(user: str, password: str) -> bytes:
    return f"\0{user}\0{password}".encode()


def ht_response(user: str, token: str) -> bytes:
    return user.encode() + b"\0" + hmac.new(token.encode(), b"Initiator", "sha256").digest()


def authenticate(mechanism: str, initial: bytes | None, *, agent: str | None = None, inner: str = "") -> str:
    ir = f"<initial-response>{b64(initial)}</initial-response>" if initial is not None else ""
    ua = (f"<user-agent id='{agent}'><software>rawtest</software><device>ci</device></user-agent>"
          if agent else "")
    return f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>{ir}{ua}{inner}</authenticate>"


def bind(tag: str | None = "raw", inner: str = "") -> str:
    return f"<bind xmlns='{BIND2}'>" + (f"<tag>{tag}</tag>" if tag else "") + inner + "</bind>"


async def connected(node: NodeProcess) -> RawClient:
    return await RawClient(node.port, node.cert, domain=DOMAIN).connect()


async def outcome(c: RawClient) -> ET.Element:
    """The next SASL2 <success/>, <failure/> or <challenge/>."""
    return await c.next(lambda el: el.tag.startswith(f"{{{SASL2}}}"))


def condition(failure: ET.Element) -> str | None:
    for child in failure:
        if child.tag.startswith(f"{{{SASL}}}"):
            return local(child)
    return None


def child(el: ET.Element, namespace: str, name: str) -> ET.Element | None:
    return el.find(f"{{{namespace}}}{name}")


async def sasl2_login(node: NodeProcess, user: str, *, agent: str | None = None, inner: str = "",
                      password: str | None = None) -> tuple[RawClient, ET.Element]:
    c = await connected(node)
    c.send(authenticate("PLAIN", plain(user, password or secret(user)), agent=agent, inner=inner))
    return c, await outcome(c)


# -- xmpp.js ----------------------------------------------------------------------------------------


@needs_node
async def test_xmppjs_logs_in_with_sasl2_bind2_sm_and_then_with_fast(node: NodeProcess) -> None:
    a, b = fresh(node, "alice"), fresh(node, "bob")
    before = await control(node, "fast", "status")
    bob = RawClient(node.port, node.cert, domain=DOMAIN)
    await bob.start(b, secret(b), "desk", sm=False)
    async with js_client(f"xmpp://127.0.0.1:{node.port}", domain=DOMAIN, username=a,
                         password=secret(a), resource="js", ca=node.cert) as alice:
        # 1. password login: SASL2 (xmpp.js' SCRAM-SHA-1) + Bind 2 + inline SM, and a token asked for
        first = await alice.wait_event("authenticate", timeout=20)
        assert first["mechanism"] == "SCRAM-SHA-1" and first["bind"] and first["request_token"] and not first["fast"]
        success = await alice.wait_event("sasl2_success", timeout=20)
        assert success["jid"] == f"{a}@{DOMAIN}/js", success
        assert "bound" in success["children"] and "token" in success["children"]
        online = await alice.wait_event("online", timeout=20)
        assert online["jid"] == f"{a}@{DOMAIN}/js"
        enabled = await alice.wait_event("sm_enabled", timeout=20)
        assert enabled["resume"] in (True, "true") and enabled["id"]
        token = await alice.fast_token()
        assert token is not None and token["mechanism"] == "HT-SHA-256-NONE" and len(token["token"]) > 64
        assert not alice.of("sasl2_failure")
        after_first = await control(node, "fast", "status")
        assert after_first["issued"] == before["issued"] + 1
        assert after_first["logins"] == before["logins"]

        bob.send(f"<message to='{a}@{DOMAIN}/js' type='chat'><body>one</body></message>")
        await alice.messages_until(1)

        # 2. log out, log in again: xmpp.js uses the token (HT-SHA-256-NONE), one round trip
        await alice.restart()
        second = await alice.wait_event("authenticate", timeout=20)
        assert second["mechanism"] == "HT-SHA-256-NONE" and second["fast"] and second["bind"], second
        assert not second["resume"]  # a new session: stream management starts over
        success2 = await alice.wait_event("sasl2_success", timeout=20)
        assert success2["jid"] == f"{a}@{DOMAIN}/js" and "bound" in success2["children"], success2
        online2 = await alice.wait_event("online", timeout=20)
        await alice.wait_event("sm_enabled", timeout=20)
        assert not alice.of("sasl2_failure"), alice.of("sasl2_failure")
        after_second = await control(node, "fast", "status")
        assert after_second["logins"] == before["logins"] + 1, after_second  # the server saw a token login
        bob.send(f"<message to='{a}@{DOMAIN}/js' type='chat'><body>two</body></message>")
        await alice.messages_until(2)

        # 3. a dead socket: xmpp.js reconnects with the token and resumes inline, one round trip
        await alice.kill_socket()
        bob.send(f"<message to='{a}@{DOMAIN}/js' type='chat'><body>three</body></message>")
        third = await alice.wait_event("authenticate", timeout=20)
        assert third["mechanism"] == "HT-SHA-256-NONE" and third["fast"] and third["resume"], third
        resumed = await alice.wait_event("sm_resumed", timeout=20)
        await alice.messages_until(3)
        assert [m["body"] for m in alice.messages] == ["one", "two", "three"]
        assert len(alice.of("online")) == 2  # the resumption bound nothing
        after_third = await control(node, "fast", "status")
        assert after_third["logins"] == before["logins"] + 2
        print(f"\nxmpp.js login times (ms since 'connecting'): password (SCRAM-SHA-1) {online['ms']}, "
              f"FAST {online2['ms']}, FAST + resume {resumed['ms']}")
    await bob.close()
    assert f"fast: {a}@localhost logged in with a token" in node.log_path.read_text(errors="replace")


# -- raw sockets: SASL2 and Bind 2 ---------------------------------------------------------------------


def scram_first(user: str, nonce: str) -> bytes:
    return f"n,,n={user},r={nonce}".encode()


def scram_final(user: str, password: str, nonce: str, server_first: bytes) -> tuple[bytes, bytes]:
    """(client-final-message, the server signature to expect) for SCRAM-SHA-256."""
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    without_proof = f"c={b64(b'n,,')},r={attrs['r']}"
    auth_message = f"n={user},r={nonce},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return (f"{without_proof},p={b64(proof)}".encode(),
            b"v=" + base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest()))


async def test_the_feature_lists_mechanisms_bind2_and_inline_features(node: NodeProcess) -> None:
    c = await connected(node)
    assert c.features is not None
    auth = child(c.features, SASL2, "authentication")
    assert auth is not None
    assert [m.text for m in auth.findall(f"{{{SASL2}}}mechanism")] == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    inline = child(auth, SASL2, "inline")
    assert inline is not None
    bind2 = child(inline, BIND2, "bind")
    assert bind2 is not None
    assert {f.get("var") for f in bind2.iter(f"{{{BIND2}}}feature")} == {SM, CARBONS, CSI}
    assert child(inline, SM, "sm") is not None
    fast = child(inline, FAST, "fast")
    assert fast is not None and [m.text for m in fast] == ["HT-SHA-256-NONE"]
    await c.close()


async def test_plain_with_bind2_and_inline_features_no_restart(node: NodeProcess) -> None:
    a, b = fresh(node, "alice"), fresh(node, "bob")
    bob = RawClient(node.port, node.cert, domain=DOMAIN)
    await bob.start(b, secret(b), "desk", sm=False)
    inner = bind("raw", f"<enable xmlns='{SM}' resume='true'/><enable xmlns='{CARBONS}'/><inactive xmlns='{CSI}'/>")
    alice, success = await sasl2_login(node, a, agent=str(uuid.uuid4()), inner=inner)
    assert local(success) == "success", ET.tostring(success)
    assert success.findtext(f"{{{SASL2}}}authorization-identifier") == f"{a}@{DOMAIN}/raw"
    bound = child(success, BIND2, "bound")
    assert bound is not None
    enabled = child(bound, SM, "enabled")
    assert enabled is not None and enabled.get("resume") == "true"
    features = await alice.next()  # right after <success/>, on the same stream: no restart
    assert local(features) == "features"
    assert child(features, "urn:ietf:params:xml:ns:xmpp-bind", "bind") is None and child(features, SM, "sm") is None
    bob.send(f"<message to='{a}@{DOMAIN}/raw' type='chat'><body>to raw</body></message>")
    msg = await alice.next_named("message")
    assert msg.findtext("{jabber:client}body") == "to raw"
    alice.send(f"<r xmlns='{SM}'/>")
    ack = await alice.next_named("a")
    assert ack.get("h") == "0"
    alice.send(f"<message to='{b}@{DOMAIN}/desk' type='chat'><body>from raw</body></message>")
    reply = await bob.next_named("message")
    assert reply.get("from") == f"{a}@{DOMAIN}/raw"
    await alice.close()
    await bob.close()


async def test_scram_sha_256_without_bind_then_rfc6120_bind(node: NodeProcess) -> None:
    a = fresh(node, "alice")
    c = await connected(node)
    nonce = b64(b"raw-nonce-123")
    c.send(authenticate("SCRAM-SHA-256", scram_first(a, nonce)))
    challenge = await outcome(c)
    assert local(challenge) == "challenge"
    final, verifier = scram_final(a, secret(a), nonce, base64.b64decode(challenge.text or ""))
    c.send(f"<response xmlns='{SASL2}'>{b64(final)}</response>")
    success = await outcome(c)
    assert local(success) == "success", ET.tostring(success)
    assert base64.b64decode(success.findtext(f"{{{SASL2}}}additional-data") or "") == verifier
    assert success.findtext(f"{{{SASL2}}}authorization-identifier") == f"{a}@{DOMAIN}"
    features = await c.next_named("features")
    assert child(features, "urn:ietf:params:xml:ns:xmpp-bind", "bind") is not None
    assert await c.bind("legacy") == f"{a}@{DOMAIN}/legacy"
    enabled = await c.enable()
    assert local(enabled) == "enabled"
    await c.close()


async def test_failures_keep_the_stream_and_the_node_up(node: NodeProcess) -> None:
    a = fresh(node, "alice")
    c = await connected(node)
    c.send(authenticate("PLAIN", plain(a, "wrong")))
    failure = await outcome(c)
    assert local(failure) == "failure" and condition(failure) == "not-authorized"
    c.send(authenticate("X-UNKNOWN", b"x"))
    assert condition(await outcome(c)) == "invalid-mechanism"
    c.send(authenticate("PLAIN", plain(a, secret(a)), inner=bind("after-failures")))
    success = await outcome(c)
    assert local(success) == "success"
    assert success.findtext(f"{{{SASL2}}}authorization-identifier") == f"{a}@{DOMAIN}/after-failures"
    await c.close()

    for data, expected in ((f"<abort xmlns='{SASL2}'/>", "aborted"),
                           (f"<next xmlns='{SASL2}' task='TOTP'/>", "malformed-request"),
                           (authenticate("PLAIN", plain(a, secret(a)))
                            .replace("mechanism='PLAIN'", "mechanism='PLAIN' upgrade='SCRAM-SHA-512'"),
                            "invalid-mechanism"),
                           (f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>%%%"
                            f"</initial-response></authenticate>", "incorrect-encoding")):
        c = await connected(node)
        c.send(data)
        failure = await outcome(c)
        assert local(failure) == "failure" and condition(failure) == expected, ET.tostring(failure)
        await c.close()


async def test_a_stanza_during_the_exchange_ends_the_stream(node: NodeProcess) -> None:
    a, b = fresh(node, "alice"), fresh(node, "bob")
    c = await connected(node)
    c.send(authenticate("SCRAM-SHA-256", scram_first(a, "n0nce")))
    assert local(await outcome(c)) == "challenge"
    c.send(f"<message to='{b}@{DOMAIN}'><body>too early</body></message>")
    error = await c.next_named("error")
    assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
    await c.close()
    # the node is still up
    c2, success = await sasl2_login(node, a)
    assert local(success) == "success"
    await c2.close()


async def test_bind2_resource_is_stable_per_client_and_replaces_its_old_session(node: NodeProcess) -> None:
    dave = fresh(node, "dave")
    ua_a, ua_b = str(uuid.uuid4()), str(uuid.uuid4())
    first, s1 = await sasl2_login(node, dave, agent=ua_a, inner=bind("phone"))
    assert s1.findtext(f"{{{SASL2}}}authorization-identifier") == f"{dave}@{DOMAIN}/phone"
    # another client with the same tag gets a resource of its own: nobody is kicked
    second, s2 = await sasl2_login(node, dave, agent=ua_b, inner=bind("phone"))
    other = s2.findtext(f"{{{SASL2}}}authorization-identifier") or ""
    assert other.startswith(f"{dave}@{DOMAIN}/phone.") and len(other.rsplit(".", 1)[1]) == 8, other
    assert ua_b not in other  # the user agent id itself is never shown
    # the first client again: the same resource, its earlier session replaced (XEP-0386 §3.2)
    third, s3 = await sasl2_login(node, dave, agent=ua_a, inner=bind("phone"))
    assert s3.findtext(f"{{{SASL2}}}authorization-identifier") == f"{dave}@{DOMAIN}/phone"
    error = await first.next_named("error")
    assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}conflict") is not None
    # the second client again: its own resource again
    fourth, s4 = await sasl2_login(node, dave, agent=ua_b, inner=bind("phone"))
    assert s4.findtext(f"{{{SASL2}}}authorization-identifier") == other
    assert (await second.next_named("error")).find("{urn:ietf:params:xml:ns:xmpp-streams}conflict") is not None
    for c in (third, fourth):
        await c.close()


async def test_inline_resume_in_sasl2(node: NodeProcess) -> None:
    a, b = fresh(node, "alice"), fresh(node, "bob")
    bob = RawClient(node.port, node.cert, domain=DOMAIN)
    await bob.start(b, secret(b), "desk2", sm=False)
    agent = str(uuid.uuid4())
    phone, success = await sasl2_login(node, a, agent=agent,
                                       inner=bind("resumable", f"<enable xmlns='{SM}' resume='true'/>"))
    enabled = child(child(success, BIND2, "bound"), SM, "enabled")  # type: ignore[arg-type]
    assert enabled is not None
    previd = enabled.get("id")
    for i in range(2):
        bob.send(f"<message to='{a}@{DOMAIN}/resumable' type='chat'><body>m{i}</body></message>")
    await phone.messages(2)
    phone.die()
    bob.send(f"<message to='{a}@{DOMAIN}/resumable' type='chat'><body>m2</body></message>")
    # resume inline (acknowledging the two it read) together with a bind, as xmpp.js does
    again, success = await sasl2_login(node, a, agent=agent,
                                       inner=f"<resume xmlns='{SM}' previd='{previd}' h='2'/>"
                                             + bind("resumable", f"<enable xmlns='{SM}' resume='true'/>"))
    assert local(success) == "success", ET.tostring(success)
    assert success.findtext(f"{{{SASL2}}}authorization-identifier") == f"{a}@{DOMAIN}/resumable"
    resumed = child(success, SM, "resumed")
    assert resumed is not None and resumed.get("previd") == previd and resumed.get("h") == "0"
    assert child(success, BIND2, "bound") is None  # resumed: nothing bound
    (msg,) = await again.messages(1)  # after <success/>: only the one never acknowledged
    assert msg.findtext("{jabber:client}body") == "m2"
    await again.close()
    # a resumption that fails: <failed/> inside <success/>, and the bind is done instead
    third, success = await sasl2_login(node, a, agent=agent,
                                       inner=f"<resume xmlns='{SM}' previd='{previd}' h='0'/>" + bind("fresh"))
    failed = child(success, SM, "failed")
    assert failed is not None and child(failed, "urn:ietf:params:xml:ns:xmpp-stanzas", "item-not-found") is not None
    assert child(success, BIND2, "bound") is not None
    assert success.findtext(f"{{{SASL2}}}authorization-identifier") == f"{a}@{DOMAIN}/fresh"
    await third.close()
    await bob.close()


# -- raw sockets: FAST --------------------------------------------------------------------------------


async def fast_login(node: NodeProcess, user: str, token: str, agent: str, fast: str = f"<fast xmlns='{FAST}'/>",
                     inner: str = "") -> ET.Element:
    c = await connected(node)
    c.send(authenticate("HT-SHA-256-NONE", ht_response(user, token), agent=agent, inner=fast + inner))
    result = await outcome(c)
    await c.close()
    return result


async def get_token(node: NodeProcess, user: str, agent: str, password: str | None = None) -> str:
    c, success = await sasl2_login(node, user, agent=agent, password=password,
                                   inner=f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>")
    await c.close()
    token = child(success, FAST, "token")
    assert token is not None, ET.tostring(success)
    assert token.get("expiry", "").endswith("Z")
    return token.get("token") or ""


async def test_fast_counter_wrong_client_and_revocation(node: NodeProcess) -> None:
    carol, dave = fresh(node, "carol"), fresh(node, "dave")
    agent = str(uuid.uuid4())
    token = await get_token(node, carol, agent)
    ok = await fast_login(node, carol, token, agent, f"<fast xmlns='{FAST}' count='1'/>", bind("fast"))
    assert local(ok) == "success", ET.tostring(ok)
    assert ok.findtext(f"{{{SASL2}}}authorization-identifier") == f"{carol}@{DOMAIN}/fast"
    assert base64.b64decode(ok.findtext(f"{{{SASL2}}}additional-data") or "") == \
        hmac.new(token.encode(), b"Responder", "sha256").digest()
    replay = await fast_login(node, carol, token, agent, f"<fast xmlns='{FAST}' count='1'/>")
    assert condition(replay) == "not-authorized"
    assert local(await fast_login(node, carol, token, agent, f"<fast xmlns='{FAST}' count='2'/>")) == "success"
    assert condition(await fast_login(node, carol, token, str(uuid.uuid4()))) == "not-authorized"
    assert condition(await fast_login(node, dave, token, agent)) == "not-authorized"
    listed = await control(node, "fast", "tokens", jid=f"{carol}@{DOMAIN}")
    assert len(listed) == 1 and listed[0]["name"] == "rawtest / ci" and token not in str(listed)
    # The operator revokes them through the admin API (GraphQL, also `meridian ctl fast revoke-tokens`).
    status, body = await node.admin(f"mutation {{ fast {{ revokeTokens(user: \"{carol}@localhost\") }} }}")
    assert status == 200 and not body.get("errors"), body
    assert body["data"]["fast"]["revokeTokens"]["revoked"] == 1
    assert condition(await fast_login(node, carol, token, agent)) == "not-authorized"
    status, body = await node.admin(f"{{ fast {{ listTokens(user: \"{carol}@localhost\") }} }}")
    assert status == 200 and body["data"]["fast"]["listTokens"] == [], body


async def test_a_password_change_ends_fast_tokens(node: NodeProcess) -> None:
    carol = fresh(node, "carol")  # its password changed here, on no other test's user
    agent = str(uuid.uuid4())
    token = await get_token(node, carol, agent)
    assert local(await fast_login(node, carol, token, agent)) == "success"
    status, body = await node.admin(f"mutation {{ account {{ changeUserPassword(user: \"{carol}@localhost\", "
                                    "newPassword: \"carol-new\") { message } } }")
    assert status == 200 and not body.get("errors"), body
    assert condition(await fast_login(node, carol, token, agent)) == "not-authorized"
    assert await get_token(node, carol, agent, password="carol-new")


async def test_fast_is_not_offered_in_sasl1(node: NodeProcess) -> None:
    c = await connected(node)
    mechanisms = child(c.features, SASL, "mechanisms")  # type: ignore[arg-type]
    assert mechanisms is not None and "HT-SHA-256-NONE" not in [m.text for m in mechanisms]
    c.send(f"<auth xmlns='{SASL}' mechanism='HT-SHA-256-NONE'>{b64(ht_response('alice', 'x' * 88))}</auth>")
    failure = await c.next_named("failure")
    assert failure.find(f"{{{SASL}}}invalid-mechanism") is not None
    await c.close()
