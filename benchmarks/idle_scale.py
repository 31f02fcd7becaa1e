"""100,000 idle authenticated connections on one node process: RSS, login rate, and one message's latency.

One ``meridian node`` (``benchmarks/peers.py``'s kind "meridian": SQLite accounts, no archive,
every other module on) is started with its connection limits and its descriptor limit raised for
the largest size; raw clients (``benchmarks/loadgen.py``: STARTTLS, SASL PLAIN, bind, initial
presence, each holding its TLS session) log in and stay, in steps up to each checkpoint of
``--sizes`` (10,000, 25,000, 50,000, 100,000 by default).  At each checkpoint, once the node is
idle again:

- **RSS**: the node's resident memory (psutil) after − before the first idle login, per connection
  held (the probe's clients are logged in before "before": they are not counted);
- **logins**: logins/s while ramping from the previous checkpoint (the logins of that step over
  the time from the first start to the last completion, ``--concurrency`` in progress at a time),
  login time p99, and the node's CPU per login (TLS handshake, PLAIN's PBKDF2 over the stored SCRAM
  salt — accounts keep only SCRAM keys — bind, presence) beside the load generators' (on the same
  CPUs unless ``--pin``: what they take, the node cannot have);
- **idle CPU**: the node's CPU over ``--hold`` s with nothing sent (timers, keepalives, collector);
- **one message's latency**: ``--probe-pairs`` sender → receiver pairs of extra users, logged in
  since the start, send ``--probe-rate`` messages/s in all for ``--probe-duration`` s while the
  connections are held (open loop, loadgen's ``paced``: the body is the send time, CLOCK_MONOTONIC,
  read by the receiving socket): p50/p99, and messages lost;
- what else the connections cost the machine: the load generators' RSS per connection (over
  their interpreters' own), and the kernel's, which no process's RSS shows: its slab caches
  (``/proc/meminfo``, socket structures for both ends) and its TCP buffers (``/proc/net/sockstat``),
  both machine-wide.

Loopback has ~28,000 ephemeral ports per (source, destination) address pair: the clients bind to
source addresses 127.0.0.2, 127.0.0.3, … (all of 127.0.0.0/8 is loopback on Linux), a new one per
``--per-address`` clients (loadgen's ``WorkerSpec.local_addrs``).  5,000 by default, not 28,000:
``bind()`` to port 0 searches the range for a free port, and that search is the load generators'
CPU — 19,500 clients on one address cost them 2.8 ms per login instead of 0.9 (measured), CPU the
node then lacks on a 2-CPU machine (339 logins/s instead of 515).  RLIMIT_NOFILE is raised in the
node and in each load generator process: past the hard limit only with CAP_SYS_RESOURCE (up to
``fs.nr_open``), which root in a container may lack.  The node needs a descriptor per connection:
when the largest size cannot fit, the run stops before starting anything and names the largest
size that does (exit status 2); the load generators take as many processes as their share needs.

Accounts ``user1..userN`` and ``probe1..probe2P`` (one password: one SCRAM derivation for all; the
node's memory of verified PLAIN logins is per account, so every first login still pays a PBKDF2)
go into the node's SQLite file in ``--state-dir``, kept between runs: a rerun registers only
those missing.

    .venv/bin/python benchmarks/idle_scale.py                          # 10k, 25k, 50k, 100k held
    .venv/bin/python benchmarks/idle_scale.py --sizes 1000,2000 --hold 2 --probe-duration 3
    .venv/bin/python benchmarks/idle_scale.py --json /tmp/idle.json

Exit status 0 when every login succeeded, every connection stayed and every probe message
arrived; 2 when the run failed (descriptors too few, the node did not start or died, logins
failed, connections or messages were lost).  There are no goals to miss: the figures are printed and, with ``--json``,
written for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:  # run as a script from anywhere: the modules beside it, and the node's code
        sys.path.insert(0, _p)

import loadgen  # noqa: E402
import peers  # noqa: E402
from common import BenchmarkError, register_accounts, split_cpus  # noqa: E402
from compare import login_times, wait_idle  # noqa: E402
from machine import load_average, machine_busy  # noqa: E402
from node_load import Workers, message_stats, pct  # noqa: E402

from tests.helpers.node import toml_dump  # noqa: E402

PASSWORD = "idle-scale-password"
DEFAULT_STATE = Path("/var/tmp/meridian-idle-state")
NOFILE_SLACK = 256  # descriptors beyond the clients: listeners, database, logs, pipes (a node uses ~15)


def probe_user(i: int) -> str:
    return f"probe{i}"


# -- the node ---------------------------------------------------------------------------------------


class IdleNode(peers.Meridian):
    """peers.py's one Meridian node, raised for ``connections`` clients: its connection limits (in all
    and per source address) in the config it wrote, and RLIMIT_NOFILE in the child (peers.py raises
    it to 20,000, enough for compare.py's 10,000)."""

    def __init__(self, state: Path, cpus: list[int], connections: int, log_level: str = "WARNING") -> None:
        super().__init__(state, cpus, nodes=1, log_level=log_level)
        self.nofile = connections + NOFILE_SLACK
        conf = tomllib.loads(self.configs[0].read_text())
        conf["limits"].update(max_connections=connections + 1000, max_connections_per_ip=connections + 1000)
        self.configs[0].write_text(toml_dump(conf))

    def _preexec(self, cpus: list[int] | None = None) -> Any:
        cpus = self.cpus if cpus is None else cpus
        nofile = self.nofile

        def prepare() -> None:
            loadgen.raise_nofile(nofile)
            if cpus:
                os.sched_setaffinity(0, cpus)
        return prepare

    def prepare_accounts(self, users: int, probes: int) -> tuple[int, float]:
        """``user1..user{users}`` and ``probe1..probe{probes}`` in the node's database, those a
        previous run left skipped (a marker counts them); (accounts made, seconds)."""
        t = time.perf_counter()
        marker = self.dir / "idle-accounts.json"
        have = json.loads(marker.read_text()) if marker.exists() else {}
        if have.get("password") != PASSWORD:
            have = {}
        names = [peers.user(i) for i in range(int(have.get("users", 0)) + 1, users + 1)]
        names += [probe_user(i) for i in range(int(have.get("probes", 0)) + 1, probes + 1)]
        if not names:
            return 0, 0.0
        asyncio.run(register_accounts(f"sqlite:///{self.db}", peers.DOMAIN, names, PASSWORD))
        marker.write_text(json.dumps({"password": PASSWORD, "users": max(users, int(have.get("users", 0))),
                                      "probes": max(probes, int(have.get("probes", 0)))}))
        return len(names), time.perf_counter() - t


# -- measuring ----------------------------------------------------------------------------------------


def source_addresses(clients: int, per_address: int) -> list[str]:
    """127.0.0.2, 127.0.0.3, …: one per ``per_address`` clients (each has ~28,000 ephemeral ports)."""
    n = max(1, math.ceil(clients / per_address))
    if n > 250:
        raise BenchmarkError(f"{clients:,} clients at {per_address:,} per source address need more than 250 addresses")
    return [f"127.0.0.{2 + k}" for k in range(n)]


def kernel_tcp_mb() -> float:
    """Memory of the kernel's TCP buffers (all sockets of the machine), MB: no process's RSS has it."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return float("nan")


def kernel_slab_mb() -> float:
    """The kernel's slab caches (socket structures among them, both ends of every connection), MB:
    machine-wide, so other work moves it a little."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Slab:"):
                return int(line.split()[1]) / 1000
    return float("nan")


def pids_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += int(psutil.Process(pid).memory_info().rss)
    return total


def clients_by_address(pid: int, port: int) -> dict[str, int]:
    """The node's established c2s connections by the client's address: the spread over source addresses."""
    out: dict[str, int] = {}
    with contextlib.suppress(psutil.Error):
        for c in psutil.Process(pid).net_connections("tcp4"):
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port and c.raddr:
                out[c.raddr.ip] = out.get(c.raddr.ip, 0) + 1
    return dict(sorted(out.items()))


def nofile_ceiling(want: int) -> int:
    """RLIMIT_NOFILE of this process raised towards ``want`` (the node and the load generators
    inherit its hard limit): what a process can get.  Raising the hard limit needs
    CAP_SYS_RESOURCE, which root may not have (a container): then the hard limit is the ceiling."""
    return loadgen.raise_nofile(want)


def specs(node: IdleNode, users: list[tuple[str, str]], workers: int, concurrency: int, addrs: list[str],
          cpus: list[int], timeout: float, nofile: int) -> list[loadgen.WorkerSpec]:
    """Load generator processes for ``users``, each binding its clients to ``addrs`` in turn; more
    processes than ``workers`` when one could not hold its share under ``nofile`` descriptors."""
    host, port = node.endpoints[0]
    workers = max(1, min(max(workers, math.ceil(len(users) / max(nofile - NOFILE_SLACK, 1))), len(users)))
    return [loadgen.WorkerSpec(host=host, port=port, direct_tls=False, domain=peers.DOMAIN, sasl="PLAIN",
                               users=users[w::workers], login_concurrency=max(1, concurrency // workers),
                               login_timeout=timeout, cpus=cpus, nofile=len(users) // workers + NOFILE_SLACK,
                               local_addrs=addrs[w % len(addrs):] + addrs[:w % len(addrs)])
            for w in range(workers)]


def check_alive(node: IdleNode) -> None:
    p = node.procs[0] if node.procs else None
    if p is None or p.poll() is not None:
        raise BenchmarkError(f"the node died (exit status {p.returncode if p else '?'}):\n{node.log()}")


def held_open(held: list[Workers]) -> tuple[int, int]:
    """(logged in, still open) over every idle load generator process."""
    online = opened = 0
    for w in held:
        for r in w.all("held", 60):
            online += r["online"]
            opened += r["open"]
    return online, opened


# -- the run ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    sizes = sorted(set(args.sizes))
    n = sizes[-1]
    probes = 2 * args.probe_pairs
    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    node_cpus, gen_cpus = split_cpus(args.pin)
    started = datetime.datetime.now(datetime.UTC)
    print(f"idle_scale: sizes {', '.join(f'{s:,}' for s in sizes)}; {args.workers} load generator processes per step, "
          f"{args.concurrency} logins in progress; probe {args.probe_pairs} pairs at {args.probe_rate:g} msg/s for "
          f"{args.probe_duration:g} s; {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {load_average()}; {started:%Y-%m-%d %H:%M} UTC", flush=True)
    need = n + probes + NOFILE_SLACK
    nofile = nofile_ceiling(need)
    if nofile < need:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        fits = max(0, nofile - probes - NOFILE_SLACK)
        msg = (f"holding {n:,} connections needs {need:,} descriptors in the node process; this machine allows "
               f"{nofile:,} (hard limit {hard:,}; raising it needs CAP_SYS_RESOURCE, and fs.nr_open "
               f"{_read_int('/proc/sys/fs/nr_open'):,} above it): the largest size that fits is {fits:,}")
        print(f"BENCHMARK FAILED: {msg}")
        if args.json:
            Path(args.json).write_text(json.dumps({"sizes": sizes, "nofile": nofile, "largest_size": fits,
                                                   "checkpoints": [], "failed": [msg]}, indent=2) + "\n")
        return 2
    addrs = source_addresses(n + probes, args.per_address)
    node = IdleNode(state, node_cpus, n + probes)
    made, reg_s = node.prepare_accounts(n, probes)
    if made:
        print(f"  registered {made:,} accounts in {reg_s:.1f} s (kept in {state})", flush=True)
    log = node.dir / "n1.log"
    log.unlink(missing_ok=True)
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    out: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "sizes": sizes,
                           "workers": args.workers, "concurrency": args.concurrency,
                           "probe_pairs": args.probe_pairs, "probe_rate": args.probe_rate,
                           "probe_duration": args.probe_duration, "hold": args.hold,
                           "source_addresses": addrs, "cpus": os.cpu_count(),
                           "memory_gb": psutil.virtual_memory().total / 2**30,
                           "nr_open": _read_int("/proc/sys/fs/nr_open"), "checkpoints": rows, "failed": failed}
    held: list[Workers] = []
    gen_base: list[int] = []  # each held Workers' processes' RSS before their logins
    probe: Workers | None = None
    busy0, wall0 = machine_busy(), time.monotonic()
    try:
        node.start()
        tree = node.tree
        assert tree is not None
        out["node_nofile"] = psutil.Process(node.procs[0].pid).rlimit(psutil.RLIMIT_NOFILE)[0]
        wait_idle(tree, 30)
        probe_users = [(probe_user(i), PASSWORD) for i in range(1, probes + 1)]
        if probe_users:
            probe = Workers(specs(node, probe_users, 1, 50, addrs, gen_cpus, 120.0, nofile))
            res = probe.all("login", 180)
            if res[0]["failed"]:
                raise BenchmarkError(f"probe logins failed: {res[0]['failures']}")
            probe.all("pair", 30, senders=args.probe_pairs)
        wait_idle(tree, 30)
        rss0 = tree.rss()
        cpu_start = tree.cpu_s()
        out["rss0_mb"] = rss0 / 1e6
        out["tcp0_mb"] = kernel_tcp_mb()
        out["slab0_mb"] = kernel_slab_mb()
        print(f"  node started: RSS {rss0 / 1e6:.0f} MB with {probes} probe clients; descriptor limit "
              f"{out['node_nofile']:,}; clients from {addrs[0]}…{addrs[-1]} ({len(addrs)} addresses)", flush=True)
        done = 0
        for size in sizes:
            row = checkpoint(args, node, held, gen_base, probe, done, size, addrs, gen_cpus, rss0, out["tcp0_mb"],
                             out["slab0_mb"], nofile)
            rows.append(row)
            done = size
            print(f"  {size:>7,} held: RSS {row['rss_mb']:,.0f} MB ({row['kb_per_conn']:.1f} KB/conn), "
                  f"{row['logins_per_s']:,.0f} logins/s (p99 {row['login_p99_ms']:,.0f} ms), probe p50/p99 "
                  f"{row['probe_p50_ms']:.1f}/{row['probe_p99_ms']:.1f} ms", flush=True)
            if row["problems"]:
                failed += [f"{size:,} held: {p}" for p in row["problems"]]
                break
        out["node_cpu_s"] = tree.cpu_s() - cpu_start
    except BenchmarkError as e:
        failed.append(str(e))
    finally:
        t_stop = time.monotonic()
        for w in held:
            w.stop()
        if probe is not None:
            probe.stop()
        node.stop()
        out["stop_s"] = time.monotonic() - t_stop
    wall = time.monotonic() - wall0
    busy1 = machine_busy()
    out["wall_s"] = wall
    out["load_average"] = load_average()
    if busy0 is not None and busy1 is not None:
        out["machine_busy_cpu_s"] = busy1 - busy0
    print_table(rows)
    print(f"  run took {wall:.0f} s (stopping {out['stop_s']:.0f} s); "
          f"node CPU {out.get('node_cpu_s', float('nan')):.1f} s; "
          f"machine busy {out.get('machine_busy_cpu_s', float('nan')):.0f} of {wall * (os.cpu_count() or 1):.0f} "
          f"CPU-s; load average {out['load_average']}")
    warnings = [line for line in node.warnings() if "Traceback" in line or " ERROR " in line]
    if warnings:
        out["node_errors"] = warnings[:20]
        print(f"  node logged {len(warnings)} errors, the first: {warnings[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.keep:
        print(f"  kept the node's config and log: {node.configs[0]}, {log}")
    else:
        log.unlink(missing_ok=True)
    if failed:
        for f in failed:
            print(f"BENCHMARK FAILED: {f}")
        return 2
    print("  every login done, every connection held, every probe message delivered")
    return 0


def checkpoint(args: argparse.Namespace, node: IdleNode, held: list[Workers], gen_base: list[int],
               probe: Workers | None, done: int, size: int, addrs: list[str], gen_cpus: list[int], rss0: int,
               tcp0: float, slab0: float, nofile: int) -> dict[str, Any]:
    """Log in users ``done+1..size`` and hold them with the earlier ones; then measure (module docstring)."""
    tree = node.tree
    assert tree is not None
    step = size - done
    users = [(peers.user(i), PASSWORD) for i in range(done + 1, size + 1)]
    cpu0 = tree.cpu_s()
    w = Workers(specs(node, users, args.workers, args.concurrency, addrs, gen_cpus, args.login_timeout, nofile))
    held.append(w)
    gen_base.append(pids_rss(w.pids))
    gen_cpu0 = w.cpu_s()
    res = w.all("login", args.login_timeout + step / 20 + 120)
    cpu_login = tree.cpu_s() - cpu0
    gen_cpu_login = w.cpu_s() - gen_cpu0
    check_alive(node)
    login_s = login_times(res)
    ok = sum(r["ok"] for r in res)
    failures: dict[str, int] = {}
    for r in res:
        for reason, count in r["failures"].items():
            failures[reason] = failures.get(reason, 0) + count
    wall = max(r["t1"] for r in res) - min(r["t0"] for r in res)
    time.sleep(args.settle)
    wait_idle(tree, 30)
    rss = tree.rss()
    fds = psutil.Process(node.procs[0].pid).num_fds()
    by_address = clients_by_address(node.procs[0].pid, node.endpoints[0][1])
    # the node with nothing to do but hold them
    c0, t0 = tree.cpu_s(), time.monotonic()
    time.sleep(args.hold)
    idle_cpu = (tree.cpu_s() - c0) / (time.monotonic() - t0)
    st: dict[str, Any] = {"sent": 0, "received": 0, "lat_ms": [], "errors": 0, "lost": 0}
    probe_cpu = 0.0
    if probe is not None:
        c0 = tree.cpu_s()
        st = message_stats(probe.all("paced", args.probe_duration + 120, rate=args.probe_rate,
                                     duration=args.probe_duration, drain=10.0))
        probe_cpu = tree.cpu_s() - c0
    check_alive(node)
    online, still_open = held_open(held)
    gen_rss = sum(pids_rss(x.pids) for x in held) - sum(gen_base)  # the clients' share, not the interpreters'
    lat = st["lat_ms"]
    row: dict[str, Any] = {
        "held": size, "step": step, "logged_in": ok, "login_failures": failures,
        "rss_mb": rss / 1e6, "kb_per_conn": (rss - rss0) / size / 1000,
        "logins_per_s": len(login_s) / wall if wall > 0 else 0.0,
        "login_p50_ms": pct(login_s, 50) * 1000, "login_p99_ms": pct(login_s, 99) * 1000,
        "login_wall_s": wall, "node_cpu_login_s": cpu_login, "node_cpu_ms_per_login": cpu_login / max(ok, 1) * 1000,
        "gen_cpu_ms_per_login": gen_cpu_login / max(ok, 1) * 1000,
        "node_idle_cpu_pct": idle_cpu * 100, "node_fds": fds, "clients_by_address": by_address,
        "probe_sent": st["sent"], "probe_received": st["received"], "probe_errors": st["errors"],
        "probe_p50_ms": pct(lat, 50), "probe_p99_ms": pct(lat, 99), "probe_max_ms": max(lat, default=float("nan")),
        "node_cpu_probe_s": probe_cpu, "held_online": online, "held_open": still_open,
        "gen_rss_mb": gen_rss / 1e6, "gen_kb_per_conn": gen_rss / max(online, 1) / 1000,
        "kernel_tcp_mb": kernel_tcp_mb(), "kernel_tcp_kb_per_conn": (kernel_tcp_mb() - tcp0) * 1000 / size,
        "kernel_slab_mb": kernel_slab_mb(), "kernel_slab_kb_per_conn": (kernel_slab_mb() - slab0) * 1000 / size,
        "available_mb": psutil.virtual_memory().available / 1e6,
    }
    problems = []
    if ok < step:
        problems.append(f"{step - ok:,} of {step:,} logins failed: {failures}")
    if still_open < size:
        problems.append(f"{size - still_open:,} of {size:,} held connections were closed")
    if probe is not None and (st["received"] < st["sent"] or not st["sent"] or st["lost"]):
        problems.append(f"probe: {st['received']:,} of {st['sent']:,} messages delivered, "
                        f"{st['lost']} connections lost")
    if st["errors"]:
        problems.append(f"probe: {st['errors']} error stanzas")
    row["problems"] = problems
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("held", "held", "{:,}"), ("node RSS MB", "rss_mb", "{:,.0f}"), ("KB/conn", "kb_per_conn", "{:.1f}"),
            ("logins/s", "logins_per_s", "{:,.0f}"), ("login p99 ms", "login_p99_ms", "{:,.0f}"),
            ("node CPU ms/login", "node_cpu_ms_per_login", "{:.2f}"),
            ("gen CPU ms/login", "gen_cpu_ms_per_login", "{:.2f}"), ("node idle CPU %", "node_idle_cpu_pct", "{:.1f}"),
            ("probe p50 ms", "probe_p50_ms", "{:.2f}"), ("probe p99 ms", "probe_p99_ms", "{:.2f}"),
            ("probe msgs", "probe_received", "{:,}"), ("gen KB/conn", "gen_kb_per_conn", "{:.1f}"),
            ("slab KB/conn", "kernel_slab_kb_per_conn", "{:.1f}"),
            ("TCP buf KB/conn", "kernel_tcp_kb_per_conn", "{:.1f}")]
    if not rows:
        return
    cells = [[fmt.format(r[key]) for _, key, fmt in cols] for r in rows]
    widths = [max(len(title), *(len(c[k]) for c in cells)) for k, (title, _, _) in enumerate(cols)]
    print()
    print("  " + "  ".join(f"{title:>{w}}" for (title, _, _), w in zip(cols, widths, strict=True)))
    print("  " + "  ".join("-" * w for w in widths))
    for c in cells:
        print("  " + "  ".join(f"{v:>{w}}" for v, w in zip(c, widths, strict=True)))
    print()


def _read_int(path: str) -> int:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return 0


def sizes_arg(text: str) -> list[int]:
    try:
        out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", type=sizes_arg, default=[10_000, 25_000, 50_000, 100_000],
                    help="connections held at each checkpoint (10000,25000,50000,100000)")
    ap.add_argument("--workers", type=int, default=2, help="load generator processes per step (2)")
    ap.add_argument("--concurrency", type=int, default=100, help="logins in progress at a time, in all (100)")
    ap.add_argument("--login-timeout", type=float, default=180.0, help="seconds one login may take (180)")
    ap.add_argument("--per-address", type=int, default=5_000,
                    help="clients per loopback source address (5000; ~28,000 ephemeral ports each, but the "
                         "kernel's search for a free one on bind() grows as they fill)")
    ap.add_argument("--probe-pairs", type=int, default=5, help="probe sender → receiver pairs (5)")
    ap.add_argument("--probe-rate", type=float, default=20.0, help="probe messages/s in all (20)")
    ap.add_argument("--probe-duration", type=float, default=10.0,
                    help="seconds the probe sends at each checkpoint (10)")
    ap.add_argument("--hold", type=float, default=10.0,
                    help="seconds of idle node CPU measured at each checkpoint (10)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after the logins before the RSS is read (2)")
    ap.add_argument("--state-dir", default=str(DEFAULT_STATE),
                    help=f"the node's accounts and data, kept between runs ({DEFAULT_STATE})")
    ap.add_argument("--pin", action="store_true", help="the node on CPU 0, the load generators on the others")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the node's log and config in the state dir")
    args = ap.parse_args(argv)
    if args.probe_pairs < 1 or args.probe_rate <= 0:
        ap.error("the probe needs at least one pair and a positive rate")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
