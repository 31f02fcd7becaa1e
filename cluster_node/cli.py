"""``meridian`` — the command line: ``meridian node``, ``meridian ctl CATEGORY COMMAND …``.

``ctl`` prints results as JSON in the shape of MongooseIM's GraphQL admin API
(``{"data": {"account": {"registerUser": {...}}}}``) so scripts written for ``mongooseimctl``
read it the same way; errors go to stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .settings import ConfigError, NodeSettings, load_settings

__all__ = ["main"]


def _settings(args: argparse.Namespace) -> NodeSettings:
    """The settings of the process ``args.config`` describes (a gateway's file has more sections)."""
    loader: Callable[[str | None], NodeSettings] = getattr(args, "load_settings", None) or load_settings
    return loader(args.config)


def run_role(role: str, settings: NodeSettings, run: Callable[[Any], Coroutine[Any, Any, None]]) -> int:
    """Log as the process's node name, run ``run(settings)``; a listener that cannot open is one line."""
    logging.basicConfig(level=settings.log_level,
                        format=f"%(asctime)s {settings.node_name} %(levelname)s %(name)s: %(message)s")
    from .net.tls import shared_tls_read_buffer

    shared_tls_read_buffer()
    # Full collections walk every live object (sessions, tables: millions at 10k clients) and took
    # 0.5-0.7 s each under load; collect the young generation less often and the old one rarely.
    gc.set_threshold(50_000, 20, 10)
    try:
        asyncio.run(run(settings))
    except OSError as e:
        print(f"meridian {role}: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def _node(args: argparse.Namespace) -> int:
    from .wiring import run_node

    return run_role("node", _settings(args), run_node)


# -- ctl -------------------------------------------------------------------------------------

CtlHandler = Callable[[Any, argparse.Namespace], Awaitable[dict[str, Any]]]


async def _register_user(accounts: Any, a: argparse.Namespace) -> dict[str, Any]:
    jid = await accounts.register(a.domain, a.username, a.password)
    return {"jid": jid, "message": f"User {jid} successfully registered"}


async def _remove_user(accounts: Any, a: argparse.Namespace) -> dict[str, Any]:
    await accounts.remove(a.domain, a.username)
    jid = f"{a.username}@{a.domain}"
    return {"jid": jid, "message": f"User {jid} successfully unregistered"}


async def _list_users(accounts: Any, a: argparse.Namespace) -> dict[str, Any]:
    domain = a.domain.lower()
    users = await accounts.storage.list_accounts(domain)
    return {"users": [f"{u}@{domain}" for u in users]}  # flattened under "listUsers" below


async def _count_users(accounts: Any, a: argparse.Namespace) -> dict[str, Any]:
    return {"count": await accounts.storage.count_accounts(a.domain.lower())}


async def _check_user(accounts: Any, a: argparse.Namespace) -> dict[str, Any]:
    exists = await accounts.exists(a.domain, a.username)
    return {"exist": exists, "message": f"User {a.username}@{a.domain} {'exists' if exists else 'does not exist'}"}


async def _change_password(accounts: Any, a: argparse.Namespace) -> dict[str, Any]:
    await accounts.change_password(a.domain, a.username, a.password)
    return {"jid": f"{a.username}@{a.domain}", "message": "Password changed"}


ACCOUNT_COMMANDS: dict[str, tuple[str, CtlHandler, list[str]]] = {
    "register-user": ("registerUser", _register_user, ["domain", "username", "password"]),
    "remove-user": ("removeUser", _remove_user, ["domain", "username"]),
    "list-users": ("listUsers", _list_users, ["domain"]),
    "count-users": ("countUsers", _count_users, ["domain"]),
    "check-user": ("checkUser", _check_user, ["domain", "username"]),
    "change-user-password": ("changeUserPassword", _change_password, ["domain", "username", "password"]),
}


def _ctl_account(args: argparse.Namespace) -> int:
    from .core.accounts import AccountError
    from .wiring import open_accounts

    settings = _settings(args)
    op, handler, _ = ACCOUNT_COMMANDS[args.command]

    async def run() -> dict[str, Any]:
        async with open_accounts(settings) as (_storage, accounts):
            return await handler(accounts, args)

    try:
        result = asyncio.run(run())
    except AccountError as e:
        print(json.dumps({"errors": [{"message": str(e), "path": ["account", op]}]}), file=sys.stderr)
        return 1
    if op == "listUsers":
        out: Any = result["users"]
    elif op == "countUsers":
        out = result["count"]
    else:
        out = result
    print(json.dumps({"data": {"account": {op: out}}}, indent=2))
    return 0


# Live state, asked of the running node over its control socket (MongooseIM: ``mongooseimctl cets …``).
LIVE_COMMANDS: dict[str, dict[str, tuple[str, list[str]]]] = {
    "cets": {"system-info": ("systemInfo", []), "table-info": ("tableInfo", [])},
    "session": {"list-sessions": ("listSessions", []), "count-sessions": ("countSessions", [])},
    "gdistrib": {"status": ("status", []), "lookup": ("lookup", ["jid"])},  # gateways only
}


def _ctl_live(args: argparse.Namespace) -> int:
    import aiohttp

    from .net.control import control_socket, query_control

    settings = _settings(args)
    op, params = LIVE_COMMANDS[args.category][args.command]
    path = control_socket(settings.data_dir)
    try:
        status, body = asyncio.run(query_control(path, args.category, op, {p: getattr(args, p) for p in params}))
    except (aiohttp.ClientError, OSError) as e:
        message = f"cannot reach node {settings.node_name} at {path}: is it running? ({e.__class__.__name__})"
        print(json.dumps({"errors": [{"message": message, "path": [args.category, op]}]}), file=sys.stderr)
        return 1
    if status != 200 or "errors" in body:
        print(json.dumps(body), file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


Extend = Callable[[Any], None]  # adds roles to the subparsers of ``meridian``


def _parser(extend: Extend | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meridian", description="Meridian multi-region XMPP platform")
    sub = p.add_subparsers(dest="role", required=True)
    node = sub.add_parser("node", help="run a cluster node (XMPP server)")
    node.add_argument("--config", help="TOML settings file (MERIDIAN_… variables override it)")
    node.set_defaults(func=_node)
    if extend is not None:
        extend(sub)
    ctl = sub.add_parser("ctl", help="administer a node: meridian ctl CATEGORY COMMAND --arg value …")
    ctl.add_argument("--config", help="the node's TOML settings file")
    cats = ctl.add_subparsers(dest="category", required=True)
    account = cats.add_parser("account", help="accounts: register-user, remove-user, list-users, …")
    acmds = account.add_subparsers(dest="command", required=True)
    for name, (_op, _h, params) in ACCOUNT_COMMANDS.items():
        c = acmds.add_parser(name)
        for param in params:
            c.add_argument(f"--{param}", required=True)
        c.set_defaults(func=_ctl_account)
    for category, commands in LIVE_COMMANDS.items():
        cat = cats.add_parser(category, help=f"{category}: {', '.join(commands)} (asks the running node)")
        ccmds = cat.add_subparsers(dest="command", required=True)
        for name, (_op, params) in commands.items():
            c = ccmds.add_parser(name)
            for param in params:
                c.add_argument(f"--{param}", required=True)
            c.set_defaults(func=_ctl_live)
    return p


def main(argv: list[str] | None = None, *, extend: Extend | None = None,
         settings_loader: Callable[[str | None], NodeSettings] | None = None) -> int:
    """``meridian``; the gateway package's entry point adds its role (``extend``) and a loader that
    recognizes gateway settings files, since this package never imports the gateway."""
    args = _parser(extend).parse_args(argv)
    args.load_settings = settings_loader
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
