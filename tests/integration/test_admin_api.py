"""The admin GraphQL API of a running node, over HTTP: MongooseIM's documented
queries work unchanged, accounts made through it log in with slixmpp, messages sent through it
arrive, credentials are required, errors are GraphQL errors; a 3-node cluster's cets systemInfo;
the served schema is the file in the repository; ``meridian ctl`` is generated from it."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from graphql import build_client_schema, build_schema, get_introspection_query, print_schema

from tests.helpers.cluster import cluster_node
from tests.helpers.node import ADMIN_PASSWORD, ADMIN_USER, ROOT, NodeProcess
from tests.helpers.xmpp_client import AuthFailed, Client

SCHEMA_FILE = ROOT / "cluster_node" / "api" / "admin.graphql"

# MongooseIM's documentation, verbatim: the admin API's registerUser and sendMessage, and the
# query behind `mongooseimctl cets systemInfo`.
DOC_REGISTER = """mutation {
  account {
    registerUser(domain: "localhost", username: "alice", password: "makota") {
      jid
      message
    }
  }
}"""
DOC_SEND = """mutation {
  stanza {
    sendMessage(from: "alice@localhost", to: "bob@localhost", body: "Hi!") {
      id
    }
  }
}"""
DOC_CETS = """query {
  cets {
    systemInfo {
      availableNodes
      unavailableNodes
      joinedNodes
      discoveredNodes
      discoveryWorks
    }
  }
}"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("admin-api"))
    n.register("bob", "bob-secret")
    n.start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


def client(node: NodeProcess, jid: str, password: str) -> Client:
    return Client(jid, password, cert=node.cert)


async def test_credentials_are_required(node: NodeProcess) -> None:
    query = "{ server { status { statusCode } } }"
    status, body = await node.admin(query, auth=None)
    assert status == 401 and "credentials" in body["errors"][0]["message"]
    assert (await node.admin(query, auth=(ADMIN_USER, "wrong")))[0] == 401
    assert (await node.admin(query, auth=("root", ADMIN_PASSWORD)))[0] == 401
    assert (await node.http("GET", f"{node.admin_url}/metrics"))[0] == 401
    status, body = await node.admin(query)
    assert status == 200 and body == {"data": {"server": {"status": {"statusCode": "RUNNING"}}}}
    # Liveness and readiness probes need no credentials and tell nothing else.
    assert (await node.http("GET", f"{node.admin_url}/health"))[0] == 200
    status, body = await node.http("GET", f"{node.admin_url}/ready")
    assert status == 200 and body["ready"] is True


async def test_documented_register_then_login_then_send(node: NodeProcess) -> None:
    status, body = await node.admin(DOC_REGISTER)
    assert status == 200, body
    assert body == {"data": {"account": {"registerUser": {
        "jid": "alice@localhost", "message": "User alice@localhost successfully registered"}}}}
    alice = await client(node, "alice@localhost/web", "makota").online(node.port)
    bob = await client(node, "bob@localhost/phone", "bob-secret").online(node.port)
    try:
        status, body = await node.admin(DOC_SEND)
        assert status == 200 and body["data"]["stanza"]["sendMessage"]["id"], body
        msg = await bob.next_message(timeout=10)
        assert msg["body"] == "Hi!" and str(msg["from"]) == "alice@localhost"
        assert msg["id"] == body["data"]["stanza"]["sendMessage"]["id"]
        # The sessions are in the region's table; a kick closes one.
        status, body = await node.admin("{ session { listSessions { user node connection } countSessions } }")
        users = {s["user"] for s in body["data"]["session"]["listSessions"]}
        assert {"alice@localhost/web", "bob@localhost/phone"} <= users
        assert body["data"]["session"]["countSessions"] == len(users)
        status, body = await node.admin('mutation { session { kickUser(user: "alice@localhost/web", '
                                        'reason: "maintenance") { jid message } } }')
        assert body["data"]["session"]["kickUser"]["jid"] == "alice@localhost/web", body

        async def alice_gone() -> bool:
            _, b = await node.admin('{ session { countUserResources(user: "alice@localhost") } }')
            return b["data"]["session"]["countUserResources"] == 0

        for _ in range(150):
            if await alice_gone():
                break
            await asyncio.sleep(0.1)
        assert await alice_gone()
    finally:
        await alice.close()
        await bob.close()


# The requests of MongooseIM's own GraphQL test suites (big_tests: graphql_account_SUITE,
# graphql_stanza_SUITE), verbatim but for a trailing space: variables and an operation name, as scripts send them.
MIM_REGISTER = """mutation M1($domain: String!, $username: String, $password: String!)
              { account { registerUser(domain: $domain, username: $username, password: $password)
              { jid message } } }"""
MIM_SEND = ("mutation M1($from: JID!, $to: JID!, $body: String!) "
            "{ stanza { sendMessage(from: $from, to: $to, body: $body) { id } } }")
MIM_USER_SEND = ("mutation M1($from: JID, $to: JID!, $body: String!) "
                 "{ stanza { sendMessage(from: $from, to: $to, body: $body) { id } } }")


async def test_mongooseim_test_suite_requests_work_unchanged(node: NodeProcess) -> None:
    async def post(url: str, query: str, variables: dict[str, Any], auth: tuple[str, str]) -> Any:
        status, body = await node.http("POST", url, auth=auth, json_body={
            "query": query, "variables": variables, "operationName": "M1"})
        assert status == 200 and "errors" not in body, body
        return body["data"]

    admin = f"{node.admin_url}/api/graphql"
    data = await post(admin, MIM_REGISTER, {"domain": "localhost", "username": "mimcarol", "password": "pw-carol-1"},
                      (ADMIN_USER, ADMIN_PASSWORD))
    assert data["account"]["registerUser"]["jid"] == "mimcarol@localhost"
    await post(admin, MIM_REGISTER, {"domain": "localhost", "username": "mimdave", "password": "pw-dave-1"},
               (ADMIN_USER, ADMIN_PASSWORD))
    dave = await client(node, "mimdave@localhost/r", "pw-dave-1").online(node.port)
    try:
        data = await post(admin, MIM_SEND, {"from": "mimcarol@localhost", "to": "mimdave@localhost", "body": "a"},
                          (ADMIN_USER, ADMIN_PASSWORD))
        assert data["stanza"]["sendMessage"]["id"]
        assert (await dave.next_message(timeout=10))["body"] == "a"
        data = await post(f"{node.user_api_url}/api/graphql", MIM_USER_SEND,
                          {"to": "mimdave@localhost", "body": "b"}, ("mimcarol@localhost", "pw-carol-1"))
        assert data["stanza"]["sendMessage"]["id"]
        msg = await dave.next_message(timeout=10)
        assert msg["body"] == "b" and str(msg["from"].bare) == "mimcarol@localhost"
    finally:
        await dave.close()


async def test_send_stanza_and_headline(node: NodeProcess) -> None:
    bob = await client(node, "bob@localhost/tablet", "bob-secret").online(node.port)
    try:
        stanza = '<message to="bob@localhost" from="alice@localhost" type="chat"><body>raw</body></message>'
        status, body = await node.admin("mutation($s: XmlElement) { stanza { sendStanza(stanza: $s) { id } } }",
                                        {"s": stanza})
        assert status == 200 and body["data"]["stanza"]["sendStanza"]["id"], body
        assert (await bob.next_message(timeout=10))["body"] == "raw"
        status, body = await node.admin(
            'mutation { stanza { sendMessageHeadLine(from: "alice@localhost", to: "bob@localhost", '
            'subject: "News", body: "headline") { id } } }')
        msg = await bob.next_message(timeout=10)
        assert msg["body"] == "headline" and msg["type"] == "headline" and msg["subject"] == "News"
    finally:
        await bob.close()


@pytest.mark.parametrize(("query", "message"), [
    ('{ account { checkUser(user: "a@@localhost") { exist } } }', "invalid JID"),
    ('mutation { account { removeUser(user: "nobody@localhost") { jid } } }', "does not exist"),
    ('mutation { account { registerUser(domain: "elsewhere.org", username: "x", password: "pw") { jid } } }',
     "not served here"),
    ('mutation { account { registerUser(domain: "localhost", username: "bob", password: "pw") { jid } } }',
     "already exists"),
    ('mutation { stanza { sendMessage(from: "ghost@localhost", to: "bob@localhost", body: "x") { id } } }',
     "does not exist"),
    ('mutation { stanza { sendStanza(stanza: "<message><body>") { id } } }', "not well-formed"),
    ('mutation { session { kickUser(user: "bob@localhost/none", reason: "x") { jid } } }', "no active session"),
    ("{ cets { systemInfo { joinedNodes } } }", "cluster is not enabled"),
    ("{ gdistrib { regions } }", "served by gateways"),
    ("{ account { listUsers(domain: 5) } }", "String cannot represent"),
    ("{ account { nosuchthing } }", "Cannot query field 'nosuchthing'"),
    ("{ account { listUsers(domain: ", "Syntax Error"),
])
async def test_errors_are_graphql_errors(node: NodeProcess, query: str, message: str) -> None:
    status, body = await node.admin(query)
    assert status in (200, 400), body
    assert message in body["errors"][0]["message"], body
    assert "Traceback" not in json.dumps(body)


async def test_malformed_requests(node: NodeProcess) -> None:
    auth = (ADMIN_USER, ADMIN_PASSWORD)
    status, body = await node.http("POST", f"{node.admin_url}/api/graphql", auth=auth, data=b"{not json")
    assert status == 400 and "JSON" in body["errors"][0]["message"]
    status, body = await node.http("POST", f"{node.admin_url}/api/graphql", auth=auth, json_body={"q": 1})
    assert status == 400 and "'query' is required" in body["errors"][0]["message"]
    url = f"{node.admin_url}/api/graphql?query=" + "mutation{account{removeUser(user:%22bob@localhost%22){jid}}}"
    status, body = await node.http("GET", url, auth=auth)
    assert status == 405  # GraphQL over HTTP: no mutations over GET
    status, body = await node.http("GET", f"{node.admin_url}/api/graphql?query=%7Bserver%7Bstatus%7Bversion%7D%7D%7D",
                                   auth=auth)
    assert status == 200 and body["data"]["server"]["status"]["version"]


async def test_accounts_and_roster(node: NodeProcess) -> None:
    status, body = await node.admin('mutation { account { registerUser(domain: "localhost", username: "carol", '
                                    'password: "carol-1") { jid } } }')
    assert body["data"]["account"]["registerUser"]["jid"] == "carol@localhost"
    _, body = await node.admin('{ account { listUsers(domain: "localhost") countUsers(domain: "localhost") '
                               'checkUser(user: "carol@localhost") { exist message } '
                               'checkPassword(user: "carol@localhost", password: "carol-1") { correct } } }')
    acc = body["data"]["account"]
    assert "carol@localhost" in acc["listUsers"] and acc["countUsers"] == len(acc["listUsers"])
    assert acc["checkUser"]["exist"] is True and acc["checkPassword"]["correct"] is True
    _, body = await node.admin('mutation { account { changeUserPassword(user: "carol@localhost", '
                               'newPassword: "carol-2") { message } } }')
    assert body["data"]["account"]["changeUserPassword"]["message"] == "Password changed"
    with pytest.raises(AuthFailed) as refused:
        await client(node, "carol@localhost/x", "carol-1").login(node.port)
    assert refused.value.sasl == "not-authorized", refused.value
    carol = await client(node, "carol@localhost/x", "carol-2").online(node.port)
    try:
        _, body = await node.admin('mutation { roster { addContact(user: "carol@localhost", contact: '
                                   '"bob@localhost", name: "Bob", groups: ["friends"]) } }')
        assert body["data"]["roster"]["addContact"] == "Contact added successfully", body
        _, body = await node.admin('{ roster { listContacts(user: "carol@localhost") '
                                   '{ jid name groups subscription ask } } }')
        assert body["data"]["roster"]["listContacts"] == [
            {"jid": "bob@localhost", "name": "Bob", "groups": ["friends"], "subscription": "NONE", "ask": "NONE"}]
        _, body = await node.admin('mutation { roster { subscription(user: "carol@localhost", '
                                   'contact: "bob@localhost", action: INVITE) } }')
        assert "subscribe" in body["data"]["roster"]["subscription"], body
        _, body = await node.admin('{ roster { getContact(user: "carol@localhost", contact: "bob@localhost") '
                                   '{ ask } } }')
        assert body["data"]["roster"]["getContact"]["ask"] == "OUT"
    finally:
        await carol.close()
    _, body = await node.admin('mutation { account { removeUser(user: "carol@localhost") { message } } }')
    assert "unregistered" in body["data"]["account"]["removeUser"]["message"]


async def test_served_schema_is_the_file(node: NodeProcess) -> None:
    """Introspection over HTTP gives the schema of cluster_node/api/admin.graphql, type for type."""
    status, body = await node.admin(get_introspection_query(descriptions=True, schema_description=True))
    assert status == 200, body
    served = print_schema(build_client_schema(body["data"]))
    assert served == print_schema(build_schema(SCHEMA_FILE.read_text())), "served schema differs from the file"


def test_ctl_schema_prints_the_file() -> None:
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "ctl", "--schema"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == SCHEMA_FILE.read_text()


def test_ctl_is_generated_from_the_schema(node: NodeProcess) -> None:
    """Every admin operation is a command; a running node answers over its control socket."""
    out = json.loads(node.ctl("account", "check-user", "--user", "bob@localhost").stdout)
    assert out == {"data": {"account": {"checkUser": {"exist": True, "message": "User bob@localhost exists"}}}}
    out = json.loads(node.ctl("server", "status").stdout)
    assert out["data"]["server"]["status"]["statusCode"] == "RUNNING"
    out = json.loads(node.ctl("session", "listSessions", "--domain", "localhost").stdout)  # camelCase too
    assert isinstance(out["data"]["session"]["listSessions"], list)
    bad = node.ctl("account", "remove-user", "--user", "nobody@localhost", check=False)
    assert bad.returncode != 0 and "does not exist" in bad.stderr
    bad = node.ctl("account", "check-user", "--user", "x@@y", check=False)
    assert bad.returncode != 0 and "invalid JID" in bad.stderr
    # Over HTTP with --url, as the admin of the config file, or refused with other credentials.
    out = json.loads(node.ctl("--url", node.admin_url, "account", "count-users", "--domain", "localhost").stdout)
    assert out["data"]["account"]["countUsers"] >= 1
    bad = node.ctl("--url", node.admin_url, "--admin-password", "wrong", "server", "status", check=False)
    assert bad.returncode != 0 and "credentials refused" in bad.stderr
    help_text = node.ctl("roster", "add-contact", "--help").stdout
    assert "--contact" in help_text and "--groups" in help_text
    for category in ("account", "session", "stanza", "roster", "cets", "server", "gdistrib", "s2s"):
        assert node.ctl(category, "--help").returncode == 0


def test_ctl_account_works_without_a_node(tmp_path: Path) -> None:
    """The README's first commands: users are registered before the node ever ran."""
    n = NodeProcess(tmp_path)
    out = json.loads(n.ctl("account", "register-user", "--domain", "localhost", "--username", "dave",
                           "--password", "pw").stdout)
    assert out["data"]["account"]["registerUser"]["jid"] == "dave@localhost"
    assert json.loads(n.ctl("account", "count-users", "--domain", "localhost").stdout) == {
        "data": {"account": {"countUsers": 1}}}
    res = n.ctl("cets", "system-info", check=False)
    assert res.returncode != 0 and "not running" in res.stderr


async def test_cets_system_info_on_three_nodes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cluster.db'}"
    nodes = [cluster_node(tmp_path, f"c{i}", db) for i in range(3)]
    for n in nodes:
        n.start()
    try:
        async def info(n: NodeProcess) -> dict[str, Any]:
            status, body = await n.admin(DOC_CETS)
            assert status == 200, body
            return body["data"]["cets"]["systemInfo"]  # type: ignore[no-any-return]

        names = ["c0", "c1", "c2"]
        for n in nodes:
            last: dict[str, Any] = {}
            for _ in range(300):
                last = await info(n)
                if last["joinedNodes"] == names:
                    break
                await asyncio.sleep(0.1)
            assert last == {"availableNodes": names, "unavailableNodes": [], "joinedNodes": names,
                            "discoveredNodes": names, "discoveryWorks": True}, last
        _, body = await nodes[0].admin("{ cets { systemInfo { joinedNodesCount } tableInfo { tableName nodes } } }")
        assert body["data"]["cets"]["systemInfo"]["joinedNodesCount"] == 3
        assert all(t["nodes"] == names for t in body["data"]["cets"]["tableInfo"])
        # A member stops: the others see it unavailable.
        nodes[2].stop()
        for _ in range(300):
            got = await info(nodes[0])
            if got["joinedNodes"] == ["c0", "c1"]:
                break
            await asyncio.sleep(0.1)
        assert got["joinedNodes"] == ["c0", "c1"] and got["unavailableNodes"] == ["c2"], got
        status, body = await nodes[0].http("GET", f"{nodes[0].admin_url}/ready")
        assert status == 200 and body["checks"]["cluster"] is True
    finally:
        for n in nodes:
            n.stop()


async def test_admin_api_over_tls(tmp_path: Path) -> None:
    """``[admin] tls = true``: HTTPS with the node's certificate, credentials still required."""
    import ssl

    import aiohttp

    n = NodeProcess(tmp_path, settings={"admin": {"tls": True}, "user_api": {"port": 0}})
    n.start()
    try:
        ctx = ssl.create_default_context(cafile=str(n.cert))
        url = f"https://localhost:{n.admin_port}/api/graphql"
        query = {"query": "{ server { status { statusCode } } }"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=query, ssl=ctx) as resp:
                assert resp.status == 401
            auth = "Basic " + base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
            async with session.post(url, json=query, ssl=ctx, headers={"Authorization": auth}) as resp:
                assert resp.status == 200
                assert (await resp.json())["data"]["server"]["status"]["statusCode"] == "RUNNING"
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served on a TLS port
                async with session.post(url.replace("https", "http"), json=query) as resp:
                    await resp.read()
    finally:
        n.stop()
