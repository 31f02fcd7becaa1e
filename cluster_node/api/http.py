"""The admin and user HTTP servers (aiohttp): GraphQL at ``/api/graphql`` (POST, or GET for
queries), ``/metrics``, ``/health``, ``/ready`` and extra routes (the gateway's dashboard).

Every path of the admin server needs the admin's HTTP Basic credentials except ``/health`` and
``/ready`` (probes that reveal nothing but up/ready); the user server needs the user's own bare
JID and password.  A missing or wrong credential is HTTP 401 with ``WWW-Authenticate``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from graphql import OperationType, parse
from graphql.error import GraphQLError
from graphql.language import OperationDefinitionNode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.accounts import Accounts
from ..xmpp.jid import InvalidJid, Jid
from .admin import admin_root
from .auth import AdminAuth, check_password, parse_basic
from .metrics import NodeCollector, OfflineGauge
from .schema import run_query
from .user import user_root

if TYPE_CHECKING:
    from .view import NodeView as Node

__all__ = ["serving_api", "graphql_handler"]

log = logging.getLogger("meridian.api")

ReadyCheck = Callable[[], "bool | Awaitable[bool]"]
RootFor = Callable[[web.Request], Awaitable[Any]]
_OPEN = frozenset({"/health", "/ready"})


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"errors": [{"message": message}]}, status=status, headers=headers)


async def _request_body(request: web.Request) -> tuple[str, dict[str, Any] | None, str | None]:
    """(query, variables, operationName) of a GraphQL-over-HTTP request; ValueError if malformed."""
    if request.method == "POST":
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ValueError('the body must be a JSON object: {"query": "...", "variables": {...}}')
        query, variables, op = body.get("query"), body.get("variables"), body.get("operationName")
    else:
        query, op = request.query.get("query"), request.query.get("operationName")
        raw = request.query.get("variables")
        try:
            variables = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise ValueError("'variables' is not valid JSON") from None
    if not isinstance(query, str) or not query.strip():
        raise ValueError("'query' is required")
    if variables is not None and not isinstance(variables, dict):
        raise ValueError("'variables' must be a JSON object")
    if op is not None and not isinstance(op, str):
        raise ValueError("'operationName' must be a string")
    return query, variables, op


def _is_mutation(query: str, op: str | None) -> bool:
    try:
        doc = parse(query)
    except GraphQLError:
        return False  # the executor reports the syntax error
    ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = [d for d in ops if op is None or (d.name is not None and d.name.value == op)]
    return any(d.operation != OperationType.QUERY for d in chosen[:1] or ops[:1])


def graphql_handler(schema_name: str, root_for: RootFor) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:
            query, variables, op = await _request_body(request)
        except ValueError as e:
            return _error(400, str(e))
        if request.method == "GET" and _is_mutation(query, op):
            return _error(405, "mutations must use POST", Allow="POST")
        result = await run_query(schema_name, query, variables, await root_for(request), op)
        return web.json_response(result, status=200 if "data" in result else 400)

    return handle


def _admin_app(node: Node, accounts: Accounts, auth: AdminAuth, routes: Sequence[web.RouteDef],
               ready_checks: dict[str, ReadyCheck]) -> web.Application:
    offline = OfflineGauge()
    node.metrics.register(NodeCollector(node, offline))

    @web.middleware
    async def require_admin(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in _OPEN:
            return await handler(request)  # type: ignore[no-any-return]
        refused = _throttled(node, request)
        if refused is not None:
            return refused
        if not await auth.allowed(request.headers.get("Authorization"), request.remote):
            _failed(node, request)
            return _error(401, "admin credentials required (HTTP Basic)",
                          **{"WWW-Authenticate": 'Basic realm="meridian admin", charset="UTF-8"'})
        return await handler(request)  # type: ignore[no-any-return]

    async def root(_: web.Request) -> Any:
        return admin_root(accounts, node)

    async def metrics(_: web.Request) -> web.Response:
        with contextlib.suppress(Exception):  # storage down: keep the last value, report the rest
            offline.value = await node.services.storage.count_offline_total()
        return web.Response(body=generate_latest(node.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": node.services.node})

    async def ready(_: web.Request) -> web.Response:
        checks: dict[str, bool] = {}
        for name, check in ready_checks.items():
            try:
                value = check()
                checks[name] = bool(await value if inspect.isawaitable(value) else value)
            except Exception as e:  # a failing check means not ready, never a 500
                log.debug("ready check %s failed: %r", name, e)
                checks[name] = False
        ok = all(checks.values())
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    app = web.Application(middlewares=[require_admin], client_max_size=1024 * 1024)
    handler = graphql_handler("admin", root)
    app.router.add_route("POST", "/api/graphql", handler)
    app.router.add_route("GET", "/api/graphql", handler)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.add_routes(routes)
    return app


def _throttled(node: Node, request: web.Request) -> web.Response | None:
    """429 for an address banned after too many authentication failures (on any way in)."""
    refusal = node.services.auth_refusal(request.remote or "?")
    return _error(429, refusal) if refusal is not None else None


def _failed(node: Node, request: web.Request) -> None:
    """Credentials were given and refused: count it against the address.  (No delay here: an
    HTTP client holds no stream to slow down; the ban is what stops a guesser.)"""
    if request.headers.get("Authorization"):
        node.services.auth_failed(request.remote or "?")


def _user_app(node: Node, accounts: Accounts) -> web.Application:
    async def authenticated(request: web.Request) -> Jid | None:
        creds = parse_basic(request.headers.get("Authorization"))
        if creds is None:
            return None
        try:
            jid = Jid.parse(creds[0])
            if jid.local is None or jid.resource is not None:
                return None
            domain, local = accounts.normalise(jid.domain, jid.local)
        except (InvalidJid, ValueError):
            return None
        if not await check_password(accounts, domain, local, creds[1]):
            return None
        return Jid(local, domain, None)

    @web.middleware
    async def require_user(request: web.Request, handler: Any) -> web.StreamResponse:
        refused = _throttled(node, request)
        if refused is not None:
            return refused
        user = await authenticated(request)
        if user is None:
            _failed(node, request)
            return _error(401, "user credentials required (HTTP Basic with your bare JID and password)",
                          **{"WWW-Authenticate": 'Basic realm="meridian user", charset="UTF-8"'})
        request["user"] = user
        return await handler(request)  # type: ignore[no-any-return]

    async def root(request: web.Request) -> Any:
        return user_root(node, request["user"])

    app = web.Application(middlewares=[require_user], client_max_size=1024 * 1024)
    handler = graphql_handler("user", root)
    app.router.add_route("POST", "/api/graphql", handler)
    app.router.add_route("GET", "/api/graphql", handler)
    return app


async def _start(app: web.Application, host: str, port: int, tls: ssl.SSLContext | None) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


@contextlib.asynccontextmanager
async def serving_api(node: Node, *, tls: ssl.SSLContext, routes: Sequence[web.RouteDef] = ()
                      ) -> AsyncIterator[None]:
    """Serve the admin and user APIs of ``node`` (each unless its port is 0) while inside."""
    settings = node.services.settings
    accounts = node.services.accounts
    runners: list[web.AppRunner] = []
    try:
        if settings.admin.port:
            auth = AdminAuth(settings.admin)
            if not auth.configured and not settings.admin.allow_loopback_without_auth:
                log.warning("admin API on %s:%d has no credentials: set [admin] password (or password_hash); "
                            "every request is refused until then", settings.admin.host, settings.admin.port)
            app = _admin_app(node, accounts, auth, routes, node.ready_checks)
            runners.append(await _start(app, settings.admin.host, settings.admin.port,
                                        tls if settings.admin.tls else None))
        if settings.user_api.port:
            runners.append(await _start(_user_app(node, accounts), settings.user_api.host, settings.user_api.port,
                                        tls if settings.user_api.tls else None))
        log.info("operations API: admin on %s:%d, user on %s:%d (0: disabled)", settings.admin.host,
                 settings.admin.port, settings.user_api.host, settings.user_api.port)
        yield
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
