"""Single-node load benchmark: the single-node targets, on one real ``meridian node``.

1. 10,000 concurrent authenticated connections, under 25 KB of server RSS each;
2. 20,000 messages/s routed between connected users, with p99 delivery latency under 50 ms.

One node runs as ``python -m gateway.cli node --config node.toml`` (SQLite in a temp dir, the
self-signed TLS certificate it makes on first start, every listener on 127.0.0.1).  The clients
are ``benchmarks/loadgen.py`` (raw TLS sockets, no XML parsing) in ``--workers`` processes of
their own, so the node and the generator use different CPUs; ``--pin`` pins the node to CPU 0
and the generators to the others (``sched_setaffinity``, what ``taskset`` does).

    .venv/bin/python benchmarks/node_load.py                       # the targets: 10,000 clients, 20,000 msg/s
    .venv/bin/python benchmarks/node_load.py --clients 2000 --rate 5000 --duration 5
    .venv/bin/python benchmarks/node_load.py --profile /tmp/prof   # + py-spy of the node per phase

Phases: accounts are written through the storage API (``Accounts.register``, 4096 PBKDF2 rounds,
many at once on threads: PBKDF2 releases the GIL); the node starts; every client logs in
(TLS + SASL + bind + initial presence, ``--login-concurrency`` at a time); the node's RSS is
read (psutil) before and after; then ``--senders`` clients send chat messages to as many other
connected clients at ``--rate`` messages/s for ``--duration`` s (open loop: the latency target),
then, unless ``--capacity-duration 0``, with ``--window`` messages in flight per sender (closed
loop: how many messages/s the node can route at all).

Exit status 0 when every target is met, 1 when one is missed (each printed as ``TARGET MISSED:``),
2 when the run itself failed (the node did not start, a generator crashed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import psutil

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:  # run as a script from anywhere: this checkout, and loadgen beside it
        sys.path.insert(0, _p)

import common  # noqa: E402
import loadgen  # noqa: E402
from common import BenchmarkError as BenchmarkError, pct as pct, toml_config as toml_config  # noqa: E402
from machine import free_ports, load_average, machine_busy  # noqa: E402

from cluster_node.settings import NodeSettings, load_settings  # noqa: E402
from cluster_node.wiring import open_accounts  # noqa: E402

DOMAIN = "localhost"
PASSWORD = "bench-password"
TARGET_CLIENTS = 10_000
KB = 1024


# -- helpers --------------------------------------------------------------------------------------


def username(i: int) -> str:
    return f"bench{i}"


# -- accounts -------------------------------------------------------------------------------------


async def register_users(settings: NodeSettings, n: int, concurrency: int) -> tuple[int, float]:
    """Make accounts bench0..bench{n-1} (those missing) through ``Accounts.register``; (made, seconds)."""
    t = time.perf_counter()
    async with open_accounts(settings) as (storage, accounts):
        have = set(await storage.list_accounts(DOMAIN))
        missing = [i for i in range(n) if username(i) not in have]
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await accounts.register(DOMAIN, username(i), PASSWORD)

        loop = asyncio.get_running_loop()
        from concurrent.futures import ThreadPoolExecutor

        # PBKDF2 (hashlib) releases the GIL: one thread per CPU derives keys in parallel.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)))
        await asyncio.gather(*(one(i) for i in missing))
    return len(missing), time.perf_counter() - t


# -- the node -------------------------------------------------------------------------------------


class Node:
    def __init__(self, workdir: Path, config: Path, cpus: list[int], nofile: int, gc_probe: bool) -> None:
        self.workdir = workdir
        self.config = config
        self.cpus = cpus
        self.nofile = nofile
        self.gc_out = workdir / "gc.json" if gc_probe else None
        self.log_path = workdir / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self, data_dir: Path, timeout: float = 30.0) -> None:
        control = data_dir / "control.sock"
        control.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        # This checkout first; a caller's PYTHONPATH after it (e.g. a sitecustomize trying a change).
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        cpus, nofile = self.cpus, self.nofile

        def prepare() -> None:  # in the child, before exec
            loadgen.raise_nofile(nofile)
            if cpus:
                os.sched_setaffinity(0, cpus)

        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "gateway.cli"]
        if self.gc_out is not None:  # the same node, with an observer of its garbage collector
            cmd = [sys.executable, str(Path(__file__).resolve().parent / "node_probe.py"), str(self.gc_out)]
        self.proc = subprocess.Popen([*cmd, "node", "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                     preexec_fn=prepare)
        log.close()
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchmarkError(f"the node exited with {self.proc.returncode}:\n{self.log()}")
            if control.exists():  # made once every listener is up
                return
            time.sleep(0.05)
        raise BenchmarkError(f"the node did not start within {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def cpu_s(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def sys_s(self) -> float:
        """Of :meth:`cpu_s`, the seconds spent in the kernel (system calls, loopback TCP, wake-ups)."""
        assert self.ps is not None
        return float(self.ps.cpu_times().system)

    def run_delay_s(self) -> float | None:
        """Seconds the node's event loop thread was runnable but waiting for a CPU (/proc schedstat)."""
        if self.proc is None:
            return None
        try:
            return int(Path(f"/proc/{self.proc.pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def fds(self) -> int:
        assert self.ps is not None
        return int(self.ps.num_fds())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def gc_passes(self, timeout: float = 20.0) -> list[tuple[float, float, int, int]] | None:
        """Every pass of the node's cyclic GC so far: (monotonic start, seconds, generation, collected)."""
        if self.gc_out is None or not self.alive() or self.proc is None:
            return None
        self.gc_out.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not self.gc_out.exists():
            if time.monotonic() > deadline or not self.alive():
                return None
            time.sleep(0.05)
        data = json.loads(self.gc_out.read_text())
        return [(float(a), float(b), int(g), int(c)) for a, b, g, c in data["passes"]]

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the node uses under 5 % of a CPU over 0.3 s (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(psutil.Error, AssertionError):
            while self.alive() and time.monotonic() < deadline:
                before = self.cpu_s()
                time.sleep(0.3)
                if self.cpu_s() - before < 0.015:
                    return

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Profiler:
    """py-spy sampling the node during one phase (``--format raw``: collapsed stacks)."""

    def __init__(self, directory: Path | None, pid: int) -> None:
        self.directory = directory
        self.pid = pid
        self.proc: subprocess.Popen[bytes] | None = None
        self.out: Path | None = None
        self.exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")

    def start(self, phase: str) -> None:
        if self.directory is None or self.exe is None:
            return
        self.out = self.directory / f"{phase}.txt"
        self.proc = subprocess.Popen([self.exe, "record", "--pid", str(self.pid), "--rate", "250", "--nonblocking",
                                      "--format", "raw", "--output", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the phase starts

    def stop(self) -> Path | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        return self.out


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("/cluster_node/", "/gateway/", "/lib/python3"):
        if marker in file:
            file = file[file.index(marker) + 1:]
            break
    return f"{m.group('fn')} ({file})"


def summarize_profile(path: Path, top: int = 22) -> list[str]:
    """Own time and inclusive time per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [f"    (no profile written to {path})"]
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("<module>") and "(runpy" not in f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return ["    (no samples)"]
    out = [f"    {total:,} samples; own time:"]
    out += [f"      {100 * c / total:5.1f} %  {f}" for f, c in own.most_common(top)]
    out.append("    inclusive time (function and what it calls), project code and asyncio/ssl:")
    keep = [(f, c) for f, c in incl.most_common() if any(k in f for k in ("cluster_node/", "asyncio/", "ssl.py"))]
    out += [f"      {100 * c / total:5.1f} %  {f}" for f, c in keep[:top]]
    return out


def waited(before: float | None, after: float | None) -> str:
    return f"{after - before:.1f} s" if before is not None and after is not None else "?"


def gc_summary(passes: list[tuple[float, float, int, int]] | None, t0: float, t1: float) -> str | None:
    """'count passes, total s (gen2: count, longest ms)' for the passes that started in [t0, t1]."""
    if passes is None:
        return None
    ps = [p for p in passes if t0 <= p[0] <= t1]
    full = [p for p in ps if p[2] == 2]
    total = sum(p[1] for p in ps)
    longest = max((p[1] for p in ps), default=0.0)
    return (f"{len(ps):,} passes, {total:.2f} s; {len(full)} full (gen 2), longest {longest * 1000:.0f} ms")


def timeline(stats: dict[str, Any], step: float = 1.0) -> list[str]:
    """Delivered messages and latency p50/p99 by second of sending: a backlog that grows shows here."""
    buckets: dict[int, list[float]] = collections.defaultdict(list)
    for at, ms in zip(stats["sent_at"], stats["lat_ms"], strict=True):
        last = max(0, int((stats["end"] - stats["start"]) / step) - 1)
        buckets[min(last, int((at - stats["start"]) / step))].append(ms)
    out = []
    for b in sorted(buckets):
        v = buckets[b]
        out.append(f"    {b * step:4.0f}-{(b + 1) * step:<3.0f}s  {len(v) / step:8,.0f} msg/s  "
                   f"p50 {pct(v, 50):8.1f} ms  p99 {pct(v, 99):8.1f} ms  max {max(v):8.1f} ms")
    return out


# -- load generator processes ---------------------------------------------------------------------


class Workers:
    def __init__(self, specs: list[loadgen.WorkerSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        for i, spec in enumerate(specs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=loadgen.worker_main, args=(spec, child), name=f"loadgen{i}", daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        self.pids = [int(self.expect(c, "ready", 60)["pid"]) for c in self.conns]

    @staticmethod
    def expect(conn: Connection, what: str, timeout: float) -> Any:
        if not conn.poll(timeout):
            raise BenchmarkError(f"no {what!r} from a load generator within {timeout:.0f}s")
        kind, body = conn.recv()
        if kind == "error":
            raise BenchmarkError(f"a load generator failed:\n{body}")
        if kind != what:
            raise BenchmarkError(f"expected {what!r} from a load generator, got {kind!r}")
        return body

    def all(self, cmd: str, timeout: float, **kwargs: Any) -> list[Any]:
        for c in self.conns:
            c.send((cmd, kwargs))
        return [self.expect(c, cmd, timeout) for c in self.conns]

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
        return total

    def stop(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(("stop", {}))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


# -- the run ----------------------------------------------------------------------------------------


class Report(common.Report):
    """Headed 'metric' and 'target', 'ok' for a target met (im_modules.py's too)."""

    def __init__(self) -> None:
        super().__init__(goal="target", met="ok", goal_min=0)


def message_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    lat: array[int] = array("q")
    sent_at: array[int] = array("q")
    for r in results:
        part: array[int] = array("q")
        part.frombytes(r["lat"])
        lat.extend(part)
        part = array("q")
        part.frombytes(r["sent_at"])
        sent_at.extend(part)
    ms = [x / 1e6 for x in lat]
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    last = max((r["last_recv"] for r in results), default=0.0)
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    return {"sent": sent, "received": received, "lat_ms": ms, "sent_at": [x / 1e9 for x in sent_at],
            "start": start, "end": end,
            "last_recv": last, "errors": sum(r["errors"] for r in results), "lost": sum(r["lost"] for r in results),
            "bad": sum(r["bad"] for r in results), "gen_cpu_s": sum(r["cpu_s"] for r in results),
            "send_rate": sent / (end - start) if end > start else 0.0,
            # delivered messages over the time from the first send to the last delivery: at an
            # offered rate the node sustains this is that rate; a backlog drained late lowers it
            "rate": received / (max(last, end) - start) if received and max(last, end) > start else 0.0}


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="meridian-nodeload-"))
    node_cpus, gen_cpus = common.split_cpus(args.pin)
    nofile_node = args.clients + 4096
    nofile_gen = args.clients // args.workers + 4096
    have_nofile = loadgen.raise_nofile(max(nofile_node, nofile_gen))
    if have_nofile < nofile_node:
        print(f"BENCHMARK FAILED: RLIMIT_NOFILE is {have_nofile}, {nofile_node} are needed (run as root "
              f"or raise the hard limit)", file=sys.stderr)
        return 2

    port, tls_port = free_ports(2)
    data_dir = tmp / "data"
    db = Path(args.db).resolve() if args.db else data_dir / "meridian.db"
    conf = {
        "node_name": "bench", "domains": [DOMAIN], "data_dir": str(data_dir), "log_level": args.log_level,
        "scram_iterations": 4096,
        "c2s": {"host": "127.0.0.1", "port": port, "tls_port": tls_port, "handshake_timeout": 120.0,
                "idle_timeout": 3600.0},
        # Every client comes from 127.0.0.1: room for all of them; the shaper well above what a
        # sender sends (its cost per read is paid all the same).
        "limits": {"max_connections_per_ip": args.clients + 1000, "max_connections": args.clients + 1000,
                   "shaper_rate": 10_000_000, "shaper_burst": 10_000_000,
                   "stanza_rate": 10_000_000, "stanza_burst": 10_000_000},
        "storage": {"url": f"sqlite:///{db}"},
        # No HTTP APIs: nothing here uses them, and their default ports would collide between runs.
        "admin": {"port": 0}, "user_api": {"port": 0},
        # Without the message archive unless --mam: the figures of compare.py's ``meridian`` (MAM
        # writes two rows a message, a cost of its own: benchmarks/mobile.py measures it).
        "modules": {} if args.mam else {"mam": {"enabled": False}},
    }
    config = tmp / "node.toml"
    config.write_text(toml_config(conf))
    settings: NodeSettings = load_settings(config)

    print(f"Meridian single-node load benchmark: {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}, load average {load_average()}")
    how = "direct TLS (XEP-0368)" if args.tls == "direct" else "STARTTLS"
    print(f"  {args.clients:,} clients over {how}, SASL {args.sasl}, in {args.workers} load generator "
          f"process(es); node log level {args.log_level}, MAM {'on' if args.mam else 'off'}; "
          + (f"node pinned to CPU {node_cpus}, generators to CPUs {gen_cpus}" if node_cpus
             else "no CPU pinning"), flush=True)

    made, reg_s = asyncio.run(register_users(settings, args.clients, 64))
    print(f"  setup: {made:,} accounts registered through Accounts.register (4096 PBKDF2 rounds, "
          f"threads in parallel) in {reg_s:.1f} s; SQLite at {db}", flush=True)

    node = Node(tmp, config, node_cpus, nofile_node, args.gc_probe)
    workers: Workers | None = None
    profiler: Profiler | None = None
    report = Report()
    notes: list[str] = []
    profiles: list[tuple[str, Path]] = []
    paced_runs: list[tuple[float, dict[str, Any]]] = []
    gc_lines: list[str] = []
    phases: list[tuple[str, float, float]] = []  # (name, monotonic start, end) for the GC summary
    busy0 = machine_busy()
    wall0 = time.perf_counter()
    ours = 0.0  # CPU seconds of the node and the generators, read before they stop
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        node.start(data_dir)
        profiler = Profiler(Path(args.profile) if args.profile else None, node.ps.pid if node.ps else 0)
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            if profiler.exe is None:
                notes.append("py-spy not found: no profile (.venv/bin/pip install py-spy)")
        users = [(username(i), PASSWORD) for i in range(args.clients)]
        specs = [loadgen.WorkerSpec(host="127.0.0.1", port=tls_port if args.tls == "direct" else port,
                                    direct_tls=args.tls == "direct", domain=DOMAIN, sasl=args.sasl,
                                    users=users[w::args.workers],
                                    login_concurrency=max(1, args.login_concurrency // args.workers),
                                    login_timeout=args.timeout, cpus=gen_cpus, nofile=nofile_gen)
                 for w in range(args.workers)]
        workers = Workers(specs)
        time.sleep(0.5)
        rss0, fds0 = node.rss(), node.fds()

        # -- 1. logins --------------------------------------------------------------------------
        profiler.start("login")
        cpu0, gcpu0, wait0, sys0 = node.cpu_s(), workers.cpu_s(), node.run_delay_s(), node.sys_s()
        t = time.monotonic()
        logins = workers.all("login", args.timeout * 3 + 60)
        phases.append(("logins", t, time.monotonic()))
        cpu_login, gcpu_login = node.cpu_s() - cpu0, workers.cpu_s() - gcpu0
        wait_login = waited(wait0, node.run_delay_s())
        sys_login = node.sys_s() - sys0
        if (p := profiler.stop()) is not None:
            profiles.append(("logins", p))
        ok = sum(r["ok"] for r in logins)
        failed = sum(r["failed"] for r in logins)
        failures: collections.Counter[str] = collections.Counter()
        for r in logins:
            failures.update(r["failures"])
        login_wall = max(r["t1"] for r in logins) - min(r["t0"] for r in logins)
        login_s: list[float] = []
        for r in logins:
            a: array[float] = array("d")
            a.frombytes(r["login_s"])
            login_s += a.tolist()
        time.sleep(args.settle)
        rss1, fds1 = node.rss(), node.fds()
        if not node.alive():
            raise BenchmarkError(f"the node died during the logins:\n{node.log()}")
        per_conn_kb = (rss1 - rss0) / max(ok, 1) / KB

        conn_target = f"all {args.clients:,}" + ("" if args.clients >= TARGET_CLIENTS else " (target: 10,000)")
        report.row("connections logged in and held", f"{ok:,}", conn_target, ok == args.clients and ok > 0,
                   f"{ok:,} of {args.clients:,} clients logged in ({failed:,} failed)")
        report.row("  login failures", f"{failed:,}")
        report.row("logins/s (TLS + SASL + bind + presence)", f"{ok / login_wall:,.0f}" if login_wall > 0 else "-")
        report.row(f"  login time p50 / p99 ({args.login_concurrency} at a time)",
                   f"{pct(login_s, 50) * 1000:.0f} / {pct(login_s, 99) * 1000:.0f} ms")
        report.row("  node CPU per login", f"{cpu_login / max(ok, 1) * 1000:.2f} ms")
        report.row("  node CPU (in the kernel) / waiting for a CPU",
                   f"{cpu_login:.1f} s ({sys_login:.1f} s) / {wait_login} in {login_wall:.1f} s")
        report.row("node RSS before / after logins", f"{rss0 / 2**20:.1f} / {rss1 / 2**20:.1f} MiB")
        report.row("node RSS per connection", f"{per_conn_kb:.1f} KB", f"≤ {args.rss_target:g} KB",
                   per_conn_kb <= args.rss_target and ok > 0,
                   f"node RSS per connection {per_conn_kb:.1f} KB > {args.rss_target:g} KB")
        report.row("  node open fds before / after", f"{fds0:,} / {fds1:,}")
        print(f"  logins: {ok:,} in {login_wall:.1f} s; node CPU {cpu_login:.1f} s, generators CPU "
              f"{gcpu_login:.1f} s; node RSS {rss1 / 2**20:.0f} MiB", flush=True)
        for reason, n in failures.most_common(5):
            print(f"    login failure ×{n}: {reason}")

        # -- 2. messages at fixed rates, and 3. capacity (a window of messages in flight per sender) --
        senders = sum(workers.all("pair", 30, senders=max(1, args.senders // args.workers)))
        closed: dict[str, Any] | None = None
        capacity = 0.0

        def capacity_phase() -> float:
            nonlocal closed
            cpu0, t = node.cpu_s(), time.monotonic()
            res = workers.all("closed", args.capacity_duration + args.drain + 60, window=args.window,
                              duration=args.capacity_duration, drain=args.drain)
            cpu_cap = node.cpu_s() - cpu0
            phases.append(("capacity", t, time.monotonic()))
            closed = message_stats(res)
            in_window = sum(r["received_in_window"] for r in res)
            cap_rate = in_window / (closed["end"] - closed["start"])
            lat = closed["lat_ms"]
            report.row(f"capacity: {args.window} in flight per sender", f"{cap_rate:,.0f} msg/s")
            report.row("  latency p50 / p99", f"{pct(lat, 50):.1f} / {pct(lat, 99):.1f} ms")
            report.row("  node CPU per message", f"{cpu_cap / max(closed['received'], 1) * 1e6:.0f} µs "
                       f"({cpu_cap:.1f} s)")
            report.row("  generator CPU", f"{closed['gen_cpu_s']:.1f} s in {closed['end'] - closed['start']:.1f} s")
            print(f"  capacity: {cap_rate:,.0f} msg/s", flush=True)
            return float(cap_rate)

        relative = any(r.relative for r in args.rate)
        if relative and senders:  # the rates are shares of this: measured first
            capacity = capacity_phase()
            node.wait_idle()
        for n_rate, spec in enumerate(args.rate if args.duration > 0 and senders else []):
            rate = spec.of(capacity)
            last = n_rate == len(args.rate) - 1  # the targets are checked at the last rate
            name = f"messages at {rate:,.0f}/s" + (f" ({spec} of capacity)" if spec.relative else "")
            if n_rate:
                time.sleep(1.0)
            profiler.start(f"messages-{rate:.0f}")
            cpu0, t, wait0, sys0 = node.cpu_s(), time.monotonic(), node.run_delay_s(), node.sys_s()
            rss_before = node.rss()
            res = workers.all("paced", args.duration + args.drain + 60, rate=rate / args.workers,
                              duration=args.duration, drain=args.drain, tick=args.tick, hold_back=args.hold_back)
            cpu_msg, sys_msg = node.cpu_s() - cpu0, node.sys_s() - sys0
            wait_msg = waited(wait0, node.run_delay_s())
            phases.append((name, t, time.monotonic()))
            if (p := profiler.stop()) is not None:
                profiles.append((name, p))
            paced = message_stats(res)
            held = sum(r.get("held", 0) for r in res)
            paced_runs.append((rate, paced))
            lat = paced["lat_ms"]
            p99 = pct(lat, 99)
            rate_ok = paced["rate"] >= args.rate_target * 0.99 if last else None
            lat_ok = (bool(lat) and p99 <= args.p99_target) if last else None
            report.row(f"messages: {senders:,} senders, offered rate",
                       f"{rate:,.0f} msg/s" + (f" ({spec})" if spec.relative else ""))
            report.row("  sent by the generators (achieved rate)", f"{paced['send_rate']:,.0f} msg/s")
            if args.hold_back:
                share = 100 * held / max(held + paced["sent"], 1)
                report.row("  held back (sender pushed back)", f"{held:,} ({share:.1f} %)")
            report.row("  messages/s routed (delivered)", f"{paced['rate']:,.0f} msg/s",
                       f"≥ {args.rate_target:,.0f} msg/s" if last else "", rate_ok,
                       f"{paced['rate']:,.0f} messages/s routed < {args.rate_target:,.0f}")
            report.row("  delivered / sent", f"{paced['received']:,} / {paced['sent']:,}")
            report.row("  latency p50", f"{pct(lat, 50):.2f} ms")
            report.row("  latency p95", f"{pct(lat, 95):.2f} ms")
            report.row("  latency p99", f"{p99:.2f} ms", f"≤ {args.p99_target:g} ms" if last else "", lat_ok,
                       f"p99 delivery latency {p99:.2f} ms > {args.p99_target:g} ms" if lat
                       else "no message was delivered")
            report.row("  latency max / mean", f"{max(lat, default=0):.1f} / "
                       f"{statistics.fmean(lat) if lat else 0:.2f} ms")
            per_msg_us = cpu_msg / max(paced["received"], 1) * 1e6
            report.row("  node CPU (of which in the kernel) / per message",
                       f"{cpu_msg:.1f} s ({sys_msg:.1f} s) / {per_msg_us:.0f} µs")
            report.row("  node waiting for a CPU", wait_msg)
            report.row("  node RSS before / after the phase",
                       f"{rss_before / 2**20:.1f} / {node.rss() / 2**20:.1f} MiB")
            report.row("  generator CPU", f"{paced['gen_cpu_s']:.1f} s in {paced['end'] - paced['start']:.1f} s")
            if paced["send_rate"] + held / max(paced["end"] - paced["start"], 1e-9) < 0.95 * rate:
                notes.append(f"the generators sent {paced['send_rate']:,.0f} msg/s of the {rate:,.0f} asked "
                             "(they lacked CPU): the node was offered less than that rate")
            print(f"  {name}: {paced['received']:,} delivered, {paced['rate']:,.0f}/s, p99 {p99:.1f} ms"
                  + (f", {held:,} held back" if args.hold_back else ""), flush=True)

        if args.capacity_duration > 0 and senders and not relative:
            capacity_phase()

        runs = [r for _, r in paced_runs] + ([closed] if closed else [])
        errors = sum(r["errors"] for r in runs)
        lost_conns = sum(r["lost"] for r in runs)
        lost_msgs = sum(r["sent"] - r["received"] - r["bad"] for r in runs)
        report.row("errors: error stanzas / stream errors seen", f"{errors:,}", "0", errors == 0,
                   f"{errors:,} error stanzas or stream errors received")
        report.row("  messages not delivered (after the drain)", f"{lost_msgs:,}", "0", lost_msgs == 0,
                   f"{lost_msgs:,} messages not delivered within {args.drain:g} s after sending stopped")
        report.row("  connections lost after login", f"{lost_conns:,}", "0", lost_conns == 0,
                   f"{lost_conns:,} connections lost")
        rss2 = node.rss()
        report.row("node RSS at the end", f"{rss2 / 2**20:.1f} MiB")
        report.row("node CPU seconds in all", f"{node.cpu_s():.1f} s")
        ours = node.cpu_s() + workers.cpu_s()
        passes = node.gc_passes()  # after the RSS readings: the dump itself allocates
        gc_lines = [f"    {name}: {summary}" for name, t0, t1 in phases
                    if (summary := gc_summary(passes, t0, t1)) is not None]
        if not node.alive():
            raise BenchmarkError(f"the node died:\n{node.log()}")
    except BenchmarkError as e:
        print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
        return 2
    finally:
        if profiler is not None:
            profiler.stop()
        if workers is not None:
            workers.stop()
            node.wait_idle()  # the sessions' cleanups (unavailable presence, unbind) run before SIGTERM
        node.stop()
    wall = time.perf_counter() - wall0
    busy1 = machine_busy()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ours += (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)

    report.print()
    if gc_lines:
        print("  the node's cyclic garbage collector (passes seen by gc.callbacks, node_probe.py):")
        for line in gc_lines:
            print(line)
    for rate, stats in paced_runs:
        if stats["lat_ms"]:
            print(f"  messages at {rate:,.0f}/s, by second of sending:")
            for line in timeline(stats):
                print(line)
    warnings = [line for line in node.log().splitlines()
                if (" WARNING " in line or " ERROR " in line) and "self-signed" not in line]
    if warnings:
        print(f"  node log: {len(warnings)} warning/error lines, e.g. {warnings[-1][:200]}")
    print(f"  load average {load_average()}")
    if busy0 is not None and busy1 is not None:
        cpus_n = os.cpu_count() or 1
        others = max(0.0, busy1 - busy0 - ours)
        print(f"  CPU used during the run: by the node and the generators {ours:.1f} s, by other work {others:.1f} s, "
              f"of {wall * cpus_n:.1f} s available ({cpus_n} CPUs × {wall:.1f} s)")
        if others > 0.1 * wall * cpus_n:
            print("  note: other work took over a tenth of the machine: the node waited for a CPU (see 'node waiting "
                  "for a CPU'), the figures are worse than on a quiet machine")
    for note in notes:
        print(f"  note: {note}")
    for phase, path in profiles:
        print(f"\n  py-spy of the node, {phase} ({path}):")
        for line in summarize_profile(path):
            print(line)
    if args.keep:
        print(f"  kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return common.verdict(report, "TARGET", "all targets met")


def rates(text: str) -> list[Rate]:
    """``20000`` msg/s, or ``80%`` of the capacity the closed loop measures (run first then)."""
    try:
        values = [Rate(float(x.strip()[:-1]), True) if x.strip().endswith("%") else Rate(float(x), False)
                  for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v.value <= 0 for v in values):
        raise argparse.ArgumentTypeError("one or more rates > 0 (msg/s, or N% of the measured capacity), "
                                         "separated by commas")
    return values


class Rate(NamedTuple):
    value: float
    relative: bool  # a percentage of the closed loop's rate

    def of(self, capacity: float) -> float:
        return self.value * capacity / 100 if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.relative else f"{self.value:,.0f}/s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=TARGET_CLIENTS, help="connections to log in and hold (10000)")
    parser.add_argument("--senders", type=int, default=1000, help="clients sending messages, each to another (1000)")
    parser.add_argument("--rate", type=rates, default=[Rate(20_000.0, False)],
                        help="messages/s offered in the fixed-rate phase (20000); a list (5000,10000,20000) runs "
                             "one phase per rate, in order, and checks the targets on the last; N%% is N %% of "
                             "the closed loop's rate, measured first then (80%%,150%%)")
    parser.add_argument("--hold-back", action=argparse.BooleanOptionalAction, default=False,
                        help="fixed rates: a sender pushed back (socket send buffer full) skips its message "
                             "instead of queueing it in the generator (off)")
    parser.add_argument("--tick", type=float, default=0.001,
                        help="seconds between the generators' sends in the fixed-rate phase (0.001)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the fixed-rate phase (10; 0 skips)")
    parser.add_argument("--capacity-duration", type=float, default=5.0,
                        help="seconds of the closed-loop phase (5; 0 skips)")
    parser.add_argument("--window", type=int, default=4, help="closed loop: messages in flight per sender (4)")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for messages after sending stops")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes (2)")
    parser.add_argument("--login-concurrency", type=int, default=200, help="logins in progress at once, in all (200)")
    parser.add_argument("--tls", choices=["starttls", "direct"], default="starttls",
                        help="STARTTLS on c2s.port or direct TLS on c2s.tls_port (starttls)")
    parser.add_argument("--sasl", choices=["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], default="PLAIN")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="pin the node to CPU 0 and the generators to the other CPUs (on)")
    parser.add_argument("--mam", action=argparse.BooleanOptionalAction, default=False,
                        help="run the node with its message archive (off: as compare.py's meridian)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="WARNING",
                        help="the node's log level (WARNING: no line per login)")
    parser.add_argument("--rss-target", type=float, default=25.0, help="KB of node RSS per connection (25)")
    parser.add_argument("--rate-target", type=float, default=20_000, help="messages/s to route (20000)")
    parser.add_argument("--p99-target", type=float, default=50.0, help="ms of delivery latency at p99 (50)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between the logins and the RSS reading")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one login may take")
    parser.add_argument("--db", help="SQLite file holding the accounts (reused between runs; default: temp dir)")
    parser.add_argument("--gc-probe", action=argparse.BooleanOptionalAction, default=True,
                        help="start the node through benchmarks/node_probe.py to count its GC passes (on)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the node in each phase; summary printed")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, node log)")
    args = parser.parse_args(argv)
    if args.clients < 2 or args.workers < 1 or args.senders < 1 or args.window < 1:
        parser.error("--clients ≥ 2, --workers, --senders and --window ≥ 1")
    if args.capacity_duration <= 0 and any(r.relative for r in args.rate):
        parser.error("a --rate in %% of the capacity needs the closed loop that measures it: --capacity-duration > 0")
    args.workers = min(args.workers, args.clients // 2)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
