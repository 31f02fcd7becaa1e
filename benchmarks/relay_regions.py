"""Relay cost vs number of regions: does a relayed message cost the same with 2, 3 or 4 regions?

For each N of ``--regions`` (default 2,3,4) a fresh topology of real processes, as
``gdistrib_relay.py`` starts its two (and ``tests/helpers/regions.py`` for the integration tests):
regions ``eu``, ``us``, ``ap``, ``sa``… serving ``example.com``, each one ``meridian node`` and one
``meridian gateway`` joined in the region's cluster, one SQLite database for the domain, one
throwaway ``redis-server`` for the mapping, mutual-TLS links between the gateways.  Every link goes
through ``gdistrib_relay.py``'s delay proxy (``--link-delay-ms`` each way, default 10): each region
advertises the proxy's port, so every other region's gateway dials it.  The run starts once every
gateway has a link up to every other region.

The clients are ``gdistrib_relay.py``'s raw load generator (``RawClient``, ``Load``): ``--senders``
senders in all (spread evenly over the regions, the same total for every N) and as many recipients;
sender j of a region sends to recipient j of another region, the other regions taken in turn by j,
so every region sends to every other one (all-to-all) and every message is relayed.

1. Idle: ``--idle`` seconds without traffic, the gateways' and the nodes' CPU: pings and refreshes,
   of N−1 links per gateway (at ``tests/helpers/regions.py``'s short test intervals: a ping every
   0.5 s).  Phase 2 also gives the gateways' CPU per relayed message net of it.
2. Throughput: ``--messages`` in all, round robin over the senders, at most ``--window`` on their
   way at once: delivered relayed messages/s, counted at the recipients, and CPU per relayed message
   (psutil, user + system) of the gateways together, of the nodes together, of the delay proxy,
   Redis and the load generator.  Each message crosses two gateways whatever N is, so with a cost
   that does not grow with the number of regions the gateways' CPU per relayed message is flat.
3. Latency: ``--paced`` relayed messages at ``--rate``/s, all-to-all: p50/p99 of send → receive,
   and that minus the link delay (a relayed message crosses one link, one way).

The table has one column per N and the ratio of the gateways' (and the nodes') CPU per relayed
message to the smallest N's: the "flat" check.  The target: at the largest N the gateways' CPU per
relayed message is at most ``--flat-target`` (1.25) × the smallest N's — a quarter more is beyond
what a busier shared 2-CPU machine and fewer messages per wake-up (each gateway sees 2/N of the
traffic, so it batches less) explain; a cost that grows with the number of links (a scan of every
link or region per message) shows well above it.

    .venv/bin/python benchmarks/relay_regions.py
    .venv/bin/python benchmarks/relay_regions.py --regions 2,4 --messages 20000 --json /tmp/relay.json
    .venv/bin/python benchmarks/relay_regions.py --profile /tmp/prof   # cProfile of the servers, phase 2

Exit status 0 when the target is met, 1 when it is missed (printed as ``TARGET MISSED:``), 2 when a
run failed (a process or a link did not come up, messages lost, error replies, duplicates).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import platform
import pstats
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project from this checkout
    sys.path.insert(0, str(ROOT))

from gdistrib_relay import (  # noqa: E402
    BenchmarkError,
    Load,
    RawClient,
    check_gdistrib,
    client_tls,
    cpu_meter,
    gdistrib_settings,
    link_port,
    log_sizes,
    mapped,
    ms,
    pct,
    proxy_lateness,
    query,
    raise_nofile,
    regions_ready,
    register,
    start_proxy,
    stop_proxy,
    watch_servers,
    world_warnings,
)
from machine import load_average  # noqa: E402

from tests.helpers.node import NodeProcess  # noqa: E402
from tests.helpers.ports import free_port  # noqa: E402
from tests.helpers.redis import RedisServer, redis_server_binary  # noqa: E402
from tests.helpers.regions import Region, make_region  # noqa: E402

__all__ = ["main"]

REGION_NAMES = ("eu", "us", "ap", "sa", "af", "oc")
KIND = "all"  # the one kind of recipient in Load.targets: recipient i is sender i's, in another region

Sample = dict[str, tuple[float, float, float]]  # CpuMeter.sample()


# -- the servers --------------------------------------------------------------------------------


@dataclass
class Topology:
    """N regions (a node and a gateway each), their Redis, the delay proxy between the gateways."""

    base: Path
    redis: RedisServer
    regions: list[Region]
    proxy: multiprocessing.process.BaseProcess | None = None
    proxy_conn: Connection | None = None

    @property
    def gateways(self) -> list[NodeProcess]:
        return [g for r in self.regions for g in r.gateways]

    @property
    def nodes(self) -> list[NodeProcess]:
        return [n for r in self.regions for n in r.nodes]

    @property
    def servers(self) -> list[NodeProcess]:
        return [*self.nodes, *self.gateways]


def build(base: Path, redis_server: RedisServer, n: int, args: argparse.Namespace, mp: Any) -> Topology:
    """Configure (not start) ``n`` regions; start the delay proxy in front of each gateway's link port."""
    db = f"sqlite:///{base / 'domain.db'}"
    names = REGION_NAMES[:n]
    proxy_ports = {name: free_port() for name in names} if args.link_delay_ms > 0 else {}
    regions = []
    for name in names:
        gd = gdistrib_settings(args.gdistrib)
        if proxy_ports:  # every other region dials the proxy, which dials us
            gd.setdefault("connections", {})["advertised_endpoints"] = [f"127.0.0.1:{proxy_ports[name]}"]
        regions.append(make_region(base, name, storage_url=db, redis_url=redis_server.url, nodes=1, gateways=1,
                                   gdistrib=gd))
    top = Topology(base, redis_server, regions)
    if proxy_ports:
        routes = [(proxy_ports[r.name], link_port(r.gateways[0])) for r in regions]
        top.proxy, top.proxy_conn = start_proxy(mp, routes, args.link_delay_ms)
    watch_servers(base, top.servers, str(Path(args.profile) / f"n{n}") if args.profile else None)
    return top


def start_all(servers: list[NodeProcess]) -> None:
    """Start the processes side by side (one after the other, 8 of them take twice as long)."""
    with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
        for done in [pool.submit(p.start) for p in servers]:
            done.result()


# -- one N --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One N's figures (``figures``, as in the JSON) and the lines of its own report."""

    n: int
    figures: dict[str, Any]
    lines: list[str]
    problems: list[str]


def plan_pairs(n: int, senders: int) -> list[tuple[int, int, int]]:
    """(sender's region, recipient's region, index within the region) of each pair, interleaved by
    region so that a round robin over the pairs is all-to-all at every moment."""
    per = senders // n
    return [(r, (r + 1 + j % (n - 1)) % n, j) for j in range(per) for r in range(n)]


async def measure(top: Topology, args: argparse.Namespace) -> Outcome:
    n = len(top.regions)
    tls = client_tls()
    pairs = plan_pairs(n, args.senders)
    names = [r.name for r in top.regions]
    await register(f"sqlite:///{top.base / 'domain.db'}",
                   [f"{who}-{names[r]}-{j}" for r, _, j in pairs for who in ("s", "r")])
    t = time.monotonic()
    await regions_ready(top.regions, args.timeout)
    setup = [f"clusters joined, every gateway linked to the {n - 1} other regions in {time.monotonic() - t:.1f} s"]

    t = time.monotonic()
    sem = asyncio.Semaphore(32)

    async def login(node: NodeProcess, user: str, res: str) -> RawClient:
        async with sem:
            return await RawClient.login(node.port, user, res, tls)

    senders = list(await asyncio.gather(*(login(top.regions[r].nodes[0], f"s-{names[r]}-{j}", "load")
                                          for r, _, j in pairs)))
    # recipient j of each region is logged in once, then reused by every sender pointing at it
    inbox = {(r, j): c for (r, j), c in zip(
        sorted({(r, j) for r, _, j in pairs}),
        await asyncio.gather(*(login(top.regions[r].nodes[0], f"r-{names[r]}-{j}", "inbox")
                               for r, j in sorted({(r, j) for r, _, j in pairs}))), strict=True)}
    targets = [inbox[(to, j)] for _, to, j in pairs]
    load = Load(senders, {KIND: targets})
    for c in senders:
        c.receive(load.tally, recipient=False)
    for c in inbox.values():
        c.receive(load.tally, recipient=True)
    setup.append(f"{len(senders) + len(inbox):,} clients logged in in {time.monotonic() - t:.1f} s")
    await mapped(top.redis.url, [c.jid for c in inbox.values()], args.timeout)
    # Warm-up: every pair once, so the gateways' caches and the links are as in a running system.
    await load.blast("W", KIND, len(pairs), args.window, args.timeout)

    logged = log_sizes(top)
    gateways = {p.name for p in top.gateways}
    nodes = {p.name for p in top.nodes}
    meter = cpu_meter(top.servers, top.redis, top.proxy)

    def cpu(a: Sample, b: Sample, who: set[str]) -> float:
        return sum(b[p][0] - a[p][0] for p in who)

    def wakeups(a: Sample, b: Sample, who: set[str]) -> float:
        return sum(b[p][2] - a[p][2] for p in who)

    # 1. idle
    a, w0 = meter.sample(), time.monotonic()
    await asyncio.sleep(args.idle)
    b, idle_wall = meter.sample(), time.monotonic() - w0
    idle_gw = cpu(a, b, gateways) / idle_wall
    idle_nodes = cpu(a, b, nodes) / idle_wall

    # 2. throughput
    async def counters() -> dict[str, dict[str, Any]]:
        return {p.name: await query(p, "gdistrib", "status") for p in top.gateways}

    before_status = await counters()
    if args.profile:
        for p in top.servers:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGUSR1)
    a, w0 = meter.sample(), time.monotonic()
    elapsed = await load.blast("A", KIND, args.messages, args.window, args.timeout)
    b, wall = meter.sample(), time.monotonic() - w0
    if args.profile:
        for p in top.servers:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGUSR2)
    status = await counters()
    m = args.messages
    rate = m / elapsed
    per_gw = {g: (b[g][0] - a[g][0]) / m for g in sorted(gateways)}
    loaded = ms(load.tally.latencies["A"])
    machine = b["(whole machine)"][0] - a["(whole machine)"][0]
    ours = cpu(a, b, set(meter.procs))

    def count(st: dict[str, Any], key: str) -> int:
        value = st["counters"][key]  # relayed and received: per region
        return sum(value.values()) if isinstance(value, dict) else int(value)

    def delta(key: str) -> int:
        return sum(count(status[g], key) - count(before_status[g], key) for g in gateways)

    queue_full = sum(int(v.get("queueFull", 0)) for st in status.values() for v in st["links"].values())
    # 3. latency, paced (after a pause: the servers catch up on what the flood left them)
    await asyncio.sleep(args.settle)
    await proxy_lateness(top)  # from here on
    paced_s = await load.paced(["L"] * args.paced, args.rate, args.timeout, kinds={"L": KIND})
    lateness = await proxy_lateness(top)
    await asyncio.sleep(0.3)  # error replies, if any, are on their way
    tally = load.tally
    for c in [*senders, *inbox.values()]:
        await c.close()
    lat = ms(tally.latencies["L"])
    delay = args.link_delay_ms
    figures: dict[str, Any] = {
        "regions": names, "servers": len(top.servers), "senders": len(senders), "recipients": len(inbox),
        "messages": m, "delivered": tally.delivered["A"], "seconds": elapsed, "relayed_per_s": rate,
        "loaded_latency_ms": {"p50": pct(loaded, 50), "p99": pct(loaded, 99)},
        "cpu_us_per_relayed": {
            "gateways": cpu(a, b, gateways) / m * 1e6, "nodes": cpu(a, b, nodes) / m * 1e6,
            # what the links' pings and the refreshes would have taken anyway over the phase, left out
            "gateways_net_of_idle": (cpu(a, b, gateways) - idle_gw * wall) / m * 1e6,
            "delay_proxy": cpu(a, b, {"delay proxy"}) / m * 1e6 if "delay proxy" in meter.procs else None,
            "redis": cpu(a, b, {"redis"}) / m * 1e6 if "redis" in meter.procs else None,
            "load_generator": cpu(a, b, {"load generator"}) / m * 1e6,
            "servers": cpu(a, b, gateways | nodes) / m * 1e6,
            "per_gateway": {g: v * 1e6 for g, v in per_gw.items()}},
        "busiest_gateway_cpu_share": max((b[g][0] - a[g][0]) / wall for g in gateways),
        "gateway_wakeups_per_relayed": wakeups(a, b, gateways) / m,
        "node_wakeups_per_relayed": wakeups(a, b, nodes) / m,
        "redis_lookups_per_relayed": delta("lookups") / m,
        "gateway_counters": {"relayed": delta("relayed"), "received": delta("received"), "bounced": delta("bounced"),
                             "link_errors": delta("linkErrors"), "queue_full_total": queue_full},
        "idle_gateways_cpu_share": idle_gw, "idle_nodes_cpu_share": idle_nodes,
        "machine_cpu_s": machine, "other_work_cpu_s": max(0.0, machine - ours), "wall_s": wall,
        "paced": {"messages": args.paced, "delivered": tally.delivered["L"], "rate": args.rate, "seconds": paced_s,
                  "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat),
                  "p50_over_delay_ms": pct(lat, 50) - delay, "p99_over_delay_ms": pct(lat, 99) - delay},
        "proxy_lateness_ms": None if lateness is None else [x * 1e3 for x in lateness],
        "load_average": load_average(),
    }
    problems = []
    if tally.errors:
        problems.append(f"N={n}: {tally.errors} error stanzas came back to the senders")
    extra = sum(tally.delivered.values()) - (len(pairs) + m + args.paced)
    if extra:
        problems.append(f"N={n}: {extra:+} messages delivered beyond those sent (duplicates?)")
    if delta("relayed") < m:  # each message is relayed once, by the sender's region's gateway
        problems.append(f"N={n}: the gateways relayed {delta('relayed'):,} messages of {m:,}")
    lines = [f"  N={n} ({', '.join(names)}): " + "; ".join(setup)]
    for g, st in status.items():
        links = ", ".join(f"{r} sent {v.get('sent', 0):,} queue-full {v.get('queueFull', 0)} rtt {v.get('rttMs')} ms"
                          for r, v in sorted(st["links"].items()))
        lines.append(f"    {g}: {links}")
    lines += [f"    during the measurements: {w}" for w in world_warnings(top, logged)]
    if args.profile:
        for p in top.gateways:
            path = Path(args.profile).resolve() / f"n{n}" / f"{p.name}.prof"
            for _ in range(50):
                if path.exists():
                    break
                await asyncio.sleep(0.1)
            if path.exists():
                lines.append(f"    cProfile of {p.name}, throughput phase: {path}")
    return Outcome(n, figures, lines, problems)


def run_one(n: int, args: argparse.Namespace, mp: Any) -> Outcome:
    """Start N regions, measure, stop them (a fresh Redis, database and set of processes per N)."""
    base = Path(tempfile.mkdtemp(prefix=f"meridian-relayregions-{n}-"))
    top: Topology | None = None
    try:
        with RedisServer() as redis_server:
            top = build(base, redis_server, n, args, mp)
            t = time.monotonic()
            try:
                start_all(top.servers)
                print(f"  N={n}: {len(top.servers)} server processes started in {time.monotonic() - t:.1f} s",
                      flush=True)
                return asyncio.run(measure(top, args))
            finally:
                for region in top.regions:
                    region.stop()
    except (BenchmarkError, RuntimeError, TimeoutError) as e:
        lines = [f"  N={n}: {e}"]
        if top is not None:
            lines += [f"    {w}" for w in world_warnings(top)]
        return Outcome(n, {}, lines, [f"N={n}: {e}"])
    finally:
        if top is not None and top.proxy is not None:
            stop_proxy(top.proxy, top.proxy_conn)
        if args.keep_logs:
            print(f"  N={n}: logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


# -- the report ---------------------------------------------------------------------------------


def table(outcomes: list[Outcome], args: argparse.Namespace) -> list[str]:
    """One column per N: throughput, CPU per relayed message (and its ratio to the first N's), latency."""
    fs = [o.figures for o in outcomes]
    first = fs[0]["cpu_us_per_relayed"]

    def us(key: str) -> list[str]:
        return [f"{f['cpu_us_per_relayed'][key]:.0f} µs" if f["cpu_us_per_relayed"][key] is not None else "-"
                for f in fs]

    def ratio(key: str) -> list[str]:
        return [f"{f['cpu_us_per_relayed'][key] / first[key]:.2f}×" for f in fs]

    delay = args.link_delay_ms
    rows: list[tuple[str, list[str]]] = [
        ("server processes (nodes + gateways)", [str(f["servers"]) for f in fs]),
        (f"relayed: {args.messages:,} messages, window {args.window:,}",
         [f"{f['relayed_per_s']:,.0f} msg/s" for f in fs]),
        ("  latency under that load, p50 / p99", [f"{f['loaded_latency_ms']['p50']:.0f} / "
                                                  f"{f['loaded_latency_ms']['p99']:.0f} ms" for f in fs]),
        ("CPU per relayed message: the gateways", us("gateways")),
        (f"  ratio to N={outcomes[0].n} (flat: ≤ {args.flat_target:g}× at the largest N)", ratio("gateways")),
        ("  the gateways, net of their idle CPU", us("gateways_net_of_idle")),
        (f"  ratio to N={outcomes[0].n}", ratio("gateways_net_of_idle")),
        ("  the nodes", us("nodes")),
        (f"  ratio to N={outcomes[0].n}", ratio("nodes")),
        ("  the delay proxy", us("delay_proxy")),
        ("  Redis", us("redis")),
        ("  the load generator", us("load_generator")),
        ("  all the servers", us("servers")),
        ("  busiest gateway, share of one CPU", [f"{f['busiest_gateway_cpu_share']:.0%}" for f in fs]),
        ("gateways' wake-ups per relayed message", [f"{f['gateway_wakeups_per_relayed']:.2f}" for f in fs]),
        ("nodes' wake-ups per relayed message", [f"{f['node_wakeups_per_relayed']:.2f}" for f in fs]),
        ("Redis lookups per relayed message", [f"{f['redis_lookups_per_relayed']:.3f}" for f in fs]),
        ("links' queue-full events", [str(f["gateway_counters"]["queue_full_total"]) for f in fs]),
        ("idle: the gateways' / the nodes' CPU, share of one CPU",
         [f"{f['idle_gateways_cpu_share']:.1%} / {f['idle_nodes_cpu_share']:.1%}" for f in fs]),
        (f"paced: {args.paced:,} relayed at {args.rate:,.0f}/s, p50 / p99",
         [f"{f['paced']['p50_ms']:.1f} / {f['paced']['p99_ms']:.1f} ms" for f in fs]),
        (f"  minus the link delay ({delay:g} ms: one link, one way), p50 / p99",
         [f"{f['paced']['p50_over_delay_ms']:.1f} / {f['paced']['p99_over_delay_ms']:.1f} ms" for f in fs]),
        ("  max", [f"{f['paced']['max_ms']:.1f} ms" for f in fs]),
        ("  delay proxy's timer late by p99 (each way)",
         [f"{f['proxy_lateness_ms'][1]:.2f} ms" if f["proxy_lateness_ms"] else "-" for f in fs]),
        ("other work on the machine, throughput phase",
         [f"{f['other_work_cpu_s']:.1f} of {f['wall_s'] * (os.cpu_count() or 1):.1f} CPU-s" for f in fs]),
    ]
    heads = [f"N={o.n}" for o in outcomes]
    w0 = max(len(name) for name, _ in rows)
    ws = [max(len(h), *(len(v[i]) for _, v in rows)) for i, h in enumerate(heads)]
    out = [f"  {'metric':<{w0}}" + "".join(f"  {h:>{w}}" for h, w in zip(heads, ws, strict=True)),
           f"  {'-' * w0}" + "".join(f"  {'-' * w}" for w in ws)]
    for name, values in rows:
        out.append(f"  {name:<{w0}}" + "".join(f"  {v:>{w}}" for v, w in zip(values, ws, strict=True)))
    return out


def run(args: argparse.Namespace) -> int:
    ns = args.regions
    print(f"Meridian relay cost vs number of regions: {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"  N = {', '.join(map(str, ns))} regions of 1 node + 1 gateway, real processes; link delay "
          f"{args.link_delay_ms:g} ms each way; {args.senders} senders in all; load average {load_average()}",
          flush=True)
    if redis_server_binary() is None:
        print("BENCHMARK FAILED: redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    mp = multiprocessing.get_context("spawn")
    outcomes: list[Outcome] = []
    for n in ns:
        outcome = run_one(n, args, mp)
        for line in outcome.lines:
            print(line, flush=True)
        if outcome.problems:
            for prob in outcome.problems:
                print(f"BENCHMARK FAILED: {prob}", file=sys.stderr)
            return 2
        outcomes.append(outcome)
    print()
    for line in table(outcomes, args):
        print(line)
    print(f"  load average {load_average()}")
    first, last = outcomes[0], outcomes[-1]
    gw_ratio = last.figures["cpu_us_per_relayed"]["gateways"] / first.figures["cpu_us_per_relayed"]["gateways"]
    missed = gw_ratio > args.flat_target
    if args.profile:
        for p in sorted(Path(args.profile).resolve().glob(f"n{last.n}/*-gw1.prof")):
            print(f"\n  cProfile of {p.stem} at N={last.n}, throughput phase ({p}), top by own time:")
            pstats.Stats(str(p), stream=sys.stdout).sort_stats("tottime").print_stats(15)
        print("  (cProfile slows the profiled processes: the figures of a --profile run are not comparable)")
    if args.json:
        doc = {"benchmark": "relay_regions", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "cpus": os.cpu_count(), "platform": platform.platform(),
               "args": {k: v for k, v in vars(args).items() if k not in ("json",)},
               "results": {str(o.n): o.figures for o in outcomes},
               "gateway_cpu_ratio": gw_ratio, "flat_target": args.flat_target, "target_met": not missed}
        Path(args.json).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"  written to {args.json}")
    if missed:
        print(f"TARGET MISSED: the gateways' CPU per relayed message at N={last.n} is {gw_ratio:.2f}× N={first.n}'s "
              f"(> {args.flat_target:g}×)")
        return 1
    print(f"  target met: the gateways' CPU per relayed message at N={last.n} is {gw_ratio:.2f}× N={first.n}'s "
          f"(≤ {args.flat_target:g}×)")
    return 0


def regions_list(text: str) -> list[int]:
    ns = [int(x) for x in text.split(",") if x.strip()]
    if not ns or any(not 2 <= n <= len(REGION_NAMES) for n in ns):
        raise argparse.ArgumentTypeError(f"numbers of regions from 2 to {len(REGION_NAMES)}, e.g. 2,3,4")
    return ns


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--regions", type=regions_list, default=[2, 3, 4], help="numbers of regions to run (2,3,4)")
    ap.add_argument("--messages", type=int, default=60_000, help="relayed in the throughput phase, per N (60000)")
    ap.add_argument("--senders", type=int, default=240,
                    help="senders in all, spread over the regions, each with a recipient (240)")
    ap.add_argument("--window", type=int, default=2_000, help="messages on their way at most (2000)")
    ap.add_argument("--paced", type=int, default=3_000, help="messages of the latency phase (3000)")
    ap.add_argument("--rate", type=float, default=500.0, help="messages/s in the latency phase (500)")
    ap.add_argument("--idle", type=float, default=2.0, help="seconds with no traffic, CPU measured (2)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of pause before the paced phase (1)")
    ap.add_argument("--link-delay-ms", type=float, default=10.0,
                    help="one-way delay between the gateways, each direction (10; 0: no proxy)")
    ap.add_argument("--flat-target", type=float, default=1.25,
                    help="the gateways' CPU per relayed message at the largest N over the smallest N's, at most (1.25)")
    ap.add_argument("--gdistrib", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a gateway setting of [gdistrib] for every region, e.g. cache.jid_lifetime=60 (repeatable)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without progress before giving up (60)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    ap.add_argument("--profile", metavar="DIR", help="cProfile the server processes during the throughput phase")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (temporary directories)")
    args = ap.parse_args(argv)
    check_gdistrib(ap, args.gdistrib)
    if args.senders < max(args.regions) * (max(args.regions) - 1):
        ap.error(f"--senders: at least {max(args.regions) * (max(args.regions) - 1)}, so that every region "
                 "sends to every other one")
    if args.messages < 1 or args.paced < 1:
        ap.error("--messages and --paced: at least 1")
    raise_nofile()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
