"""The GraphQL schemas, built from the SDL files kept beside this module, and one way to run them.

The SDL files are the source of truth (``meridian ctl --schema`` prints the admin one and a test
checks the served schema against the file).  Resolvers are plain objects: graphql-core's default
resolver reads a field from the parent object and calls it with ``(info, **args)`` when callable,
so a category object's methods are its operations.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

from graphql import (
    GraphQLError,
    GraphQLScalarType,
    GraphQLSchema,
    build_schema,
    graphql,
    print_schema,
)
from graphql.language import StringValueNode, ValueNode

from ..xmpp.jid import InvalidJid, Jid

__all__ = ["ApiError", "sdl", "schema", "run_query", "printed"]

log = logging.getLogger("meridian.api")
_DIR = Path(__file__).resolve().parent


class ApiError(Exception):
    """A request that cannot be done; the message is shown to the caller as a GraphQL error."""


def _parse_jid(value: Any) -> Jid:
    if not isinstance(value, str):
        raise GraphQLError("a JID is a string like user@domain or user@domain/resource")
    try:
        return Jid.parse(value)
    except InvalidJid as e:
        raise GraphQLError(f"invalid JID {value!r}: {e}") from None


def _parse_jid_literal(node: ValueNode, _variables: Any = None) -> Jid:
    if not isinstance(node, StringValueNode):
        raise GraphQLError("a JID is a string like user@domain or user@domain/resource")
    return _parse_jid(node.value)


def _string_literal(node: ValueNode, _variables: Any = None) -> str:
    if not isinstance(node, StringValueNode):
        raise GraphQLError("expected a string")
    return node.value


def sdl(name: str) -> str:
    """The SDL text of schema ``name`` (``admin`` or ``user``) as kept in the repository."""
    return (_DIR / f"{name}.graphql").read_text(encoding="utf-8")


@cache
def schema(name: str) -> GraphQLSchema:
    """Schema ``name`` with its custom scalars wired (built once per process)."""
    built = build_schema(sdl(name))
    scalars: dict[str, dict[str, Any]] = {
        "JID": {"serialize": str, "parse_value": _parse_jid, "parse_literal": _parse_jid_literal},
        "XmlElement": {"serialize": str, "parse_value": str, "parse_literal": _string_literal},
        "JSON": {"serialize": lambda v: v, "parse_value": lambda v: v},
    }
    for type_name, funcs in scalars.items():
        t = built.type_map.get(type_name)
        if isinstance(t, GraphQLScalarType):
            for attr, fn in funcs.items():
                setattr(t, attr, fn)
    return built


def printed(name: str) -> str:
    """The schema as the server builds it, printed back to SDL (what the repository file must match)."""
    return print_schema(schema(name))


async def run_query(name: str, query: str, variables: dict[str, Any] | None, root: Any,
                    operation_name: str | None = None, context: Any = None) -> dict[str, Any]:
    """Execute ``query``; the result in the GraphQL-over-HTTP JSON shape (``data`` and ``errors``).

    Errors carry a message for the operator, never a traceback: an :class:`ApiError` or a
    validation problem as it is, anything else as ``internal error`` (logged with its traceback).
    """
    result = await graphql(schema(name), query, root_value=root, variable_values=variables,
                           operation_name=operation_name, context_value=context)
    out: dict[str, Any] = {}
    if result.errors:
        errors = []
        for err in result.errors:
            original = err.original_error
            message = err.message
            if original is not None and not isinstance(original, (ApiError, GraphQLError)):
                log.error("GraphQL resolver failed at %s", err.path, exc_info=original)
                message = f"internal error ({original.__class__.__name__})"
            item: dict[str, Any] = {"message": message}
            if err.path:
                item["path"] = list(err.path)
            if err.locations:
                item["locations"] = [{"line": loc.line, "column": loc.column} for loc in err.locations]
            errors.append(item)
        out["errors"] = errors
    if result.data is not None or not result.errors:
        out["data"] = result.data
    return out
