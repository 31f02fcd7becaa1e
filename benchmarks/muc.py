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
    .venv/bin/python benchmarks/muc.py --regions 2        # Meridian across two regions (below)

**Two regions** (``--regions 2``, Meridian alone: ejabberd has no equivalent).  Regions eu and us of
one domain, each one node and one gateway, a throwaway ``redis-server`` for the mapping and one
SQLite database for both (``muc_regions.py``); the rooms are homed in eu (``home_cluster``).  Half
the occupants join through eu's node, half through us's (interleaved), then a sender in each region
keeps half the window in flight on its own reflections (a timestamp's lowest bit says which region
sent it, so latencies are also reported per path: eu → eu never crosses the link, eu → us and
us → eu once, us → us twice).  Then ``--joins`` joins alternating between the regions, and the
inter-region link frames per groupchat message, from the gateways' ``gdistrib { status }`` counters
(eu → us ``relayed``, ``manyCopies``; us's ``expanded``): goal 1 per remote region with occupants,
printed with PASS/MISSED.  No idle-rooms phase; no CPU pinning (five server processes).

The clients are :mod:`loadgen`'s (raw TLS sockets, no XML parsing; SASL PLAIN), all in this
process, pinned to CPU 1 with the server on CPU 0 (``--no-pin``).  ejabberd runs only as root
(Debian's ``ejabberdctl``); without it, or without root, Meridian runs alone and the report says so.
Exit status 0; 1 when the memory goal (two regions: the frames goal) is missed (``GOAL MISSED:``);
2 when a run failed.
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
import muc_regions  # noqa: E402
import peers  # noqa: E402
from machine import load_average, machine_busy  # noqa: E402
from node_load import pct  # noqa: E402

from cluster_node.modules.muc.service import sequencer  # noqa: E402
from tests.helpers.node import toml_dump  # noqa: E402

SERVICE = f"conference.{peers.DOMAIN}"
ROOM = f"bench@{SERVICE}"
ROOMS_PER_SESSION = 100
MEMORY_GOAL_KB = 5.0
FRAMES_TOLERANCE = 0.05  # two regions: link frames per message, 1 ± this
# Two regions: joins at once while filling the room.  A join through us used to cross the link as
# one frame per occupant's presence, and 20 joins at once into a room of hundreds overflowed eu's
# queue for us (gdistrib.connections.queue_max, 10,000 frames); the presences go as one run now (a
# few frames per join: "link frames eu → us per join through us"), 5 at a time keeps the fill
# comparable with the runs before.
REGIONS_FILL_AT_ONCE = 5
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


def _tree(server: peers.Server | peers.ProcTree) -> peers.ProcTree:
    tree = server if isinstance(server, peers.ProcTree) else server.tree
    assert tree is not None
    return tree


def _waited(server: peers.Server | peers.ProcTree) -> float:
    """Seconds the server's threads spent runnable but waiting for a CPU (/proc schedstat): what
    other jobs on the machine took from it."""
    total = 0.0
    for proc in _tree(server).procs():
        for task in Path(f"/proc/{proc.pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(task.read_text().split()[1]) / 1e9
    return total


async def _settle(server: peers.Server | peers.ProcTree, timeout: float = 60.0, share: float = 0.05) -> None:
    """Until the server uses under ``share`` of a CPU (5 %) over 0.5 s."""
    tree = _tree(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = tree.cpu_s()
        await asyncio.sleep(0.5)
        if tree.cpu_s() - before < share / 2:
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


# -- two regions -------------------------------------------------------------------------------------


class RegionGen(MucGen):
    """One region's clients.  Its sender's timestamps carry the region in their lowest bit (eu even,
    us odd: 1 ns off), so a copy tells which region sent it, and the sender's closed loop runs on its
    own reflections only (the other region's messages reach it too)."""

    def __init__(self, spec: loadgen.WorkerSpec, loop: asyncio.AbstractEventLoop, region: str) -> None:
        super().__init__(spec, loop)
        self.region = region
        self.parity = muc_regions.REGIONS.index(region) & 1
        self.sender: loadgen.Client | None = None
        self.looping = False

    def send_groupchat(self) -> None:
        c = self.sender
        assert c is not None
        ts = (time.monotonic_ns() & ~1) | self.parity
        c.send(c.msg_prefix + str(ts).encode() + loadgen.MSG_END)
        self.sent += 1

    def on_data(self, c: loadgen.Client, data: bytes) -> None:
        if not (self.looping and c is self.sender):
            super().on_data(c, data)
            return
        mark = len(self.sent_at)
        super().on_data(c, data)
        parity = self.parity
        own = sum(1 for ts in self.sent_at[mark:] if ts & 1 == parity)
        for _ in range(own):
            self.send_groupchat()


def _path_latencies(gens: dict[str, RegionGen]) -> dict[str, list[float]]:
    """Delivery latencies (ms) per path "sender's region>recipient's region"."""
    out: dict[str, list[float]] = {f"{a}>{b}": [] for a in muc_regions.REGIONS for b in muc_regions.REGIONS}
    names = muc_regions.REGIONS
    for to, gen in gens.items():
        lists = [out[f"{names[0]}>{to}"], out[f"{names[1]}>{to}"]]
        for lat, ts in zip(gen.lat, gen.sent_at, strict=True):
            lists[ts & 1].append(lat / 1e6)
    return out


async def regions_fanout_and_joins(topo: muc_regions.TwoRegions, n: int, joins: int, seconds: float,
                                   window: int, room: str) -> dict[str, Any]:
    """The fan-out and join phases over two regions: ``n`` // 2 occupants joined through each
    region's node, a sender in each region, ``joins`` joins alternating between the regions."""
    eu, us = muc_regions.REGIONS
    half = n // 2
    per_region_joins = {eu: joins - joins // 2, us: joins // 2}
    loop = asyncio.get_running_loop()
    gens: dict[str, RegionGen] = {}
    for region in (eu, us):
        users = [(f"{region}{i}", muc_regions.PASSWORD) for i in range(half + per_region_joins[region])]
        spec = loadgen.WorkerSpec(host="127.0.0.1", port=topo.node(region).port, direct_tls=False,
                                  domain=muc_regions.DOMAIN, sasl="PLAIN", users=users, login_concurrency=25,
                                  login_timeout=300.0)
        gens[region] = RegionGen(spec, loop, region)
    tree = peers.ProcTree(list(topo.pids().values()))
    procs = {name: peers.ProcTree([pid]) for name, pid in topo.pids().items()}
    out: dict[str, Any] = {"occupants": 2 * half}
    try:
        t0 = time.monotonic()
        for region, gen in gens.items():
            login = await gen.login_all()
            if login["failed"]:
                raise peers.BenchError(f"{region}: {login['failed']} logins failed: {login['failures']}")
        await topo.mapped([c.jid for gen in gens.values() for c in gen.online])
        out["login_s"] = time.monotonic() - t0
        print(f"  {sum(len(g.online) for g in gens.values()):,} clients logged in and mapped in "
              f"{out['login_s']:.1f} s", flush=True)
        occupants: dict[str, list[loadgen.Client]] = {}
        joiners: dict[str, list[loadgen.Client]] = {}
        for region, gen in gens.items():
            clients = sorted(gen.online, key=lambda c: int(c.username[len(region):]))
            occupants[region], joiners[region] = clients[:half], clients[half:]
        creator = occupants[eu][0]
        await _join(gens[eu], creator, room, "eu0")
        done = gens[eu].expect(creator, (b"instant1",))
        creator.send(INSTANT.format(id="instant1", room=room).encode())
        await asyncio.wait_for(done, 30)
        sem = asyncio.Semaphore(REGIONS_FILL_AT_ONCE)

        async def occupy(region: str, k: int, c: loadgen.Client) -> None:
            async with sem:
                try:
                    await _join(gens[region], c, room, f"{region}{k}")
                except TimeoutError:
                    raise peers.BenchError(f"{c.jid} joining through {region}: no own presence in 120 s") from None

        order = [(region, k, occupants[region][k]) for k in range(half) for region in (eu, us)
                 if (region, k) != (eu, 0)]  # the regions' joins interleaved
        t0 = time.monotonic()
        await asyncio.gather(*(occupy(region, k, c) for region, k, c in order))
        out["fill_s"] = time.monotonic() - t0
        print(f"  {2 * half:,} occupants joined in {out['fill_s']:.1f} s (load {load_average()})", flush=True)
        await _settle(tree, share=0.15)

        # 1. fan-out: a sender in each region, each keeping its half of the window in flight on its own
        # reflections
        windows = {eu: window - window // 2, us: window // 2}
        for region, gen in gens.items():
            gen.sender = occupants[region][0]
            gen.sender.msg_prefix = f"<message to='{room}' type='groupchat'><body>".encode()
            gen.reset()
        before = await topo.counters()
        cpu0 = {name: t.cpu_s() for name, t in procs.items()}
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        waited0, busy0 = _waited(tree), machine_busy()
        start = time.monotonic()
        for region, gen in gens.items():
            gen.looping = True
            for _ in range(windows[region]):
                gen.send_groupchat()
        await asyncio.sleep(seconds)
        for gen in gens.values():
            gen.looping = False
        elapsed = time.monotonic() - start
        in_window = sum(gen.received for gen in gens.values())
        cpu1 = {name: t.cpu_s() for name, t in procs.items()}
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        waited1, busy1 = _waited(tree), machine_busy()
        sent = {region: gen.sent for region, gen in gens.items()}
        total = sum(sent.values())
        n_all = 2 * half
        deadline = time.monotonic() + 60
        while (sum(g.received + g.bad for g in gens.values()) < total * n_all
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        # the gateway counts a frame once the link took it: by now, or within a moment
        deadline = time.monotonic() + 5
        while True:
            after = await topo.counters()
            if (after[eu]["relayed"].get(us, 0) - before[eu]["relayed"].get(us, 0) >= total
                    or time.monotonic() > deadline):
                break
            await asyncio.sleep(0.1)

        def delta(region: str, key: str, to: str | None = None) -> int:
            a, b = after[region][key], before[region][key]
            return int(a.get(to, 0) - b.get(to, 0)) if to is not None else int(a - b)

        lat = [x / 1e6 for g in gens.values() for x in g.lat]
        paths = _path_latencies(gens)
        server_cpu = sum(cpu1[k] - cpu0[k] for k in cpu1)
        msgs = in_window / n_all
        out.update({
            "sent": total, "sent_by": sent, "copies": sum(g.received for g in gens.values()),
            "expected": total * n_all, "errors": sum(g.errors for g in gens.values()),
            "lost": sum(g.lost for g in gens.values()), "bad": sum(g.bad for g in gens.values()),
            "msgs_per_s": msgs / elapsed, "copies_per_s": in_window / elapsed,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat, default=0.0),
            "paths": {k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "copies": len(v)} for k, v in paths.items()},
            "cpu_per_msg_ms": server_cpu * 1e3 / max(msgs, 1),
            "cpu_per_copy_us": server_cpu * 1e6 / max(in_window, 1),
            "server_cpu_share": server_cpu / elapsed,
            "cpu_share_by": {k: (cpu1[k] - cpu0[k]) / elapsed for k in cpu1},
            "client_cpu_share": ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) / elapsed,
            "server_waited_s": waited1 - waited0,
            "machine_busy": (busy1 - busy0) / elapsed / (os.cpu_count() or 1) if busy0 and busy1 else None,
            # the link: eu (the room's home) → us, fan-out frames; us → eu, the messages us's sender sends
            "frames_eu_us": delta(eu, "relayed", us), "frames_us_eu": delta(us, "relayed", eu),
            "many_copies_us": delta(eu, "manyCopies", us), "expanded_us": delta(us, "expanded"),
            "frames_per_msg": delta(eu, "relayed", us) / max(total, 1),
            "recipients_per_frame": delta(eu, "manyCopies", us) / max(delta(eu, "relayed", us), 1),
            "inbound_frames_per_us_msg": delta(us, "relayed", eu) / max(sent[us], 1),
            "handled_locally": delta(eu, "handledLocally"), "link_errors": delta(eu, "linkErrors"),
        })
        print(f"  fan-out: {out['msgs_per_s']:,.1f} messages/s to all, {out['frames_per_msg']:.2f} frames eu → us "
              f"per message (load {load_average()})", flush=True)
        await _settle(tree, share=0.15)

        # 2. joins with the room full, alternating between the regions
        took: dict[str, list[float]] = {eu: [], us: []}
        before = await topo.counters()
        cpu0 = {name: t.cpu_s() for name, t in procs.items()}
        for k in range(max(len(joiners[eu]), len(joiners[us]))):
            for region in (eu, us):
                if k < len(joiners[region]):
                    took[region].append(await _join(gens[region], joiners[region][k], room, f"j{region}{k}") * 1e3)
        cpu1 = {name: t.cpu_s() for name, t in procs.items()}
        await asyncio.sleep(0.5)  # the gateway counts a frame once the link took it
        after = await topo.counters()
        both = took[eu] + took[us]
        # eu → us: a join through us crosses with what the room sends the joiner (each occupant's
        # presence, the joiner's own, history, subject), a join through eu with the joiner's presence
        # to us's occupants (one frame)
        join_frames = delta(eu, "relayed", us)
        out.update({"join_frames_eu_us": join_frames,
                    "join_frames_per_us_join": (join_frames - len(took[eu])) / max(len(took[us]), 1),
                    "join_link_errors": delta(eu, "linkErrors"),
                    "join_cpu_s": sum(cpu1[k] - cpu0[k] for k in cpu1)})
        out.update({"join_p50_ms": pct(both, 50), "join_p99_ms": pct(both, 99), "join_max_ms": max(both),
                    "joins": len(both),
                    "joins_by": {r: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "max_ms": max(v, default=0.0),
                                     "joins": len(v)} for r, v in took.items()}})
    finally:
        for gen in gens.values():
            await gen.close_all()
    return out


def run_regions(base: Path, sizes: dict[str, Any], room_name: str = "bench") -> dict[str, Any]:
    n, joins = sizes["occupants"], sizes["joins"]
    topo = muc_regions.TwoRegions(base, max_users=n + joins + 10)
    room = f"{room_name}@{muc_regions.SERVICE}"
    half = n // 2
    names = [f"{r}{i}" for r in muc_regions.REGIONS for i in range(half + joins)]
    t0 = time.monotonic()
    asyncio.run(topo.register(names))
    # the member of eu that sequences the room (rendezvous hashing of its JID over eu's members that
    # are not gateways: a gateway sequences no room while a node runs the service)
    members = [p.name for p in topo.regions["eu"].processes if getattr(p, "role", "node") != "gateway"]
    result: dict[str, Any] = {"label": "Meridian eu + us", "register_s": time.monotonic() - t0, "room": room,
                              "sequencer": sequencer(room, members)}
    print(f"  room {room}, sequenced by {result['sequencer']}", flush=True)
    topo.start()
    try:
        t0 = time.monotonic()
        asyncio.run(topo.ready())
        result["setup_s"] = time.monotonic() - t0
        result.update(asyncio.run(regions_fanout_and_joins(topo, n, joins, sizes["seconds"], sizes["window"], room)))
    except BaseException:
        for w in topo.warnings():
            print(f"  meridian log: {w}", flush=True)
        raise
    finally:
        result["warnings"] = topo.warnings()  # before the stop: each member logs the others going
        topo.stop()
    return result


def _ms2(d: dict[str, Any]) -> str:
    return f"{d['p50_ms']:,.1f} / {d['p99_ms']:,.1f}" if d.get("p50_ms") is not None else "-"


def report_regions(r: dict[str, Any], sizes: dict[str, Any]) -> list[str]:
    n, half = r["occupants"], r["occupants"] // 2
    paths, joins_by = r["paths"], r["joins_by"]
    frames_ok = abs(r["frames_per_msg"] - 1.0) <= FRAMES_TOLERANCE
    rows: list[tuple[str, str]] = [
        (f"room: {n} occupants ({half} per region) joined in (s)", f"{r['fill_s']:,.1f}"),
        (f"groupchat messages/s delivered to all {n} occupants", f"{r['msgs_per_s']:,.1f}"),
        ("  copies delivered /s", f"{r['copies_per_s']:,.0f}"),
        ("  messages sent from eu / from us", f"{r['sent_by']['eu']:,} / {r['sent_by']['us']:,}"),
        ("  delivery latency p50 (ms)", f"{r['p50_ms']:,.1f}"),
        ("  delivery latency p99 (ms)", f"{r['p99_ms']:,.1f}"),
        ("  p50 / p99 (ms), eu sender → eu recipients (no link)", _ms2(paths["eu>eu"])),
        ("  p50 / p99 (ms), eu sender → us recipients (1 crossing)", _ms2(paths["eu>us"])),
        ("  p50 / p99 (ms), us sender → eu recipients (1 crossing)", _ms2(paths["us>eu"])),
        ("  p50 / p99 (ms), us sender → us recipients (2 crossings)", _ms2(paths["us>us"])),
        ("  server CPU per message, all 5 processes (ms)", f"{r['cpu_per_msg_ms']:,.2f}"),
        ("  server CPU per copy (µs)", f"{r['cpu_per_copy_us']:,.1f}"),
        ("  server CPU share (of one CPU), all", f"{r['server_cpu_share']:.2f}"),
        ("    " + ", ".join(r["cpu_share_by"]), " ".join(f"{v:.2f}" for v in r["cpu_share_by"].values())),
        ("  clients' CPU share (of one CPU)", f"{r['client_cpu_share']:.2f}"),
        (f"  servers waiting for a CPU in the {sizes['seconds']:g} s (s)", f"{r['server_waited_s']:,.1f}"),
        ("  machine busy (all CPUs, all processes)",
         f"{r['machine_busy']:.0%}" if r["machine_busy"] is not None else "-"),
        ("link frames eu → us per groupchat message (goal 1)",
         f"{r['frames_per_msg']:.2f} {'PASS' if frames_ok else 'MISSED'}"),
        ("  recipients per frame (us occupants)", f"{r['recipients_per_frame']:,.1f}"),
        ("  copies expanded by us's gateway per message", f"{r['expanded_us'] / max(r['sent'], 1):,.1f}"),
        ("  frames us → eu per message sent from us", f"{r['inbound_frames_per_us_msg']:.2f}"),
        (f"join latency with {n} present p50 (ms)", f"{r['join_p50_ms']:,.1f}"),
        (f"join latency with {n} present p99 (ms)", f"{r['join_p99_ms']:,.1f}"),
        ("  join latency max (ms)", f"{r['join_max_ms']:,.1f}"),
        (f"  joins through eu ({joins_by['eu']['joins']}): p50 / p99 (ms)", _ms2(joins_by["eu"])),
        (f"  joins through us ({joins_by['us']['joins']}): p50 / p99 (ms)", _ms2(joins_by["us"])),
        ("  link frames eu → us per join through us", f"{r['join_frames_per_us_join']:,.1f}"),
        ("  link frames eu → us in the join phase (link errors)",
         f"{r['join_frames_eu_us']:,} ({r['join_link_errors']})"),
        ("  server CPU in the join phase, all 5 processes (s)", f"{r['join_cpu_s']:,.2f}"),
    ]
    w0 = max(len(a) for a, _ in rows)
    w1 = max(max(len(b) for _, b in rows), len(r["label"]))
    lines = ["  " + "figure".ljust(w0) + f"  {r['label']:>{w1}}", "  " + "-" * w0 + "  " + "-" * w1]
    lines += ["  " + a.ljust(w0) + f"  {b:>{w1}}" for a, b in rows]
    lines.append(f"  room {r['room']}, sequenced by {r['sequencer']}")
    lines.append(f"  {r['label']}: copies received / expected {r['copies']:,} / {r['expected']:,}, "
                 f"error stanzas {r['errors']}, connections lost {r['lost']}; frames eu → us {r['frames_eu_us']:,} "
                 f"for {r['sent']:,} messages, carrying {r['many_copies_us']:,} recipients; "
                 f"handled locally {r['handled_locally']}, link errors {r['link_errors']}")
    return lines


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


def main_regions(args: argparse.Namespace, sizes: dict[str, Any]) -> int:
    """``--regions 2``: Meridian alone, across two regions; exit 1 when the frames goal is missed."""
    sizes = {k: v for k, v in sizes.items() if k != "rooms"}
    print(f"MUC benchmark, two regions (eu, us: a node and a gateway each, Redis; the rooms homed in eu): "
          f"{sizes}; {platform.python_version()}, {os.cpu_count()} CPUs, load {load_average()}", flush=True)
    print("  no CPU pinning (five server processes); idle rooms and ejabberd: one-node runs only", flush=True)
    if muc_regions.redis_server_binary() is None:
        print("  FAILED: redis-server is not installed (apt-get install redis-server)", flush=True)
        return 2
    base = Path(tempfile.mkdtemp(prefix="meridian-muc-regions-"))
    if args.keep:
        print(f"  directories kept in {base}")
    try:
        r = run_regions(base, sizes, args.room)
    except (peers.BenchError, muc_regions.TopologyError, OSError, TimeoutError, RuntimeError) as e:
        print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
        return 2
    finally:
        if not args.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(base)
    print(f"  load average after the run {load_average()}")
    print()
    for line in report_regions(r, sizes):
        print(line)
    for w in r.get("warnings") or ():
        print(f"  meridian log: {w}")
    failed = False
    if r["copies"] != r["expected"] or r["errors"] or r["lost"]:
        failed = True
        print(f"  meridian lost copies or saw errors: {r['copies']} / {r['expected']}, {r['errors']} errors")
    frames_ok = abs(r["frames_per_msg"] - 1.0) <= FRAMES_TOLERANCE
    print(f"inter-region frames per groupchat message: {r['frames_per_msg']:.2f} (goal 1 per remote region "
          f"with occupants) {'PASS' if frames_ok else 'MISSED'}")
    if not frames_ok:
        print(f"GOAL MISSED: {r['frames_per_msg']:.2f} link frames eu → us per groupchat message (goal 1)")
    if args.json is not None:
        args.json.write_text(json.dumps({"sizes": sizes, "regions": 2, "results": {"meridian-regions": r}}, indent=2))
    return 2 if failed else (0 if frames_ok else 1)


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
    ap.add_argument("--regions", type=int, choices=(1, 2), default=1,
                    help="2: Meridian across regions eu and us (a node and a gateway each, Redis), half the\n"
                         "occupants and joins through each region; no idle-rooms phase, no ejabberd")
    ap.add_argument("--room", default="bench",
                    help="two regions: the room's name (bench); eu's node sequences it, whatever the name "
                         "(a gateway sequences no room while a node runs the service)")
    args = ap.parse_args(argv)
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k]
             for k in FULL}
    loadgen.raise_nofile(peers.NOFILE)
    if args.regions == 2:
        return main_regions(args, sizes)
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
