"""The user GraphQL API of a running node: HTTP Basic as the user's own bare JID and
password (checked against the stored SCRAM keys), messages sent as that user arrive in slixmpp,
the user's resources and roster, a password change, and nothing for anyone else."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.xmpp_client import AuthFailed, Client

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


@pytest.mark.parametrize("auth", [None, ("alice@localhost", "wrong"), ("nobody@localhost", "x"),
                                  ("alice@localhost/res", "alice-secret"), ("localhost", "x"), ("@@", "x"),
                                  ("alice@elsewhere.org", "alice-secret")])
async def test_refused_without_the_users_credentials(node: NodeProcess, auth: tuple[str, str] | None) -> None:
    status, body = await node.user_api("{ session { listResources } }", auth)
    assert status == 401 and "credentials" in body["errors"][0]["message"]


async def test_send_message_as_the_user(node: NodeProcess) -> None:
    alice = await Client("alice@localhost/laptop", ALICE[1], cert=node.cert).online(node.port)
    bob = await Client("bob@localhost/phone", BOB[1], cert=node.cert).online(node.port)
    try:
        status, body = await node.user_api(DOC_SEND, ALICE)
        assert status == 200, body
        msg = await bob.next_message(timeout=10)
        assert msg["body"] == "Hi" and str(msg["from"]) == "alice@localhost"
        assert msg["id"] == body["data"]["stanza"]["sendMessage"]["id"]
        # From one of the user's own full JIDs: fine; from someone else: refused.
        await node.user_api('mutation { stanza { sendMessage(from: "alice@localhost/laptop", '
                            'to: "bob@localhost/phone", body: "full") { id } } }', ALICE)
        msg = await bob.next_message(timeout=10)
        assert msg["body"] == "full" and str(msg["from"]) == "alice@localhost/laptop"
        status, body = await node.user_api('mutation { stanza { sendMessage(from: "bob@localhost", '
                                           'to: "alice@localhost", body: "spoof") { id } } }', ALICE)
        assert "must be alice@localhost" in body["errors"][0]["message"]
        with pytest.raises(asyncio.TimeoutError):
            await alice.next_message(timeout=1)
        _, body = await node.user_api("{ session { listResources countResources } }", ALICE)
        assert body["data"]["session"] == {"listResources": ["laptop"], "countResources": 1}
    finally:
        await alice.close()
        await bob.close()


async def test_roster_and_password(node: NodeProcess) -> None:
    status, body = await node.admin('mutation { roster { addContact(user: "alice@localhost", '
                                    'contact: "bob@localhost", name: "Bobby") } }')
    assert status == 200, body
    _, body = await node.user_api("{ roster { listContacts { jid name subscription } } }", ALICE)
    assert body["data"]["roster"]["listContacts"] == [{"jid": "bob@localhost", "name": "Bobby",
                                                       "subscription": "NONE"}]
    _, body = await node.user_api("{ roster { listContacts { jid } } }", BOB)
    assert body["data"]["roster"]["listContacts"] == []  # bob sees his own roster only
    _, body = await node.user_api('mutation { account { changePassword(newPassword: "   ") } }', BOB)
    assert "password" in body["errors"][0]["message"]
    _, body = await node.user_api('mutation { account { changePassword(newPassword: "bob-new-secret") } }', BOB)
    assert body["data"]["account"]["changePassword"] == "Password changed"
    assert (await node.user_api("{ session { countResources } }", BOB))[0] == 401
    assert (await node.user_api("{ session { countResources } }", ("bob@localhost", "bob-new-secret")))[0] == 200
    with pytest.raises(AuthFailed) as refused:
        await Client("bob@localhost/x", BOB[1], cert=node.cert).login(node.port)
    assert refused.value.sasl == "not-authorized", refused.value
    bob = await Client("bob@localhost/x", "bob-new-secret", cert=node.cert).login(node.port)
    await bob.close()


async def test_admin_operations_are_not_in_the_user_schema(node: NodeProcess) -> None:
    status, body = await node.user_api('mutation { account { registerUser(domain: "localhost", '
                                       'username: "eve", password: "x") { jid } } }', ALICE)
    assert status == 400 and "Cannot query field 'registerUser'" in body["errors"][0]["message"]
