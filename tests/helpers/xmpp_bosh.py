"""A minimal XMPP-over-BOSH client (XEP-0124, XEP-0206) on aiohttp: what
:class:`tests.helpers.xmpp_raw.RawClient` is for TCP.

Like a browser client it keeps one request waiting at the server for what arrives, and sends what
it has queued in a new request whenever fewer than ``requests`` are outstanding (``start()`` runs
that pump).  :meth:`BoshClient.post` sends one request by hand instead — a chosen ``rid``, a
replay, a broken body — for tests that must see exactly what the server answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import random
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping

import aiohttp

from .xmpp_raw import local

__all__ = ["BoshClient", "HTTPBIND", "XBOSH", "ScramSha1", "insecure_context"]

HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"


def insecure_context() -> ssl.SSLContext:
    """The nodes' certificates are the tests' own: no verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ScramSha1:
    """Just enough RFC 5802 client (SCRAM-SHA-1, no channel binding) to log in."""

    name, h = "SCRAM-SHA-1", "sha1"

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.first_bare = f"n={user},r={_b64(os.urandom(12))}"

    def first(self) -> str:
        return _b64(f"n,,{self.first_bare}".encode())

    def final(self, challenge: str) -> str:
        server_first = base64.b64decode(challenge)
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(self.h, self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", self.h).digest()
        without_proof = f"c={_b64(b'n,,')},r={attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.new(hashlib.new(self.h, client_key).digest(), self.auth_message, self.h).digest()
        self.server_key = hmac.new(salted, b"Server Key", self.h).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return _b64(f"{without_proof},p={_b64(proof)}".encode())

    def verify(self, success: str) -> bool:
        expected = b"v=" + base64.b64encode(hmac.new(self.server_key, self.auth_message, self.h).digest())
        return base64.b64decode(success) == expected


class BoshClient:
    """One BOSH session at ``url`` (``http://`` or ``https://``, certificates not checked); with
    several URLs, each request goes to the next one (a round-robin load balancer)."""

    def __init__(self, url: str | list[str], *, domain: str = "localhost", hold: int = 1, wait: int = 30,
                 headers: Mapping[str, str] | None = None, rid: int | None = None) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        self._next_url = 0
        self.domain = domain
        self.hold = hold
        self.wait = wait
        self.headers = {"Content-Type": "text/xml; charset=utf-8", **(headers or {})}
        self.rid = rid if rid is not None else random.randint(1_000_000, 2 ** 40)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=insecure_context(), limit=0))
        self.sid: str | None = None
        self.session: ET.Element | None = None  # the session creation response
        self.requests = 2
        self.jid: str | None = None
        self.features: ET.Element | None = None
        self.terminated: ET.Element | None = None
        self.inbox: list[ET.Element] = []
        self._arrived = asyncio.Event()
        self._queue: list[str] = []
        self._outstanding = 0
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests_done = 0  # HTTP requests answered (for benchmarks/bosh.py)

    # -- one request by hand ------------------------------------------------------------------------

    def body(self, payload: str = "", *, rid: int | None = None, sid: str | None = None, **attrs: str) -> str:
        """A ``<body/>`` with the next rid (or ``rid``) and the session's sid (or ``sid``)."""
        if rid is None:
            rid, self.rid = self.rid, self.rid + 1
        values = {"rid": str(rid)}
        if sid or self.sid:
            values["sid"] = sid or self.sid or ""
        values.update(attrs)
        text = " ".join(f"{k.replace('__', ':')}='{v}'" for k, v in values.items())
        return f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}' {text}>{payload}</body>"

    async def post(self, data: str | bytes, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """POST ``data`` as it is: the status and the body of the answer."""
        url = self.urls[self._next_url % len(self.urls)]
        self._next_url += 1
        async with self.http.post(url, data=data, headers={**self.headers, **(headers or {})}) as resp:
            return resp.status, await resp.read()

    async def request(self, payload: str = "", **attrs: str) -> ET.Element:
        """One request (the next rid) whose answer must be 200; its children go to the inbox."""
        status, data = await self.post(self.body(payload, **attrs))
        assert status == 200, (status, data)
        return self._received(data)

    def _received(self, data: bytes) -> ET.Element:
        root = ET.fromstring(data)
        assert root.tag == f"{{{HTTPBIND}}}body", data
        self.inbox.extend(root)
        if root.get("type") == "terminate":
            self.terminated = root
        self._arrived.set()
        return root

    async def create(self, **attrs: str) -> ET.Element:
        """The session creation request; the features may come with it or in the next answer."""
        values = {"to": self.domain, "wait": str(self.wait), "hold": str(self.hold), "ver": "1.11",
                  "xml__lang": "en", "xmpp__version": "1.0", **attrs}
        root = await self.request(**values)
        assert root.get("type") != "terminate", ET.tostring(root)
        self.session = root
        self.sid = root.get("sid")
        self.requests = int(root.get("requests", "2"))
        return root

    # -- the pump: a request always waiting, payloads sent as they come ---------------------------------------

    def start(self) -> None:
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._run())

    def send(self, payload: str) -> None:
        """Queue ``payload`` for the next request the pump sends."""
        self._queue.append(payload)
        self._wake.set()

    async def taken(self) -> None:
        """Until the pump has put everything queued into a request (the server took it)."""
        while self._queue and self.terminated is None:
            await asyncio.sleep(0.002)

    async def _run(self) -> None:
        while self.terminated is None:
            if self._outstanding < self.requests and (self._queue or self._outstanding == 0):
                payload, self._queue = "".join(self._queue), []
                self._outstanding += 1
                task = asyncio.get_running_loop().create_task(self._one(self.body(payload)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _one(self, data: str) -> None:
        try:
            status, body = await self.post(data)
            self.requests_done += 1
            if status != 200:
                self.terminated = ET.Element("failed", {"status": str(status)})
                self._arrived.set()
                return
            self._received(body)
        except (TimeoutError, aiohttp.ClientError) as e:
            self.terminated = ET.Element("failed", {"error": str(e)})
            self._arrived.set()
        finally:
            self._outstanding -= 1
            self._wake.set()

    async def next(self, match: Callable[[ET.Element], bool] | None = None, timeout: float = 10.0) -> ET.Element:
        """The next element received (that ``match`` accepts: the others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                while self.inbox:
                    el = self.inbox.pop(0)
                    if match is None or match(el):
                        return el
                if self.terminated is not None:
                    raise ConnectionError(f"the session ended: {ET.tostring(self.terminated)!r}")
                self._arrived.clear()
                await self._arrived.wait()

    async def next_named(self, name: str, timeout: float = 10.0) -> ET.Element:
        return await self.next(lambda el: local(el) == name, timeout)

    async def messages(self, n: int, timeout: float = 10.0) -> list[ET.Element]:
        return [await self.next(lambda el: local(el) == "message", timeout) for _ in range(n)]

    # -- logging in ---------------------------------------------------------------------------------

    async def login(self, user: str, password: str, resource: str) -> str:
        """Create the session, SCRAM-SHA-1, restart, bind; returns the full JID (the pump runs)."""
        await self.create()
        self.start()
        features = await self.next_named("features")
        mechanisms = [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
        assert "SCRAM-SHA-1" in mechanisms, mechanisms
        scram = ScramSha1(user, password)
        self.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>")
        challenge = await self.next()
        assert local(challenge) == "challenge", ET.tostring(challenge)
        self.send(f"<response xmlns='{SASL}'>{scram.final(challenge.text or '')}</response>")
        success = await self.next()
        if local(success) != "success":
            raise PermissionError(ET.tostring(success).decode())
        assert scram.verify(success.text or ""), "the server's SCRAM signature does not verify"
        await self.restart()
        self.send(f"<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='{BIND}'>"
                  f"<resource>{resource}</resource></bind></iq>")
        reply = await self.next(lambda el: el.get("id") == "bind1")
        jid = reply.find(f".//{{{BIND}}}jid")
        assert jid is not None and jid.text, ET.tostring(reply)
        self.jid = jid.text
        return self.jid

    async def restart(self) -> ET.Element:
        """XEP-0206's restart after SASL, in a request of its own (the pump's waiting one is
        answered when it arrives: hold 1)."""
        self._outstanding += 1  # the pump waits meanwhile
        try:
            await self.request(to=self.domain, xmpp__restart="true", xml__lang="en")
        finally:
            self._outstanding -= 1
            self._wake.set()
        self.features = await self.next_named("features")
        return self.features

    # -- ending ---------------------------------------------------------------------------------

    async def terminate(self, payload: str = "") -> ET.Element:
        """``type='terminate'`` (with ``payload``): the session's end."""
        status, data = await self.post(self.body(payload, type="terminate"))
        assert status == 200, (status, data)
        return self._received(data)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.http.close()
