"""IM modules benchmark: what XEP-0191 blocking costs on the message path, and XEP-0163 PEP fan-out.

1. **Blocking.**  Two ``meridian node`` processes, identical but for ``[modules.blocking] enabled =
   false`` on one, each with ``--pairs`` pairs of users logged in (``benchmarks/loadgen.py``: raw TLS
   sockets, no XML parsing).  Every user has a block list of ``--block-items`` unrelated JIDs (bare
   JIDs, a few full JIDs and domains, written through the module's store before the nodes start),
   so ``filter_local_packet`` really matches both the sender's and the recipient's list for every
   message.  A closed loop (``--window`` messages in flight per sender) runs on one node, then on
   the other, ``--rounds`` times in alternating order (on/off, off/on, …): both configurations see
   the same machine.  The goal: blocking on routes at most 5 % fewer messages/s.
2. **PEP fan-out.**  On the node with every module on, one owner with ``--contacts`` contacts
   (accounts and mutual 'both' subscriptions written straight into storage), every contact online
   with an available presence whose XEP-0115 caps advertise ``urn:xmpp:avatar:metadata+notify``
   (each contact answers the server's disco#info for its caps, with a ``ver`` that verifies, so the
   node caches it).  The owner publishes avatar metadata ``--publishes`` times, one at a time
   (the next one once the last notification of the previous one arrived): notifications/s and the
   time from publish to the first and the last notification (p50/p99); then ``--burst`` publishes
   back to back (the most notifications/s the node delivers).

    .venv/bin/python benchmarks/im_modules.py            # 100 pairs, 6 rounds of 4 s; 500 contacts
    .venv/bin/python benchmarks/im_modules.py --quick    # smoke run, < 45 s: 20 pairs, 50 contacts

The nodes are pinned to CPU 0 and the clients to the others (``--no-pin`` to let them float).
Every message body and PEP item id is timed on CLOCK_MONOTONIC, shared by the processes.  Exit
status 0 when the goal is met and nothing was lost, 1 when not (``GOAL MISSED:`` lines), 2 when the
run failed (a node did not start, a client process crashed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import multiprocessing
import os
import platform
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:  # run as a script from anywhere: this checkout, and the benchmarks beside it
        sys.path.insert(0, _p)

import common  # noqa: E402
import loadgen  # noqa: E402
from machine import free_ports, load_average, machine_busy  # noqa: E402
from node_load import BenchmarkError, Node, Report, Workers, message_stats, pct, toml_config  # noqa: E402

DOMAIN = "localhost"
PASSWORD = "bench-password"
OWNER = "pepowner"
AVATAR_METADATA = "urn:xmpp:avatar:metadata"
CAPS_NODE = "https://meridian.example/im-bench"
IDENTITY = ("client", "bot", "", "meridian-im-bench")
FEATURES = ("http://jabber.org/protocol/caps", "http://jabber.org/protocol/disco#info",
            f"{AVATAR_METADATA}+notify")

QUICK = {"pairs": 20, "window": 8, "rounds": 2, "round_seconds": 1.5, "warmup": 0.5, "contacts": 50,
         "publishes": 20, "burst": 10}
FULL = {"pairs": 100, "window": 8, "rounds": 6, "round_seconds": 4.0, "warmup": 1.0, "contacts": 500,
        "publishes": 200, "burst": 50}


def bench_user(i: int) -> str:
    return f"bench{i}"


def contact_user(i: int) -> str:
    return f"pepc{i}"


def block_items(user: str, n: int) -> list[str]:
    """``n`` JIDs nobody of the run uses: mostly bare JIDs, one full JID and one domain in 25."""
    out = []
    for j in range(n):
        if j % 25 == 0:
            out.append(f"spam{j}.blocked.example")
        elif j % 25 == 1:
            out.append(f"troll{j}@blocked.example/{user}")
        else:
            out.append(f"{user}-pest{j}@blocked.example")
    return out


def caps_ver() -> str:
    """XEP-0115 §5.1 ver (sha-1) of this script's clients' disco#info: it verifies, the node caches it."""
    s = "/".join(IDENTITY) + "<" + "".join(f"{f}<" for f in sorted(FEATURES))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


# -- setup: accounts, block lists, roster straight into storage -------------------------------------------


async def prepare_db(conf_path: Path, users: list[str], blocklists: int, owner_contacts: list[str]
                     ) -> dict[str, float]:
    """Accounts ``users`` (and the owner with ``owner_contacts``, mutually subscribed 'both'), and
    ``blocklists`` JIDs blocked by each ``bench*`` user; seconds spent per step."""
    from concurrent.futures import ThreadPoolExecutor

    from cluster_node.modules.blocking.store import BlocklistStore
    from cluster_node.settings import load_settings
    from cluster_node.storage.base import RosterItem
    from cluster_node.wiring import open_accounts

    settings = load_settings(conf_path)
    times: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)))
    async with open_accounts(settings) as (storage, accounts):
        t = time.perf_counter()
        sem = asyncio.Semaphore(64)
        everyone = users + ([OWNER] if owner_contacts else [])

        async def one(name: str) -> None:
            async with sem:
                await accounts.register(DOMAIN, name, PASSWORD)

        await asyncio.gather(*(one(u) for u in everyone))  # PBKDF2 on threads, in parallel
        times["accounts"] = time.perf_counter() - t
        if blocklists:
            t = time.perf_counter()
            store = BlocklistStore(storage)
            await store.migrate()
            for u in users:
                if u.startswith("bench"):
                    await store.add(DOMAIN, u, block_items(u, blocklists), 100_000)
            times["block lists"] = time.perf_counter() - t
        if owner_contacts:
            t = time.perf_counter()
            for c in owner_contacts:
                await storage.put_roster_item(DOMAIN, OWNER, RosterItem(jid=f"{c}@{DOMAIN}", subscription="both"))
                await storage.put_roster_item(DOMAIN, c, RosterItem(jid=f"{OWNER}@{DOMAIN}", subscription="both"))
            times["roster items"] = time.perf_counter() - t
    return times


# -- PEP clients: loadgen's login, a byte scanner for caps queries, items and results ----------------------

CAPS_QUERY = re.compile(rb"<iq\s[^>]*id=['\"](pep-caps-[0-9a-f]+)['\"][^>]*>")
FROM = re.compile(rb"\sfrom=['\"]([^'\"]+)['\"]")
ITEM = re.compile(rb"<item id=['\"]([0-9a-f]{40})['\"]")
RESULT = re.compile(rb"<iq\s[^>]*id=['\"]pub(\d+)['\"][^>]*>")
TAIL = 1024  # bytes kept after the last match: a tag cut by the end of a read


class PepClient(loadgen.Client):
    """A loadgen client whose initial presence carries caps, and which, once logged in, only scans
    what it receives for the node's disco#info queries (answered), PEP items and publish results."""

    def __init__(self, gen: PepGen, username: str, password: str, presence: bytes) -> None:
        super().__init__(gen, username, password)
        self.pep = gen
        self.presence = presence
        self.tail = b""
        self.seen: set[bytes] = set()

    def send(self, data: bytes) -> None:
        if data is loadgen.PRESENCE:  # the login script's initial presence: ours has caps
            data = self.presence
        super().send(data)

    def _plain(self, data: bytes) -> None:
        if data:
            self._scan(data)
        if not self.hot:
            super()._plain(data)

    def _scan(self, data: bytes) -> None:
        g = self.pep
        buf = self.tail + data if self.tail else data
        now = time.monotonic_ns()
        end = 0
        if b"pep-caps-" in buf:
            for m in CAPS_QUERY.finditer(buf):
                f = FROM.search(m.group(0))
                g.answer_caps(self, m.group(1), f.group(1) if f else DOMAIN.encode())
                end = max(end, m.end())
        if b"<item " in buf:
            for m in ITEM.finditer(buf):
                g.item(self, m.group(1), now)
                end = max(end, m.end())
        if self is g.owner and b"pub" in buf:
            for m in RESULT.finditer(buf):
                g.result(int(m.group(1)), now, b"type='result'" in m.group(0) or b'type="result"' in m.group(0))
                end = max(end, m.end())
        if b"error" in data:
            g.errors += data.count(b"type='error'") + data.count(b'type="error"') + data.count(loadgen.STREAM_ERROR)
        rest = buf[end:]
        self.tail = rest[-TAIL:]


@dataclass
class Pub:
    index: int
    sent: int  # monotonic ns
    expected: int
    received: int = 0
    first: int = 0
    last: int = 0
    result: int = 0
    result_ok: bool = False
    owner: int = 0  # the owner's own notification
    done: asyncio.Future[None] | None = None


class PepGen(loadgen.Generator):
    def __init__(self, spec: loadgen.WorkerSpec, loop: asyncio.AbstractEventLoop, owner: str) -> None:
        super().__init__(spec, loop)
        ver = caps_ver()
        presence = (f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' "
                    f"ver='{ver}'/></presence>").encode()
        self.clients = [PepClient(self, u, p, presence) for u, p in spec.users]
        self.owner = PepClient(self, owner, PASSWORD, loadgen.PRESENCE)
        self.disco_reply = (
            "<iq type='result' to='{to}' id='{id}'><query xmlns='http://jabber.org/protocol/disco#info' "
            f"node='{CAPS_NODE}#{ver}'><identity category='{IDENTITY[0]}' type='{IDENTITY[1]}' name='{IDENTITY[3]}'/>"
            + "".join(f"<feature var='{f}'/>" for f in FEATURES) + "</query></iq>")
        self.caps_answered = 0
        self.pubs: dict[bytes, Pub] = {}
        self.by_index: dict[int, Pub] = {}
        self.duplicates = 0
        self.unknown = 0
        self.nonce = os.urandom(4).hex()

    def answer_caps(self, c: PepClient, iq_id: bytes, to: bytes) -> None:
        self.caps_answered += 1
        c.send(self.disco_reply.format(to=to.decode(), id=iq_id.decode()).encode())

    def item(self, c: PepClient, item_id: bytes, now: int) -> None:
        pub = self.pubs.get(item_id)
        if pub is None:
            self.unknown += 1
            return
        if c is self.owner:
            pub.owner = now
            return
        if item_id in c.seen:
            self.duplicates += 1
            return
        c.seen.add(item_id)
        pub.received += 1
        if not pub.first:
            pub.first = now
        pub.last = now
        self._check(pub)

    def result(self, index: int, now: int, ok: bool) -> None:
        pub = self.by_index.get(index)
        if pub is not None and not pub.result:
            pub.result, pub.result_ok = now, ok
            self._check(pub)

    @staticmethod
    def _check(pub: Pub) -> None:
        if pub.received >= pub.expected and pub.result and pub.done is not None and not pub.done.done():
            pub.done.set_result(None)

    def publish(self, index: int) -> Pub:
        item_id = hashlib.sha1(f"{self.nonce}-{index}".encode()).hexdigest()
        pub = Pub(index, 0, len(self.online), done=self.loop.create_future())
        self.pubs[item_id.encode()] = pub
        self.by_index[index] = pub
        pub.sent = time.monotonic_ns()
        self.owner.send(
            f"<iq type='set' id='pub{index}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
            f"<publish node='{AVATAR_METADATA}'><item id='{item_id}'><metadata xmlns='{AVATAR_METADATA}'>"
            f"<info bytes='{20_000 + index}' id='{item_id}' height='64' width='64' type='image/png'/>"
            "</metadata></item></publish></pubsub></iq>".encode())
        return pub

    # -- commands -------------------------------------------------------------------------------------

    async def cmd_login(self) -> dict[str, Any]:
        res = await self.login_all()  # the contacts (their caps queries are answered meanwhile)
        owner_error = ""
        try:
            await asyncio.wait_for(self.owner.login(), self.spec.login_timeout)
        except Exception as e:  # noqa: BLE001 — reported
            owner_error = f"{type(e).__name__}: {e}"
        res.pop("login_s", None)
        return {**res, "owner_error": owner_error, "caps_answered": self.caps_answered}

    async def cmd_warmup(self, tries: int, timeout: float) -> dict[str, Any]:
        """Publish until one publish reaches every contact (their interest is known); the counts."""
        reached: list[int] = []
        for k in range(tries):
            pub = self.publish(1_000_000 + k)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pub.done), timeout)  # type: ignore[arg-type]
            reached.append(pub.received)
            if pub.received >= pub.expected and pub.result_ok:
                break
        return {"reached": reached, "expected": len(self.online), "caps_answered": self.caps_answered}

    async def cmd_sequential(self, n: int, timeout: float) -> dict[str, Any]:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic_ns()
        pubs = []
        for i in range(n):
            pub = self.publish(i)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pub.done), timeout)  # type: ignore[arg-type]
            pubs.append(pub)
        t1 = time.monotonic_ns()
        return self._summary(pubs, t0, t1, ru0)

    async def cmd_burst(self, n: int, timeout: float) -> dict[str, Any]:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic_ns()
        pubs = [self.publish(100_000 + i) for i in range(n)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(p.done) for p in pubs)),  # type: ignore[arg-type]
                                   timeout)
        t1 = max([p.last for p in pubs] + [p.result for p in pubs] + [t0])
        return self._summary(pubs, t0, t1, ru0)

    def _summary(self, pubs: list[Pub], t0: int, t1: int, ru0: Any) -> dict[str, Any]:
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        return {"t0": t0, "t1": t1, "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
                "pubs": [(p.sent, p.result, p.result_ok, p.first, p.last, p.received, p.expected, p.owner)
                         for p in pubs],
                "duplicates": self.duplicates, "unknown": self.unknown, "errors": self.errors, "lost": self.lost}


def pep_worker(spec: loadgen.WorkerSpec, owner: str, conn: Connection) -> None:
    """Entry point of the PEP client process: commands from ``conn`` until 'stop'."""
    if spec.cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, spec.cpus)
    if spec.nofile:
        loadgen.raise_nofile(spec.nofile)
    try:
        asyncio.run(_pep_serve(spec, owner, conn))
    except Exception:  # noqa: BLE001 — reported to the parent
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))


async def _pep_serve(spec: loadgen.WorkerSpec, owner: str, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    gen = PepGen(spec, loop, owner)
    ready = asyncio.Event()
    loop.add_reader(conn.fileno(), ready.set)
    handlers = {"login": gen.cmd_login, "warmup": gen.cmd_warmup, "sequential": gen.cmd_sequential,
                "burst": gen.cmd_burst}
    conn.send(("ready", {"pid": os.getpid()}))
    try:
        while True:
            await ready.wait()
            ready.clear()
            while conn.poll():
                cmd, kwargs = conn.recv()
                if cmd == "stop":
                    gen.online.append(gen.owner)
                    await gen.close_all()
                    conn.send(("stopped", {}))
                    return
                conn.send((cmd, await handlers[cmd](**kwargs)))
    finally:
        loop.remove_reader(conn.fileno())


class PepProcess:
    def __init__(self, spec: loadgen.WorkerSpec, owner: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=pep_worker, args=(spec, owner, child), name="pep-clients", daemon=True)
        self.proc.start()
        child.close()
        self.pid = int(Workers.expect(self.conn, "ready", 60)["pid"])

    def call(self, cmd: str, wait: float, **kwargs: Any) -> Any:
        self.conn.send((cmd, kwargs))
        return Workers.expect(self.conn, cmd, wait)

    def cpu_s(self) -> float:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(self.pid).cpu_times()
            return float(t.user + t.system)
        return 0.0

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop", {}))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# -- the run ---------------------------------------------------------------------------------------------


def node_conf(name: str, data_dir: Path, port: int, tls_port: int, blocking: bool, extra: dict[str, dict[str, Any]],
              args: argparse.Namespace, clients: int) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "node_name": name, "domains": [DOMAIN], "data_dir": str(data_dir), "log_level": args.log_level,
        "scram_iterations": 4096,
        "c2s": {"host": "127.0.0.1", "port": port, "tls_port": tls_port, "handshake_timeout": 120.0,
                "idle_timeout": 3600.0},
        "limits": {"max_connections_per_ip": clients + 1000, "max_connections": clients + 1000,
                   "shaper_rate": 10_000_000, "shaper_burst": 10_000_000,
                   "stanza_rate": 10_000_000, "stanza_burst": 10_000_000},
        "storage": {"url": f"sqlite:///{data_dir / 'meridian.db'}"},
        "admin": {"port": 0}, "user_api": {"port": 0},
    }
    if not args.mam:
        conf["modules.mam"] = {"enabled": False}
    for section, values in extra.items():
        conf[f"modules.{section}"] = dict(values)
    if not blocking:
        conf["modules.blocking"] = {**conf.get("modules.blocking", {}), "enabled": False}
    return conf


async def check_blocking(node_dir: Path, port: int, on: bool, items: int) -> tuple[bool, str]:
    """The block list of bench0 is there and enforced (on), or the module is absent (off)."""
    from tests.helpers.xmpp_raw import RawClient, local

    c = RawClient(port, node_dir / "data" / "tls" / "cert.pem", domain=DOMAIN)
    try:
        await c.start(bench_user(0), PASSWORD, "check", sm=False)
        c.send("<iq type='get' id='bl1'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        reply = await c.next(lambda el: el.get("id") == "bl1")
        got = reply.findall(".//{urn:xmpp:blocking}item")
        if not on:
            ok = reply.get("type") == "error"
            return ok, "block list request answered with an error (module off)" if ok else \
                f"module off but the block list was answered: {reply.get('type')}"
        if reply.get("type") != "result" or len(got) != items:
            return False, f"block list: {reply.get('type')} with {len(got)} items, {items} expected"
        blocked = block_items(bench_user(0), items)[2]
        c.send(f"<message to='{blocked}' type='chat' id='m1'><body>hi</body></message>")
        err = await c.next(lambda el: local(el) == "message" and el.get("id") == "m1")
        ok = err.get("type") == "error" and err.find(".//{urn:xmpp:blocking:errors}blocked") is not None
        return ok, (f"block list of {len(got)} items; a message to a blocked JID answered not-acceptable + blocked"
                    if ok else "a message to a blocked JID was not answered with <blocked/>")
    except Exception as e:  # noqa: BLE001 — reported as a failed check
        return False, f"check failed: {type(e).__name__}: {e}"
    finally:
        await c.close()


@dataclass
class Round:
    config: str
    rate: float
    cpu_us: float
    p50: float
    p99: float
    sent: int
    received: int
    errors: int
    lost_conns: int
    waited_s: float | None
    gen_cpu: float
    extra: dict[str, Any] = field(default_factory=dict)


def closed_round(config: str, node: Node, workers: Workers, args: argparse.Namespace, duration: float) -> Round:
    cpu0, wait0 = node.cpu_s(), node.run_delay_s()
    res = workers.all("closed", duration + args.drain + 60, window=args.window, duration=duration, drain=args.drain)
    cpu = node.cpu_s() - cpu0
    wait1 = node.run_delay_s()
    st = message_stats(res)
    in_window = sum(r["received_in_window"] for r in res)
    lat = st["lat_ms"]
    return Round(config, in_window / (st["end"] - st["start"]), cpu / max(st["received"], 1) * 1e6,
                 pct(lat, 50), pct(lat, 99), st["sent"], st["received"] + st["bad"], st["errors"], st["lost"],
                 None if wait0 is None or wait1 is None else wait1 - wait0, st["gen_cpu_s"])


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="meridian-immod-"))
    node_cpus, gen_cpus = common.split_cpus(args.pin)
    nusers = 2 * args.pairs
    nofile = loadgen.raise_nofile(nusers + args.contacts + 4096)
    extra: dict[str, dict[str, Any]] = {}
    for spec in args.module:
        key, _, value = spec.partition("=")
        section, _, name = key.partition(".")
        v: Any = value
        if value.lower() in ("true", "false"):
            v = value.lower() == "true"
        else:
            with contextlib.suppress(ValueError):
                v = float(value) if "." in value else int(value)
        extra.setdefault(section, {})[name] = v

    ports = free_ports(4)
    dirs = {"on": tmp / "on", "off": tmp / "off"}
    confs: dict[str, Path] = {}
    for k, (name, d) in enumerate(dirs.items()):
        d.mkdir()
        conf = node_conf(f"bench-{name}", d / "data", ports[2 * k], ports[2 * k + 1], name == "on", extra, args,
                         nusers + args.contacts + 1)
        confs[name] = d / "node.toml"
        confs[name].write_text(toml_config(conf))

    print(f"Meridian IM modules benchmark (blocking, PEP): {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}, load average {load_average()}")
    print(f"  {args.pairs} pairs × {args.window} in flight, {args.rounds} rounds × {args.round_seconds:g} s per "
          f"config, block lists of {args.block_items}; PEP: {args.contacts} contacts, {args.publishes} publishes + "
          f"burst of {args.burst}; "
          + (f"nodes pinned to CPU {node_cpus}, clients to CPUs {gen_cpus}" if node_cpus else "no CPU pinning")
          + ("; MAM on" if args.mam else "; MAM off on both nodes")
          + (f"; module settings {extra}" if extra else ""), flush=True)

    users = [bench_user(i) for i in range(nusers)]
    contacts = [contact_user(i) for i in range(args.contacts)]
    t = time.perf_counter()
    t_on = asyncio.run(prepare_db(confs["on"], users + contacts, args.block_items, contacts))
    t_off = asyncio.run(prepare_db(confs["off"], users, args.block_items, []))
    print(f"  setup in {time.perf_counter() - t:.1f} s: on {', '.join(f'{k} {v:.1f} s' for k, v in t_on.items())}; "
          f"off {', '.join(f'{k} {v:.1f} s' for k, v in t_off.items())}", flush=True)

    nodes = {name: Node(dirs[name], confs[name], node_cpus, nofile, False) for name in dirs}
    workers: dict[str, Workers] = {}
    pep: PepProcess | None = None
    report = Report()
    notes: list[str] = []
    rounds: list[Round] = []
    busy0 = machine_busy()
    wall0 = time.perf_counter()
    lost_msgs = 0
    try:
        for name, node in nodes.items():
            node.start(dirs[name] / "data")
        # -- 1. blocking on / off ------------------------------------------------------------------------
        checks = {name: asyncio.run(check_blocking(dirs[name], ports[2 * k], name == "on", args.block_items))
                  for k, name in enumerate(dirs)}
        for k, name in enumerate(dirs):
            spec = loadgen.WorkerSpec(host="127.0.0.1", port=ports[2 * k], direct_tls=False, domain=DOMAIN,
                                      sasl="PLAIN", users=[(u, PASSWORD) for u in users], login_concurrency=50,
                                      login_timeout=args.timeout, cpus=gen_cpus, nofile=nofile)
            workers[name] = Workers([spec])
            logins = workers[name].all("login", args.timeout + 60)
            ok = sum(r["ok"] for r in logins)
            if ok != nusers:
                failures = [f for r in logins for f in r["failures"]]
                raise BenchmarkError(f"{ok} of {nusers} users logged in on the blocking-{name} node: {failures[:3]}")
            workers[name].all("pair", 30, senders=args.pairs)
        for name in dirs:
            nodes[name].wait_idle(10)
            closed_round(name, nodes[name], workers[name], args, args.warmup)  # warm-up, not counted
        for r in range(args.rounds):
            order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
            for name in order:
                nodes[name].wait_idle(5)
                rd = closed_round(name, nodes[name], workers[name], args, args.round_seconds)
                rounds.append(rd)
                share = rd.cpu_us * rd.received / 1e6 / args.round_seconds
                waited = f", waited for a CPU {rd.waited_s:.1f} s" if rd.waited_s is not None else ""
                print(f"  round {r + 1} blocking {name:<3}: {rd.rate:8,.0f} msg/s, node {rd.cpu_us:5.1f} µs/msg, "
                      f"{share * 100:3.0f} % of a CPU{waited}, p99 {rd.p99:6.1f} ms", flush=True)
        for w in workers.values():
            w.stop()
        workers.clear()
        nodes["on"].wait_idle(10)
        nodes["off"].wait_idle(10)
        nodes["off"].stop()

        by = {name: [rd for rd in rounds if rd.config == name] for name in ("on", "off")}
        med = {name: statistics.median(rd.rate for rd in rs) for name, rs in by.items()}
        cpu_med = {name: statistics.median(rd.cpu_us for rd in rs) for name, rs in by.items()}
        pairs_ratio = []  # on / off within each round (the two runs next to each other)
        for r in range(args.rounds):
            a, b = rounds[2 * r], rounds[2 * r + 1]
            on, off = (a, b) if a.config == "on" else (b, a)
            pairs_ratio.append(on.rate / off.rate if off.rate else float("nan"))
        ratio = med["on"] / med["off"] if med["off"] else float("nan")
        slower = (1 - ratio) * 100
        goal = 1 - args.goal / 100
        report.row(f"blocking: closed loop, {args.pairs} pairs × {args.window} in flight, {args.rounds} rounds",
                   "")
        report.row("  messages/s, blocking on (median of rounds)", f"{med['on']:,.0f}")
        report.row("  messages/s, blocking off (median of rounds)", f"{med['off']:,.0f}")
        report.row("  on / off, messages/s (slower by)", f"{ratio:.3f} ({slower:+.1f} %)",
                   f"≥ {goal:.2f} (≤ {args.goal:g} % slower)", ratio >= goal,
                   f"blocking on routes {slower:.1f} % fewer messages/s than off (goal ≤ {args.goal:g} %)")
        report.row("  on / off per round (min / median / max)",
                   f"{min(pairs_ratio):.3f} / {statistics.median(pairs_ratio):.3f} / {max(pairs_ratio):.3f}")
        report.row("  node CPU per message on / off (median)", f"{cpu_med['on']:.1f} / {cpu_med['off']:.1f} µs")
        cpu_ratio = cpu_med["on"] / cpu_med["off"] if cpu_med["off"] else float("nan")
        report.row("  on / off, node CPU per message", f"{cpu_ratio:.3f} ({(cpu_ratio - 1) * 100:+.1f} %)",
                   f"≤ {1 / goal:.3f} (a CPU-bound node ≤ {args.goal:g} % slower)", cpu_ratio <= 1 / goal,
                   f"blocking on costs {(cpu_ratio - 1) * 100:.1f} % more node CPU per message: a CPU-bound node "
                   f"routes {(1 - 1 / cpu_ratio) * 100:.1f} % fewer messages/s (goal ≤ {args.goal:g} %)")
        report.row("  latency p50 on / off (median)", f"{statistics.median(rd.p50 for rd in by['on']):.1f} / "
                   f"{statistics.median(rd.p50 for rd in by['off']):.1f} ms")
        report.row("  latency p99 on / off (median)", f"{statistics.median(rd.p99 for rd in by['on']):.1f} / "
                   f"{statistics.median(rd.p99 for rd in by['off']):.1f} ms")
        waits = [rd.waited_s for rd in rounds if rd.waited_s is not None]
        span = len(rounds) * args.round_seconds
        if waits:
            report.row("  node waiting for a CPU, all rounds", f"{sum(waits):.1f} s of {span:.0f} s")
            if sum(waits) > 0.25 * span:
                notes.append(f"the nodes waited for a CPU {sum(waits) / span * 100:.0f} % of the rounds (other work "
                             "on CPU 0): messages/s then measures the CPU share each node got more than the node; "
                             "the CPU per message is the figure to compare")
        report.row("  client CPU per message (generator)",
                   f"{sum(rd.gen_cpu for rd in rounds) / max(sum(rd.received for rd in rounds), 1) * 1e6:.1f} µs")
        sent = sum(rd.sent for rd in rounds)
        got = sum(rd.received for rd in rounds)
        lost_msgs = sent - got
        errs = sum(rd.errors for rd in rounds)
        lost_conns = sum(rd.lost_conns for rd in rounds)
        report.row("  messages delivered / sent (all rounds)", f"{got:,} / {sent:,}", "all", lost_msgs == 0,
                   f"{lost_msgs:,} messages not delivered")
        report.row("  error stanzas / connections lost", f"{errs} / {lost_conns}", "0 / 0",
                   errs == 0 and lost_conns == 0, f"{errs} errors, {lost_conns} connections lost")
        for name in ("on", "off"):
            ok, what = checks[name]
            report.row(f"  check, blocking {name}", "ok" if ok else "FAILED", "", ok, f"blocking {name}: {what}")
            if not ok:
                notes.append(f"blocking {name}: {what}")

        # -- 2. PEP fan-out ------------------------------------------------------------------------------
        node = nodes["on"]
        spec = loadgen.WorkerSpec(host="127.0.0.1", port=ports[0], direct_tls=False, domain=DOMAIN, sasl="PLAIN",
                                  users=[(u, PASSWORD) for u in contacts], login_concurrency=50,
                                  login_timeout=args.timeout, resource="pep", cpus=gen_cpus, nofile=nofile)
        pep = PepProcess(spec, OWNER)
        t = time.monotonic()
        login = pep.call("login", args.timeout + 120)
        login_wall = time.monotonic() - t
        if login["owner_error"]:
            raise BenchmarkError(f"the PEP owner did not log in: {login['owner_error']}")
        print(f"  PEP: {login['ok']} contacts and the owner online in {login_wall:.1f} s, "
              f"{login['caps_answered']} disco#info answered", flush=True)
        node.wait_idle(10)
        warm = pep.call("warmup", 120, tries=4, timeout=args.pub_timeout)
        cpu0, wait0, ccpu0 = node.cpu_s(), node.run_delay_s(), pep.cpu_s()
        seq = pep.call("sequential", args.publishes * args.pub_timeout + 60, n=args.publishes,
                       timeout=args.pub_timeout)
        cpu_seq, wait_seq, ccpu_seq = node.cpu_s() - cpu0, node.run_delay_s(), pep.cpu_s() - ccpu0
        node.wait_idle(5)
        cpu0, ccpu0 = node.cpu_s(), pep.cpu_s()
        burst = pep.call("burst", args.burst * args.pub_timeout + 60, n=args.burst, timeout=args.pub_timeout * 3)
        cpu_burst, ccpu_burst = node.cpu_s() - cpu0, pep.cpu_s() - ccpu0
        pep.stop()
        pep = None

        n_contacts = login["ok"]
        pubs = seq["pubs"]
        to_last = [(last - sent_) / 1e6 for sent_, _, _, _, last, n, exp, _ in pubs if n >= exp and last]
        to_first = [(first - sent_) / 1e6 for sent_, _, _, first, _, _, _, _ in pubs if first]
        to_result = [(res - sent_) / 1e6 for sent_, res, _, _, _, _, _, _ in pubs if res]
        delivered = sum(p[5] for p in pubs)
        expected = sum(p[6] for p in pubs)
        missing = expected - delivered + sum(p[6] - p[5] for p in burst["pubs"])
        bad_results = sum(1 for p in pubs + burst["pubs"] if not p[1] or not p[2])
        seq_s = (seq["t1"] - seq["t0"]) / 1e9
        b_delivered = sum(p[5] for p in burst["pubs"])
        b_s = (burst["t1"] - burst["t0"]) / 1e9
        report.row(f"PEP: 1 owner, {args.contacts} contacts with avatar metadata +notify caps", "")
        report.row("  contacts online / disco#info answered", f"{n_contacts} / {login['caps_answered']}",
                   f"{args.contacts}", n_contacts == args.contacts, f"{n_contacts} of {args.contacts} contacts online")
        report.row("  warm-up publishes: contacts reached", " → ".join(str(x) for x in warm["reached"]))
        report.row(f"  {args.publishes} publishes one at a time: notifications/s", f"{delivered / seq_s:,.0f}"
                   if seq_s > 0 else "-")
        report.row(f"    publish → last of {n_contacts} notifications p50", f"{pct(to_last, 50):.1f} ms")
        report.row("    publish → last notification p99", f"{pct(to_last, 99):.1f} ms")
        report.row("    publish → last notification max", f"{max(to_last, default=float('nan')):.1f} ms")
        report.row("    publish → first notification p50 / p99",
                   f"{pct(to_first, 50):.1f} / {pct(to_first, 99):.1f} ms")
        report.row("    publish → iq result p50 / p99", f"{pct(to_result, 50):.1f} / {pct(to_result, 99):.1f} ms")
        report.row("    node CPU per publish / per notification",
                   f"{cpu_seq / max(len(pubs), 1) * 1000:.1f} ms / {cpu_seq / max(delivered, 1) * 1e6:.0f} µs")
        report.row("    client CPU per notification", f"{ccpu_seq / max(delivered, 1) * 1e6:.0f} µs")
        if wait0 is not None and wait_seq is not None:
            report.row("    node waiting for a CPU", f"{wait_seq - wait0:.2f} s of {seq_s:.1f} s")
        report.row(f"  burst of {args.burst} publishes: notifications/s", f"{b_delivered / b_s:,.0f}" if b_s > 0
                   else "-")
        report.row("    node CPU per notification", f"{cpu_burst / max(b_delivered, 1) * 1e6:.0f} µs")
        report.row("    client CPU per notification", f"{ccpu_burst / max(b_delivered, 1) * 1e6:.0f} µs")
        report.row("  notifications missing / duplicated", f"{missing} / {burst['duplicates']}", "0 / 0",
                   missing == 0 and burst["duplicates"] == 0,
                   f"{missing} PEP notifications missing, {burst['duplicates']} duplicated")
        report.row("  publish errors / error stanzas", f"{bad_results} / {burst['errors']}", "0 / 0",
                   bad_results == 0 and burst["errors"] == 0,
                   f"{bad_results} publishes without a result, {burst['errors']} error stanzas")
    except BenchmarkError as e:
        print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
        return 2
    finally:
        if pep is not None:
            pep.stop()
        for w in workers.values():
            w.stop()
        for node in nodes.values():
            with contextlib.suppress(psutil.Error, AssertionError):
                if node.alive():
                    node.wait_idle(10)
            node.stop()
    wall = time.perf_counter() - wall0
    busy1 = machine_busy()
    print(f"\n  IM modules, {time.strftime('%Y-%m-%d %H:%M')}:")
    report.print()
    for name, node in nodes.items():
        warnings = [line for line in node.log().splitlines()
                    if (" WARNING " in line or " ERROR " in line) and "self-signed" not in line]
        if warnings:
            print(f"  node blocking-{name} log: {len(warnings)} warning/error lines, e.g. {warnings[-1][:200]}")
    print(f"  load average {load_average()}")
    if busy0 is not None and busy1 is not None:
        cpus_n = os.cpu_count() or 1
        print(f"  the machine was busy {busy1 - busy0:.1f} CPU-s of {wall * cpus_n:.1f} available during the run "
              f"({cpus_n} CPUs × {wall:.1f} s)")
        if (busy1 - busy0) > 0.75 * wall * cpus_n:
            notes.append("the machine was nearly saturated: other work competes with the nodes, compare the "
                         "per-round ratios and the CPU per message rather than absolute rates")
    for note in notes:
        print(f"  note: {note}")
    if args.keep:
        print(f"  kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return common.verdict(report, "GOAL", "goal met, nothing lost")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Defaults (full / --quick): " + ", ".join(
                                         f"{k} {FULL[k]:g} / {QUICK[k]:g}" for k in FULL))
    parser.add_argument("--quick", action="store_true", help="smoke run (< 45 s): the --quick defaults below")
    parser.add_argument("--pairs", type=int, help="blocking: pairs of users, each sending to the other")
    parser.add_argument("--window", type=int, help="blocking: messages in flight per sender")
    parser.add_argument("--rounds", type=int, help="blocking: rounds, each running both configurations")
    parser.add_argument("--round-seconds", type=float, help="blocking: seconds of closed loop per configuration "
                        "and round")
    parser.add_argument("--warmup", type=float, help="blocking: seconds of closed loop per node before the rounds")
    parser.add_argument("--block-items", type=int, default=50, help="JIDs in each user's block list (50)")
    parser.add_argument("--goal", type=float, default=5.0, help="blocking on may route this %% fewer msg/s (5)")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for messages after a round")
    parser.add_argument("--contacts", type=int, help="PEP: contacts of the owner, online")
    parser.add_argument("--publishes", type=int, help="PEP: avatar metadata publishes, one at a time")
    parser.add_argument("--burst", type=int, help="PEP: publishes back to back")
    parser.add_argument("--pub-timeout", type=float, default=10.0, help="seconds a publish's notifications may take")
    parser.add_argument("--mam", action=argparse.BooleanOptionalAction, default=False,
                        help="keep MAM on in both nodes (off by default: archiving each chat message costs the "
                             "node ~0.7 ms on SQLite and hides what blocking costs)")
    parser.add_argument("--module", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="a module setting for both nodes, e.g. blocking.cache_ttl=60 (repeatable)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="pin the nodes to CPU 0 and the clients to the other CPUs (on)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="WARNING")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one login may take")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, node logs)")
    args = parser.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.pairs < 1 or args.window < 1 or args.rounds < 1 or args.contacts < 1 or args.publishes < 1:
        parser.error("--pairs, --window, --rounds, --contacts and --publishes ≥ 1")
    if args.burst < 1:
        args.burst = 1
    if any("=" not in m or "." not in m.partition("=")[0] for m in args.module):
        parser.error("--module NAME.KEY=VALUE")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
