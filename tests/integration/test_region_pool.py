"""The inter-region link end to end on loopback: a LinkServer and a RegionPool over real mutual-TLS
sockets in one event loop.  Certificates, per-pair order over several connections, connection
losses and a server restart (nothing lost, nothing delivered twice), and the bounds: a full queue,
a region that is not there.  Nothing here measures speed (benchmarks/region_link.py does)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster_node.xmpp.errors import RemoteServerTimeout, StanzaResourceConstraint
from gateway.link.pool import LinkDown, LinkServer, OutgoingStanza, QueueFull, RegionPool
from gateway.link.protocol import StanzaReceived
from gateway.link.tls import client_context, issue_cert, make_ca, server_context
from tests.helpers.ports import free_port, free_ports

FAST = {"backoff_initial": 0.02, "backoff_max": 0.2, "ping_interval": 0.2, "ping_timeout": 2.0,
        "handshake_timeout": 2.0}


@dataclass
class Pki:
    ca: Path
    server: ssl.SSLContext  # region "us", for 127.0.0.1 and localhost
    client: ssl.SSLContext  # region "eu", same CA
    stranger: ssl.SSLContext  # a client certificate from another CA (trusting ours)
    no_cert: ssl.SSLContext  # trusts our CA, presents nothing
    fake_server: ssl.SSLContext  # a server certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(d / "ca")
    assert make_ca(d / "ca") == (ca, ca_key)  # an existing CA is kept, never replaced
    other_ca, other_key = make_ca(d / "other")
    us = issue_cert(ca, ca_key, d / "us", "gw-us-1", ["127.0.0.1", "localhost"])
    eu = issue_cert(ca, ca_key, d / "eu", "gw-eu-1", ["127.0.0.1"])
    evil = issue_cert(other_ca, other_key, d / "evil", "gw-evil", ["127.0.0.1"])
    assert (d / "us" / "gw-us-1-key.pem").stat().st_mode & 0o077 == 0
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.load_verify_locations(cafile=str(ca))
    return Pki(ca, server_context(*us, ca), client_context(*eu, ca), client_context(*evil, ca), no_cert,
               server_context(*evil, other_ca))


class Receiver:
    """What the gateway of region "us" hands over, checked for order per pair and duplicates."""

    def __init__(self) -> None:
        self.events: list[StanzaReceived] = []
        self.ids: set[str] = set()
        self.arrived = asyncio.Event()
        self.expect = 0
        self.at: dict[int, Callable[[], None]] = {}  # run after the n-th delivery, inside the callback

    def __call__(self, event: StanzaReceived) -> None:
        assert event.id not in self.ids, f"{event.id} delivered twice"
        self.ids.add(event.id)
        self.events.append(event)
        if len(self.events) in self.at:
            self.at[len(self.events)]()
        if len(self.events) >= self.expect:
            self.arrived.set()

    async def wait(self, n: int, timeout: float = 30.0) -> None:
        self.expect = n
        if len(self.events) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)

    def per_pair(self) -> dict[tuple[str | None, str | None], list[int]]:
        pairs: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
        for e in self.events:
            pairs[e.from_, e.to].append(int(e.id.rsplit("-", 1)[1]))
        return pairs


def server(pki: Pki, receiver: Receiver, ports: list[int], **kw: object) -> LinkServer:
    return LinkServer("us", "gw-us-1", pki.server, receiver, endpoints=[f"127.0.0.1:{p}" for p in ports],
                      ping_interval=0.2, ping_timeout=2.0, **kw)  # type: ignore[arg-type]


def pool(pki: Pki, endpoints: list[str], ctx: ssl.SSLContext | None = None, **kw: object) -> RegionPool:
    opts: dict[str, object] = {**FAST, **kw}
    return RegionPool("eu", "gw-eu-1", "us", ctx or pki.client, endpoints=endpoints, **opts)  # type: ignore[arg-type]


def stanza(n: int, pairs: int) -> tuple[str, str, str, bytes]:
    """The n-th stanza of the stream: ids count up within each (from, to) pair."""
    sender, recipient = f"user{n % pairs}@eu.example/r", f"friend{n % 7}@us.example"
    body = f"<message from='{sender}' to='{recipient}'><body>{n}</body></message>".encode()
    return f"m-{n}", sender, recipient, body


async def send_all(p: RegionPool, count: int, pairs: int) -> None:
    """Send ``count`` stanzas as a busy gateway would: on QueueFull, wait a moment and retry the
    same stanza (so the pair's order is the sending order)."""
    for n in range(count):
        sid, sender, recipient, body = stanza(n, pairs)
        while True:
            try:
                await p.send(sid, "eu", 4, body, sender, recipient)
                break
            except QueueFull:
                await asyncio.sleep(0.002)
        if n % 200 == 0:
            await asyncio.sleep(0)


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def assert_all_in_order(receiver: Receiver, count: int, pairs: int) -> None:
    assert len(receiver.events) == count
    per_pair = receiver.per_pair()
    for (sender, recipient), ns in per_pair.items():
        assert ns == sorted(ns), f"order broken for {sender} → {recipient}"
    assert sorted(n for ns in per_pair.values() for n in ns) == list(range(count))


# -- TLS ---------------------------------------------------------------------------------------------


async def test_mutual_tls_carries_stanzas_and_their_header(pki: Pki) -> None:
    rx = Receiver()
    srv = server(pki, rx, [0])
    await srv.start()
    p = pool(pki, srv.addresses, connections_per_endpoint=2)
    await p.start()
    try:
        await p.send("id-1", "ap", 3, b"<message><body>\xc3\xa9</body></message>", "a@eu/r", "b@us")
        await rx.wait(1)
        assert rx.events[0] == StanzaReceived("id-1", "ap", 3, "a@eu/r", "b@us",
                                              b"<message><body>\xc3\xa9</body></message>", 1)
        assert await p.drain(5)
        # Until a ping has been answered both ways (the pool's and the server's round trip).
        await eventually(lambda: p.stats().last_rtt is not None and srv.stats()["eu"].last_rtt is not None, 10)
        stats = p.stats()
        assert (stats.up, stats.connections_up, stats.connections_wanted) == (True, 2, 2)
        assert (stats.sent, stats.acked, stats.queue_depth, stats.in_flight) == (1, 1, 0, 0)
        assert stats.last_rtt is not None and stats.link_up_events == 1
        theirs = srv.stats()["eu"]
        assert (theirs.connections_up, theirs.received, theirs.duplicates) == (2, 1, 0)
        assert theirs.last_rtt is not None
    finally:
        await p.stop()
        await srv.stop()


@pytest.mark.parametrize("which", ["stranger", "no_cert"])
async def test_client_without_a_certificate_of_our_ca_is_refused(pki: Pki, which: str) -> None:
    rx = Receiver()
    srv = server(pki, rx, [0])
    await srv.start()
    p = pool(pki, srv.addresses, getattr(pki, which), connect_timeout=1.0)
    await p.start()
    try:
        with pytest.raises(LinkDown):
            await p.send("x", "eu", 1, b"<message/>", "a@eu", "b@us")
        assert not p.up and p.stats().last_error
        assert srv.stats() == {} and rx.events == []
    finally:
        await p.stop()
        await srv.stop()


async def test_server_certificate_and_name_are_checked(pki: Pki) -> None:
    rx = Receiver()
    fake = LinkServer("us", "gw-fake", pki.fake_server, rx, endpoints=["127.0.0.1:0"])
    real = server(pki, rx, [0])
    await fake.start()
    await real.start()
    port = real.addresses[0].rsplit(":", 1)[1]
    pools = [pool(pki, fake.addresses, connect_timeout=1.0),  # certificate from another CA
             pool(pki, real.addresses, connect_timeout=1.0, server_hostname="gw.other.example")]  # wrong name
    ok = pool(pki, [f"127.0.0.1:{port}"], connect_timeout=2.0, server_hostname="localhost")
    for p in [*pools, ok]:
        await p.start()
    try:
        for p in pools:
            with pytest.raises(LinkDown):
                await p.send("x", "eu", 1, b"<message/>")
            assert "certificate" in (p.stats().last_error or ""), p.stats().last_error
        await ok.send("y", "eu", 1, b"<message/>")
        await rx.wait(1)
        assert [e.id for e in rx.events] == ["y"]
    finally:
        for p in [*pools, ok]:
            await p.stop()
        await fake.stop()
        await real.stop()


async def test_wrong_region_is_refused_both_ways(pki: Pki) -> None:
    rx = Receiver()
    srv = server(pki, rx, [0], regions={"ap"})
    await srv.start()
    dials_ap = RegionPool("eu", "gw-eu-1", "ap", pki.client, endpoints=srv.addresses, connect_timeout=1.0,
                          **FAST)  # type: ignore[arg-type]
    not_allowed = pool(pki, srv.addresses, connect_timeout=1.0)
    for p in (dials_ap, not_allowed):
        await p.start()
    try:
        for p, reason in ((dials_ap, "expected region 'ap', peer is region 'us'"),
                          (not_allowed, "region 'eu' is not one of ours")):
            with pytest.raises(LinkDown):
                await p.send("x", "eu", 1, b"<message/>")
            assert reason in (p.stats().last_error or ""), p.stats().last_error
    finally:
        for p in (dials_ap, not_allowed):
            await p.stop()
        await srv.stop()


# -- order over several connections -------------------------------------------------------------------


async def test_10000_stanzas_over_4_connections_keep_per_pair_order(pki: Pki) -> None:
    rx = Receiver()
    srv = server(pki, rx, free_ports(2))
    await srv.start()
    p = pool(pki, srv.addresses, connections_per_endpoint=2, max_unacked=256, queue_max=2000)
    await p.start()
    try:
        await eventually(lambda: p.stats().connections_up == 4)  # all four up, so the pairs spread over them
        await send_all(p, 10_000, pairs=40)
        await rx.wait(10_000)
        assert_all_in_order(rx, 10_000, pairs=40)
        assert await p.drain(5)
        stats = p.stats()
        assert (stats.sent, stats.acked, stats.resent) == (10_000, 10_000, 0)
        assert srv.stats()["eu"].connections_up == 4
        assert len({e.seq for e in rx.events}) < 10_000  # several connections, each numbering its own
    finally:
        await p.stop()
        await srv.stop()


async def test_connections_killed_mid_stream_and_server_restarted(pki: Pki) -> None:
    rx = Receiver()
    ports = free_ports(2)
    srv = server(pki, rx, ports)
    await srv.start()
    p = pool(pki, srv.addresses, connections_per_endpoint=2, max_unacked=200, queue_max=3000, connect_timeout=5.0,
             down_timeout=30.0)
    await p.start()
    await eventually(lambda: p.stats().connections_up == 4)
    sender = asyncio.create_task(send_all(p, 10_000, pairs=25))


    def kill_all() -> None:
        # Abort every server-side connection in the middle of a read: what that read delivered is
        # never acked, so the pool resends it and the server must recognise it by id.
        for conn in list(srv.connections):
            assert conn.transport is not None
            conn.transport.abort()  # as a crash would: not even the ACK already due is written

    rx.at[2_000] = kill_all
    try:
        # 1. The server side connections are killed mid-stream (kill_all, above).
        # 2. The whole server is stopped mid-stream, then started again on the same ports.
        await rx.wait(5_000)
        await srv.stop()
        assert not srv.connections
        await asyncio.sleep(0.3)
        await srv.start()
        await asyncio.wait_for(sender, 30)
        await rx.wait(10_000)
        assert_all_in_order(rx, 10_000, pairs=25)
        assert await p.drain(10)
        stats = p.stats()
        assert stats.resent > 0 and stats.link_down_events >= 1 and stats.link_up_events >= 2
        assert (stats.acked, stats.queue_depth, stats.undeliverable, stats.link_down_errors) == (10_000, 0, 0, 0)
        assert stats.sent == 10_000 + stats.resent  # a resend is sent again, acked once
        theirs = srv.stats()["eu"]
        assert theirs.received == 10_000  # duplicates (those whose ACK was lost) were dropped by id
        assert theirs.duplicates <= stats.resent and theirs.link_down_events >= 1
        assert theirs.duplicates > 0
    finally:
        sender.cancel()
        await p.stop()
        await srv.stop()


async def test_a_gateway_stopping_acks_what_it_hands_on_so_its_peer_gateway_gets_no_resend(pki: Pki) -> None:
    """Two gateways of region us, one receiver behind them (the region's sessions): each hand-off
    completes a moment later (as a node's does).  One gateway stops mid-stream; everything it took
    is handed on *and acked* before its connections close, so the sender resends none of it to the
    other gateway, whose id window never saw it (a resend there is a duplicate for the user)."""
    rx = Receiver()
    loop = asyncio.get_running_loop()
    twice: list[str] = []

    def slow(event: StanzaReceived) -> asyncio.Future[None]:
        if event.id in rx.ids:
            twice.append(event.id)
        else:
            rx(event)  # delivered on receipt; acked only once "handed on", 30 ms later
        done: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.03, done.set_result, None)
        return done

    first = LinkServer("us", "gw-us-1", pki.server, slow, endpoints=[f"127.0.0.1:{free_port()}"],
                       ping_interval=0.2, ping_timeout=2.0)
    second = LinkServer("us", "gw-us-2", pki.server, slow, endpoints=[f"127.0.0.1:{free_port()}"],
                        ping_interval=0.2, ping_timeout=2.0)
    await first.start()
    await second.start()
    p = pool(pki, first.addresses + second.addresses, connections_per_endpoint=1, max_unacked=500, queue_max=3000)
    await p.start()
    sender = asyncio.create_task(send_all(p, 6_000, pairs=30))
    stopping: list[asyncio.Task[None]] = []
    try:
        await eventually(lambda: p.stats().connections_up == 2)
        rx.at[2_000] = lambda: stopping.append(loop.create_task(first.stop()))
        await asyncio.wait_for(sender, 30)
        await rx.wait(6_000)
        assert stopping and first.stats()["eu"].received > 0
        await stopping[0]
        assert await p.drain(10)
        assert twice == []
        stats = p.stats()  # resent: only what the stopping gateway never read
        assert stats.acked == 6_000 and stats.resent <= 500, stats
        assert_all_in_order(rx, 6_000, pairs=30)
    finally:
        sender.cancel()
        await p.stop()
        await first.stop()
        await second.stop()


# -- bounds -----------------------------------------------------------------------------------------


async def test_a_full_queue_answers_queue_full(pki: Pki) -> None:
    rx = Receiver()
    srv = server(pki, rx, [0])
    await srv.start()
    p = pool(pki, srv.addresses, connections_per_endpoint=1, max_unacked=1, queue_max=10)
    await p.start()
    try:
        assert await p.wait_up(5)
        for n in range(11):  # no await that yields: one in flight, ten queued
            await p.send(f"q-{n}", "eu", 1, b"<message/>", "a@eu", "b@us")
        assert p.stats().queue_depth == 10
        with pytest.raises(QueueFull) as e:
            await p.send("q-11", "eu", 1, b"<message/>", "a@eu", "b@us")
        assert isinstance(e.value, StanzaResourceConstraint)
        assert e.value.condition == "resource-constraint" and e.value.type == "wait"
        assert p.stats().queue_full == 1
        await rx.wait(11)
        await p.send("q-11", "eu", 1, b"<message/>", "a@eu", "b@us")  # room again
        await rx.wait(12)
        assert [ev.id for ev in rx.events] == [f"q-{n}" for n in range(12)]
    finally:
        await p.stop()
        await srv.stop()


async def test_no_server_is_link_down_quickly(pki: Pki) -> None:
    p = pool(pki, [f"127.0.0.1:{free_port()}"], connect_timeout=2.0)
    nowhere = pool(pki, [], connect_timeout=2.0)
    await p.start()
    await nowhere.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(LinkDown) as e:
            await p.send("x", "eu", 1, b"<message/>")
        assert time.monotonic() - t0 < 8  # connect_timeout (2 s) and the refusal, not a hang
        assert isinstance(e.value, RemoteServerTimeout) and e.value.condition == "remote-server-timeout"
        t0 = time.monotonic()
        with pytest.raises(LinkDown):  # down for longer than connect_timeout already: no wait at all
            await p.send("y", "eu", 1, b"<message/>")
        with pytest.raises(LinkDown):  # no endpoints known
            await nowhere.send("z", "eu", 1, b"<message/>")
        assert time.monotonic() - t0 < 1.5  # less than a connect_timeout (2 s): no wait at all
        assert p.stats().link_down_errors == 2 and "connect call failed" in (p.stats().last_error or "").lower()
        assert "connect call failed" in str(e.value).lower()  # the sender learns why
    finally:
        await p.stop()
        await nowhere.stop()


async def test_queued_stanzas_of_a_region_that_stays_down_are_handed_back(pki: Pki) -> None:
    rx = Receiver()
    srv = server(pki, rx, [0])
    await srv.start()
    failed: list[tuple[OutgoingStanza, Exception]] = []
    p = pool(pki, srv.addresses, connections_per_endpoint=1, max_unacked=1, down_timeout=0.5,
             on_undeliverable=lambda s, err: failed.append((s, err)))
    await p.start()
    try:
        assert await p.wait_up(5)
        for n in range(5):
            await p.send(f"d-{n}", "eu", 2, b"<message/>", "a@eu", "b@us")
        await srv.stop()  # before anything was written: all five are still ours
        # After down_timeout (0.5 s) every stanza is either delivered or handed back.
        await eventually(lambda: len(failed) + len({e.id for e in rx.events}) == 5 and p.stats().queue_depth == 0, 10)
        delivered = {e.id for e in rx.events}
        assert [s.id for s, _ in failed] == [f"d-{n}" for n in range(5) if f"d-{n}" not in delivered]
        assert failed and all(isinstance(err, LinkDown) for _, err in failed)
        assert p.stats().undeliverable == len(failed) and p.stats().queue_depth == 0
    finally:
        await p.stop()
        await srv.stop()


async def test_with_hold_an_outage_is_ridden_out_in_order(pki: Pki) -> None:
    """``hold``: while the region is down (its gateway restarting), sends are queued at once and
    go out in order when it is back — no remote-server-timeout, nothing handed back."""
    port = free_port()
    failed: list[OutgoingStanza] = []
    p = pool(pki, [f"127.0.0.1:{port}"], connect_timeout=5.0, hold=10.0,
             on_undeliverable=lambda s, err: failed.append(s))
    await p.start()
    rx = Receiver()
    srv = server(pki, rx, [port])
    try:
        t0 = time.monotonic()
        for n in range(20):
            sid, sender, recipient, body = stanza(n, 3)
            await p.send(sid, "eu", 4, body, sender, recipient)
        # Queued at once: a send that waited for a link would take connect_timeout (5 s) for the first.
        assert time.monotonic() - t0 < 2.5 and p.stats().queue_depth == 20
        await asyncio.sleep(0.5)  # nothing refused meanwhile: still held
        await srv.start()  # the region's gateway is back
        await rx.wait(20, 10)
        assert_all_in_order(rx, 20, 3)
        assert not failed and p.stats().link_down_errors == 0
    finally:
        await p.stop()
        await srv.stop()


async def test_with_hold_a_region_down_longer_is_handed_back_then_refused(pki: Pki) -> None:
    failed: list[tuple[OutgoingStanza, Exception]] = []
    p = pool(pki, [f"127.0.0.1:{free_port()}"], hold=0.6, connect_timeout=5.0,
             on_undeliverable=lambda s, err: failed.append((s, err)))
    await p.start()
    try:
        for n in range(3):
            await p.send(f"h-{n}", "eu", 2, b"<message/>", "a@eu", "b@us")
        assert not failed
        await eventually(lambda: len(failed) == 3, 5)  # the outage reached ``hold``: handed back
        assert [s.id for s, _ in failed] == ["h-0", "h-1", "h-2"] and all(isinstance(e, LinkDown) for _, e in failed)
        t0 = time.monotonic()
        with pytest.raises(LinkDown):  # past the hold: refused at once, not queued
            await p.send("late", "eu", 2, b"<message/>", "a@eu", "b@us")
        # At once: waiting for a link would take the rest of connect_timeout (5 s).
        assert time.monotonic() - t0 < 2.5 and p.stats().queue_depth == 0
    finally:
        await p.stop()


async def test_endpoints_can_change(pki: Pki) -> None:
    rx1, rx2 = Receiver(), Receiver()
    s1, s2 = server(pki, rx1, [0]), server(pki, rx2, [0])
    await s1.start()
    await s2.start()
    p = pool(pki, [], connect_timeout=2.0)
    await p.start()
    try:
        with pytest.raises(LinkDown):
            await p.send("a", "eu", 1, b"<message/>")
        p.set_endpoints(s1.addresses)
        await p.send("b", "eu", 1, b"<message/>")
        await rx1.wait(1)
        assert await p.drain(5)
        p.set_endpoints(s2.addresses)
        assert p.stats().connections_wanted == 2
        await p.send("c", "eu", 1, b"<message/>")
        await rx2.wait(1)
        assert [e.id for e in rx1.events] == ["b"] and [e.id for e in rx2.events] == ["c"]
        await eventually(lambda: s1.stats()["eu"].connections_up == 0)
    finally:
        await p.stop()
        await s1.stop()
        await s2.stop()


# -- the benchmark still runs ------------------------------------------------------------------------


def test_benchmark_runs_with_small_numbers() -> None:
    """benchmarks/region_link.py works end to end (three processes with a delay); no figure is checked."""
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "region_link.py"), "--stanzas", "2000",
                        "--paced", "200", "--rate", "1000", "--delay-ms", "2"],
                       capture_output=True, text=True, cwd=root, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for figure in ("stanzas/s", "p50", "p99", "4 connections"):
        assert figure in r.stdout, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
