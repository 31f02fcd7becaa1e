"""The user GraphQL API of a running node: HTTP Basic as the user's own bare JID and
password (checked against the stored SCRAM keys), messages sent as that user arrive in slixmpp,
the user's resources and roster, a password change, and nothing for anyone else."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.topologies import fresh, secret
from tests.helpers.xmpp_client import AuthFailed, Client

# Registered with the node; nobody changes their passwords.  ``alice`` is the user of the refusal
# cases, ``bob`` the recipient of the documentation's example (test_send_message_as_the_user only).
ALICE = ("alice@localhost", "alice-secret")
BOB = ("bob@localhost", "bob-secret")
# MongooseIM's user API documentation, verbatim.
DOC_SEND = 'mutation {stanza {sendMessage(to: "bob@localhost", body: "Hi") {id}}}'


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("user-api"))
    for jid, password in (ALICE, BOB):
        n.register(jid.split("@")[0], password)
    n.start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


def fresh_jid(node: NodeProcess, prefix: str) -> tuple[str, str]:
    """(bare JID, password) of a user of the calling test's own (:func:`fresh`)."""
    name = fresh(node, prefix)
    return f"{name}@localhost", secret(name)


@pytest.mark.parametrize("auth", [None, ("alice@localhost", "wrong"), ("nobody@localhost", "x"),
                                  ("alice@localhost/res", "alice-secret"), ("localhost", "x"), ("@@", "x"),
                                  ("alice@elsewhere.org", "alice-secret")])
async def test_refused_without_the_users_credentials(node: NodeProcess, auth: tuple[str, str] | None) -> None:
    status, body = await node.user_api("{ session { listResources } }", auth)
    assert status == 401 and "credentials" in body["errors"][0]["message"]


async def test_send_message_as_the_user(node: NodeProcess) -> None:
    me = fresh_jid(node, "alice")
    a = me[0]
    alice = await Client(f"{a}/laptop", me[1], cert=node.cert).online(node.port)
    bob = await Client("bob@localhost/phone", BOB[1], cert=node.cert).online(node.port)
    try:
        status, body = await node.user_api(DOC_SEND, me)
        assert status == 200, body
        msg = await bob.next_message(timeout=10)
        assert msg["body"] == "Hi" and str(msg["from"]) == a
        assert msg["id"] == body["data"]["stanza"]["sendMessage"]["id"]
        # From one of the user's own full JIDs: fine; from someone else: refused.
        await node.user_api(f'mutation {{ stanza {{ sendMessage(from: "{a}/laptop", '
                            'to: "bob@localhost/phone", body: "full") { id } } }', me)
        msg = await bob.next_message(timeout=10)
        assert msg["body"] == "full" and str(msg["from"]) == f"{a}/laptop"
        status, body = await node.user_api('mutation { stanza { sendMessage(from: "bob@localhost", '
                                           f'to: "{a}", body: "spoof") {{ id }} }} }}', me)
        assert f"must be {a}" in body["errors"][0]["message"]
        with pytest.raises(asyncio.TimeoutError):
            await alice.next_message(timeout=1)
        _, body = await node.user_api("{ session { listResources countResources } }", me)
        assert body["data"]["session"] == {"listResources": ["laptop"], "countResources": 1}
    finally:
        await alice.close()
        await bob.close()


async def test_roster_and_password(node: NodeProcess) -> None:
    alice, bob = fresh_jid(node, "alice"), fresh_jid(node, "bob")  # bob's password changed here: its own bob
    a, b = alice[0], bob[0]
    status, body = await node.admin(f'mutation {{ roster {{ addContact(user: "{a}", '
                                    f'contact: "{b}", name: "Bobby") }} }}')
    assert status == 200, body
    _, body = await node.user_api("{ roster { listContacts { jid name subscription } } }", alice)
    assert body["data"]["roster"]["listContacts"] == [{"jid": b, "name": "Bobby",
                                                       "subscription": "NONE"}]
    _, body = await node.user_api("{ roster { listContacts { jid } } }", bob)
    assert body["data"]["roster"]["listContacts"] == []  # bob sees his own roster only
    _, body = await node.user_api('mutation { account { changePassword(newPassword: "   ") } }', bob)
    assert "password" in body["errors"][0]["message"]
    _, body = await node.user_api('mutation { account { changePassword(newPassword: "bob-new-secret") } }', bob)
    assert body["data"]["account"]["changePassword"] == "Password changed"
    assert (await node.user_api("{ session { countResources } }", bob))[0] == 401
    assert (await node.user_api("{ session { countResources } }", (b, "bob-new-secret")))[0] == 200
    with pytest.raises(AuthFailed) as refused:
        await Client(f"{b}/x", bob[1], cert=node.cert).login(node.port)
    assert refused.value.sasl == "not-authorized", refused.value
    client = await Client(f"{b}/x", "bob-new-secret", cert=node.cert).login(node.port)
    await client.close()


async def test_admin_operations_are_not_in_the_user_schema(node: NodeProcess) -> None:
    status, body = await node.user_api('mutation { account { registerUser(domain: "localhost", '
                                       'username: "eve", password: "x") { jid } } }', fresh_jid(node, "alice"))
    assert status == 400 and "Cannot query field 'registerUser'" in body["errors"][0]["message"]
