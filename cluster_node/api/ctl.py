"""``meridian ctl CATEGORY COMMAND --arg value …``, generated from the admin schema.

Every field of a category (``account``, ``cets``, …) is a command, kebab-cased like mongooseimctl
accepts (``register-user`` or ``registerUser``), every argument an option (``--new-password``).
The command becomes one GraphQL operation selecting every field of its result, run over the
node's control socket when it is running, or in process against storage when it needs only
storage (``account``).  The output is the GraphQL JSON result.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    get_named_type,
)

from .schema import schema

__all__ = ["Command", "commands", "add_commands", "build_operation", "kebab", "option_values"]


def kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).lower()


@dataclass(frozen=True)
class Command:
    category: str
    name: str  # the GraphQL field name, e.g. registerUser
    operation: str  # "query" or "mutation"
    field: GraphQLField

    @property
    def args(self) -> dict[str, GraphQLArgument]:
        return dict(self.field.args)


def commands() -> Iterator[Command]:
    s = schema("admin")
    for operation, root in (("query", s.query_type), ("mutation", s.mutation_type)):
        if root is None:
            continue
        for category, cat_field in root.fields.items():
            cat_type = get_named_type(cat_field.type)
            assert isinstance(cat_type, GraphQLObjectType)
            for name, field in cat_type.fields.items():
                yield Command(category, name, operation, field)


def _selection(t: GraphQLOutputType, depth: int = 0) -> str:
    named = get_named_type(t)
    if not isinstance(named, GraphQLObjectType) or depth > 3:
        return ""
    parts = []
    for name, f in named.fields.items():
        if any(isinstance(a.type, GraphQLNonNull) for a in f.args.values()):
            continue
        sub = _selection(f.type, depth + 1)
        if sub or not isinstance(get_named_type(f.type), GraphQLObjectType):
            parts.append(name + sub)
    return " { " + " ".join(parts) + " }"


def _convert(t: GraphQLInputType, raw: str) -> Any:
    """A command-line string as the argument's GraphQL type wants it (lists: JSON or a,b,c)."""
    inner = t.of_type if isinstance(t, GraphQLNonNull) else t
    if isinstance(inner, GraphQLList):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = [v for v in raw.split(",") if v]
        if not isinstance(value, list):
            value = [value]
        return [_convert(inner.of_type, v if isinstance(v, str) else json.dumps(v)) for v in value]
    named = get_named_type(inner)
    if isinstance(named, GraphQLScalarType) and named.name in ("Int", "Float", "Boolean"):
        try:
            return json.loads(raw.lower() if named.name == "Boolean" else raw)
        except json.JSONDecodeError:
            return raw  # the server says what is wrong with it
    if isinstance(named, GraphQLEnumType):
        return raw.upper().replace("-", "_")
    return raw


def build_operation(cmd: Command, values: dict[str, str | None]) -> tuple[str, dict[str, Any]]:
    """(GraphQL document, variables) of ``cmd`` called with the given option values."""
    defs, call, variables = [], [], {}
    for name, arg in cmd.args.items():
        raw = values.get(name)
        if raw is None:
            continue
        defs.append(f"${name}: {arg.type}")
        call.append(f"{name}: ${name}")
        variables[name] = _convert(arg.type, raw)
    head = f"{cmd.operation} {cmd.category}_{cmd.name}" + (f"({', '.join(defs)})" if defs else "")
    args = f"({', '.join(call)})" if call else ""
    return f"{head} {{ {cmd.category} {{ {cmd.name}{args}{_selection(cmd.field.type)} }} }}", variables


def add_commands(categories: Any, func: Any) -> None:
    """Add one sub-parser per category and command to ``categories`` (argparse sub-parsers)."""
    by_category: dict[str, list[Command]] = {}
    for cmd in commands():
        by_category.setdefault(cmd.category, []).append(cmd)
    for category, cmds in by_category.items():
        cat = categories.add_parser(category, help=", ".join(kebab(c.name) for c in cmds))
        sub = cat.add_subparsers(dest="command", required=True)
        for cmd in cmds:
            desc = cmd.field.description or ""
            aliases = [cmd.name] if kebab(cmd.name) != cmd.name else []
            p = sub.add_parser(kebab(cmd.name), aliases=aliases, help=desc, description=desc,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
            legacy = _legacy_user(cmd)
            for name, arg in cmd.args.items():
                flags = {f"--{kebab(name)}", f"--{name}"}
                if name == "newPassword" and "password" not in cmd.args:
                    flags.add("--password")  # the first ctl's change-user-password --password
                required = isinstance(arg.type, GraphQLNonNull) and not (legacy and name == "user")
                p.add_argument(*sorted(flags, key=len, reverse=True), dest=f"arg_{name}", required=required,
                               metavar=str(arg.type).rstrip("!"), help=arg.description)
            if legacy:
                p.add_argument("--domain", dest="legacy_domain", help="with --username: the same as --user")
                p.add_argument("--username", dest="legacy_username", help="with --domain: the same as --user")
            p.set_defaults(func=func, ctl_command=cmd)


def _legacy_user(cmd: Command) -> bool:
    """``--user alice@localhost`` may also be written ``--domain localhost --username alice`` (the
    first ``meridian ctl``'s account options, still in scripts)."""
    user = cmd.args.get("user")
    return (user is not None and get_named_type(user.type).name == "JID"
            and "domain" not in cmd.args and "username" not in cmd.args)


def option_values(cmd: Command, args: argparse.Namespace) -> dict[str, str | None]:
    """The GraphQL argument values given on the command line; ValueError if one is missing."""
    values = {name: getattr(args, f"arg_{name}") for name in cmd.args}
    if _legacy_user(cmd) and values.get("user") is None:
        domain, username = getattr(args, "legacy_domain", None), getattr(args, "legacy_username", None)
        if domain and username:
            values["user"] = f"{username}@{domain}"
        elif isinstance(cmd.args["user"].type, GraphQLNonNull):
            raise ValueError("--user JID (or --domain and --username) is required")
    return values
