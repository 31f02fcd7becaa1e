"""Meridian side by side with ejabberd and Prosody: the same scenarios, the same machine, the same run.

Servers (``benchmarks/peers.py``): Meridian one node, a Meridian 2-node cluster, ejabberd 23.01,
Prosody 0.12 (and, with ``--servers …,ejabberd-scram``, ejabberd storing SCRAM keys as Meridian
does, not its default plain passwords; with ``meridian-mam,ejabberd-modules``, both archiving every
message: Meridian with MAM on — its other modules, stream management, carbons and CSI among them,
are on in every Meridian run — and ejabberd with mod_mam in a PostgreSQL of its own,
mod_stream_mgmt, mod_carboncopy and mod_client_state; the goals then compare them; with
``meridian-cores``, one Meridian process per server CPU, members of one cluster on one c2s port —
run it with ``--no-pin`` for the all-cores figure, every server then using every CPU as ejabberd's
schedulers do) — each started by this script with its own config on loopback, users
pre-registered, pinned to CPU 0 (``--pin``) while the load runs on CPU 1.  Rounds are interleaved
(round r runs the servers in an order rotated by r) and the table shows medians over rounds and
ratios Meridian / peer.

Scenarios, per server and round (the server is started fresh for each):

0. warm-up — ``--warmup`` logins (ejabberd's first wave after start is ~10× slower), not measured;
1. login storm (Tsung, ``tsung/login.xml``) — ``--login-users`` users arrive at ``--login-arrival``/s:
   connect, STARTTLS, SASL PLAIN, bind, initial presence (answered), hold ``--login-hold`` s, close.
   Logins/s = logins completed / (last completion − first arrival), read from Tsung's 0.25 s stats;
2. steady chat (Tsung, ``tsung/chat.xml``) — ``--chat-users`` online users each send
   ``--chat-rate`` msg/s to random online users for ``--chat-duration`` s (``destination="online"``,
   ``stamped="true"``).  Tsung reports delivered messages and their latency as mean and max only,
   so a probe (``loadgen.py``: ``--probe-pairs`` extra users, ``--probe-rate`` msg/s in all) runs
   during Tsung's chat window and gives p50/p95/p99 under that load;
3. idle connections (``loadgen.py``) — ``--idle`` connections (e.g. 1000,10000) logged in and held:
   (server RSS after − before) / connections.  At the first size the same clients also run a
   closed loop (``--window`` messages in flight per sender, ``--capacity-duration`` s): the most
   messages/s the server routes, which Tsung cannot measure (it only offers a fixed rate); then,
   with ``--sweep``, the same senders offer each rate for ``--sweep-duration`` s (delivered msg/s,
   p50/p99: the knee).  The server's RSS at every size is kept (``idle.rss_mb.<size>``);
4. SCRAM logins (``loadgen.py``) — ``--scram-logins`` users log in with SCRAM-SHA-1 over STARTTLS,
   100 at a time, twice; the second pass is measured (the clients keep their salted passwords, as
   real ones do): logins/s and server CPU per login.  Scenario 3's logins are SASL PLAIN, which
   costs a server that stores only SCRAM keys (Meridian, ``ejabberd-scram``) a PBKDF2 per login;
5. cross-region (Meridian only) — ``gdistrib_relay.py`` with ``--link-delay-ms``: relayed msg/s
   and what the relay adds over a same-node delivery beyond the link delay.

Per scenario: CPU seconds of the server's processes (psutil, the whole tree: BEAM under
ejabberdctl, both cluster nodes) and their peak RSS (sampled every 0.2 s).  Results are compared
with ``benchmarks/results.json`` by Meridian's ratios to the peers measured in the same run: a
figure whose ratio to every peer is worse than recorded by more than ``--noise`` prints a
``REGRESSION:`` line (exit status 1); without peers the absolute figures are compared, and the
output says so.  ``--save`` writes this run's medians there; ``--plot DIR`` draws the pictures
(``benchmarks/plots.py``).

    .venv/bin/python benchmarks/compare.py                                   # everything, 3 rounds
    .venv/bin/python benchmarks/compare.py --servers meridian --rounds 1 --login-users 50 \
        --chat-users 20 --idle 40 --no-cross-region                           # a quick look
    .venv/bin/python benchmarks/compare.py --profile /tmp/prof    # + py-spy of Meridian: closed loop, chat

Exit status 0, 1 when a regression was found, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import loadgen  # noqa: E402
import peers  # noqa: E402
from machine import load_average, machine_busy  # noqa: E402
from node_load import Profiler, Workers, message_stats, pct, summarize_profile  # noqa: E402

RESULTS = HERE / "results.json"
# what aborts a Tsung session during the login (tsung/*.xml: <match do="abort" when="match">)
FAILURE = "&lt;failure|&lt;stream:error|type=.error."
TSUNG_DIR = HERE / "tsung"
DUMP_INTERVAL_MS = 250

# figure → (label, unit, True if higher is better); the order of the table
FIGURES: dict[str, tuple[str, str, bool]] = {
    "login.rate": ("login storm (Tsung): logins/s", "/s", True),
    "login.mean_ms": ("  login time mean", "ms", False),
    "login.max_ms": ("  login time max", "ms", False),
    "login.errors": ("  errors (failed or missing logins)", "", False),
    "login.cpu_s": ("  server CPU", "s", False),
    "login.cpu_ms_per_login": ("  server CPU per login", "ms", False),
    "login.peak_rss_mb": ("  server peak RSS", "MB", False),
    "login.tsung_cpu_share": ("  Tsung's share of its CPU", "%", False),
    "chat.offered": ("steady chat (Tsung): offered msg/s", "/s", True),
    "chat.rate": ("  delivered msg/s (steady)", "/s", True),
    "chat.delivered_pct": ("  delivered / sent", "%", True),
    "chat.mean_ms": ("  latency mean (Tsung)", "ms", False),
    "chat.max_ms": ("  latency max (Tsung)", "ms", False),
    "chat.p50_ms": ("  latency p50 (probe)", "ms", False),
    "chat.p95_ms": ("  latency p95 (probe)", "ms", False),
    "chat.p99_ms": ("  latency p99 (probe)", "ms", False),
    "chat.errors": ("  errors", "", False),
    "chat.cpu_s": ("  server CPU", "s", False),
    "chat.cpu_us_per_msg": ("  server CPU per delivered msg", "µs", False),
    "chat.peak_rss_mb": ("  server peak RSS", "MB", False),
    "chat.tsung_cpu_share": ("  Tsung's share of its CPU", "%", False),
    "scram.logins_per_s": ("SCRAM-SHA-1 logins (loadgen, 2nd login): logins/s", "/s", True),
    "scram.login_p99_ms": ("  login time p99 (100 at a time)", "ms", False),
    "scram.cpu_ms_per_login": ("  server CPU per login", "ms", False),
    "scram.errors": ("  login failures", "", False),
    "idle.logins_per_s": ("idle connections (loadgen, PLAIN): logins/s", "/s", True),
    "idle.login_p99_ms": ("  login time p99 (100 at a time)", "ms", False),
    "idle.kb_per_conn_1": ("  RSS per connection at size 1", "KB", False),
    "idle.kb_per_conn_2": ("  RSS per connection at size 2", "KB", False),
    "idle.errors": ("  login failures", "", False),
    "idle.peak_rss_mb": ("  server peak RSS", "MB", False),
    "capacity.rate": ("capacity (loadgen closed loop): msg/s", "/s", True),
    "capacity.p99_ms": ("  latency p99", "ms", False),
    "capacity.cpu_us_per_msg": ("  server CPU per msg", "µs", False),
    "cross.relayed_rate": ("cross-region relayed msg/s (Meridian)", "/s", True),
    "cross.added_p50_ms": ("  relay adds p50 (beyond the link delay)", "ms", False),
    "cross.added_p99_ms": ("  relay adds p99 (beyond the link delay)", "ms", False),
}


class BenchError(Exception):
    pass


# -- measuring the server ------------------------------------------------------------------------


class Sampler:
    """Peak RSS of a server's process tree, sampled every ``period`` s on a thread, and its CPU."""

    def __init__(self, tree: peers.ProcTree, period: float = 0.2) -> None:
        self.tree = tree
        self.period = period
        self.peak = 0
        self.cpu0 = tree.cpu_s()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.tree.rss())
            self._stop.wait(self.period)

    def stop(self) -> tuple[float, float]:
        """(CPU seconds, peak RSS in MB) since the start."""
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self.peak = max(self.peak, self.tree.rss())
        return self.tree.cpu_s() - self.cpu0, self.peak / 1e6


def wait_idle(tree: peers.ProcTree, timeout: float = 30.0) -> None:
    """Until the server uses under 5 % of a CPU over 0.5 s: what a previous phase left is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = tree.cpu_s()
        time.sleep(0.5)
        if tree.cpu_s() - before < 0.025:
            return


# -- Tsung ----------------------------------------------------------------------------------------


@dataclass
class TsungStats:
    """tsung.log read back: per dump, samples (count, mean, max) and counters (count).

    A dump's time is its index × the dump interval (seconds since the first dump): the log's own
    "dump at" stamps are whole seconds, too coarse for 0.25 s intervals."""

    dumps: list[tuple[float, dict[str, tuple[float, ...]]]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> TsungStats:
        out = cls()
        current: dict[str, tuple[float, ...]] | None = None
        for line in text.splitlines():
            if line.startswith("# stats: dump at "):
                current = {}
                out.dumps.append((len(out.dumps) * DUMP_INTERVAL_MS / 1000, current))
            elif line.startswith("stats: ") and current is not None:
                parts = line.split()
                with contextlib.suppress(ValueError):
                    current[parts[1]] = tuple(float(x) for x in parts[2:])
        return out

    def series(self, name: str) -> list[tuple[float, float, float]]:
        """(dump time, count in the interval, mean in the interval) for a sample or a counter."""
        out = []
        for t, d in self.dumps:
            v = d.get(name)
            if v:
                out.append((t, v[0], v[1] if len(v) >= 7 else 0.0))
        return out

    def total(self, name: str) -> float:
        return sum(c for _, c, _ in self.series(name))

    def mean(self, name: str) -> float:
        s = self.series(name)
        n = sum(c for _, c, _ in s)
        return sum(c * m for _, c, m in s) / n if n else float("nan")

    def max(self, name: str) -> float:
        vals = [v[3] for _, d in self.dumps if (v := d.get(name)) and len(v) >= 7 and v[0] > 0]
        return max(vals, default=float("nan"))

    def errors(self) -> dict[str, float]:
        names = {n for _, d in self.dumps for n in d if n.startswith(("error", "match_")) or "timeout" in n}
        return {n: self.total(n) for n in sorted(names) if self.total(n)}


class Tsung:
    """One Tsung run (``tsung -n -f conf.xml -l dir start``) from a template, pinned to ``cpus``."""

    def __init__(self, template: str, params: dict[str, Any], endpoints: list[tuple[str, int]], workdir: Path,
                 cpus: list[int]) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f'    <server host="{h}" port="{p}" type="tcp"/>' for h, p in endpoints)
        xml = string.Template((TSUNG_DIR / template).read_text()).substitute(servers=servers, **params)
        self.conf = self.dir / template
        self.conf.write_text(xml)
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.tree: peers.ProcTree | None = None
        self.cpu0 = 0.0
        self.t0 = 0.0

    def start(self) -> None:
        exe = shutil.which("tsung")
        if exe is None:
            raise BenchError("tsung not found (apt-get install tsung)")
        env = dict(os.environ, ERL_FLAGS=f"-tsung_controller dumpstats_interval {DUMP_INTERVAL_MS}")
        cpus = self.cpus

        def prepare() -> None:
            loadgen.raise_nofile(peers.NOFILE)
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.t0 = time.monotonic()
        with open(self.dir / "tsung.out", "wb") as out:
            # -i: a controller name of our own (tsung_controller_<id>@host), or a second Tsung on the
            # machine (another run, the smoke test in a test suite) fails: "name … in use"
            self.proc = subprocess.Popen([exe, "-n", "-i", f"b{os.getpid()}", "-f", str(self.conf),
                                          "-l", str(self.dir / "log"), "start"],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         cwd=self.dir, preexec_fn=prepare)
        self.tree = peers.ProcTree([self.proc.pid])

    def log_file(self) -> Path | None:
        logs = sorted((self.dir / "log").glob("*/tsung.log"))
        return logs[-1] if logs else None

    def stats(self) -> TsungStats:
        path = self.log_file()
        return TsungStats.parse(path.read_text(errors="replace")) if path else TsungStats()

    def wait(self, timeout: float) -> tuple[TsungStats, float, float]:
        """(stats, Tsung's CPU seconds, wall seconds) once it has finished."""
        assert self.proc is not None and self.tree is not None
        cpu = 0.0
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            with contextlib.suppress(Exception):
                cpu = self.tree.cpu_s()
            if time.monotonic() > deadline:
                self.proc.kill()
                subprocess.run(["tsung", "stop"], capture_output=True, timeout=30)
                raise BenchError(f"Tsung did not finish within {timeout:.0f}s ({self.dir})")
            time.sleep(0.2)
        wall = time.monotonic() - self.t0
        if self.proc.returncode != 0 or self.log_file() is None:
            out = (self.dir / "tsung.out").read_text(errors="replace")[-2000:]
            raise BenchError(f"Tsung failed ({self.proc.returncode}): {out}")
        return self.stats(), cpu, wall


def tsung_login(server: peers.Server, args: argparse.Namespace, workdir: Path, gen_cpus: list[int]) -> dict[str, float]:
    n = args.login_users
    params = {"maxusers": n + 100, "users": n, "arrival_rate": args.login_arrival,
              "arrival_s": int(n / args.login_arrival) + 30, "domain": peers.DOMAIN, "hold": args.login_hold,
              "failure": FAILURE}
    assert server.tree is not None
    wait_idle(server.tree)
    tsung = Tsung("login.xml", params, server.endpoints, workdir, gen_cpus)
    sampler = Sampler(server.tree)
    tsung.start()
    st, tsung_cpu, wall = tsung.wait(n / args.login_arrival + args.login_hold + 300)
    cpu, peak = sampler.stop()
    logins = st.series("tr_login")
    ok = sum(c for _, c, _ in logins)
    users = st.series("users_count")
    first = min((t for t, c, _ in users if c > 0), default=0.0)
    last = max((t for t, c, _ in logins if c > 0), default=0.0)
    # a dump at t covers (t − interval, t]: the first arrival is within the interval before ``first``
    span = last - first + DUMP_INTERVAL_MS / 1000
    errors = max(n - ok, sum(st.errors().values()))  # an aborted login is both
    return {"login.rate": ok / span if ok and span > 0 else 0.0, "login.mean_ms": st.mean("tr_login"),
            "login.max_ms": st.max("tr_login"), "login.errors": errors, "login.cpu_s": cpu,
            "login.cpu_ms_per_login": cpu / max(ok, 1) * 1000, "login.peak_rss_mb": peak,
            "login.tsung_cpu_share": 100 * tsung_cpu / max(wall, 1e-9) / max(1, len(gen_cpus) or 1)}


def tsung_chat(server: peers.Server, args: argparse.Namespace, workdir: Path, gen_cpus: list[int],
               profile_dir: Path | None) -> dict[str, float]:
    n = args.chat_users
    arrival_s = n / args.login_arrival
    count = max(1, int(args.chat_duration * args.chat_rate))
    params = {"maxusers": n + 100, "users": n, "arrival_rate": args.login_arrival,
              "arrival_s": int(arrival_s) + 30, "domain": peers.DOMAIN,
              # everyone logged in before the first message: the arrivals plus the slowest login
              "wait": round(arrival_s + args.chat_wait, 3), "count": count,
              "interval": round(1 / args.chat_rate, 4), "size": args.chat_size, "drain": args.chat_drain,
              "failure": FAILURE}
    assert server.tree is not None
    wait_idle(server.tree)
    # the probe's clients log in first (users above Tsung's), and send during Tsung's chat window
    probe_ids = range(n + 1, n + 2 * args.probe_pairs + 1)
    probe = Workers(specs(server, probe_ids, 1, gen_cpus, 50)) if args.probe_pairs else None
    probe_stats: dict[str, Any] | None = None
    try:
        if probe is not None:
            res = probe.all("login", 120)
            if sum(r["failed"] for r in res):
                raise BenchError(f"{server.label}: probe logins failed: {res[0]['failures']}")
            probe.all("pair", 30, senders=args.probe_pairs)
        tsung = Tsung("chat.xml", params, server.endpoints, workdir, gen_cpus)
        sampler = Sampler(server.tree)
        tsung.start()
        # the chat window opens when Tsung's first stamped message arrives
        deadline = time.monotonic() + arrival_s + args.chat_wait + 120
        while not tsung.stats().total("xmpp_msg_latency"):
            if time.monotonic() > deadline or (tsung.proc is not None and tsung.proc.poll() is not None):
                break
            time.sleep(0.1)
        window = max(1.0, args.chat_duration - arrival_s - 1.0)  # every Tsung user sends meanwhile
        prof = Profiler(profile_dir, server.procs[0].pid) if profile_dir is not None else None
        if prof is not None:
            prof.start("chat")
        if probe is not None:
            time.sleep(min(arrival_s, 5.0))
            probe_stats = message_stats(probe.all("paced", window + 60, rate=args.probe_rate,
                                                  duration=min(window, args.chat_duration * 0.6), drain=5.0))
        if prof is not None:
            prof.stop()
        st, tsung_cpu, wall = tsung.wait(arrival_s + args.chat_wait + args.chat_duration + args.chat_drain + 300)
        cpu, peak = sampler.stop()
    finally:
        if probe is not None:
            probe.stop()
    lat = st.series("xmpp_msg_latency")
    delivered = sum(c for _, c, _ in lat)
    sent = st.total("request_noack") - st.total("tr_login")  # the chat messages and a close per logged-in user
    # steady rate: deliveries per second in the middle half of the sending window (from the first
    # delivery on; the random gaps make the last senders finish late, the arrivals start early)
    times = [t for t, c, _ in lat if c > 0]
    t0 = times[0] if times else 0.0
    lo, hi = t0 + args.chat_duration * 0.25, t0 + max(args.chat_duration * 0.75, args.chat_duration * 0.25 + 1)
    in_mid = sum(c for t, c, _ in lat if lo < t <= hi)
    out = {"chat.offered": n * args.chat_rate, "chat.rate": in_mid / (hi - lo),
           "chat.delivered_pct": 100 * delivered / sent if sent > 0 else 0.0,
           "chat.mean_ms": st.mean("xmpp_msg_latency"), "chat.max_ms": st.max("xmpp_msg_latency"),
           "chat.errors": max(sum(st.errors().values()), n - st.total("tr_login")),
           "chat.cpu_s": cpu, "chat.cpu_us_per_msg": cpu / max(delivered, 1) * 1e6, "chat.peak_rss_mb": peak,
           "chat.tsung_cpu_share": 100 * tsung_cpu / max(wall, 1e-9) / max(1, len(gen_cpus) or 1)}
    if probe_stats is not None and probe_stats["lat_ms"]:
        lat_ms = probe_stats["lat_ms"]
        out.update({"chat.p50_ms": pct(lat_ms, 50), "chat.p95_ms": pct(lat_ms, 95), "chat.p99_ms": pct(lat_ms, 99)})
        out["chat.errors"] += probe_stats["errors"] + probe_stats["sent"] - probe_stats["received"]
    return out


# -- our load generator ----------------------------------------------------------------------------


def specs(server: peers.Server, ids: range, workers: int, cpus: list[int], concurrency: int, sasl: str = "PLAIN"
          ) -> list[loadgen.WorkerSpec]:
    """Load generator processes for users ``ids``: worker w talks to endpoint w mod the server's nodes."""
    users = [(peers.user(i), peers.password(i)) for i in ids]
    workers = max(workers, len(server.endpoints))
    out = []
    for w in range(workers):
        host, port = server.endpoints[w % len(server.endpoints)]
        out.append(loadgen.WorkerSpec(host=host, port=port, direct_tls=False, domain=peers.DOMAIN, sasl=sasl,
                                      users=users[w::workers], login_concurrency=max(1, concurrency // workers),
                                      login_timeout=180.0, cpus=cpus, nofile=len(ids) // workers + 4096))
    return out


def warmup(server: peers.Server, n: int, gen_cpus: list[int]) -> None:
    if n <= 0:
        return
    w = Workers(specs(server, range(1, n + 1), 1, gen_cpus, 50))
    try:
        w.all("login", 180)
    finally:
        w.stop()


def login_times(res: list[dict[str, Any]]) -> list[float]:
    """Each login's seconds, from the load generator processes' results (packed doubles)."""
    out: list[float] = []
    for r in res:
        a: array[float] = array("d")
        a.frombytes(r["login_s"])
        out += a.tolist()
    return out


def scram_logins(server: peers.Server, args: argparse.Namespace, gen_cpus: list[int]) -> dict[str, float]:
    """Logins/s with SCRAM-SHA-1 over STARTTLS (the issue's login figure; the idle phase's is PLAIN).

    Each user logs in twice, 100 at a time from two load generator processes: the first pass is
    not measured (the clients cache their salted passwords, as real clients do, so the second
    pass measures the servers, not the load generator's PBKDF2; a server that keeps plain
    passwords derives SCRAM's salted password per login whatever the client caches)."""
    assert server.tree is not None
    wait_idle(server.tree, 30)
    w = Workers(specs(server, range(1, args.scram_logins + 1), 2, gen_cpus, 100, sasl="SCRAM-SHA-1"))
    try:
        w.all("login", 600)
        w.all("logout", 60)
        wait_idle(server.tree, 30)
        cpu0 = server.tree.cpu_s()
        res = w.all("login", 600)
        cpu = server.tree.cpu_s() - cpu0
    finally:
        w.stop()
    login_s = login_times(res)
    wall = max(r["t1"] for r in res) - min(r["t0"] for r in res)
    return {"scram.logins_per_s": len(login_s) / wall if wall > 0 else 0.0,
            "scram.login_p99_ms": pct(login_s, 99) * 1000 if login_s else 0.0,
            "scram.cpu_ms_per_login": cpu / max(len(login_s), 1) * 1000,
            "scram.errors": sum(r["failed"] for r in res)}


def idle_and_capacity(server: peers.Server, args: argparse.Namespace, gen_cpus: list[int],
                      profile_dir: Path | None = None) -> dict[str, float]:
    """Connections logged in and held at each size of ``--idle``; a closed loop at the first size."""
    assert server.tree is not None
    wait_idle(server.tree)
    out: dict[str, float] = {}
    sampler = Sampler(server.tree)
    rss0 = server.tree.rss()
    out["idle.rss_mb.0"] = rss0 / 1e6
    held: list[Workers] = []
    done = 0
    failed = 0
    login_s: list[float] = []
    login_wall = 0.0
    try:
        for k, size in enumerate(args.idle, start=1):
            if size <= done:
                continue
            w = Workers(specs(server, range(done + 1, size + 1), 2, gen_cpus, 100))
            held.append(w)
            res = w.all("login", 600)
            failed += sum(r["failed"] for r in res)
            login_wall += max(r["t1"] for r in res) - min(r["t0"] for r in res)
            login_s += login_times(res)
            done = size
            time.sleep(args.settle)
            wait_idle(server.tree, 10)
            rss = server.tree.rss()
            if k <= 2:
                out[f"idle.kb_per_conn_{k}"] = (rss - rss0) / size / 1000
            out[f"idle.rss_mb.{size}"] = rss / 1e6  # the curve docs/bench-rss.png draws
            if k == 1 and args.capacity_duration > 0:
                senders = sum(w.all("pair", 30, senders=max(1, size // 2 // len(w.conns))))
                prof = Profiler(profile_dir, server.procs[0].pid) if profile_dir is not None else None
                if prof is not None:
                    prof.start("capacity")
                cpu0 = server.tree.cpu_s()
                res = w.all("closed", args.capacity_duration + 60, window=args.window,
                            duration=args.capacity_duration, drain=5.0)
                cpu = server.tree.cpu_s() - cpu0
                if prof is not None:
                    prof.stop()
                st = message_stats(res)
                in_window = sum(r["received_in_window"] for r in res)
                if len(res) > 1 and min(r["received_in_window"] for r in res) < 0.1 * in_window / len(res):
                    # One process's clients starved while the other's flowed: queueing that is not
                    # fair (its first window waited the whole loop, as block-list reads once did).
                    print(f"  WARNING {server.label}: a load generator process received "
                          f"{min(r['received_in_window'] for r in res):,} of {in_window:,} messages in the "
                          "closed loop: unfair queueing in the server", flush=True)
                out["capacity.rate"] = in_window / (st["end"] - st["start"])
                out["capacity.p99_ms"] = pct(st["lat_ms"], 99)
                out["capacity.cpu_us_per_msg"] = cpu / max(st["received"], 1) * 1e6
                out["capacity.senders"] = senders
                out.update(sweep(server, w, args))
    finally:
        for w in held:
            w.stop()
    _, peak = sampler.stop()
    out.update({"idle.logins_per_s": len(login_s) / login_wall if login_wall > 0 else 0.0,
                "idle.login_p99_ms": pct(login_s, 99) * 1000, "idle.errors": failed, "idle.peak_rss_mb": peak})
    return out


def sweep(server: peers.Server, w: Workers, args: argparse.Namespace) -> dict[str, float]:
    """Offered load → delivered msg/s and latency, at each rate of ``--sweep``: where the knee is.

    The paired senders of the closed loop offer each total rate (split over the load generator
    processes) for ``--sweep-duration`` s; delivered msg/s counts until the last delivery, so a
    server that falls behind shows a rate under the offered one and its latency climbs.  The
    sweep stops after the first rate delivered at under half the offered one: past the knee, a
    higher rate only measures the backlog (which would also spill into the next rate)."""
    assert server.tree is not None
    out: dict[str, float] = {}
    for rate in args.sweep:
        wait_idle(server.tree, 30)  # what the closed loop or the last rate queued is done
        cpu0 = server.tree.cpu_s()
        res = w.all("paced", args.sweep_duration + 60, rate=rate / len(w.conns), duration=args.sweep_duration,
                    drain=5.0)
        cpu = server.tree.cpu_s() - cpu0
        st = message_stats(res)
        key = f"sweep.{rate:g}"
        out[f"{key}.offered"] = st["send_rate"]
        out[f"{key}.rate"] = st["rate"]
        out[f"{key}.delivered_pct"] = 100 * st["received"] / st["sent"] if st["sent"] else 0.0
        if st["lat_ms"]:
            out[f"{key}.p50_ms"] = pct(st["lat_ms"], 50)
            out[f"{key}.p99_ms"] = pct(st["lat_ms"], 99)
        out[f"{key}.cpu_us_per_msg"] = cpu / max(st["received"], 1) * 1e6
        if st["rate"] < 0.5 * st["send_rate"]:
            break
    return out


def sweep_lines(results: dict[str, dict[str, float]], labels: dict[str, str], rates: list[float]) -> list[str]:
    """The offered-load sweep per server: offered, delivered, p50, p99 at each rate."""
    out = []
    for kind, res in results.items():
        if kind.startswith("_") or not any(f"sweep.{r:g}.rate" in res for r in rates):
            continue
        out.append(f"  offered-load sweep, {labels.get(kind, kind)}: offered → delivered msg/s, p50 / p99 ms")
        for r in rates:
            key = f"sweep.{r:g}"
            if f"{key}.rate" in res:
                out.append(f"    {res[f'{key}.offered']:>9,.0f} → {res[f'{key}.rate']:>9,.0f}   "
                           f"{fmt(res.get(f'{key}.p50_ms'))} / {fmt(res.get(f'{key}.p99_ms'))}")
    return out


# -- cross-region (Meridian only) --------------------------------------------------------------------


def cross_region(args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, str(HERE / "gdistrib_relay.py"), "--link-delay-ms", str(args.link_delay_ms),
           "--messages", str(args.cross_messages), "--direct-messages", "0", "--paced", str(args.cross_paced),
           "--pairs", str(args.cross_pairs)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    text = res.stdout
    if res.returncode == 2:
        raise BenchError(f"gdistrib_relay.py failed:\n{text[-2000:]}\n{res.stderr[-2000:]}")

    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        if not m:
            raise BenchError(f"gdistrib_relay.py: no {pattern!r} in its output:\n{text[-2000:]}")
        return float(m.group(1).replace(",", ""))

    delay = args.link_delay_ms
    return {"cross.relayed_rate": num(r"relayed eu→us: .*?\s([\d,.]+) msg/s"),
            "cross.added_p50_ms": num(r"relay adds \(relayed − same node\), p50[^\n]*\s(-?[\d.]+) ms\n") - delay,
            "cross.added_p99_ms": num(r"\n\s+p99\s+(-?[\d.]+) ms") - delay}


# -- the run --------------------------------------------------------------------------------------


def session(kind: str, server: peers.Server, args: argparse.Namespace, rnd: int, base: Path, gen_cpus: list[int],
            profile_dir: Path | None) -> dict[str, float]:
    figures: dict[str, float] = {}
    t = time.monotonic()
    server.start()
    try:
        warmup(server, args.warmup, gen_cpus)
        if args.idle and rnd < args.idle_rounds:
            figures.update(idle_and_capacity(server, args, gen_cpus, profile_dir))
        if args.scram_logins:  # after the idle phase: its logins would move the idle RSS baseline
            figures.update(scram_logins(server, args, gen_cpus))
        if args.login_users:
            figures.update(tsung_login(server, args, base / f"tsung-login-{kind}-{rnd}", gen_cpus))
        if args.chat_users:
            figures.update(tsung_chat(server, args, base / f"tsung-chat-{kind}-{rnd}", gen_cpus, profile_dir))
        assert server.procs and all(p.poll() is None for p in server.procs), "a server process died"
    finally:
        warnings = server.warnings()
        server.stop()
    print(f"  round {rnd + 1} {server.label}: {time.monotonic() - t:.0f} s; "
          + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items() if k in ("login.rate", "chat.rate", "chat.p99_ms",
                                                                           "idle.kb_per_conn_1", "capacity.rate")),
          flush=True)
    if warnings:
        print(f"    {server.label} logged {len(warnings)} error lines, e.g. {warnings[-1][:200]}")
    return figures


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in runs for k in r}
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if k in r and r[k] == r[k]]
        if vals:
            out[k] = statistics.median(vals)
    return out


def fmt(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(results: dict[str, dict[str, float]], labels: dict[str, str], args: argparse.Namespace) -> list[str]:
    kinds = [k for k in peers.SERVER_KINDS if k in results]
    pairs = [(m, p) for m in ("meridian", "meridian-cluster", "meridian-cores")
             for p in ("ejabberd", "ejabberd-scram", "prosody")]
    pairs += [("meridian-mam", "meridian"), ("meridian-mam", "ejabberd-modules")]
    ratios = [(m, p) for m, p in pairs if m in results and p in results]
    short = {"meridian": "M1", "meridian-cluster": "M2", "meridian-cores": "Mcores", "meridian-mam": "M1+MAM"}
    head = ["figure (median of rounds)", *[labels[k] for k in kinds], *[f"{short[m]}/{p}" for m, p in ratios]]
    rows = []
    idle_names = {"idle.kb_per_conn_1": f"  RSS per connection, {args.idle[0]:,} held" if args.idle else "",
                  "idle.kb_per_conn_2": f"  RSS per connection, {args.idle[1]:,} held" if len(args.idle) > 1 else ""}
    for key, (label, unit, _) in FIGURES.items():
        if not any(key in results[k] for k in kinds):
            continue
        label = idle_names.get(key) or label
        cells = [fmt(results[k].get(key)) for k in kinds]
        for m, p in ratios:
            a, b = results[m].get(key), results[p].get(key)
            cells.append(f"{a / b:.2f}" if a is not None and b and a == a and b == b else "-")
        rows.append([f"{label}{f' ({unit})' if unit else ''}", *cells])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["  " + "  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(head))]
    out.append("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  " + "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    return out


PEERS = ("ejabberd", "prosody")


def regressions(current: dict[str, dict[str, float]], recorded: dict[str, Any], noise: float) -> list[str]:
    """Meridian's figures worse than recorded by more than ``noise``, judged by its ratios to the peers.

    Absolute figures move with the machine (a rerun on another 2-vCPU machine found ejabberd and
    Prosody 2–3× slower too), so a figure is a regression only when Meridian's ratio to *every*
    peer that ran in this run and was recorded is worse than the recorded ratio by more than
    ``noise``.  Equivalently: worse than the recorded Meridian figure scaled by how much that peer
    moved, with a 1 ms floor for latencies.  Errors stay absolute (any new error counts).  A figure
    no peer measured (cross-region), or a run without peers, is compared absolutely, and the
    output says so."""
    out: list[str] = []
    old_all = recorded.get("medians", {})
    same_load = recorded.get("load") == current.get("_load")
    peers_here = [p for p in PEERS if current.get(p) and old_all.get(p)]
    absolute_used = False
    for kind in ("meridian", "meridian-cluster"):
        new, old = current.get(kind, {}), old_all.get(kind, {})
        for key, (label, unit, higher) in FIGURES.items():
            if key not in new or key not in old or key.endswith("tsung_cpu_share") or key == "chat.offered":
                continue
            a, b = new[key], old[key]
            if key.endswith("errors"):
                if a > b:
                    out.append(f"REGRESSION: {kind} {key}: {a:,.0f} errors, recorded {b:,.0f}")
                continue
            floor = 0.0 if higher or not key.endswith("_ms") else 1.0
            # the recorded figure scaled by each peer's move: (peer now / peer recorded)
            scaled = [(p, b * current[p][key] / old_all[p][key]) for p in peers_here
                      if current[p].get(key) and old_all[p].get(key)]
            if not scaled:
                absolute_used = True
                scaled = [("", b)]
            if all(_worse(a, exp, noise, higher, floor) for _, exp in scaled):
                if scaled[0][0]:
                    detail = "; ".join(f"ratio to {p} {a / current[p][key]:.2f}, recorded {b / old_all[p][key]:.2f}"
                                       for p, _ in scaled)
                    change = min((a / exp - 1) * 100 for _, exp in scaled) if higher else \
                        max((a / exp - 1) * 100 for _, exp in scaled)
                    out.append(f"REGRESSION: {kind} {label.strip()}: {fmt(a)} {unit}, recorded {fmt(b)} {unit}; "
                               f"{detail} ({change:+.0f} % against the peers, noise margin {noise * 100:.0f} %)")
                else:
                    out.append(f"REGRESSION: {kind} {label.strip()}: {fmt(a)} {unit}, recorded {fmt(b)} {unit} "
                               f"({(a / b - 1) * 100:+.0f} %, absolute, noise margin {noise * 100:.0f} %)")
    if absolute_used:
        out.append("note: " + ("no peer server ran (or none was recorded): " if not peers_here else
                               "figures no peer measured: ")
                   + "compared with results.json's absolute figures, which hold only on the machine that "
                     "recorded them")
    if any(line.startswith("REGRESSION") for line in out) and not same_load:
        out.append("note: results.json was recorded with other scenario sizes; compare like with like "
                   f"(recorded {recorded.get('load')})")
    return out


def _worse(a: float, expected: float, noise: float, higher: bool, floor: float) -> bool:
    """``a`` worse than ``expected`` by more than the relative ``noise`` (plus ``floor`` when lower is better)."""
    return a < expected * (1 - noise) if higher else a > expected * (1 + noise) + floor


def goals(res: dict[str, dict[str, float]]) -> list[str]:
    m, e, p = res.get("meridian"), res.get("ejabberd"), res.get("prosody")
    out: list[str] = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        out.append(f"  goal {'met   ' if ok else 'MISSED' if ok is not None else '  ?   '} {name}: {detail}")

    modules_goals(res, check)
    if not m:
        return out

    def ratio(a: dict[str, float] | None, key: str) -> float | None:
        if a is None or key not in m or key not in a or not a[key]:
            return None
        return m[key] / a[key]

    for key, what in (("chat.rate", "messages/s (Tsung, delivered)"), ("capacity.rate", "messages/s (closed loop)"),
                      ("login.rate", "logins/s (Tsung)"), ("idle.logins_per_s", "logins/s (loadgen, PLAIN)"),
                      ("scram.logins_per_s", "logins/s (loadgen, SCRAM-SHA-1)")):
        r = ratio(e, key)
        if r is not None:
            check(f"{what} ≥ ejabberd's", r >= 1, f"Meridian / ejabberd = {r:.2f}")
        r = ratio(p, key)
        if r is not None:
            check(f"{what} ≥ 2× Prosody's", r >= 2, f"Meridian / Prosody = {r:.2f}")
    es = res.get("ejabberd-scram")  # ejabberd keeping SCRAM keys, as Meridian does
    for key, what in (("idle.logins_per_s", "logins/s (loadgen, PLAIN)"),
                      ("scram.logins_per_s", "logins/s (loadgen, SCRAM-SHA-1)")):
        r = ratio(es, key)
        if r is not None:
            check(f"{what} ≥ ejabberd's with a SCRAM store", r >= 1, f"Meridian / ejabberd (SCRAM store) = {r:.2f}")
    r = ratio(e, "chat.p99_ms")
    if r is not None and e is not None:
        check("p99 latency ≤ ejabberd's at the same load", r <= 1,
              f"{m['chat.p99_ms']:.2f} vs {e['chat.p99_ms']:.2f} ms (ratio {r:.2f})")
    for key in ("idle.kb_per_conn_1", "idle.kb_per_conn_2"):
        r = ratio(e, key)
        if r is not None and e is not None:
            check(f"memory per idle connection ≤ ejabberd's ({key[-1]})", r <= 1,
                  f"{m[key]:.1f} vs {e[key]:.1f} KB (ratio {r:.2f})")
    return out


MODULE_FIGURES = (("chat.rate", "messages/s (Tsung, delivered)"), ("capacity.rate", "messages/s (closed loop)"),
                  ("login.rate", "logins/s (Tsung)"), ("idle.logins_per_s", "logins/s (loadgen, PLAIN)"),
                  ("scram.logins_per_s", "logins/s (loadgen, SCRAM-SHA-1)"))


def modules_goals(res: dict[str, dict[str, float]], check: Callable[[str, bool | None, str], None]) -> None:
    """With every module on, MAM too (meridian-mam): ≥ 0.85 of Meridian's own figures without MAM,
    and ≥ ejabberd's with its archive, stream management, carbons and CSI (ejabberd-modules); for
    the p99, at most 1/0.85 of its own and ≤ ejabberd's."""
    mm, m, em = res.get("meridian-mam"), res.get("meridian"), res.get("ejabberd-modules")
    if mm is None:
        return
    for other, floor, name in ((m, 0.85, "0.85× Meridian's without MAM"), (em, 1.0, "ejabberd's with its modules")):
        if other is None:
            continue
        for key, what in MODULE_FIGURES:
            if mm.get(key) and other.get(key):
                r = mm[key] / other[key]
                check(f"{what} with MAM ≥ {name}", r >= floor, f"ratio {r:.2f}")
        if mm.get("chat.p99_ms") and other.get("chat.p99_ms"):
            r = mm["chat.p99_ms"] / other["chat.p99_ms"]
            check(f"p99 latency with MAM ≤ {'1/' if floor < 1 else ''}{name}", r <= 1 / floor,
                  f"{mm['chat.p99_ms']:.2f} vs {other['chat.p99_ms']:.2f} ms (ratio {r:.2f})")


def run(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, gen_cpus = (cpus[:1], cpus[1:]) if args.pin and len(cpus) >= 2 else ([], [])
    loadgen.raise_nofile(peers.NOFILE)
    state = Path(args.state_dir).resolve() if args.state_dir else Path(tempfile.mkdtemp(prefix="meridian-compare-"))
    state.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="meridian-compare-run-"))
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    print(f"Meridian side by side: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
          f"load average {load_average()}")
    print(f"  servers {', '.join(args.servers)}; {args.rounds} round(s); "
          + (f"servers on CPU {server_cpus}, Tsung and loadgen on CPU {gen_cpus}" if server_cpus else "no pinning")
          + f"; state in {state}", flush=True)
    need = max([args.login_users, args.chat_users + 2 * args.probe_pairs, args.warmup, args.scram_logins,
                *args.idle, 0])
    servers: dict[str, peers.Server] = {}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in args.servers}
    busy0, wall0 = machine_busy(), time.monotonic()
    failed: list[str] = []
    cross: list[dict[str, float]] = []
    try:
        for kind in args.servers:
            servers[kind] = peers.make_server(kind, state, server_cpus)
            took = servers[kind].prepare(need)
            print(f"  {servers[kind].label}: {need:,} users ready" + (f" (registered in {took:.0f} s)" if took else ""),
                  flush=True)
        for rnd in range(args.rounds):
            order = args.servers[rnd % len(args.servers):] + args.servers[:rnd % len(args.servers)]
            for kind in order:
                prof = profile_dir if (kind == "meridian" and rnd == 0) else None
                try:
                    runs[kind].append(session(kind, servers[kind], args, rnd, base, gen_cpus, prof))
                except (BenchError, peers.BenchError, AssertionError) as e:  # the others go on
                    failed.append(f"round {rnd + 1} {servers[kind].label}: {e}")
                    print(f"  round {rnd + 1} {servers[kind].label}: FAILED: {str(e)[:2000]}", flush=True)
            if args.cross_region and rnd < args.cross_rounds:
                t = time.monotonic()
                cross.append(cross_region(args))
                print(f"  round {rnd + 1} cross-region: {time.monotonic() - t:.0f} s; "
                      + ", ".join(f"{k} {v:,.1f}" for k, v in cross[-1].items()), flush=True)
    except (BenchError, peers.BenchError, AssertionError) as e:
        print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
        return 2
    finally:
        for s in servers.values():
            with contextlib.suppress(Exception):
                s.stop()
            with contextlib.suppress(Exception):
                s.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
            if not args.state_dir:
                shutil.rmtree(state, ignore_errors=True)
    wall = time.monotonic() - wall0
    busy1 = machine_busy()

    results = {k: medians(v) for k, v in runs.items() if v}
    if cross and "meridian" in results:
        results["meridian"].update(medians(cross))
    labels = {k: s.label for k, s in servers.items()}
    if not results:
        print("BENCHMARK FAILED: no server completed a round", file=sys.stderr)
        return 2
    print()
    for line in table(results, labels, args):
        print(line)
    if args.sweep:
        print()
        for line in sweep_lines(results, labels, args.sweep):
            print(line)
    print()
    for line in goals(results):
        print(line)
    if busy0 is not None and busy1 is not None:
        n = os.cpu_count() or 1
        print(f"  whole machine busy {busy1 - busy0:.0f} of {wall * n:.0f} CPU-s during the run ({wall:.0f} s); "
              f"load average {load_average()}")
    if profile_dir:
        for path in sorted(profile_dir.glob("*.txt")):
            phase = "the closed loop" if path.stem == "capacity" else "the Tsung chat (probe window)"
            print(f"\n  py-spy of Meridian (one node) during {phase} ({path}):")
            for line in summarize_profile(path):
                print(line)
    load = {"login_users": args.login_users, "login_arrival": args.login_arrival, "chat_users": args.chat_users,
            "chat_rate": args.chat_rate, "idle": args.idle, "probe_rate": args.probe_rate,
            "link_delay_ms": args.link_delay_ms}
    if args.sweep:
        load["sweep"] = args.sweep
    results["_load"] = load
    machine = f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
    recorded_text = Path(args.results).read_text() if Path(args.results).exists() else ""
    recorded = json.loads(recorded_text) if recorded_text.strip() else {}  # --results /dev/null: none
    found = regressions(results, recorded, args.noise) if recorded else []
    for line in found:
        print(line)
    if args.save:
        doc = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine, "labels": labels,
               "rounds": args.rounds, "load": load,
               "medians": {k: {f: round(v, 3) for f, v in sorted(r.items())} for k, r in results.items()
                           if not k.startswith("_")},
               "runs": {k: v for k, v in runs.items()}, "cross_region_runs": cross}
        Path(args.results).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
        print(f"  saved to {args.results}")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": results, "runs": runs, "cross": cross, "labels": labels,
                                               "load": load, "machine": machine}, indent=1))
    if args.plot:
        import plots

        for path in plots.draw({"medians": results, "labels": labels, "machine": machine}, Path(args.plot)):
            print(f"  wrote {path}")
    for f in failed:
        print(f"BENCHMARK FAILED: {f[:300]}", file=sys.stderr)
    if failed:
        return 2
    return 1 if any(line.startswith("REGRESSION") for line in found) else 0


def sizes(text: str) -> list[int]:
    """Idle sizes: the first two give the table's RSS per connection, all of them the RSS curve."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()] if text.strip() else []
    except ValueError:
        vals = [0]
    if any(v < 2 for v in vals) or vals != sorted(set(vals)) or len(vals) > 8:
        raise argparse.ArgumentTypeError("up to eight increasing sizes ≥ 2, e.g. 1000,10000")
    return vals


def rates(text: str) -> list[float]:
    """Offered rates of the sweep (messages/s in all), increasing."""
    try:
        vals = [float(x) for x in text.split(",") if x.strip()] if text.strip() else []
    except ValueError:
        vals = [0.0]
    if any(not v > 0 for v in vals) or vals != sorted(set(vals)) or len(vals) > 20:
        raise argparse.ArgumentTypeError("up to twenty increasing rates > 0 (msg/s), e.g. 1000,5000,20000")
    return vals


def kinds(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in vals if v not in peers.SERVER_KINDS]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"servers among {', '.join(peers.SERVER_KINDS)}")
    return vals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--servers", type=kinds, default=list(peers.DEFAULT_KINDS),
                    help="comma-separated, among " + ", ".join(peers.SERVER_KINDS) + " ("
                    + ",".join(peers.DEFAULT_KINDS) + ")")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them (3)")
    ap.add_argument("--warmup", type=int, default=200, help="logins after each start, not measured (200)")
    ap.add_argument("--login-users", type=int, default=2000, help="Tsung login storm: users (2000; 0 skips)")
    ap.add_argument("--login-arrival", type=float, default=1000.0, help="Tsung arrivals per second (1000)")
    ap.add_argument("--login-hold", type=float, default=5.0,
                    help="seconds each storm user stays connected (5: longer than the arrivals, or Tsung hands a "
                         "user whose session is still closing to a new arrival, and the server kicks one: conflict)")
    ap.add_argument("--chat-users", type=int, default=1000, help="Tsung chat: online users (1000; 0 skips)")
    ap.add_argument("--chat-rate", type=float, default=4.0, help="messages/s each chat user sends (4)")
    ap.add_argument("--chat-duration", type=float, default=20.0, help="seconds each chat user sends (20)")
    ap.add_argument("--chat-wait", type=float, default=5.0, help="seconds after the arrivals before sending (5)")
    ap.add_argument("--chat-drain", type=float, default=5.0, help="seconds to receive after the last send (5)")
    ap.add_argument("--chat-size", type=int, default=64, help="message body bytes (64)")
    ap.add_argument("--probe-pairs", type=int, default=20, help="loadgen probe senders during the chat (20; 0: none)")
    ap.add_argument("--probe-rate", type=float, default=200.0, help="probe messages/s in all (200)")
    ap.add_argument("--scram-logins", type=int, default=2000,
                    help="SCRAM-SHA-1 logins: users, each logging in twice, the second measured (2000; 0 skips)")
    ap.add_argument("--idle", type=sizes, default=[1000, 10000], help="idle connections held (1000,10000; '' skips)")
    ap.add_argument("--idle-rounds", type=int, default=1, help="rounds that run the idle scenario (1)")
    ap.add_argument("--capacity-duration", type=float, default=5.0, help="closed-loop seconds at the first idle size")
    ap.add_argument("--sweep", type=rates, default=[],
                    help="offered-load sweep at the first idle size after the closed loop: total msg/s rates, "
                         "e.g. 1000,5000,10000,20000,40000 ('': none)")
    ap.add_argument("--sweep-duration", type=float, default=3.0, help="seconds offered at each sweep rate (3)")
    ap.add_argument("--window", type=int, default=4, help="closed loop: messages in flight per sender (4)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds before reading RSS after logins (2)")
    ap.add_argument("--cross-region", action=argparse.BooleanOptionalAction, default=True,
                    help="scenario 4 with gdistrib_relay.py (on)")
    ap.add_argument("--cross-rounds", type=int, default=1, help="rounds that run the cross-region scenario (1)")
    ap.add_argument("--link-delay-ms", type=float, default=20.0, help="cross-region: one-way link delay (20)")
    ap.add_argument("--cross-messages", type=int, default=30000, help="cross-region: relayed messages (30000)")
    ap.add_argument("--cross-paced", type=int, default=3000, help="cross-region: paced messages for latency (3000)")
    ap.add_argument("--cross-pairs", type=int, default=100, help="cross-region: sender/recipient pairs (100)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="servers on CPU 0, Tsung and loadgen on the others (on)")
    ap.add_argument("--state-dir", help="keep servers' data (registered users) here between runs")
    ap.add_argument("--results", default=str(RESULTS),
                    help="recorded results to compare with (benchmarks/results.json)")
    ap.add_argument("--noise", type=float, default=0.25, help="relative margin before a figure is a regression (0.25)")
    ap.add_argument("--save", action="store_true", help="write this run's medians to --results")
    ap.add_argument("--json", help="also write this run's figures to this file")
    ap.add_argument("--plot", metavar="DIR",
                    help="draw the knee, logins/s and RSS pictures into DIR (benchmarks/plots.py)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy Meridian (one node) in round 1: closed loop and chat")
    ap.add_argument("--keep", action="store_true", help="keep Tsung's logs and configs (printed directory)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.login_arrival <= 0 or args.chat_rate <= 0:
        ap.error("--rounds ≥ 1, --login-arrival and --chat-rate > 0")
    if (args.login_users or args.chat_users) and shutil.which("tsung") is None:
        ap.error("tsung is not installed (apt-get install tsung, or scripts/install-test-deps.sh)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
