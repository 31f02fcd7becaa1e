"""MUC (XEP-0045) benchmark: one big room's fan-out, join latency in it, and the memory of idle rooms —
Meridian one node, side by side with Debian's ejabberd 23.01 in the same run when it can start here.

1. **Fan-out.**  ``--occupants`` clients (1,000; ``--quick`` 50) join one room (the first creates it
   as an instant room, XEP-0045 §10.1.2; joins ask for no history).  One occupant then keeps
   ``--window`` groupchat messages in flight for ``--seconds``: each reflection of its own message
   lets it send the next (a closed loop: the most the server fans out).  A message's body is its send
   time (CLOCK_MONOTONIC, shared by the processes), so every occupant's copy gives one delivery
   latency.  Reported: messages/s delivered to every occupant (copies received in the window ÷
   occupants ÷ seconds), delivery latency p50/p99, server CPU per message and per copy, and that
   every copy arrived (after a drain).
2. **Join latency.**  With those occupants present, ``--joins`` more clients (50; quick 10) join one
   after another: the time from the join presence to the joiner's own presence (status 110), which
   the room sends after the presence of every occupant.  p50/p99/max.
3. **Idle rooms.**  ``--rooms`` rooms (10,000; quick 1,000), each with one occupant and no traffic:
   sessions of 100 rooms each join them (the rooms are created by the join).  Memory per room is
   the server's RSS growth (its whole process tree) ÷ rooms, measured once the server is idle, with
   the sessions logged in before the first measurement.  Goal: ≤ 5 KB per room.

    .venv/bin/python benchmarks/muc.py                    # Meridian and ejabberd, full sizes
    .venv/bin/python benchmarks/muc.py --quick            # smoke run: 50 occupants, 1,000 rooms
    .venv/bin/python benchmarks/muc.py --servers meridian

The clients are :mod:`loadgen`'s (raw TLS sockets, no XML parsing; SASL PLAIN), all in this
process, pinned to CPU 1 with the server on CPU 0 (``--no-pin``).  ejabberd runs only as root
(Debian's ``ejabberdctl``); without it, or without root, Meridian runs alone and the report says so.
Exit status 0; 1 when the memory goal is missed (``GOAL MISSED:``); 2 when a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:  # run as a script from anywhere: this checkout, and the benchmarks beside it
        sys.path.insert(0, _p)

import loadgen  # noqa: E402
import peers  # noqa: E402
from machine import load_average, machine_busy  # noqa: E402
from node_load import pct  # noqa: E402

from tests.helpers.node import toml_dump  # noqa: E402

SERVICE = f"conference.{peers.DOMAIN}"
ROOM = f"bench@{SERVICE}"
ROOMS_PER_SESSION = 100
MEMORY_GOAL_KB = 5.0
JOIN = ("<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x>"
        "</presence>")
INSTANT = ("<iq type='set' id='{id}' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'>"
           "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
SELF_PRESENCE = (b"code='110'", b'code="110"')  # status 110: this presence is the joiner's own

QUICK = {"occupants": 50, "joins": 10, "rooms": 1000, "seconds": 3.0, "window": 16}
FULL = {"occupants": 1000, "joins": 50, "rooms": 10_000, "seconds": 10.0, "window": 16}


class MucGen(loadgen.Generator):
    """loadgen's clients, also counting markers (a join's own presence, an IQ's id) per client."""

    def __init__(self, spec: loadgen.WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(spec, loop)
        self.watch: dict[loadgen.Client, list[Any]] = {}  # client -> [markers, left, future, tail]

    def expect(self, c: loadgen.Client, markers: tuple[bytes, ...], count: int = 1) -> asyncio.Future[None]:
        """A future done once ``count`` of ``markers`` arrived on ``c`` (from now on)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.watch[c] = [markers, count, fut, b""]
        return fut

    def on_data(self, c: loadgen.Client, data: bytes) -> None:
        super().on_data(c, data)
        w = self.watch.get(c)
        if w is None:
            return
        markers, left, fut, tail = w
        seen = tail + data
        left -= sum(seen.count(m) for m in markers)
        keep = max(len(m) for m in markers) - 1  # a marker cut by the end of this read
        w[1], w[3] = left, seen[-keep:]
        if left <= 0:
            del self.watch[c]
            if not fut.done():
                fut.set_result(None)


# -- the servers -------------------------------------------------------------------------------------


class MucMeridian(peers.Meridian):
    """One Meridian node with the MUC module sized for the run."""

    def __init__(self, base: Path, cpus: list[int], max_users: int) -> None:
        super().__init__(base, cpus)
        for path in self.configs:
            conf = tomllib.loads(path.read_text())
            conf["modules"]["muc"] = {"max_users": max_users, "max_rooms": 1_000_000}
            path.write_text(toml_dump(conf))


class MucEjabberd(peers.Ejabberd):
    """ejabberd with mod_muc: no limits below the run's (200 occupants and 100 rooms per user by
    default), presence broadcast in rooms of any size the run makes (1,000 occupants by default)."""

    def __init__(self, base: Path, cpus: list[int], max_users: int) -> None:
        self.max_users = max_users
        super().__init__(base, cpus)

    def _config(self) -> str:
        return super()._config() + f"""\
  mod_muc:
    host: "{SERVICE}"
    access: all
    access_create: all
    max_users: {self.max_users}
    max_users_presence: {self.max_users}
    max_user_conferences: 100000
    default_room_options:
      max_users: {self.max_users}
"""


# -- phases ------------------------------------------------------------------------------------------


def _waited(server: peers.Server) -> float:
    """Seconds the server's threads spent runnable but waiting for a CPU (/proc schedstat): what
    other jobs on the machine took from it."""
    assert server.tree is not None
    total = 0.0
    for proc in server.tree.procs():
        for task in Path(f"/proc/{proc.pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(task.read_text().split()[1]) / 1e9
    return total


async def _settle(server: peers.Server, timeout: float = 60.0) -> None:
    """Until the server uses under 5 % of a CPU over 0.5 s."""
    assert server.tree is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = server.tree.cpu_s()
        await asyncio.sleep(0.5)
        if server.tree.cpu_s() - before < 0.025:
            return


async def _join(gen: MucGen, c: loadgen.Client, room: str, nick: str, timeout: float = 120.0) -> float:
    """Seconds from the join presence to the joiner's own presence."""
    done = gen.expect(c, SELF_PRESENCE)
    t0 = time.perf_counter()
    c.send(JOIN.format(room=room, nick=nick).encode())
    await asyncio.wait_for(done, timeout)
    return time.perf_counter() - t0


async def fanout_and_joins(server: peers.Server, n: int, joins: int, seconds: float, window: int,
                           first_user: int) -> dict[str, Any]:
    host, port = server.endpoints[0]
    users = [(peers.user(i), peers.password(i)) for i in range(first_user, first_user + n + joins)]
    spec = loadgen.WorkerSpec(host=host, port=port, direct_tls=False, domain=peers.DOMAIN, sasl="PLAIN",
                              users=users, login_concurrency=50, login_timeout=300.0)
    gen = MucGen(spec, asyncio.get_running_loop())
    out: dict[str, Any] = {}
    try:
        login = await gen.login_all()
        if login["failed"]:
            raise peers.BenchError(f"{login['failed']} logins failed: {login['failures']}")
        clients = sorted(gen.online, key=lambda c: int(c.username[4:]))
        occupants, joiners = clients[:n], clients[n:]
        creator = occupants[0]
        await _join(gen, creator, ROOM, "o0")
        done = gen.expect(creator, (b"instant1",))
        creator.send(INSTANT.format(id="instant1", room=ROOM).encode())
        await asyncio.wait_for(done, 30)
        sem = asyncio.Semaphore(20)

        async def occupy(k: int, c: loadgen.Client) -> None:
            async with sem:
                await _join(gen, c, ROOM, f"o{k}")

        t0 = time.monotonic()
        await asyncio.gather(*(occupy(k, c) for k, c in enumerate(occupants[1:], 1)))
        out["fill_s"] = time.monotonic() - t0
        await _settle(server)

        # 1. fan-out, closed loop on the sender's own reflections
        assert server.tree is not None
        creator.msg_prefix = f"<message to='{ROOM}' type='groupchat'><body>".encode()
        creator.feeder = creator
        gen.senders = [creator]
        gen.reset()
        cpu0, ru0 = server.tree.cpu_s(), resource.getrusage(resource.RUSAGE_SELF)
        waited0, busy0 = _waited(server), machine_busy()
        start = time.monotonic()
        gen.closed_loop = True
        for _ in range(window):
            creator.send_message()
        await asyncio.sleep(seconds)
        gen.closed_loop = False
        elapsed = time.monotonic() - start
        in_window = gen.received
        cpu1, ru1 = server.tree.cpu_s(), resource.getrusage(resource.RUSAGE_SELF)
        waited1, busy1 = _waited(server), machine_busy()
        deadline = time.monotonic() + 30
        while gen.received + gen.bad < gen.sent * n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lat = [x / 1e6 for x in gen.lat]
        out.update({
            "sent": gen.sent, "copies": gen.received, "expected": gen.sent * n, "errors": gen.errors,
            "lost": gen.lost, "bad": gen.bad,
            "msgs_per_s": in_window / n / elapsed, "copies_per_s": in_window / elapsed,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat, default=0.0),
            "cpu_per_msg_ms": (cpu1 - cpu0) * 1e3 / max(in_window / n, 1),
            "cpu_per_copy_us": (cpu1 - cpu0) * 1e6 / max(in_window, 1),
            "server_cpu_share": (cpu1 - cpu0) / elapsed,
            "client_cpu_share": ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) / elapsed,
            "server_waited_s": waited1 - waited0,
            "machine_busy": (busy1 - busy0) / elapsed / (os.cpu_count() or 1) if busy0 and busy1 else None,
        })
        await _settle(server)

        # 2. joins with the room full
        took = [await _join(gen, c, ROOM, f"j{k}") * 1e3 for k, c in enumerate(joiners)]
        out.update({"join_p50_ms": pct(took, 50), "join_p99_ms": pct(took, 99), "join_max_ms": max(took),
                    "joins": len(took)})
    finally:
        await gen.close_all()
    return out


async def idle_rooms(server: peers.Server, rooms: int, first_user: int) -> dict[str, Any]:
    host, port = server.endpoints[0]
    sessions = max(1, rooms // ROOMS_PER_SESSION)
    users = [(peers.user(i), peers.password(i)) for i in range(first_user, first_user + sessions)]
    spec = loadgen.WorkerSpec(host=host, port=port, direct_tls=False, domain=peers.DOMAIN, sasl="PLAIN",
                              users=users, login_concurrency=50, login_timeout=300.0)
    gen = MucGen(spec, asyncio.get_running_loop())
    assert server.tree is not None
    try:
        login = await gen.login_all()
        if login["failed"]:
            raise peers.BenchError(f"{login['failed']} logins failed: {login['failures']}")
        await _settle(server)
        await asyncio.sleep(1.0)
        before = server.tree.rss()
        t0 = time.monotonic()

        async def fill(s: int, c: loadgen.Client) -> None:
            done = gen.expect(c, SELF_PRESENCE, ROOMS_PER_SESSION)
            c.send(b"".join(JOIN.format(room=f"idle{s}-{k}@{SERVICE}", nick="idler").encode()
                            for k in range(ROOMS_PER_SESSION)))
            await asyncio.wait_for(done, 300)

        await asyncio.gather(*(fill(s, c) for s, c in enumerate(gen.online)))
        took = time.monotonic() - t0
        await _settle(server)
        await asyncio.sleep(1.0)
        after = server.tree.rss()
        made = len(gen.online) * ROOMS_PER_SESSION
        return {"rooms": made, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
                "kb_per_room": (after - before) / 1024 / made, "rooms_per_s": made / took}
    finally:
        await gen.close_all()


# -- a run -------------------------------------------------------------------------------------------


def make(kind: str, base: Path, cpus: list[int], max_users: int) -> peers.Server:
    if kind == "meridian":
        return MucMeridian(base, cpus, max_users)
    if kind == "ejabberd":
        return MucEjabberd(base, cpus, max_users)
    raise ValueError(f"unknown server {kind}")


def run_server(kind: str, base: Path, sizes: dict[str, Any], cpus: list[int]) -> dict[str, Any]:
    n, joins, rooms = sizes["occupants"], sizes["joins"], sizes["rooms"]
    sessions = max(1, rooms // ROOMS_PER_SESSION)
    server = make(kind, base, cpus, max_users=n + joins + 10)
    result: dict[str, Any] = {"label": server.label}
    result["register_s"] = server.prepare(n + joins + sessions)
    server.start()
    try:
        result.update(asyncio.run(fanout_and_joins(server, n, joins, sizes["seconds"], sizes["window"], 1)))
        asyncio.run(_settle(server))
        result.update(asyncio.run(idle_rooms(server, rooms, n + joins + 1)))
        result["warnings"] = server.warnings()[-5:]
    finally:
        server.stop()
    return result


def available(kind: str) -> str | None:
    """Why ``kind`` cannot run here, or None."""
    if kind == "ejabberd":
        if not (shutil.which("ejabberdctl") or Path("/usr/sbin/ejabberdctl").exists()):
            return "ejabberdctl not found (apt-get install ejabberd)"
        if os.geteuid() != 0:
            return "Debian's ejabberdctl runs only as root"
    return None


ROWS: list[tuple[str, str, str]] = [  # (key, figure, format)
    ("fill_s", "fan-out room: {n} occupants joined in (s)", "{:,.1f}"),
    ("msgs_per_s", "groupchat messages/s delivered to all {n} occupants", "{:,.1f}"),
    ("copies_per_s", "  copies delivered /s", "{:,.0f}"),
    ("p50_ms", "  delivery latency p50 (ms)", "{:,.1f}"),
    ("p99_ms", "  delivery latency p99 (ms)", "{:,.1f}"),
    ("cpu_per_msg_ms", "  server CPU per message (ms)", "{:,.2f}"),
    ("cpu_per_copy_us", "  server CPU per copy (µs)", "{:,.1f}"),
    ("server_cpu_share", "  server CPU share (of one CPU)", "{:.2f}"),
    ("client_cpu_share", "  clients' CPU share (of one CPU)", "{:.2f}"),
    ("server_waited_s", "  server waiting for a CPU in the {seconds} s (s)", "{:,.1f}"),
    ("machine_busy", "  machine busy (all CPUs, all processes)", "{:.0%}"),
    ("join_p50_ms", "join latency with {n} present p50 (ms)", "{:,.1f}"),
    ("join_p99_ms", "join latency with {n} present p99 (ms)", "{:,.1f}"),
    ("join_max_ms", "  join latency max (ms)", "{:,.1f}"),
    ("kb_per_room", "idle rooms: memory per room (KB)", "{:,.2f}"),
    ("rooms_per_s", "  rooms created /s", "{:,.0f}"),
    ("rss_after_mb", "  server RSS with {rooms} rooms (MB)", "{:,.0f}"),
]


def report(results: dict[str, dict[str, Any]], sizes: dict[str, Any]) -> list[str]:
    kinds = list(results)
    labels = [results[k]["label"] for k in kinds]
    names = [f.format(n=sizes["occupants"], rooms=f"{sizes['rooms']:,}", seconds=f"{sizes['seconds']:g}")
             for _, f, _ in ROWS]
    w0 = max(len(x) for x in names)
    widths = [max(len(lab), 12) for lab in labels]
    lines = ["  " + "figure".ljust(w0) + "".join(f"  {lab:>{w}}" for lab, w in zip(labels, widths, strict=True))]
    lines.append("  " + "-" * w0 + "".join(f"  {'-' * w}" for w in widths))
    for (key, _, fmt), name in zip(ROWS, names, strict=True):
        cells = []
        for k, w in zip(kinds, widths, strict=True):
            v = results[k].get(key)
            cells.append(f"  {(fmt.format(v) if isinstance(v, int | float) else '-'):>{w}}")
        lines.append("  " + name.ljust(w0) + "".join(cells))
    for k in kinds:
        r = results[k]
        lines.append(f"  {r['label']}: copies received / expected {r['copies']:,} / {r['expected']:,}, "
                     f"error stanzas {r['errors']}, connections lost {r['lost']}, rooms made {r['rooms']:,}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke sizes: 50 occupants, 10 joins, 1,000 rooms")
    ap.add_argument("--servers", default="meridian,ejabberd", help="meridian, ejabberd (skipped when it cannot run)")
    for key, default in FULL.items():
        ap.add_argument(f"--{key}", type=type(default), default=None, help=f"default {default:,} ({QUICK[key]} quick)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="server on CPU 0, clients on CPU 1")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the servers' directories")
    args = ap.parse_args(argv)
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k]
             for k in FULL}
    loadgen.raise_nofile(peers.NOFILE)
    cpus = os.sched_getaffinity(0)
    server_cpus: list[int] = []
    if args.pin and len(cpus) >= 2:
        server_cpus = [min(cpus)]
        os.sched_setaffinity(0, sorted(cpus - {min(cpus)}))
    print(f"MUC benchmark: {sizes}; {platform.python_version()}, {os.cpu_count()} CPUs, load {load_average()}",
          flush=True)
    base = Path(tempfile.mkdtemp(prefix="meridian-muc-bench-"))
    if args.keep:
        print(f"  directories kept in {base}")
    results: dict[str, dict[str, Any]] = {}
    failed = False
    try:
        for kind in [k.strip() for k in args.servers.split(",") if k.strip()]:
            why = available(kind)
            if why is not None:
                print(f"  {kind}: not run — {why}; Meridian alone", flush=True)
                continue
            print(f"  {kind} …", flush=True)
            try:
                results[kind] = run_server(kind, base, sizes, server_cpus)
            except (peers.BenchError, OSError, TimeoutError) as e:
                failed = True
                print(f"  {kind} FAILED: {type(e).__name__}: {e}", flush=True)
    finally:
        if not args.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(base)
    if not results:
        return 2
    print()
    for line in report(results, sizes):
        print(line)
    missed = []
    m = results.get("meridian")
    if m is not None:
        for w in m.get("warnings") or ():
            print(f"  meridian log: {w}")
        if m["kb_per_room"] > MEMORY_GOAL_KB:
            missed.append(f"GOAL MISSED: {m['kb_per_room']:.2f} KB per idle room (goal ≤ {MEMORY_GOAL_KB:.0f} KB)")
        if m["copies"] != m["expected"] or m["errors"] or m["lost"]:
            failed = True
            print(f"  meridian lost copies or saw errors: {m['copies']} / {m['expected']}, {m['errors']} errors")
    for line in missed:
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"sizes": sizes, "results": results}, indent=2))
    return 2 if failed else (1 if missed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
