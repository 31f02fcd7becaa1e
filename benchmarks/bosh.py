"""XMPP over BOSH (XEP-0124, XEP-0206): logins, HTTP requests/s and messages/s through one node.

One node (``[websocket]`` listener on, TLS, BOSH with its defaults but ``max_wait`` lowered to
``--wait``), pinned to CPU 0 when the machine has more than one; the load — this process, one
asyncio loop of ``tests/helpers/xmpp_bosh.py`` clients on aiohttp, each keeping one request held
at the node as a browser does (hold 1, requests 2) — on the other CPUs.

1. **Logins** — ``--clients`` (40) sessions created at once: session creation, SASL SCRAM-SHA-1
   (the client's PBKDF2 included), restart, bind, initial presence.  Logins/s over the wall time
   and the p50/p95 of one login.
2. **Requests/s** — every client pings the server (XEP-0199 ``<iq type='get'><ping/></iq>``) in a
   closed loop for ``--duration`` s: the request carrying a ping releases the one held and is held
   until the result; the next ping usually rides the next request, so a ping costs about one.
   HTTP requests answered per second, pings/s, the p50/p99 of a ping round trip.
3. **Messages/s** — the clients in pairs, each sending its peer chat messages with ``--window`` in
   flight (a message received is answered with one), for ``--duration`` s: messages delivered
   per second, HTTP requests per message, and node CPU per 1,000 messages.

    .venv/bin/python benchmarks/bosh.py                # defaults
    .venv/bin/python benchmarks/bosh.py --quick        # smoke run, a few seconds per phase

Figures depend on the client as much as on the node: a Python HTTP client costs about as much
CPU per request as the node does (the load's CPU is printed next to the node's).  Exit status 0
when the run worked, 2 when it failed (a login, a lost message).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from machine import load_average, machine_busy  # noqa: E402

from tests.helpers.node import NodeProcess  # noqa: E402
from tests.helpers.ports import free_ports  # noqa: E402
from tests.helpers.xmpp_bosh import BoshClient  # noqa: E402
from tests.helpers.xmpp_raw import local  # noqa: E402

PASSWORD = "bench-password"
DOMAIN = "localhost"


class BenchmarkError(Exception):
    pass


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))]


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def node_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


async def register(node: NodeProcess, n: int) -> None:
    """Accounts bench0..bench{n-1} through ``Accounts.register``, on threads (hashlib releases the GIL)."""
    from cluster_node.settings import load_settings
    from cluster_node.wiring import open_accounts

    settings: Any = load_settings(node.config)
    async with open_accounts(settings) as (storage, accounts):
        have = set(await storage.list_accounts(DOMAIN))
        await asyncio.gather(*(accounts.register(DOMAIN, f"bench{i}", PASSWORD)
                               for i in range(n) if f"bench{i}" not in have))


def row(label: str, value: str) -> None:
    print(f"  {label:<52} {value}")


async def logins(url: str, n: int, wait: int) -> tuple[list[BoshClient], float, list[float]]:
    clients = [BoshClient(url, wait=wait) for _ in range(n)]
    times: list[float] = []

    async def one(i: int, c: BoshClient) -> None:
        t = time.perf_counter()
        await c.login(f"bench{i}", PASSWORD, "bench")
        c.send("<presence xmlns='jabber:client'/>")
        await c.next(lambda el: local(el) == "presence")  # our own presence back: fully online
        times.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    return clients, time.perf_counter() - t0, times


async def pings(clients: list[BoshClient], duration: float) -> tuple[int, int, list[float]]:
    """Closed-loop pings: (HTTP requests answered, pings answered, round trips)."""
    stop = time.perf_counter() + duration
    rtts: list[float] = []
    before = sum(c.requests_done for c in clients)

    async def loop(c: BoshClient) -> None:
        n = 0
        while time.perf_counter() < stop:
            n += 1
            t = time.perf_counter()
            c.send(f"<iq xmlns='jabber:client' type='get' id='p{n}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
            await c.next(lambda el, i=f"p{n}": el.get("id") == i, timeout=30)
            rtts.append(time.perf_counter() - t)

    await asyncio.gather(*(loop(c) for c in clients))
    return sum(c.requests_done for c in clients) - before, len(rtts), rtts


async def messages(clients: list[BoshClient], duration: float, window: int) -> tuple[int, int, int]:
    """Pairs exchanging chat messages: (delivered, HTTP requests answered, lost)."""
    stop = time.perf_counter() + duration
    before = sum(c.requests_done for c in clients)
    sent = [0]
    received = [0]
    pairs = [(clients[i], clients[i + 1]) for i in range(0, len(clients) - 1, 2)]

    def send(c: BoshClient, to: str) -> None:
        sent[0] += 1
        c.send(f"<message xmlns='jabber:client' to='{to}' type='chat'><body>0123456789012345678</body></message>")

    async def side(me: BoshClient, peer: BoshClient) -> None:
        assert peer.jid is not None
        for _ in range(window):
            send(me, peer.jid)
        while True:
            try:
                await me.next(lambda el: local(el) == "message", timeout=max(1.0, stop - time.perf_counter() + 5))
            except TimeoutError:
                return
            received[0] += 1
            if time.perf_counter() < stop:
                send(me, peer.jid)

    async def drain() -> None:
        await asyncio.sleep(duration)
        await asyncio.sleep(2)  # what is in flight arrives

    tasks = [asyncio.ensure_future(side(a, b)) for a, b in pairs] + [asyncio.ensure_future(side(b, a))
                                                                     for a, b in pairs]
    await drain()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return received[0], sum(c.requests_done for c in clients) - before, sent[0] - received[0]


async def run(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    node_cpus, load_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))
    with tempfile.TemporaryDirectory(prefix="bosh-bench-") as tmp:
        [web_port] = free_ports(1)
        node = NodeProcess(Path(tmp) / "node", name="bosh-bench", settings={
            "websocket": {"host": "127.0.0.1", "port": web_port},
            "bosh": {"max_wait": args.wait, "max_sessions": args.clients + 10},
            "limits": {"max_connections_per_ip": args.clients + 10},
            "log_level": "WARNING",
        })
        await register(node, args.clients)
        node.start()
        assert node.proc is not None
        pin(node.proc.pid, node_cpus)
        os.sched_setaffinity(0, load_cpus)
        url = f"https://127.0.0.1:{web_port}/http-bind"
        clients: list[BoshClient] = []
        print(f"BOSH benchmark: {args.clients} clients, {args.duration:.0f} s per phase, window {args.window}; "
              f"node on CPU {sorted(node_cpus)}, load on CPU {sorted(load_cpus)}; load average {load_average()}")
        busy0 = machine_busy()
        status = 0
        try:
            clients, wall, times = await logins(url, args.clients, args.wait)
            row("logins (create, SCRAM-SHA-1, restart, bind, presence)", f"{len(times)}")
            row("logins/s", f"{len(times) / wall:.1f}")
            row("one login p50 / p95", f"{pct(times, 50) * 1000:.0f} / {pct(times, 95) * 1000:.0f} ms")

            cpu_n, cpu_l = node_cpu(node.proc.pid), self_cpu()
            requests, n, rtts = await pings(clients, args.duration)
            cpu_n, cpu_l = node_cpu(node.proc.pid) - cpu_n, self_cpu() - cpu_l
            row("HTTP requests/s (pings, closed loop)", f"{requests / args.duration:.0f}")
            row("pings/s", f"{n / args.duration:.0f}")
            row("ping round trip p50 / p99", f"{pct(rtts, 50) * 1000:.1f} / {pct(rtts, 99) * 1000:.1f} ms")
            row("node / load CPU per 1,000 requests", f"{cpu_n / max(requests, 1) * 1000:.2f} / "
                f"{cpu_l / max(requests, 1) * 1000:.2f} s")

            cpu_n, cpu_l = node_cpu(node.proc.pid), self_cpu()
            delivered, requests, lost = await messages(clients, args.duration, args.window)
            cpu_n, cpu_l = node_cpu(node.proc.pid) - cpu_n, self_cpu() - cpu_l
            row("messages/s (pairs, closed loop)", f"{delivered / args.duration:.0f}")
            row("HTTP requests per message", f"{requests / max(delivered, 1):.2f}")
            row("node / load CPU per 1,000 messages", f"{cpu_n / max(delivered, 1) * 1000:.2f} / "
                f"{cpu_l / max(delivered, 1) * 1000:.2f} s")
            row("messages lost", f"{lost}")
            busy1 = machine_busy()
            if busy0 is not None and busy1 is not None:
                row("machine busy during the run (all processes)", f"{busy1 - busy0:.1f} CPU-s")
            if lost:
                raise BenchmarkError(f"{lost} messages lost")
        except (BenchmarkError, TimeoutError, ConnectionError, AssertionError, PermissionError) as e:
            print(f"FAILED: {type(e).__name__}: {e}")
            status = 2
        finally:
            for c in clients:
                await c.close()
            node.stop()
        if "Traceback" in node.log():  # a node that logged a traceback fails the run
            print(node.log())
            status = 2
        return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40, help="BOSH sessions (an even number)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured phase")
    parser.add_argument("--window", type=int, default=4, help="messages in flight per client")
    parser.add_argument("--wait", type=int, default=30, help="the sessions' wait (node max_wait)")
    parser.add_argument("--quick", action="store_true", help="small numbers: does it run")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.duration, args.window = 6, 2.0, 2
    args.clients += args.clients % 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
