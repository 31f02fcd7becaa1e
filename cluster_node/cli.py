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
from collections.abc import Callable, Coroutine
from typing import Any

from .settings import ConfigError, NodeSettings, StartError, load_settings

__all__ = ["main"]


def _settings(args: argparse.Namespace) -> NodeSettings:
    """The settings of the process ``args.config`` describes (a gateway's file has more sections)."""
    loader: Callable[[str | None], NodeSettings] = getattr(args, "load_settings", None) or load_settings
    return loader(args.config)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a role runs on (``event_loop``): uvloop's libuv transports do the socket
    and TLS work the stdlib loop does in Python (its SSL read/write path was 15-40 % of a node's
    CPU) — measured side by side, the TLS path cost the same (uvloop's TLS is also Python
    ``SSLObject`` work), so asyncio's loop stays the default; ``auto`` takes uvloop when installed.
    None: asyncio's own loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop: uvloop is not installed (pip install uvloop), or use \"asyncio\"") from None
        return None
    return uvloop.new_event_loop


def tune_collector() -> None:
    """The cyclic collector's thresholds of a node process.  Full collections walk every live
    object (sessions, tables: millions at 10k clients) and took 0.5-0.7 s each under load; collect
    the young generation less often and the old one rarely."""
    gc.set_threshold(50_000, 20, 10)


def run_role(role: str, settings: NodeSettings, run: Callable[[Any], Coroutine[Any, Any, None]]) -> int:
    """Log as the process's node name, run ``run(settings)``; a listener that cannot open is one line."""
    logging.basicConfig(level=settings.log_level,
                        format=f"%(asctime)s {settings.node_name} %(levelname)s %(name)s: %(message)s")
    from .net.tls import shared_tls_read_buffer

    shared_tls_read_buffer()
    tune_collector()
    factory = loop_factory(settings.event_loop)
    logging.getLogger(__name__).info("event loop: %s", "uvloop" if factory is not None else "asyncio")
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run(settings))
    except (OSError, StartError) as e:
        print(f"meridian {role}: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def _node(args: argparse.Namespace) -> int:
    from .wiring import run_node

    return run_role("node", _settings(args), run_node)


# -- ctl -------------------------------------------------------------------------------------
# Generated from the admin GraphQL schema (cluster_node/api/ctl.py): every admin operation is a
# command.  A running node answers over its control socket; with none running, ``account``
# commands run here against storage (the README registers users before the first start).


def _ctl(args: argparse.Namespace) -> int:
    import aiohttp

    from .api.ctl import build_operation, option_values
    from .net.control import control_socket, query_control

    cmd = args.ctl_command
    try:
        query, variables = build_operation(cmd, option_values(cmd, args))
    except ValueError as e:
        print(f"meridian ctl {cmd.category} {args.command}: {e}", file=sys.stderr)
        return 2
    settings = _settings(args)
    path = control_socket(settings.data_dir)
    result: dict[str, Any] | None = None
    if args.url:
        try:
            status, body = asyncio.run(_over_http(args, settings, query, variables))
        except (aiohttp.ClientError, OSError, ValueError) as e:
            return _ctl_error(f"cannot reach {args.url}: {e.__class__.__name__}: {e}", cmd)
        if status == 401:
            return _ctl_error("admin credentials refused (--admin-user/--admin-password or [admin] in --config)",
                              cmd)
        result = body if isinstance(body, dict) else {"errors": [{"message": f"HTTP {status}: {body}"}]}
    elif path.exists():
        try:
            status, body = asyncio.run(query_control(path, "graphql", "admin",
                                                     {"query": query, "variables": json.dumps(variables)}))
        except (aiohttp.ClientError, OSError) as e:
            if cmd.category != "account":
                return _ctl_error(f"cannot reach node {settings.node_name} at {path}: is it running? "
                                  f"({e.__class__.__name__})", cmd)
        else:
            if status != 200:
                print(json.dumps(body), file=sys.stderr)
                return 1
            result = body["data"]["graphql"]["admin"]
    if result is None:
        if cmd.category != "account":
            return _ctl_error(f"node {settings.node_name} is not running (no {path}); "
                              f"{cmd.category} commands ask the running node", cmd)
        try:
            result = asyncio.run(_in_process(settings, query, variables))
        except StartError as e:
            return _ctl_error(str(e), cmd)
    if result.get("errors"):
        print(json.dumps(result), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


async def _over_http(args: argparse.Namespace, settings: NodeSettings, query: str, variables: dict[str, Any]
                     ) -> tuple[int, Any]:
    """POST the operation to a node's admin API (``--url``), as the configured admin by default."""
    import base64
    import ssl

    import aiohttp

    user = args.admin_user or settings.admin.username
    password = args.admin_password if args.admin_password is not None else settings.admin.password
    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    tls = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    url = args.url.rstrip("/") + "/api/graphql"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(url, json={"query": query, "variables": variables}, headers=headers,
                                ssl=tls if tls is not None else True) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body


def _ctl_error(message: str, cmd: Any) -> int:
    print(json.dumps({"errors": [{"message": message, "path": [cmd.category, cmd.name]}]}), file=sys.stderr)
    return 1


async def _in_process(settings: NodeSettings, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    from .api.admin import admin_root
    from .api.schema import run_query
    from .wiring import open_accounts

    async with open_accounts(settings) as (_storage, accounts):
        return await run_query("admin", query, variables, admin_root(accounts, None))


def _ctl_schema(args: argparse.Namespace) -> int:
    from .api.schema import sdl

    if not args.schema:
        print("meridian ctl: give CATEGORY COMMAND (see meridian ctl --help) or --schema", file=sys.stderr)
        return 2
    print(sdl("admin"), end="")
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
    ctl.add_argument("--schema", action="store_true", help="print the admin GraphQL schema (SDL) and exit")
    ctl.add_argument("--url", help="a node's admin API (http[s]://host:5551) instead of the local control socket")
    ctl.add_argument("--admin-user", help="with --url (default: [admin] username of --config)")
    ctl.add_argument("--admin-password", help="with --url (default: [admin] password of --config)")
    ctl.add_argument("--cafile", help="with an https --url: the CA (or self-signed certificate) to trust")
    ctl.set_defaults(func=_ctl_schema)
    from .api.ctl import add_commands

    add_commands(ctl.add_subparsers(dest="category", metavar="CATEGORY"), _ctl)
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
