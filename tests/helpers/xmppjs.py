"""A real JavaScript XMPP client (xmpp.js, ``@xmpp/client`` 0.14 on Node.js) driven from asyncio tests.

``tests/js/sm_client.mjs`` runs xmpp.js and speaks JSON lines: commands on its stdin, events on its
stdout (the protocol is documented at the top of that file).  This module starts it and waits for
its events::

    async with js_client(service=f"xmpp://127.0.0.1:{port}", domain="example.com",
                         username="alice", password="pw", ca=ca_cert) as c:
        await c.wait_event("sm_enabled")
        await c.kill_socket()                      # TCP gone, no </stream:stream>
        await c.wait_event("resumed", timeout=10)  # xmpp.js reconnected and resumed (XEP-0198)
        msgs = await c.messages_until(6, timeout=10)

``ensure_js_deps()`` installs ``tests/js/node_modules`` (``npm ci``, from the lock file) the first
time; ``scripts/install-test-deps.sh`` does the same up front.  A test is skipped only when ``node``
is missing.

What xmpp.js does (read from its source, seen against Prosody 0.12 and Meridian): SASL2 + Bind2 with
inline SM when offered, else SASL1, bind, then ``<enable resume='true'/>``; its Bind 2 ``<tag/>`` is the
``resource`` option and its ``<user-agent id>`` a random UUID per client object (stable across its
reconnects); with FAST (XEP-0484) offered it asks for a token at its first SASL2 login
(``<request-token/>``), keeps it in memory, and logs in with it (HT-SHA-256-NONE, ``<fast/>`` without a
count) from its next connection on — a reconnect or ``restart`` — falling back to its password
after a ``<failure/>``; "online" fires after bind, before
SM is enabled (wait for ``sm_enabled`` before relying on SM); ``<a/>`` only in answer to ``<r/>`` and
before a graceful close; ``<r/>`` 250 ms after its last outbound stanza and every 30 s when idle, and
it disconnects when nothing arrives for 60 s after an ``<r/>``; after a dead socket @xmpp/reconnect
reconnects to ``options.service`` after ``reconnect_delay`` ms (1000 by default, set lower here) and
sends ``<resume h previd/>`` (inline in SASL2 when offered); on ``<resumed/>`` it re-sends its unacked
stanzas (messages with a ``urn:xmpp:delay`` stamp) and emits ``resumed`` (no ``online``); on
``<failed/>`` it ignores the ``h`` there and drops its whole queue (``sm_fail`` per stanza, even those
that ``h`` acknowledges), binds again (a second ``online``) and enables SM again.  Its SCRAM-SHA-1 takes
~1 s of client CPU per login (PBKDF2 in JavaScript).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["JS_DIR", "JsClient", "JsClientError", "ensure_js_deps", "js_client", "node_binary"]

JS_DIR = Path(__file__).resolve().parent.parent / "js"
SCRIPT = JS_DIR / "sm_client.mjs"

Event = dict[str, Any]
T = TypeVar("T")


class JsClientError(Exception):
    """A command the JS client refused, or the client process died."""


def node_binary() -> str | None:
    """``node`` (or Debian's old ``nodejs`` name) on PATH."""
    return shutil.which("node") or shutil.which("nodejs")


def _installed_version(package: str) -> str | None:
    manifest = JS_DIR / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _deps_current() -> bool:
    """Every dependency pinned in package.json is installed at that version."""
    wanted = json.loads((JS_DIR / "package.json").read_text()).get("dependencies", {})
    return all(_installed_version(name) == version for name, version in wanted.items())


def ensure_js_deps() -> None:
    """``npm ci --no-audit --no-fund`` in tests/js unless node_modules already holds the pinned versions.

    Serialised across processes (pytest-xdist workers, parallel runs) with a lock file in the temp dir.
    """
    if _deps_current():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("tests/js/node_modules is missing and npm is not installed "
                           "(scripts/install-test-deps.sh installs Debian's nodejs and npm)")
    key = hashlib.sha1(str(JS_DIR).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"meridian-npm-ci-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _deps_current():  # another process installed them while we waited
                return
            proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode != 0 or not _deps_current():
                raise RuntimeError(f"npm ci in {JS_DIR} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class JsClient:
    """One ``node tests/js/sm_client.mjs`` process, i.e. one xmpp.js client.

    ``events`` holds every event in arrival order; ``wait_event`` hands out each event of a name once,
    in order (a cursor per name), so ``wait_event("resumed")`` twice waits for two resumptions.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[Event] = []
        self.stderr_lines: list[str] = []
        self._cursor: dict[str, int] = {}
        self._seq = 0
        self._changed = asyncio.Condition()
        self._eof = False
        self._readers = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]

    # process I/O ------------------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                text = line.decode(errors="replace").strip()
                if not text:
                    continue
                try:
                    event = json.loads(text)
                except ValueError:
                    event = {"event": "garbage", "text": text}
                async with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._eof = True
                self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr_lines.append(line.decode(errors="replace").rstrip("\n"))
            if len(self.stderr_lines) > 20000:
                del self.stderr_lines[:10000]

    def log(self) -> str:
        """Events and stderr (debug lines with ``debug=True``), for failure messages."""
        events = "\n".join(json.dumps(e) for e in self.events)
        return f"--- xmpp.js events ---\n{events}\n--- xmpp.js stderr ---\n" + "\n".join(self.stderr_lines)

    async def _write(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        if self.proc.stdin.is_closing():
            raise JsClientError("the JS client's stdin is closed")
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    # events -----------------------------------------------------------------------------------

    def of(self, name: str) -> list[Event]:
        """Every event called ``name`` so far."""
        return [e for e in self.events if e.get("event") == name]

    @property
    def messages(self) -> list[Event]:
        """Every ``message`` event so far: ``{"from", "to", "type", "id", "body", "delay"}``."""
        return self.of("message")

    async def _wait(self, pred: Callable[[], T | None], timeout: float, what: str) -> T:
        async def until() -> T:
            async with self._changed:
                while True:
                    result = pred()
                    if result is not None:
                        return result
                    if self._eof:
                        raise JsClientError(f"JS client exited ({self.proc.returncode}) while waiting for "
                                            f"{what}\n{self.log()[-20000:]}")
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no {what} from the JS client within {timeout} s\n{self.log()[-20000:]}") from None

    async def wait_event(self, name: str, timeout: float = 10.0,
                         predicate: Callable[[Event], bool] | None = None) -> Event:
        """The next ``name`` event not yet returned by ``wait_event`` (matching ``predicate`` if given)."""
        def find() -> Event | None:
            for i in range(self._cursor.get(name, 0), len(self.events)):
                e = self.events[i]
                if e.get("event") == name and (predicate is None or predicate(e)):
                    self._cursor[name] = i + 1
                    return e
            return None
        return await self._wait(find, timeout, f"{name!r} event")

    async def messages_until(self, n: int, timeout: float = 10.0) -> list[Event]:
        """All ``message`` events once there are at least ``n`` of them."""
        def enough() -> list[Event] | None:
            messages = self.messages
            return messages if len(messages) >= n else None
        return await self._wait(enough, timeout, f"{n} messages")

    # commands ---------------------------------------------------------------------------------

    async def command(self, cmd: str, *, timeout: float = 10.0, **fields: Any) -> Event:
        """Send a command and wait for its ``ok`` (returned) or ``error`` (raised as JsClientError)."""
        self._seq += 1
        seq = self._seq
        await self._write({"cmd": cmd, "seq": seq, **{k: v for k, v in fields.items() if v is not None}})

        def reply() -> Event | None:
            for e in reversed(self.events):
                if e.get("seq") == seq and e.get("event") in ("ok", "error"):
                    return e
            return None
        event = await self._wait(reply, timeout, f"reply to {cmd!r}")
        if event["event"] == "error":
            raise JsClientError(f"{cmd}: {event.get('text')}")
        return event

    async def connect(self, service: str, domain: str, username: str, password: str, resource: str = "js",
                      **options: Any) -> None:
        """Start logging in (returns at once: wait for ``online``/``sm_enabled``).  Options: ``presence``
        (send initial presence, default True), ``reconnect_delay`` (ms), ``request_ack_interval``,
        ``request_ack_debounce``, ``sm_timeout`` (ms), ``sm_max`` (s), ``timeout`` (ms).
        ``reconnect_delay`` is 100 ms unless given (xmpp.js' own default is 1000 ms)."""
        options.setdefault("reconnect_delay", 100)
        await self.command("connect", service=service, domain=domain, username=username, password=password,
                           resource=resource, **options)

    async def send_message(self, to: str, body: str, *, id: str | None = None, type: str = "chat") -> str:
        """Send a ``<message/>``; its id (generated unless given)."""
        return str((await self.command("send", to=to, body=body, id=id, type=type))["id"])

    async def send_xml(self, xml: str) -> None:
        await self.command("send_xml", xml=xml)

    async def presence(self, type: str | None = None) -> None:
        await self.command("presence", type=type)

    async def request_ack(self) -> None:
        """Send ``<r/>`` now."""
        await self.command("request_ack")

    async def ack(self) -> None:
        """Send ``<a h=…/>`` with xmpp.js' inbound count now."""
        await self.command("ack")

    async def state(self) -> Event:
        """``{"status", "jid", "service", "sm": {"enabled", "id", "inbound", "outbound", "queued", "max"}}``."""
        return await self.command("state")

    async def set_service(self, service: str) -> None:
        """Where the next (re)connect goes (``xmpp://host:port`` STARTTLS, ``xmpps://host:port`` direct TLS)."""
        await self.command("set_service", service=service)

    async def kill_socket(self, mode: str = "destroy") -> None:
        """Drop the connection without closing the stream: ``destroy`` (FIN) or ``reset`` (TCP RST).
        xmpp.js reconnects after ``reconnect_delay`` and tries to resume."""
        await self.command("kill_socket", mode=mode)

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful: ``<a/>``, ``</stream:stream>``, then ``offline``; no reconnect."""
        await self.command("stop", timeout=timeout)

    async def restart(self, timeout: float = 10.0) -> None:
        """Log out gracefully, then log in again with the same xmpp.js client object (returns once
        the login started: wait for ``online``).  A new session (stream management starts over); the
        XEP-0484 token xmpp.js saved, if any, is what it logs in with (``authenticate`` events say how)."""
        await self.command("restart", timeout=timeout)

    async def fast_token(self) -> dict[str, Any] | None:
        """The XEP-0484 token xmpp.js saved (``{"mechanism", "expiry", "token"}``), or None."""
        token = (await self.command("fast_token")).get("token")
        return token if isinstance(token, dict) else None

    async def set_fast_token(self, token: dict[str, Any] | None) -> None:
        """Replace the saved token (None: forget it; xmpp.js then logs in with its password)."""
        await self.command("set_fast_token", token=token)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the client (if connected) and end the process; killed if it takes longer than ``timeout``."""
        if self.proc.returncode is None and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            with contextlib.suppress(Exception):
                self.proc.stdin.close()  # EOF: the script stops its client and exits
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for task in self._readers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2)


@contextlib.asynccontextmanager
async def js_client(service: str | None = None, *, domain: str | None = None, username: str | None = None,
                    password: str | None = None, resource: str = "js", ca: Path | str | None = None,
                    debug: bool | None = None, env: dict[str, str] | None = None,
                    **options: Any) -> AsyncIterator[JsClient]:
    """Start one xmpp.js client process; with ``service`` it also starts logging in (see
    :meth:`JsClient.connect` for ``options``).

    ``ca``: the CA certificate the server's certificate is checked against (``NODE_EXTRA_CA_CERTS``;
    the name checked is the XMPP domain, for STARTTLS and direct TLS alike); without it certificates are
    not verified (``NODE_TLS_REJECT_UNAUTHORIZED=0``).  ``debug`` (default: env ``XMPPJS_DEBUG``) logs
    every element in and out to the process's stderr, which :meth:`JsClient.log` includes and which is
    printed when the block fails.
    """
    import pytest

    node = node_binary()
    if node is None:
        pytest.skip("node is not installed (scripts/install-test-deps.sh installs Debian's nodejs)")
    await asyncio.to_thread(ensure_js_deps)
    child_env = dict(os.environ)
    child_env.pop("NODE_OPTIONS", None)
    if ca is not None:
        child_env["NODE_EXTRA_CA_CERTS"] = str(ca)
        child_env.pop("NODE_TLS_REJECT_UNAUTHORIZED", None)
    else:
        child_env["NODE_TLS_REJECT_UNAUTHORIZED"] = "0"
    if debug is None:
        debug = os.environ.get("XMPPJS_DEBUG", "") not in ("", "0")
    child_env["XMPPJS_DEBUG"] = "1" if debug else "0"
    child_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), cwd=JS_DIR, env=child_env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=1 << 22)
    client = JsClient(proc)
    ok = False
    try:
        await client.wait_event("ready", timeout=15)
        if service is not None:
            if domain is None or username is None or password is None:
                raise ValueError("js_client(service=…) needs domain, username and password")
            await client.connect(service, domain, username, password, resource, **options)
        yield client
        ok = True
    finally:
        await client.close()
        if not ok:
            print(f"xmpp.js client (node {SCRIPT.name}):\n{client.log()[-30000:]}", file=sys.stderr)
