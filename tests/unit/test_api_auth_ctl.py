"""HTTP Basic parsing, admin credentials and the schema-generated ``meridian ctl``."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from cluster_node.api.auth import AdminAuth, hash_password, is_loopback, parse_basic
from cluster_node.api.ctl import build_operation, commands, kebab
from cluster_node.cli import _parser
from cluster_node.settings import AdminApiSettings


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_parse_basic() -> None:
    assert parse_basic(basic("alice@localhost", "p:w")) == ("alice@localhost", "p:w")
    assert parse_basic("basic " + base64.b64encode(b"u:").decode()) == ("u", "")
    for bad in (None, "", "Bearer x", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                "Basic " + base64.b64encode(b"\xff:\xfe").decode()):
        assert parse_basic(bad) is None


def allowed(settings: AdminApiSettings, header: str | None, remote: str = "10.0.0.1") -> bool:
    return asyncio.run(AdminAuth(settings).allowed(header, remote))


def test_admin_password_and_hash() -> None:
    clear = AdminApiSettings(username="ops", password="s3cret")
    assert allowed(clear, basic("ops", "s3cret"))
    assert not allowed(clear, basic("ops", "wrong")) and not allowed(clear, basic("admin", "s3cret"))
    assert not allowed(clear, None)
    hashed = AdminApiSettings(username="ops", password_hash=hash_password("s3cret", rounds=1000))
    assert allowed(hashed, basic("ops", "s3cret")) and not allowed(hashed, basic("ops", "s3cre"))
    assert not allowed(AdminApiSettings(password_hash="garbage"), basic("admin", "x"))


def test_no_credentials_configured_refuses_everything_but_explicit_loopback() -> None:
    none = AdminApiSettings()
    assert not allowed(none, basic("admin", "")) and not allowed(none, None, "127.0.0.1")
    loop = AdminApiSettings(allow_loopback_without_auth=True)
    assert allowed(loop, None, "127.0.0.1") and allowed(loop, None, "::1")
    assert not allowed(loop, None, "192.168.1.2") and not allowed(loop, None, None)
    assert is_loopback("127.0.0.2") and not is_loopback("unix") and not is_loopback(None)


def test_kebab() -> None:
    assert kebab("registerUser") == "register-user" and kebab("systemInfo") == "system-info"
    assert kebab("countUserResources") == "count-user-resources" and kebab("status") == "status"


def _command(category: str, name: str):  # type: ignore[no-untyped-def]
    return next(c for c in commands() if c.category == category and c.name == name)


def test_every_admin_operation_is_a_command() -> None:
    names = {(c.category, c.name) for c in commands()}
    assert ("account", "registerUser") in names and ("cets", "systemInfo") in names
    parser = _parser()
    for category, name in names:
        for spelled in {kebab(name), name}:
            with pytest.raises(SystemExit) as e:
                parser.parse_args(["ctl", category, spelled, "--help"])
            assert e.value.code == 0


def test_operation_selects_every_field_and_types_variables() -> None:
    query, variables = build_operation(_command("account", "registerUser"),
                                       {"domain": "localhost", "username": "alice", "password": "secret"})
    assert query == ("mutation account_registerUser($domain: String!, $username: String, $password: String!) "
                     "{ account { registerUser(domain: $domain, username: $username, password: $password) "
                     "{ jid message } } }")
    assert variables == {"domain": "localhost", "username": "alice", "password": "secret"}
    query, variables = build_operation(_command("roster", "addContact"),
                                       {"user": "a@localhost", "contact": "b@localhost", "groups": "x,y",
                                        "name": None})
    assert "$groups: [String!]" in query and "name" not in variables and variables["groups"] == ["x", "y"]
    _, variables = build_operation(_command("roster", "addContact"),
                                   {"user": "a@l", "contact": "b@l", "groups": json.dumps(["a,b"])})
    assert variables["groups"] == ["a,b"]
    _, variables = build_operation(_command("roster", "subscription"),
                                   {"user": "a@l", "contact": "b@l", "action": "invite"})
    assert variables["action"] == "INVITE"
    query, variables = build_operation(_command("cets", "systemInfo"), {})
    assert query.startswith("query cets_systemInfo { cets { systemInfo { ") and "discoveryWorks" in query
    assert variables == {}


def test_legacy_account_options() -> None:
    from cluster_node.api.ctl import option_values

    args = _parser().parse_args(["ctl", "account", "change-user-password", "--domain", "localhost",
                                 "--username", "frank", "--password", "new"])
    assert option_values(args.ctl_command, args) == {"user": "frank@localhost", "newPassword": "new"}
    args = _parser().parse_args(["ctl", "account", "check-user", "--domain", "localhost"])
    with pytest.raises(ValueError, match="--user"):
        option_values(args.ctl_command, args)
