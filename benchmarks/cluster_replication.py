"""Cluster replication benchmark: the two scale targets set for the cluster.

1. A member joining a cluster that holds 100,000 sessions is fully merged within 5 s.
2. Replicating one session insert to 3 other members takes under 5 ms at p99 on loopback.
3. The joining member's RSS per session it holds after the merge: at most 400 bytes (the scale
   goal for a region of 1,000,000 sessions: ``--sessions 1000000 --members 4 --join-target 10``).

Every member is a real :class:`ClusterMember` in its own OS process (``multiprocessing``, spawn),
linked to the others over real TLS sockets on 127.0.0.1, found through :class:`FileDiscovery`,
holding a real :class:`SessionTable` filled with :class:`SessionRecord` values the way a node
inserts them.  The parent process only starts members, hands out commands and prints figures.

    .venv/bin/python benchmarks/cluster_replication.py                 # the targets (100k, 3+1, 2000)
    .venv/bin/python benchmarks/cluster_replication.py --profile /tmp/p # + cProfile of the joiner

Exit status 0 when both targets are met, 1 when one is missed (the missed ones are printed),
2 when the benchmark itself failed (a member did not come up, a record went missing, …).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import logging
import multiprocessing
import os
import platform
import pstats
import resource
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project from this checkout
    sys.path.insert(0, str(ROOT))

from machine import free_ports, load_average  # noqa: E402

from cluster_node.cli import tune_collector  # noqa: E402
from cluster_node.cluster.discovery import FileDiscovery, Peer  # noqa: E402
from cluster_node.cluster.link import DumpReceived, Joined, LinkEvent  # noqa: E402
from cluster_node.core.sessions import LocalSessions, SessionRecord, SessionTable  # noqa: E402
from cluster_node.net.cluster_net import ClusterMember, LinkConnection  # noqa: E402
from cluster_node.net.tls import client_context, ensure_self_signed, server_context  # noqa: E402
from cluster_node.xmpp.jid import Jid  # noqa: E402

CLUSTER = "bench"
SECRET = b"benchmark-cluster-secret"


# -- what a member process is told ----------------------------------------------------------------


@dataclass
class MemberSpec:
    name: str
    port: int
    peers: list[tuple[str, str]]  # (node, host:port) of every member, this one included
    cert: str
    key: str
    first: int = 0  # owns sessions user{first}, user{first + step}, … below ``stop``
    stop: int = 0
    step: int = 1
    expected: int = 0  # records the table must hold once merged
    joiner: bool = False
    inserts: int = 0
    pipelined: int = 0
    profile: str = ""  # directory for cProfile output ('' = no profiling)
    timeout: float = 120.0
    extra: dict[str, Any] = field(default_factory=dict)


def session_jid(i: int) -> str:
    return f"user{i}@localhost/res"


def make_record(jid: str, node: str, local: LocalSessions) -> SessionRecord:
    """A bound, available session as the c2s/session manager would put it in the table."""
    return SessionRecord(Jid.parse(jid), node, local.new_sid(), time.time(), priority=0, available=True,
                         interested=True)


def build_member(spec: MemberSpec, table: SessionTable) -> ClusterMember:
    cert, key = Path(spec.cert), Path(spec.key)
    member = ClusterMember(
        cluster=CLUSTER, node=spec.name, secret=SECRET, address=f"127.0.0.1:{spec.port}",
        listen_host="127.0.0.1", listen_port=spec.port,
        discovery=FileDiscovery([Peer(n, a) for n, a in spec.peers], spec.name),
        server_tls=server_context(cert, key), client_tls=client_context(verify=False),
        tables={"sessions": table.replicated},
        # As a node with the default settings (cluster.refresh_interval, ping_interval, ping_timeout).
        refresh_interval=5.0, ping_interval=1.0, ping_timeout=5.0)
    table.on_local_op = member.broadcast  # as cluster_node.core.clustering wires it
    return member


async def wait_until(cond: Any, timeout: float, step: float = 0.001) -> bool:
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def serve_commands(conn: Connection, table: SessionTable, member: ClusterMember,
                         stats: Any = dict) -> None:
    """Answer the parent's commands until 'stop': 'size' → records held, 'stop' → leave."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(conn.fileno(), ready.set)
    try:
        while True:
            await ready.wait()
            ready.clear()
            while conn.poll():
                cmd = conn.recv()
                if cmd == "size":
                    conn.send(("size", {"size": len(table), "links": sorted(member.links), **stats(),
                                        "gc": GC_PROBE.pauses if GC_PROBE else []}))
                elif cmd == "stop":
                    return
    finally:
        loop.remove_reader(conn.fileno())


class GcProbe:
    """Observes the cyclic garbage collector's passes (gc.callbacks: no change to what it does):
    (start, seconds, generation) of every pass of 1 ms or more."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            dt = time.perf_counter() - self._start
            if dt >= 0.001:
                self.pauses.append((self._start, dt, info["generation"]))


GC_PROBE: GcProbe | None = None


# -- member processes ----------------------------------------------------------------------------


def member_process(spec: MemberSpec, conn: Connection) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"{spec.name}: %(levelname)s %(message)s")
    tune_collector()  # as a node process runs
    global GC_PROBE
    GC_PROBE = GcProbe()
    try:
        asyncio.run(_joiner(spec, conn) if spec.joiner else _member(spec, conn))
    except BaseException as e:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{spec.name}: {e!r}\n{traceback.format_exc()}"))
        raise


async def _member(spec: MemberSpec, conn: Connection) -> None:
    """An existing member: owns its share of the sessions, links with the others, waits."""
    table = SessionTable(spec.name)
    local = LocalSessions(spec.name)
    t = time.perf_counter()
    for i in range(spec.first, spec.stop, spec.step):
        table.insert(make_record(session_jid(i), spec.name, local))
    filled = time.perf_counter() - t
    member = build_member(spec, table)
    probe = SenderProbe(member, spec.extra["joiner"])
    await member.start()
    conn.send(("listening", {}))
    if not await wait_until(lambda: len(table) >= spec.expected, spec.timeout, 0.01):
        conn.send(("error", f"{spec.name}: holds {len(table)} of {spec.expected} records after {spec.timeout}s"))
        return
    conn.send(("ready", {"owned": len(range(spec.first, spec.stop, spec.step)), "fill_s": filled}))
    await serve_commands(conn, table, member, probe.stats)
    await member.stop()


class SenderProbe:
    """On an existing member: when it handled the joiner's arrival (the dump of its records encoded
    and handed to TLS).  Times are perf_counter() values, CLOCK_MONOTONIC on Linux, so they compare
    across the processes of this machine."""

    def __init__(self, member: ClusterMember, joiner: str) -> None:
        self.joined: tuple[float, float] | None = None
        original_handle = member.handle

        def handle(conn: LinkConnection, events: list[LinkEvent]) -> None:
            t = time.perf_counter()
            original_handle(conn, events)
            if any(isinstance(e, Joined) and e.node == joiner for e in events):
                self.joined = (t, time.perf_counter())

        member.handle = handle  # type: ignore[method-assign]

    def stats(self) -> dict[str, Any]:
        return {"joined": self.joined}


class JoinProbe:
    """Timestamps of what happens on the joining member, without touching the project's code:
    wraps the member's event handler and (in this process only) LinkConnection.data_received."""

    def __init__(self, member: ClusterMember) -> None:
        self.joined: list[float] = []
        self.dumps: list[tuple[str, float, float, int]] = []  # (peer, merge start, merge end, records)
        self.receive_s = 0.0  # total time in data_received (TLS-decrypted bytes → frames → events → tables)
        original_handle = member.handle

        def handle(conn: LinkConnection, events: list[LinkEvent]) -> None:
            t = time.perf_counter()
            original_handle(conn, events)
            done = time.perf_counter()
            for event in events:
                if isinstance(event, Joined):
                    self.joined.append(t)
                elif isinstance(event, DumpReceived):
                    self.dumps.append((conn.peer or "?", t, done, len(event.records)))

        member.handle = handle  # type: ignore[method-assign]
        original_received = LinkConnection.data_received

        def data_received(conn: LinkConnection, data: bytes) -> None:
            t = time.perf_counter()
            original_received(conn, data)
            self.receive_s += time.perf_counter() - t

        LinkConnection.data_received = data_received  # type: ignore[method-assign,assignment]


async def _joiner(spec: MemberSpec, conn: Connection) -> None:
    """The new member: joins, times the merge, then times replicated inserts to the others."""
    table = SessionTable(spec.name)
    local = LocalSessions(spec.name)
    member = build_member(spec, table)
    probe = JoinProbe(member)
    others = len(spec.peers) - 1
    profiler = cProfile.Profile() if spec.profile else None

    # 1. join: from start() until the session table holds every record of the cluster.
    gc.collect()
    rss_before = rss_bytes()
    if profiler:
        profiler.enable()
    t0 = time.perf_counter()
    await member.start()
    merged = await wait_until(lambda: len(table) >= spec.expected, spec.timeout)
    t_merged = time.perf_counter()
    if profiler:
        profiler.disable()
        profiler.dump_stats(os.path.join(spec.profile, "join.prof"))
    if not merged:
        conn.send(("error", f"{spec.name}: merged {len(table)} of {spec.expected} records in {spec.timeout}s"))
        return
    # The other side of the join: the others have merged our (empty) dump once every link is up.
    await wait_until(lambda: len(member.links) == others, spec.timeout)
    await asyncio.sleep(0.5)  # the links' receive buffers of the dumps let go
    gc.collect()
    rss_after = rss_bytes()
    conn.send(("join", {
        "rss_per_session": (rss_after - rss_before) / max(1, len(table)),
        "rss_before": rss_before,
        "rss_after": rss_after,
        "merge_s": t_merged - t0,
        "first_joined_s": probe.joined[0] - t0 if probe.joined else None,
        "last_joined_s": probe.joined[-1] - t0 if probe.joined else None,
        "first_dump_s": probe.dumps[0][2] - t0 if probe.dumps else None,
        "merge_cpu_s": sum(end - start for _, start, end, _ in probe.dumps),
        "receive_s": probe.receive_s,
        "t0": t0,
        "t_merged": t_merged,
        "dumps": probe.dumps,
        "size": len(table),
    }))

    # 2. one insert at a time: table.insert → member.broadcast → wait_acks from every other member.
    await asyncio.sleep(0.2)  # let the join's aftermath (pings, freed buffers) settle
    if profiler:
        profiler = cProfile.Profile()
        profiler.enable()
    latencies: list[float] = []
    starts: list[float] = []
    unacked = 0
    for i in range(spec.inserts):
        record = make_record(f"single{i}@localhost/res", spec.name, local)
        t = time.perf_counter()
        table.insert(record)
        await member.wait_acks(timeout=spec.timeout)
        latencies.append(time.perf_counter() - t)
        starts.append(t)
        if len(member.links) != others or any(c.acked_seq < c.sent_seq for c in member.links.values()):
            unacked += 1
    if profiler:
        profiler.disable()
        profiler.dump_stats(os.path.join(spec.profile, "insert.prof"))

    # 3. pipelined: every insert broadcast back to back, then one wait for all the acks.
    t = t_pipelined = time.perf_counter()
    for i in range(spec.pipelined):
        table.insert(make_record(f"burst{i}@localhost/res", spec.name, local))
    await member.wait_acks(timeout=spec.timeout)
    pipelined_s = time.perf_counter() - t
    if len(member.links) != others or any(c.acked_seq < c.sent_seq for c in member.links.values()):
        unacked += 1
    conn.send(("insert", {"latencies": latencies, "starts": starts, "unacked": unacked, "pipelined_s": pipelined_s,
                          "t_pipelined": t_pipelined,
                          "links": sorted(member.links)}))
    await serve_commands(conn, table, member)
    await member.stop()


def rss_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm), for the table's memory per session."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the parent ------------------------------------------------------------------------------------


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine spent busy, CPU seconds used by this process and its
    finished children), to tell how much of the machine other work took during the run."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait
    own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return busy, own


class BenchmarkError(Exception):
    pass


def expect(conn: Connection, what: str, timeout: float) -> dict[str, Any]:
    if not conn.poll(timeout):
        raise BenchmarkError(f"no {what!r} from a member within {timeout:.0f}s")
    kind, body = conn.recv()
    if kind == "error":
        raise BenchmarkError(body)
    if kind != what:
        raise BenchmarkError(f"expected {what!r}, got {kind!r}: {body}")
    assert isinstance(body, dict)
    return body


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
    return ordered[k]


def run(args: argparse.Namespace) -> int:
    ctx = multiprocessing.get_context("spawn")
    tmp = Path(tempfile.mkdtemp(prefix="meridian-bench-"))
    logging.getLogger("cluster_node.net.tls").setLevel(logging.ERROR)
    cert, key = ensure_self_signed(tmp / "tls", ["localhost"])
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    names = [f"m{i}" for i in range(1, args.members + 1)]
    # The joiner dials every member whose name sorts after its own (the full-mesh rule of
    # ClusterMember); a name that sorts last waits for the others' next discovery refresh instead.
    joiner = "a-joiner" if args.joiner_sorts == "first" else "z-joiner"
    ports = free_ports(args.members + 1)
    peers = [(n, f"127.0.0.1:{p}") for n, p in zip([*names, joiner], ports, strict=True)]
    total = args.sessions
    common = {"peers": peers, "cert": str(cert), "key": str(key), "timeout": args.timeout}
    specs = [MemberSpec(name=n, port=p, first=i, stop=total, step=args.members, expected=total, **common)
             for i, (n, p) in enumerate(zip(names, ports, strict=False))]
    for spec in specs:
        spec.extra["joiner"] = joiner
    jspec = MemberSpec(name=joiner, port=ports[-1], expected=total, joiner=True, inserts=args.inserts,
                       pipelined=args.pipelined, profile=args.profile or "", **common)

    procs: list[tuple[Any, Connection]] = []

    def spawn(spec: MemberSpec) -> Connection:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=member_process, args=(spec, child), name=spec.name, daemon=True)
        proc.start()
        child.close()
        procs.append((proc, parent))
        return parent

    print(f"Meridian cluster replication benchmark: {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}, load average {load_average()}")
    print(f"  {args.members} members holding {total:,} sessions + 1 joining member; TLS over 127.0.0.1; "
          f"one OS process per member", flush=True)
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    try:
        t = time.perf_counter()
        # Started last name first, each once the previous listens: every member dials the ones already up.
        conns: list[Connection] = []
        for spec in reversed(specs):
            conns.insert(0, spawn(spec))
            expect(conns[0], "listening", args.timeout)
        ready = [expect(c, "ready", args.timeout + 30) for c in conns]
        print(f"  setup: {len(specs)} members linked and holding {total:,} sessions in "
              f"{time.perf_counter() - t:.1f} s (filling one member's share: "
              f"{max(r['fill_s'] for r in ready):.2f} s)", flush=True)

        jconn = spawn(jspec)
        join = expect(jconn, "join", args.timeout + 30)
        ins = expect(jconn, "insert", args.timeout * 3 + 30)
        expected_final = total + args.inserts + args.pipelined
        sizes = []
        for c in [*conns, jconn]:
            c.send("size")
            sizes.append(expect(c, "size", 30))
        for c in [*conns, jconn]:
            c.send("stop")
    except BenchmarkError as e:
        print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
        return 2
    finally:
        for proc, _ in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    cpu_end, wall = cpu_seconds(), time.perf_counter() - wall_start
    lat_ms = [x * 1000 for x in ins["latencies"]]
    rows: list[tuple[str, str, str, str]] = []
    missed: list[str] = []

    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append((name, value, target, "" if ok is None else ("ok" if ok else "MISSED")))

    merge_ok = join["merge_s"] <= args.join_target
    row(f"join: start → all {total:,} sessions merged", f"{join['merge_s']:.3f} s", f"≤ {args.join_target:g} s",
        merge_ok)
    if not merge_ok:
        missed.append(f"join merge took {join['merge_s']:.3f} s > {args.join_target:g} s")
    if join["first_joined_s"] is not None:
        row("  first link joined (TLS + HELLO/AUTH)", f"{join['first_joined_s']:.3f} s")
        row("  last link joined", f"{join['last_joined_s']:.3f} s")
    if join["first_dump_s"] is not None:
        row("  first dump merged", f"{join['first_dump_s']:.3f} s")
    row("  joiner busy receiving (decode + merge)", f"{join['receive_s']:.3f} s")
    row("    of which merging dumps into the table", f"{join['merge_cpu_s']:.3f} s")
    mem_ok = join["rss_per_session"] <= args.memory_target
    row("joiner's RSS per session held, after the merge", f"{join['rss_per_session']:,.0f} B",
        f"≤ {args.memory_target:g} B", mem_ok)
    row("  joiner's RSS before / after the join",
        f"{join['rss_before'] / 2**20:,.0f} / {join['rss_after'] / 2**20:,.0f} MiB")
    if not mem_ok:
        missed.append(f"memory per session {join['rss_per_session']:,.0f} B > {args.memory_target:g} B")
    if lat_ms:
        p99 = pct(lat_ms, 99)
        ok = p99 <= args.p99_target and not ins["unacked"]
        n = len(lat_ms)
        row(f"insert → acked by {args.members} members, p50 (n={n:,})", f"{pct(lat_ms, 50):.3f} ms")
        row("  p95", f"{pct(lat_ms, 95):.3f} ms")
        row("  p99", f"{p99:.3f} ms", f"≤ {args.p99_target:g} ms", ok)
        row("  max", f"{max(lat_ms):.3f} ms")
        row("  mean", f"{statistics.fmean(lat_ms):.3f} ms")
        row("  sequential rate", f"{n / sum(ins['latencies']):,.0f} inserts/s")
        if not ok:
            missed.append(f"insert replication p99 {p99:.3f} ms > {args.p99_target:g} ms"
                          if p99 > args.p99_target else f"{ins['unacked']} inserts not acked by every member")
    if args.pipelined:
        row(f"pipelined: {args.pipelined:,} inserts, then wait for all acks",
            f"{args.pipelined / ins['pipelined_s']:,.0f} inserts/s")

    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print()
    print(f"  {'metric':<{w0}}  {'value':>{w1}}  {'target':<{w2}}  result")
    print(f"  {'-' * w0}  {'-' * w1}  {'-' * w2}  ------")
    for name, value, target, result in rows:
        print(f"  {name:<{w0}}  {value:>{w1}}  {target:<{w2}}  {result}".rstrip())
    print()
    t0 = join["t0"]
    print("  where the join time goes (seconds after the joiner's start; clocks shared by the processes):")
    by_peer = {peer: (start, end, n) for peer, start, end, n in join["dumps"]}
    for m_name, stats in zip(names, sizes, strict=False):
        line = f"    {m_name}:"
        if stats.get("joined"):
            a, b = stats["joined"]
            line += f" dump encoded + handed to TLS {a - t0:+.3f} → {b - t0:+.3f}"
        if m_name in by_peer:
            start, end, n = by_peer[m_name]
            line += f"; joiner had it decoded {start - t0:+.3f}, merged {n:,} records by {end - t0:+.3f}"
        print(line)

    all_names = [*names, joiner]
    gc_pauses = {n: st["gc"] for n, st in zip(all_names, sizes, strict=True)}
    phases = [("join", t0, join["t_merged"])]
    if ins["starts"]:
        phases.append(("single inserts", ins["starts"][0], ins["t_pipelined"]))
    print("  GC passes of 1 ms or more (Python's cyclic collector; count, longest, generations) during:")
    for phase, a, b in phases:
        parts = []
        for who in all_names:
            ps = [(dt, g) for when, dt, g in gc_pauses[who] if a <= when < b]
            if ps:
                parts.append(f"{who} {len(ps)}× ≤{max(dt for dt, _ in ps) * 1000:.0f} ms "
                             f"(gen {','.join(str(g) for g in sorted({g for _, g in ps}))})")
        print(f"    {phase}: {'; '.join(parts) or 'none'}")
    if lat_ms:
        slow = sorted(zip(ins["latencies"], ins["starts"], strict=True), reverse=True)[:5]
        print("  slowest inserts, and the GC passes that overlapped them:")
        for dt, when in slow:
            overlapping = [f"{who} gen{g} {d * 1000:.1f} ms" for who in all_names for w, d, g in gc_pauses[who]
                           if w < when + dt and w + d > when]
            print(f"    {dt * 1000:7.3f} ms  {', '.join(overlapping) or '-'}")

    bad_sizes = [f"{s_name}: {s['size']:,}" for s_name, s in zip(all_names, sizes, strict=True)
                 if s["size"] != expected_final]
    if bad_sizes:
        print(f"BENCHMARK FAILED: members should hold {expected_final:,} records: {', '.join(bad_sizes)}",
              file=sys.stderr)
        return 2
    print(f"  every member holds {expected_final:,} records at the end; load average {load_average()}")
    if cpu_start and cpu_end:
        cpus = os.cpu_count() or 1
        others = max(0.0, (cpu_end[0] - cpu_start[0]) - (cpu_end[1] - cpu_start[1]))
        print(f"  CPU used during the run: by this benchmark {cpu_end[1] - cpu_start[1]:.1f} s, by other work "
              f"{others:.1f} s, of {wall * cpus:.1f} s available ({cpus} CPUs × {wall:.1f} s)")
        if others > 0.25 * wall * cpus:
            print("  note: other work took over a quarter of the machine: the figures include time spent "
                  "waiting for a CPU")
    if args.profile:
        for name in ("join", "insert"):
            path = Path(args.profile) / f"{name}.prof"
            if path.exists():
                print(f"\n  cProfile of the joiner, {name} phase ({path}), top by own time:")
                pstats.Stats(str(path), stream=sys.stdout).sort_stats("tottime").print_stats(18)
    if missed:
        for m in missed:
            print(f"TARGET MISSED: {m}")
        return 1
    print("  all targets met")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions held by the cluster (100000)")
    parser.add_argument("--members", type=int, default=3, help="members before the join (3)")
    parser.add_argument("--inserts", type=int, default=2000, help="inserts timed one at a time (2000)")
    parser.add_argument("--pipelined", type=int, default=20_000, help="inserts sent back to back (20000)")
    parser.add_argument("--joiner-sorts", choices=["first", "last"], default="first",
                        help="joiner's name sorts before the members' (it dials them) or after (they dial it "
                             "on their next discovery refresh, every 5 s)")
    parser.add_argument("--join-target", type=float, default=5.0, help="seconds the join may take (5)")
    parser.add_argument("--p99-target", type=float, default=5.0, help="ms an insert may take at p99 (5)")
    parser.add_argument("--memory-target", type=float, default=400.0,
                        help="bytes of the joiner's RSS a session held may take (400)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds any one phase may take")
    parser.add_argument("--profile", metavar="DIR", help="cProfile the joiner; write join.prof, insert.prof")
    args = parser.parse_args(argv)
    if args.members < 1 or args.sessions < 0 or args.inserts < 0 or args.pipelined < 0:
        parser.error("counts must be positive")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
