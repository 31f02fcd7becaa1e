"""Hostile S2S peers against a Meridian gateway: each is refused with the right error,
logged once, and the eu1 <-> us1 federation keeps working.

The two regions of ``test_s2s`` (SASL EXTERNAL allowed, short timeouts), plus raw peers speaking
XML over a socket: one claiming a ``from`` it did not authenticate, one with a dialback key that
does not verify, one that never answers (SRV records point at it), one sending garbage after
STARTTLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.link.tls import issue_cert
from tests.helpers.dns import DnsServer
from tests.helpers.node import ADMIN_PASSWORD, ADMIN_USER
from tests.helpers.redis import redis_server_binary

from .test_s2s import EU, US, Site, World, apoll, two_sites

RATE = 20
QUEUE = 3
SHAPER_RATE, SHAPER_BURST = 100_000, 65_536  # bytes/s and bytes read from one incoming stream
# Authentication throttling, as for clients but tighter; 127.0.0.1 stays exempt (every other test
# here connects from it), the guesser comes from another loopback address.
THROTTLE = {"auth_throttle": {"max_failures": 3, "delay_after": 1, "failure_delay": 0.5, "ban_seconds": 300}}
GUESSER = "127.0.0.23"
NS = ("xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
      "xmlns:db='jabber:server:dialback' version='1.0'")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    base = tmp_path_factory.mktemp("s2s-hostile")
    # Two attempts per connection (a stalled handshake is retried), a low stanza rate per incoming stream.
    # At most QUEUE stanzas wait for a domain while its stream is being set up.
    fast = {"sasl_external": True, "auth_timeout": 5.0, "retries": 2, "stanza_rate": RATE, "stanza_burst": RATE,
            "queue_max": QUEUE, "shaper_rate": SHAPER_RATE, "shaper_burst": SHAPER_BURST}
    with DnsServer() as dns, Silent() as silent:
        dns.add_srv("_xmpp-server._tcp.silent.example", "xmpp.silent.example", silent.port)
        dns.add_a("xmpp.silent.example", "127.0.0.1")
        with two_sites(base, lambda b, name, domain, url, d: Site(b, name, domain, url, d, fast,
                                                                  gateway_settings=THROTTLE), dns) as world:
            world.silent = silent  # type: ignore[attr-defined]
            yield world


class Silent:
    """A TCP server that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def __enter__(self) -> Silent:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


class RawPeer:
    """A hand-driven S2S peer on a socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = b""

    @classmethod
    async def connect(cls, port: int, source: str | None = None) -> RawPeer:
        """A connection to ``port`` on loopback, from the address ``source`` if given."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0) if source else None)
        return cls(reader, writer)

    def send(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def expect(self, pattern: str, timeout: float = 20.0) -> str:
        """Read until ``pattern`` (a regex) matches what arrived since the last match."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            m = re.search(pattern.encode(), self.received)
            if m:
                text = self.received[:m.end()].decode(errors="replace")
                self.received = self.received[m.end():]
                return text
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.received!r}")
            data = await asyncio.wait_for(self.reader.read(65536), left)
            if not data:
                raise AssertionError(f"closed before {pattern!r}; got {self.received!r}")
            self.received += data

    async def open(self, from_: str, to: str) -> str:
        self.send(f"<?xml version='1.0'?><stream:stream {NS} from='{from_}' to='{to}'>")
        return await self.expect("</stream:features>")

    async def starttls(self, ctx: ssl.SSLContext, from_: str, to: str) -> str:
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.expect("<proceed")
        await self.writer.start_tls(ctx, server_hostname=to)
        return await self.open(from_, to)

    async def external(self, site: Site, cert: tuple[Path, Path], domain: str, to: str = EU) -> None:
        """Open a stream as ``domain``, STARTTLS with ``cert`` and authenticate by SASL EXTERNAL."""
        await self.open(domain, to)
        await self.starttls(client_ctx(site, cert), domain, to)
        authzid = base64.b64encode(domain.encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>")
        await self.expect("<success")
        await self.open(domain, to)

    async def closed(self, timeout: float = 20.0) -> bytes:
        """Everything until the server closes the connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), max(deadline - loop.time(), 0.01))
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                return self.received
            self.received += data

    def close(self) -> None:
        self.writer.close()


def client_ctx(site: Site, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(site.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def peer_cert(world: World, tmp_path: Path, domain: str) -> tuple[Path, Path]:
    """A certificate for ``domain`` from the CA eu1 trusts."""
    return issue_cert(world.eu.ca, world.eu.ca.parent / "ca-key.pem", tmp_path, domain, [domain])


def refused_from(world: World, domain: str) -> int:
    """Stanzas eu1's gateway refused over the stanza rate on its streams from ``domain``."""
    out = json.loads(world.eu.gateway.ctl("s2s", "connections").stdout)
    return sum(int(c.get("refused") or 0) for c in out["data"]["s2s"]["connections"] if c["peer"] == domain)


async def still_federating(world: World) -> None:
    """A message eu1 -> us1 and one back still arrive."""
    alice, bob = world.eu.user("alice"), world.us.user("bob")
    a = await world.eu.client(alice).online(world.eu.node.port)
    b = await world.us.client(bob).online(world.us.node.port)
    try:
        a.send_message(mto=f"{bob}@{US}/r", mbody="still there?", mtype="chat")
        assert (await b.next_message(timeout=20))["body"] == "still there?"
        b.send_message(mto=f"{alice}@{EU}/r", mbody="yes", mtype="chat")
        assert (await a.next_message(timeout=20))["body"] == "yes"
    finally:
        await a.close()
        await b.close()


def log_mark(site: Site) -> int:
    """Where the gateway's log ends now: a test counts the lines written after it started."""
    return site.gateway.log_path.stat().st_size


def log_count(site: Site, text: str, since: int) -> int:
    """How often ``text`` is in the gateway's log after ``since`` (a :func:`log_mark`): what this
    test caused, not what the tests before it left in the log of the shared gateway."""
    with site.gateway.log_path.open("rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace").count(text)


async def test_from_not_authenticated_on_the_stream_gets_invalid_from(world: World, tmp_path: Path) -> None:
    mark = log_mark(world.eu)
    await still_federating(world)
    ca_dir = world.eu.ca.parent
    cert = issue_cert(world.eu.ca, ca_dir / "ca-key.pem", tmp_path, "mallory.example", ["mallory.example"])
    peer = await RawPeer.connect(world.eu.s2s_port)
    try:
        features = await peer.open("mallory.example", EU)
        assert "<required/>" in features
        features = await peer.starttls(client_ctx(world.eu, cert), "mallory.example", EU)
        assert "EXTERNAL" in features
        peer.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
                  "bWFsbG9yeS5leGFtcGxl</auth>")  # base64("mallory.example")
        await peer.expect("<success")
        await peer.open("mallory.example", EU)
        # Authenticated as mallory.example, it claims to speak for us1.example.com.
        peer.send(f"<message from='bob@{US}/r' to='alice@{EU}' type='chat'><body>forged</body></message>")
        rest = await peer.closed()
        assert b"<invalid-from" in rest, rest
    finally:
        peer.close()
    await apoll(lambda: log_count(world.eu, "stream closed with invalid-from", mark) >= 1, 10)
    assert log_count(world.eu, "stream closed with invalid-from", mark) == 1
    await still_federating(world)


async def test_dialback_key_that_does_not_verify_is_refused(world: World) -> None:
    mark = log_mark(world.eu)
    peer = await RawPeer.connect(world.eu.s2s_port)
    try:
        await peer.open(US, EU)
        features = await peer.starttls(client_ctx(world.eu), US, EU)
        assert "urn:xmpp:features:dialback" in features
        # Claims to be us1.example.com; eu1 asks us1's real server, which never made this key.
        peer.send(f"<db:result from='{US}' to='{EU}'>{'ab' * 32}</db:result>")
        answer = await peer.expect("<db:result[^>]*/>")
        assert "type='invalid'" in answer, answer
        peer.send(f"<message from='bob@{US}/r' to='alice@{EU}'><body>forged</body></message>")
        assert b"<invalid-from" in await peer.closed()
    finally:
        peer.close()
    await apoll(lambda: log_count(world.eu, "did not verify", mark) >= 1, 10)
    assert log_count(world.eu, f"dialback key for {US} -> {EU} did not verify", mark) == 1
    await still_federating(world)


async def test_dialback_without_an_answer_from_the_authoritative_server_is_a_temporary_error(world: World) -> None:
    """A peer claiming silent.example (whose authoritative server accepts connections and never
    says a word): eu1 cannot verify its key in time and answers XEP-0220 §2.4's temporary error
    (type='error', <remote-server-timeout/> in an <error type='wait'/>), so a real server would try
    again later — not 'invalid', which tells it to give up."""
    mark = log_mark(world.eu)
    peer = await RawPeer.connect(world.eu.s2s_port)
    try:
        await peer.open("silent.example", EU)
        await peer.starttls(client_ctx(world.eu), "silent.example", EU)
        peer.send(f"<db:result from='silent.example' to='{EU}'>{'cd' * 32}</db:result>")
        answer = await peer.expect("</db:result>", timeout=30)
        assert "type='error'" in answer and "<error type='wait'><remote-server-timeout" in answer, answer
    finally:
        peer.close()
    assert log_count(world.eu, "told to try again (remote-server-timeout)", mark) == 1
    # eu1's own stream to silent.example (for the verify) gives up after its retries: wait for it,
    # so that what it logs and the connections it makes count here, not in the next test.
    await apoll(lambda: log_count(world.eu, "s2s eu1.example.com -> silent.example failed", mark) >= 1, 40)
    await still_federating(world)


async def test_peer_that_never_answers_gets_stanzas_bounced_with_timeout(world: World) -> None:
    mark, conns = log_mark(world.eu), len(world.silent.conns)  # type: ignore[attr-defined]
    alice = world.eu.user("alice")
    a = await world.eu.client(alice).online(world.eu.node.port)
    try:
        for i in range(3):
            a.send_message(mto="someone@silent.example", mbody=f"hello? {i}", mtype="chat")
        errors = []
        while len(errors) < 3:
            m = await a.next_message(timeout=40, body=False)
            if m["type"] == "error":
                errors.append(m)
        assert {m["error"]["condition"] for m in errors} == {"remote-server-timeout"}
        assert sorted(m["body"] for m in errors) == [f"hello? {i}" for i in range(3)]
        # the timed-out handshake was retried once
        assert len(world.silent.conns) - conns == 2  # type: ignore[attr-defined]
    finally:
        await a.close()
    assert log_count(world.eu, "s2s eu1.example.com -> silent.example failed", mark) == 1
    await still_federating(world)


async def test_stanzas_past_the_queue_for_a_domain_being_connected_get_resource_constraint(world: World) -> None:
    """While the stream to silent.example is being set up (it never will be), QUEUE stanzas wait
    for it; the ones after them are bounced at once with <resource-constraint/>, the waiting ones
    later with <remote-server-timeout/>: each gets exactly one answer, none is lost silently."""
    alice = world.eu.user("alice")
    a = await world.eu.client(alice).online(world.eu.node.port)
    try:
        started = asyncio.get_running_loop().time()
        for i in range(QUEUE + 2):
            a.send_message(mto="someone@silent.example", mbody=f"queued? {i}", mtype="chat")
        errors: dict[str, tuple[str, float]] = {}
        while len(errors) < QUEUE + 2:
            m = await a.next_message(timeout=40, body=False)
            if m["type"] == "error":
                errors[m["body"]] = (m["error"]["condition"], asyncio.get_running_loop().time() - started)
        over = [f"queued? {i}" for i in range(QUEUE, QUEUE + 2)]
        assert {body: c for body, (c, _) in errors.items()} == {
            **{f"queued? {i}": "remote-server-timeout" for i in range(QUEUE)},
            **dict.fromkeys(over, "resource-constraint")}, errors
        assert all(errors[body][1] < 3 for body in over), errors  # at once, not after the handshake gave up
    finally:
        await a.close()
    counts = await refusals(world.eu)
    assert counts.get("s2s.queue_max", 0) >= 2, counts  # counted by the setting's name
    await still_federating(world)


async def test_garbage_after_starttls(world: World) -> None:
    mark = log_mark(world.eu)
    # Garbage inside TLS: a stream error, the connection closed.
    peer = await RawPeer.connect(world.eu.s2s_port)
    try:
        await peer.open(US, EU)
        await peer.starttls(client_ctx(world.eu), US, EU)
        peer.send(b"\x00\x01<<<garbage&&&>>>")
        assert b"<not-well-formed" in await peer.closed()
    finally:
        peer.close()
    await apoll(lambda: log_count(world.eu, "stream closed with not-well-formed", mark) >= 1, 10)
    assert log_count(world.eu, "stream closed with not-well-formed", mark) == 1
    # Garbage instead of a TLS handshake after <proceed/>: the handshake fails, logged once.
    peer = await RawPeer.connect(world.eu.s2s_port)
    try:
        await peer.open(US, EU)
        peer.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await peer.expect("<proceed")
        peer.send(b"this is not a TLS ClientHello\r\n" * 4)
        await peer.closed()
    finally:
        peer.close()
    await apoll(lambda: log_count(world.eu, "TLS handshake failed", mark) >= 1, 10)
    assert log_count(world.eu, "TLS handshake failed", mark) == 1
    await still_federating(world)


async def refusals(site: Site) -> dict[str, int]:
    """The gateway's refusals by limit, as the admin API counts them."""
    status, body = await site.gateway.admin("{ server { refusals { limit count } } }")
    assert status == 200, body
    return {r["limit"]: r["count"] for r in body["data"]["server"]["refusals"]}


async def test_a_stanza_over_max_stanza_size_ends_the_stream_and_is_counted(world: World) -> None:
    """A peer's stanza larger than ``s2s.max_stanza_size`` (default 256 KiB) ends its stream with
    <policy-violation/> before it is all buffered; the refusal is counted under the setting's name."""
    before = (await refusals(world.eu)).get("s2s.max_stanza_size", 0)
    peer = await RawPeer.connect(world.eu.s2s_port)
    try:
        await peer.open(US, EU)
        await peer.starttls(client_ctx(world.eu), US, EU)
        peer.send(f"<message from='x@{US}' to='y@{EU}'><body>" + "z" * 300_000)
        closing = await peer.closed()
        assert b"<policy-violation" in closing and b"stanza too large" in closing, closing[-300:]
    finally:
        peer.close()
    assert (await refusals(world.eu)).get("s2s.max_stanza_size", 0) == before + 1
    await still_federating(world)


async def test_incoming_stream_over_its_stanza_rate(world: World, tmp_path: Path) -> None:
    """An authenticated peer pushing stanzas faster than ``stanza_rate``: those over it are refused
    (policy-violation to their senders), counted on the stream in the admin API, logged once."""
    mark = log_mark(world.eu)
    alice = world.eu.user("alice")
    peer = await RawPeer.connect(world.eu.s2s_port)
    try:
        await peer.external(world.eu, peer_cert(world, tmp_path, "chatty.example"), "chatty.example")
        peer.send("".join(f"<message from='x@chatty.example/r' to='{alice}@{EU}' type='headline'><body>{i}</body>"
                          "</message>" for i in range(3 * RATE)))
        await apoll(lambda: refused_from(world, "chatty.example") >= RATE, 20)
        assert refused_from(world, "chatty.example") < 3 * RATE  # the burst went through
    finally:
        peer.close()
    assert log_count(world.eu, "(chatty.example): over the stanza rate", mark) == 1
    await still_federating(world)


async def test_authentication_failures_from_one_address_get_it_banned(world: World) -> None:
    """SASL EXTERNAL without a certificate naming the claimed domain, from one address: the first
    failure is answered at once, the next ones late, the third bans the address; its next stream
    is refused with <policy-violation/> before any feature; the ban is listed in the admin API and
    counted in /metrics, and lifting it lets the address in again.  Logged once a minute."""
    mark = log_mark(world.eu)

    async def guess() -> float:
        """One refused SASL EXTERNAL: how long its answer took."""
        peer = await RawPeer.connect(world.eu.s2s_port, GUESSER)
        try:
            await peer.open("guesser.example", EU)
            await peer.starttls(client_ctx(world.eu), "guesser.example", EU)
            started = asyncio.get_running_loop().time()
            peer.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
                      "Z3Vlc3Nlci5leGFtcGxl</auth>")  # base64("guesser.example")
            await peer.expect("<failure")
            return asyncio.get_running_loop().time() - started
        finally:
            peer.close()

    first = await guess()
    second = await guess()
    assert first < 0.4 and second >= 0.4, (first, second)  # held back from the second failure on
    peer = await RawPeer.connect(world.eu.s2s_port, GUESSER)
    try:
        await peer.open("guesser.example", EU)
        await peer.starttls(client_ctx(world.eu), "guesser.example", EU)
        peer.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>Z3Vlc3Nlci5leGFtcGxl</auth>")
        rest = await peer.closed()
        assert b"<failure" in rest and b"<policy-violation" in rest, rest  # the third: banned
    finally:
        peer.close()
    for _ in range(3):  # banned: refused at the stream's start, nothing offered
        peer = await RawPeer.connect(world.eu.s2s_port, GUESSER)
        try:
            peer.send(f"<?xml version='1.0'?><stream:stream {NS} from='guesser.example' to='{EU}'>")
            rest = await peer.closed()
            assert b"<policy-violation" in rest and b"<stream:features" not in rest, rest
        finally:
            peer.close()
    status, body = await world.eu.gateway.admin("{ throttle { listBans { address seconds reason } } }")
    assert status == 200 and [b["address"] for b in body["data"]["throttle"]["listBans"]] == [GUESSER], body
    status, text = await world.eu.gateway.http("GET", f"{world.eu.gateway.admin_url}/metrics",
                                               auth=(ADMIN_USER, ADMIN_PASSWORD))
    assert status == 200 and "meridian_auth_throttle_bans_total 1.0" in text, text
    assert "meridian_auth_throttle_refused_total 3.0" in text, text
    assert log_count(world.eu, f"s2s in from {GUESSER}", mark) >= 1
    assert log_count(world.eu, "refused, ", mark) == 1  # three refusals, one line
    # Lifted: the address may try again (and federation from elsewhere never stopped).
    status, body = await world.eu.gateway.admin('mutation { throttle { liftBan(address: "%s") } }' % GUESSER)
    assert body["data"]["throttle"]["liftBan"] is True, body
    peer = await RawPeer.connect(world.eu.s2s_port, GUESSER)
    try:
        assert "<stream:features" in await peer.open("guesser.example", EU)
    finally:
        peer.close()
    await still_federating(world)


async def test_the_stanza_rate_is_per_peer_domain_not_per_stream(world: World, tmp_path: Path) -> None:
    """Two streams from one peer domain share its stanza rate: each sends 3/4 of the burst at once,
    together more than it, and the excess is refused (a peer gets no more rate by opening more
    streams)."""
    cert = peer_cert(world, tmp_path, "twins.example")
    alice = world.eu.user("alice")
    peers = [await RawPeer.connect(world.eu.s2s_port) for _ in range(2)]
    try:
        for peer in peers:
            await peer.external(world.eu, cert, "twins.example")
        each = 3 * RATE // 4
        for n, peer in enumerate(peers):
            peer.send("".join(f"<message from='x@twins.example/{n}' to='{alice}@{EU}' type='headline'>"
                              f"<body>{i}</body></message>" for i in range(each)))
        await apoll(lambda: refused_from(world, "twins.example") >= 2 * each - RATE - 4, 20)  # less a little refill
        assert refused_from(world, "twins.example") <= 2 * each - RATE + 2
    finally:
        for peer in peers:
            peer.close()
    await still_federating(world)


async def test_a_peer_over_its_byte_rate_is_read_more_slowly_not_cut_off(world: World, tmp_path: Path) -> None:
    """``s2s.shaper_rate``: 400 kB from one stream at once, at 100 kB/s after a 64 kB burst, take
    the gateway more than 3 s to read; the stream stays up and the message after them arrives."""
    alice = world.eu.user("alice")
    a = await world.eu.client(alice).online(world.eu.node.port)
    peer = await RawPeer.connect(world.eu.s2s_port)
    try:
        await peer.external(world.eu, peer_cert(world, tmp_path, "bulky.example"), "bulky.example")
        size = 400_000
        started = asyncio.get_running_loop().time()
        peer.send(b" " * size)  # whitespace between stanzas: allowed, and read like anything else
        peer.send(f"<message from='x@bulky.example/r' to='{alice}@{EU}' type='chat'><body>after the bulk</body>"
                  "</message>")
        m = await a.next_message(timeout=30)
        took = asyncio.get_running_loop().time() - started
        assert m["body"] == "after the bulk"
        least = (size - SHAPER_BURST) / SHAPER_RATE
        assert took >= 0.9 * least, f"read in {took:.1f} s, the shaper allows no less than {least:.1f} s"
        assert b"<stream:error" not in peer.received, peer.received[-300:]
    finally:
        peer.close()
        await a.close()
    await still_federating(world)
