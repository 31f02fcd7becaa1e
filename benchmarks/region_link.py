"""Inter-region link benchmark: stanzas/s through one RegionPool of 4 connections, and stanza latency.

The receiving gateway (a :class:`LinkServer`) runs in its own OS process, the sending one (a
:class:`RegionPool`) in this one, over real mutual-TLS sockets on 127.0.0.1; with ``--delay-ms`` a
third process relays every connection through a proxy that holds each chunk for that long in each
direction (a WAN between regions, without its losses).

1. Throughput: ``--stanzas`` messages from ``--pairs`` (sender, recipient) pairs as fast as the pool
   accepts them (a QueueFull makes the sender yield and retry): stanzas/s from the first send until
   everything is acked, and the one-way latency under that load.
2. Latency: ``--paced`` messages at ``--rate`` per second, so nothing queues: one-way latency p50/p99
   from ``pool.send()`` to the receiver's ``on_stanza`` (CLOCK_MONOTONIC is shared by processes).

    .venv/bin/python benchmarks/region_link.py
    .venv/bin/python benchmarks/region_link.py --delay-ms 40 --stanzas 50000

Exit status 0 when every stanza arrived once and in order per pair, 2 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project from this checkout
    sys.path.insert(0, str(ROOT))

from gateway.link.pool import LinkServer, QueueFull, RegionPool  # noqa: E402
from gateway.link.protocol import StanzaReceived  # noqa: E402
from gateway.link.tls import client_context, issue_cert, make_ca, server_context  # noqa: E402

__all__ = ["main"]


# -- the receiving gateway (child process) ------------------------------------------------------------


def receiver_main(pki: str, conn: Connection) -> None:
    asyncio.run(_receiver(Path(pki), conn))


async def _receiver(pki: Path, conn: Connection) -> None:
    got: list[tuple[str, tuple[str | None, str | None], float]] = []
    mono = time.monotonic

    def on_stanza(event: StanzaReceived) -> None:
        got.append((event.id, (event.from_, event.to), mono()))

    ctx = server_context(pki / "us" / "gw-us.pem", pki / "us" / "gw-us-key.pem", pki / "ca" / "ca.pem")
    server = LinkServer("us", "gw-us", ctx, on_stanza, endpoints=["127.0.0.1:0"], ping_interval=1.0, ping_timeout=30.0)
    await server.start()
    conn.send(server.addresses[0])
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd == "report":
            conn.send(got)
            got = []
        elif cmd == "stop":
            break
    await server.stop()


# -- the WAN (child process) --------------------------------------------------------------------------


class _Delayed:
    """Writes chunks to a transport ``delay`` seconds after they were read, in order."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.peer: asyncio.Transport | None = None
        self.queue: deque[tuple[float, bytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def push(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = None
        if self.peer is None:  # the upstream connection is not up yet: hold everything
            self.timer = loop.call_later(0.001, self.flush)
            return
        now = loop.time()
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(self.queue.popleft()[1])
        if out and not self.peer.is_closing():
            self.peer.write(b"".join(out))
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self.flush)


class _Side(asyncio.Protocol):
    def __init__(self, out: _Delayed, back: _Delayed) -> None:
        self.out, self.back = out, back  # out: what we read goes there; back: writes to our transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.back.peer = transport

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.out.peer is not None:
            asyncio.get_running_loop().call_later(self.out.delay, self.out.peer.close)


def proxy_main(upstream: str, delay: float, conn: Connection) -> None:
    asyncio.run(_proxy(upstream, delay, conn))


async def _proxy(upstream: str, delay: float, conn: Connection) -> None:
    host, _, port = upstream.rpartition(":")
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.Protocol:
        to_server, to_client = _Delayed(delay), _Delayed(delay)
        client_side = _Side(to_server, to_client)

        async def connect() -> None:
            await loop.create_connection(lambda: _Side(to_client, to_server), host, int(port))

        loop.create_task(connect())
        return client_side

    server = await loop.create_server(factory, "127.0.0.1", 0)
    conn.send(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    await loop.run_in_executor(None, conn.recv)
    server.close()


# -- the sending gateway (this process) ---------------------------------------------------------------


def stanza(n: int, pairs: int, size: int) -> tuple[str, str, str, bytes]:
    pair = n % pairs
    sender, recipient = f"user{pair}@eu.example/phone", f"contact{pair % 97}@us.example"
    head = f"<message from='{sender}' to='{recipient}' type='chat' id='{n}'><body>"
    body = head + "x" * max(0, size - len(head) - 17) + "</body></message>"
    return f"{n}", sender, recipient, body.encode()


async def send_many(pool: RegionPool, ns: range, pairs: int, size: int, sent_at: dict[str, float],
                    rate: float | None) -> None:
    mono = time.monotonic
    start = mono()
    for i, n in enumerate(ns):
        sid, sender, recipient, data = stanza(n, pairs, size)
        if rate is not None:
            wait = start + i / rate - mono()
            if wait > 0:
                await asyncio.sleep(wait)
        while True:
            try:
                sent_at[sid] = mono()
                await pool.send(sid, "eu", 4, data, sender, recipient)
                break
            except QueueFull:
                await asyncio.sleep(0.0005)
        if rate is None and i % 256 == 255:
            await asyncio.sleep(0)


def percentiles(xs: list[float]) -> str:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return f"p50 {q[49] * 1e3:.2f} ms, p99 {q[98] * 1e3:.2f} ms, max {xs[-1] * 1e3:.2f} ms"


def check(got: list[tuple[str, tuple[str | None, str | None], float]], expected: range) -> list[str]:
    problems = []
    ids = [int(g[0]) for g in got]
    if sorted(ids) != list(expected):
        problems.append(f"{len(ids)} stanzas arrived ({len(set(ids))} distinct), expected {len(expected)}")
    last: dict[tuple[str | None, str | None], int] = {}
    for sid, pair, _ in got:
        if int(sid) < last.get(pair, -1):
            problems.append(f"order broken for {pair[0]} → {pair[1]}")
            break
        last[pair] = int(sid)
    return problems


async def run(args: argparse.Namespace, pki: Path, address: str, receiver: Connection) -> int:
    ctx = client_context(pki / "eu" / "gw-eu.pem", pki / "eu" / "gw-eu-key.pem", pki / "ca" / "ca.pem")
    pool = RegionPool("eu", "gw-eu", "us", ctx, endpoints=[address], connections_per_endpoint=args.connections,
                      queue_max=args.queue, max_unacked=args.window, ping_interval=1.0, ping_timeout=30.0,
                      connect_timeout=10.0, handshake_timeout=10.0)
    await pool.start()
    if not await pool.wait_up(10):
        print("the pool did not come up", file=sys.stderr)
        return 2
    await asyncio.sleep(0.3 + 3 * args.delay_ms / 1e3)  # all connections up
    print(f"pool: {pool.stats().connections_up} connections, window {args.window}, queue {args.queue}, "
          f"one-way delay {args.delay_ms:g} ms")
    loop = asyncio.get_running_loop()
    failures: list[str] = []

    async def report() -> list[tuple[str, tuple[str | None, str | None], float]]:
        receiver.send("report")
        got: list[tuple[str, tuple[str | None, str | None], float]] = await loop.run_in_executor(None, receiver.recv)
        return got

    # 1. throughput
    sent_at: dict[str, float] = {}
    ns = range(args.stanzas)
    t0 = time.monotonic()
    await send_many(pool, ns, args.pairs, args.size, sent_at, None)
    if not await pool.drain(120):
        failures.append("throughput phase: not everything was acked within 120 s")
    elapsed = time.monotonic() - t0
    got = await report()
    failures += check(got, ns)
    print(f"throughput: {args.stanzas:,} stanzas of {args.size} bytes from {args.pairs:,} pairs in {elapsed:.2f} s "
          f"= {args.stanzas / elapsed:,.0f} stanzas/s")
    loaded = percentiles([t - sent_at[sid] for sid, _, t in got])
    print(f"  latency under that load (time in the full queue included): {loaded}")

    # 2. latency, paced
    sent_at.clear()
    ns = range(args.stanzas, args.stanzas + args.paced)
    await send_many(pool, ns, args.pairs, args.size, sent_at, args.rate)
    if not await pool.drain(60):
        failures.append("latency phase: not everything was acked within 60 s")
    got = await report()
    failures += check(got, ns)
    print(f"latency: {args.paced:,} stanzas at {args.rate:,.0f}/s: {percentiles([t - sent_at[s] for s, _, t in got])}")
    stats = pool.stats()
    rtt = f"{stats.last_rtt * 1e3:.2f} ms" if stats.last_rtt is not None else "n/a"
    print(f"pool stats: sent {stats.sent:,}, acked {stats.acked:,}, resent {stats.resent}, "
          f"queue full answers {stats.queue_full:,}, ping RTT {rtt}")
    await pool.stop()
    for f in failures:
        print("FAILED:", f)
    return 2 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stanzas", type=int, default=100_000, help="throughput phase (default 100,000)")
    ap.add_argument("--paced", type=int, default=5_000, help="latency phase (default 5,000)")
    ap.add_argument("--rate", type=float, default=2_000.0, help="stanzas/s in the latency phase")
    ap.add_argument("--pairs", type=int, default=1_000, help="(sender, recipient) pairs")
    ap.add_argument("--size", type=int, default=300, help="bytes of each stanza")
    ap.add_argument("--connections", type=int, default=4, help="connections of the pool (default 4)")
    ap.add_argument("--window", type=int, default=1024, help="max unacked stanzas per connection")
    ap.add_argument("--queue", type=int, default=10_000, help="queue bound of the pool")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way artificial delay (a proxy process)")
    args = ap.parse_args(argv)
    print(f"region link benchmark — Python {platform.python_version()}, {platform.machine()}, "
          f"{multiprocessing.cpu_count()} CPUs")
    mp = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        ca, ca_key = make_ca(pki / "ca")
        issue_cert(ca, ca_key, pki / "us", "gw-us", ["127.0.0.1"])
        issue_cert(ca, ca_key, pki / "eu", "gw-eu", ["127.0.0.1"])
        here, there = mp.Pipe()
        rx = mp.Process(target=receiver_main, args=(str(pki), there), daemon=True)
        rx.start()
        address: str = here.recv()
        proxy = None
        if args.delay_ms > 0:
            p_here, p_there = mp.Pipe()
            proxy = mp.Process(target=proxy_main, args=(address, args.delay_ms / 1e3, p_there), daemon=True)
            proxy.start()
            address = p_here.recv()
        try:
            code = asyncio.run(run(args, pki, address, here))
        finally:
            here.send("stop")
            rx.join(10)
            if proxy is not None:
                p_here.send("stop")
                proxy.join(10)
    return code


if __name__ == "__main__":
    sys.exit(main())
