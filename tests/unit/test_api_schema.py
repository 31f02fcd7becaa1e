"""The GraphQL schemas and their execution, without a server."""

from __future__ import annotations

import asyncio
from typing import Any

from graphql import build_schema, print_schema

from cluster_node.api.schema import ApiError, printed, run_query, schema, sdl


def test_schema_files_are_in_canonical_form() -> None:
    """``meridian ctl --schema`` prints the file: it is exactly what the server builds, printed."""
    for name in ("admin", "user"):
        assert printed(name) + "\n" == sdl(name)
        assert print_schema(build_schema(sdl(name))) == printed(name)


def test_admin_schema_has_mongooseim_operations() -> None:
    s = schema("admin")
    q, m = s.query_type, s.mutation_type
    assert q is not None and m is not None

    def fields(root: Any, category: str) -> set[str]:
        return set(root.fields[category].type.fields)

    assert {"registerUser", "removeUser", "changeUserPassword"} <= fields(m, "account")
    assert {"listUsers", "countUsers", "checkUser"} <= fields(q, "account")
    assert {"listSessions", "countSessions"} <= fields(q, "session") and "kickUser" in fields(m, "session")
    assert {"sendMessage", "sendStanza"} <= fields(m, "stanza")
    assert "listContacts" in fields(q, "roster") and {"addContact", "subscription"} <= fields(m, "roster")
    assert {"systemInfo", "tableInfo"} <= fields(q, "cets")
    assert "status" in fields(q, "server")
    assert {"regions", "links", "lookup"} <= fields(q, "gdistrib") and "connections" in fields(q, "s2s")
    # MongooseIM's argument names and result shape.
    register = m.fields["account"].type.fields["registerUser"]  # type: ignore[union-attr]
    assert list(register.args) == ["domain", "username", "password"]
    assert set(register.type.fields) == {"jid", "message"}  # type: ignore[union-attr]


class _Account:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def checkUser(self, _info: Any, user: Any) -> dict[str, Any]:
        self.calls.append(user)
        if user.local == "boom":
            raise RuntimeError("secret internals")
        if user.local == "nobody":
            raise ApiError("user nobody@localhost does not exist")
        return {"exist": True, "message": "ok"}


def run(query: str, root: Any, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    return asyncio.run(run_query("admin", query, variables, root))


def test_jid_arguments_are_parsed_and_normalised() -> None:
    acc = _Account()
    out = run('{ account { checkUser(user: "Alice@LocalHost") { exist } } }', {"account": acc})
    assert out == {"data": {"account": {"checkUser": {"exist": True}}}}
    assert str(acc.calls[0]) == "alice@localhost"
    out = run("query($u: JID!) { account { checkUser(user: $u) { exist } } }", {"account": acc}, {"u": "a@@b"})
    assert "invalid JID" in out["errors"][0]["message"] and "data" not in out


def test_errors_carry_a_message_never_internals() -> None:
    acc = _Account()
    out = run('{ account { checkUser(user: "nobody@localhost") { exist } } }', {"account": acc})
    assert out["errors"][0]["message"] == "user nobody@localhost does not exist"
    assert out["errors"][0]["path"] == ["account", "checkUser"]
    out = run('{ account { checkUser(user: "boom@localhost") { exist } } }', {"account": acc})
    assert out["errors"][0]["message"] == "internal error (RuntimeError)"
    assert "secret" not in str(out)
    out = run("{ account { checkUser(", {"account": acc})
    assert out["errors"][0]["message"].startswith("Syntax Error") and "data" not in out
