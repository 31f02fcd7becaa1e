"""Chaos suite: faults injected into a real two-region deployment under load, every message accounted for.

Why: a clustered, multi-region server is chosen so that losing a machine, a gateway or the link
between regions costs nobody a message.  Fault tests without load and without end-to-end
accounting cannot show that; this script can.  It starts real processes (as the integration tests
do, through ``tests/helpers``):

============  ==========================================================================
``eu``        nodes ``eu-n1``, ``eu-n2``; gateways ``eu-gw1``, ``eu-gw2``
``us``        nodes ``us-n1``, ``us-n2``; gateway ``us-gw1`` (its only one), reading from a replica
both          a Redis primary, its replica and three Sentinels the gateways follow
              (:class:`~tests.helpers.sentinel.SentinelSet`); one PostgreSQL database for the
              domain (accounts, offline messages, cluster discovery; a SQLite file when
              PostgreSQL is not installed, and then no ``postgres-restart``); each gateway's
              inter-region listener behind a :class:`~tests.helpers.proxy.FaultProxy` (the other
              region dials the proxy), so the eu–us link can be partitioned
============  ==========================================================================

and a load of ``--users`` (200; half per region, alternating between the region's two nodes)
raw XMPP clients with XEP-0198 enabled.  Each user sends ``--rate`` messages a second, in turn to
a user of the other region and to one on the other node of its own region, addressed to the bare
JID, numbered (sender, seq).  Clients answer the server's ``<r/>``, ask for acks themselves, and
when their connection breaks they reconnect to a node of their region (the one they were on
first, then the others) and resume; when resumption fails they bind a new session (and do not
resend what was unacknowledged: a resend could be delivered twice, and every duplicate counted
here must be the server's) and catch up from their archive (XEP-0313, from the archive id of the
last message they received live), as Conversations does: what the lost session had been given but
not acknowledged — a node's crash takes it along — is there.

Scenarios, one at a time while the load runs (``--scenario NAME``, repeatable; default all):

``node-kill``          kill -9 of eu-n1: its users reconnect to eu-n2 (resumption fails: the
                       state died with the node), then eu-n1 is restarted
``gateway-kill``       kill -9 of eu-gw2, one of eu's two gateways; restarted afterwards
``only-gateway-kill``  kill -9 of us-gw1, us's only gateway, restarted after 10 s (quick: 3 s)
``redis-failover``     kill -9 of the Redis primary: the Sentinels promote the replica; the old
                       primary is restarted 15 s (quick: 4 s) after the kill, and becomes a replica
``partition``          the eu–us link blackholed (both directions, every proxy) for 30 s
                       (quick: 5 s), then healed
``move-region``        a tenth of eu's users (at least 2) close their stream in eu and log in in us
                       mid-conversation (same resource)
``rolling-restart``    every node and gateway of eu in turn: SIGTERM, wait for the exit, start,
                       wait until it has rejoined, next

``postgres-restart``   the domain's PostgreSQL stopped at once (an immediate shutdown: every
                       backend killed, no checkpoint) and started again on its data 10 s (quick:
                       3 s) later; crash recovery runs.  Nodes lose discovery, accounts and
                       offline storage meanwhile, and must carry on with the links they have

Each scenario: everything up and every client online; ``warm`` seconds of load; the fault (and
its repair); ``after`` seconds more of load; then no new messages, and a drain (acks asked for,
until every acknowledged message is delivered, bounced with an error or found in offline storage,
or nothing changed for a while); the offline storage is read back from the database.  Per
scenario it counts, over the messages created during it:

- **sent**: written to a socket; **acked**: acknowledged by the server (``<a h/>`` or
  ``<resumed h/>``);
- **delivered**: reached the recipient (once at least), of which **via offline**: from offline
  storage (with a ``<delay/>``), i.e. only once the recipient logged in again;
- **via archive**: not delivered, not in offline storage, but fetched by the recipient's catch-up
  from its archive after a failed resumption;
- **parked**: not delivered but in offline storage at the end — although every recipient stayed
  online: it waits for the recipient's next login;
- **errors**: an error came back to the sender instead (e.g. ``remote-server-timeout``);
- **duplicates**: delivered more than once, or delivered and still in offline storage;
- **lost**: acknowledged, yet not delivered, not in offline storage, not in the archive the
  recipient caught up from, and no error came back — the number that must be 0;
- **unacked lost**: sent, never acknowledged (the connection died first and resumption failed),
  not delivered: what XEP-0198 leaves the client to resend;
- **out of order**: deliveries of a sender→recipient pair that arrived after a later message of
  the same pair;
- **late**: created after the fault and not delivered on time (live, within 1 s): delivered later,
  via offline storage, parked, bounced or lost;
- **recovery**: seconds from the fault — or from its repair, when the fault needs one (the only
  gateway restarted, the partition healed) — until the last late message was created.  0: nothing
  was late after that moment (a message created during a partition and delivered after the heal
  is late, but does not count towards recovery).

The goal: 0 lost and 0 duplicates in every scenario.  Parked messages and errors do not miss it,
but each is printed (``NOT LIVE: …``): an online recipient should get every message as soon as the
route is back.  The JSON file also has, per scenario, the story of the first lost, duplicated and
parked messages, the warnings each server logged meanwhile, the clients' reconnections, and how
long their logins took.

The servers run with the integration tests' timers (``tests/helpers/regions.py``): cluster pings
every 0.3 s, a member down after 1.5 s of silence; inter-region pings every 0.5 s, a link down after
3 s; a relayed stanza whose user moved re-resolved every 200 ms, 10 times.  Offline storage takes
100,000 messages per user, so that nothing is refused for lack of room.

    .venv/bin/python -m benchmarks.chaos                      # 200 users, every scenario (about 4 min)
    .venv/bin/python -m benchmarks.chaos --quick              # 20 users, short faults (about 80 s)
    .venv/bin/python -m benchmarks.chaos --quick --scenario partition --keep

Results go to ``benchmarks/results/chaos-<date>.json`` (or ``--out``).  Exit status 0 when every
scenario met the goal, 1 when one did not (``GOAL MISSED: …``), 2 when the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import json
import os
import platform
import random
import re
import resource
import shutil
import ssl
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project from this checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.common import register_accounts  # noqa: E402
from cluster_node.net.control import query_control  # noqa: E402
from cluster_node.storage import open_storage  # noqa: E402
from tests.helpers.node import NodeProcess, toml_dump  # noqa: E402
from tests.helpers.postgres import PostgresServer, pg_bindir  # noqa: E402
from tests.helpers.proxy import FaultProxy  # noqa: E402
from tests.helpers.redis import redis_server_binary  # noqa: E402
from tests.helpers.regions import DOMAIN, Region, make_region  # noqa: E402
from tests.helpers.sentinel import MASTER, SentinelSet  # noqa: E402
from tests.helpers.xmpp_raw import SM, RawClient, local  # noqa: E402

__all__ = ["main", "SCENARIOS"]

PASSWORD = "chaos-password"
RESOURCE = "chaos"
DELAY_NS = "urn:xmpp:delay"
MAM_NS = "urn:xmpp:mam:2"  # XEP-0313
RSM_NS = "http://jabber.org/protocol/rsm"
SID_NS = "urn:xmpp:sid:0"  # XEP-0359: the archive's id on each message it delivers
FORWARD_NS = "urn:xmpp:forward:0"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAM_NS = "http://etherx.jabber.org/streams"
BODY = re.compile(r"^chaos (\S+) (\S+) (\d+)$")
STORED_BODY = re.compile(rb"chaos ([\w-]+) (\w+) (\d+)<")  # in a stanza read back from offline storage


class ChaosError(Exception):
    """The run itself failed (a process did not come up, clients could not log in)."""


def now() -> float:
    return time.monotonic()


def cpu_s() -> float:
    """CPU seconds this process (the clients) used: a saturated load generator shows here."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def spread(xs: list[float]) -> dict[str, float] | None:
    """n, p50 and max of some durations (seconds)."""
    if not xs:
        return None
    xs = sorted(xs)
    return {"n": len(xs), "p50": round(xs[len(xs) // 2], 3), "max": round(xs[-1], 3)}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- parameters ----------------------------------------------------------------------------------


@dataclass
class Params:
    users: int = 200
    rate: float = 0.5  # messages per second per user
    warm: float = 5.0  # seconds of load before the fault
    after: float = 10.0  # seconds of load after the fault (or its repair)
    gateway_down: float = 10.0  # the only gateway's outage
    redis_down: float = 15.0  # the old Redis primary's
    postgres_down: float = 10.0
    partition: float = 30.0
    slow: float = 1.0  # later than this is not on time
    drain: float = 40.0  # at most, after the load stops
    quiet: float = 8.0  # the drain ends once nothing changed for this long
    settle: float = 60.0  # at most, to get everything up and every client online between scenarios

    @classmethod
    def quick(cls) -> Params:
        return cls(users=20, rate=1.0, warm=2.0, after=4.0, gateway_down=3.0, redis_down=4.0, postgres_down=3.0,
                   partition=5.0, drain=15.0,
                   quiet=3.0, settle=45.0)


# -- the deployment -------------------------------------------------------------------------------


@dataclass
class World:
    base: Path
    redis: SentinelSet
    regions: dict[str, Region]
    proxies: dict[str, FaultProxy]  # gateway name → the proxy in front of its inter-region listener
    db_url: str
    postgres: PostgresServer | None = None  # the domain's database server (None: SQLite)

    @property
    def processes(self) -> list[NodeProcess]:
        return [p for r in self.regions.values() for p in r.processes]

    def process(self, name: str) -> NodeProcess:
        return next(p for p in self.processes if p.name == name)


def build(base: Path) -> World:
    """Configure (not start) both regions, Redis and the proxies."""
    redis = SentinelSet().start()
    sentinel: dict[str, Any] = {"sentinels": redis.addresses, "sentinel_master": MASTER}
    postgres: PostgresServer | None = None
    if pg_bindir() is not None:
        postgres = PostgresServer().start()
        db_url = postgres.create_database("chaos")
    else:
        db_url = f"sqlite:///{base / 'domain.db'}"
    # Offline storage large enough for every message a long outage could park (the point is to see them).
    node_settings = {"offline": {"max_messages": 100_000}}
    regions = {
        "eu": make_region(base, "eu", storage_url=db_url, redis_url=redis.primary.url, nodes=2, gateways=2,
                          gdistrib={"redis": sentinel}, node_settings=node_settings),
        "us": make_region(base, "us", storage_url=db_url, redis_url=redis.primary.url, nodes=2, gateways=1,
                          gdistrib={"redis": {**sentinel, "read_from_replicas": True}}, node_settings=node_settings),
    }
    proxies = {}
    for region in regions.values():
        for gw in region.gateways:
            conf = tomllib.loads(gw.config.read_text())
            listen = conf["gdistrib"]["connections"]["endpoints"][0]
            proxy = FaultProxy("127.0.0.1", int(listen.rpartition(":")[2])).start()
            conf["gdistrib"]["connections"]["advertised_endpoints"] = [proxy.address]
            gw.config.write_text(toml_dump(conf))
            proxies[gw.name] = proxy
    return World(base, redis, regions, proxies, db_url, postgres)


async def register(world: World, names: list[str]) -> None:
    """Accounts straight into the domain's database (one SCRAM derivation: they share a password)."""
    await register_accounts(world.db_url, DOMAIN, names, PASSWORD)


async def query(p: NodeProcess, category: str, op: str) -> Any:
    """A control-socket query (what ``meridian ctl`` uses): ``data[category][op]``."""
    status, body = await query_control(p.workdir / "data" / "control.sock", category, op)
    if status != 200 or "errors" in body:
        raise ChaosError(f"{p.name}: {category} {op}: {body}")
    return body["data"][category][op]


async def check(probe: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await probe()
    except (TimeoutError, OSError, ChaosError, LookupError, ValueError):
        return None


async def wait_for(probe: Callable[[], Awaitable[Any]], timeout: float, what: str) -> None:
    deadline = now() + timeout
    while not await check(probe):
        if now() > deadline:
            raise ChaosError(f"timed out ({timeout:g} s) waiting for {what}")
        await asyncio.sleep(0.2)


async def joined(world: World, p: NodeProcess) -> bool:
    region = next(r for r in world.regions.values() if p in r.processes)
    names = sorted(x.name for x in region.processes)
    info = await query(p, "cets", "systemInfo")
    return bool(info["joinedNodes"] == names)


async def links_up(world: World) -> bool:
    for name, region in world.regions.items():
        others = [r for r in world.regions if r != name]
        for gw in region.gateways:
            links = (await query(gw, "gdistrib", "status"))["links"]
            if not all(links.get(o, {}).get("up") for o in others):
                return False
    return True


async def start(p: NodeProcess) -> None:
    """Start a process (blocking: in a thread, so the clients' loop goes on)."""
    await asyncio.to_thread(p.start, 60.0)


async def kill(p: NodeProcess) -> None:
    assert p.proc is not None
    p.proc.kill()
    await asyncio.to_thread(p.proc.wait)


async def terminate(p: NodeProcess) -> None:
    await asyncio.to_thread(p.stop, 15, 60.0)


async def world_ready(world: World, timeout: float) -> None:
    """Every process running (restarted if it is not), every region joined, the links up."""
    dead = [p for p in world.processes if not p.alive()]
    await asyncio.gather(*(start(p) for p in dead))
    for p in world.processes:
        await wait_for(functools.partial(joined, world, p), timeout, f"{p.name} to join its region")
    await wait_for(lambda: links_up(world), timeout, "the eu–us links")


def log_sizes(world: World) -> dict[str, int]:
    return {p.name: p.log_path.stat().st_size if p.log_path.exists() else 0 for p in world.processes}


_NUMBERS = re.compile(r"\d+(\.\d+)?")
_JIDS = re.compile(r"\S+@\S+")


def warnings_since(world: World, since: dict[str, int]) -> dict[str, dict[str, int]]:
    """Warnings and errors each process logged since ``since`` (its log's size then), grouped by
    message with numbers and JIDs blanked: what the servers saw of the fault."""
    out: dict[str, dict[str, int]] = {}
    for p in world.processes:
        try:
            with open(p.log_path, "rb") as f:
                f.seek(since.get(p.name, 0))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            continue
        seen: Counter[str] = Counter()
        for line in text.splitlines():
            for level in (" WARNING ", " ERROR ", " CRITICAL "):
                if level in line and "self-signed" not in line:
                    msg = line.split(level, 1)[1]
                    seen[level.strip() + " " + _NUMBERS.sub("N", _JIDS.sub("JID", msg))[:160]] += 1
        if "Traceback" in text:
            seen["Traceback (see the log)"] += text.count("Traceback")
        if seen:
            out[p.name] = dict(seen.most_common(8))
    return out


# -- the ledger: every message, from creation to delivery ----------------------------------------------


@dataclass
class Msg:
    sender: str  # local part
    seq: int
    to: str  # local part
    scenario: str
    created: float
    written: float | None = None
    writes: int = 0  # resent after a resumption: more than 1
    acked: float | None = None
    unknown: bool = False  # unacked when resumption failed: the client cannot tell
    error: str | None = None
    deliveries: list[tuple[float, bool]] = field(default_factory=list)  # (when, from offline storage)
    late_copies: int = 0  # arrived on a stream the client had already closed (the server re-routes those)
    stored: bool = False  # in offline storage at the end
    archived: bool = False  # fetched from the recipient's archive by its catch-up after a failed resumption

    @property
    def id(self) -> str:
        return f"{self.sender}.{self.seq}"

    @property
    def reached(self) -> bool:
        """The recipient has it, or will: delivered, in offline storage, or caught up from the archive."""
        return bool(self.deliveries) or self.stored or self.archived

    def xml(self) -> bytes:
        return (f"<message to='{self.to}@{DOMAIN}' type='chat' id='{self.id}'><body>chaos {self.scenario} "
                f"{self.sender} {self.seq}</body></message>").encode()


class Ledger:
    def __init__(self) -> None:
        self.msgs: dict[tuple[str, int], Msg] = {}
        self.strays = 0  # chaos messages delivered to someone else, or unknown
        self.changed = now()

    def touch(self) -> None:
        self.changed = now()

    def by_id(self, msg_id: str | None) -> Msg | None:
        sender, _, seq = (msg_id or "").rpartition(".")
        return self.msgs.get((sender, int(seq))) if seq.isdigit() else None


# -- the clients ------------------------------------------------------------------------------------


@functools.cache
def client_tls() -> ssl.SSLContext:
    """One context for every client: making one loads the system's CAs (~20 ms), which blocked
    the clients' loop for seconds when a hundred reconnected at once."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Stream(RawClient):
    """One XMPP stream of a user (tests/helpers' raw client).  Every node has its own self-signed
    certificate and users move between nodes: the certificate is not checked."""

    closing = False  # the client sent </stream:stream>: what still arrives is re-routed by the server
    marks: list[float]  # when each step of connect() ended

    def drop(self) -> None:
        """``die()``, on a socket that may be gone already (reset by the server)."""
        with contextlib.suppress(OSError):
            self.die()
        self.closed = True

    async def connect(self) -> Stream:
        self.marks = [now()]
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.marks.append(now())
        self._restart()
        await self.next_named("features")
        self.marks.append(now())
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.next_named("proceed")
        await self.writer.start_tls(client_tls(), server_hostname=self.domain)
        self.marks.append(now())
        self._restart()
        self.features = await self.next_named("features")
        self.marks.append(now())
        return self


class User:
    """One account, one resource, online through the whole run: reconnects and resumes by itself."""

    def __init__(self, name: str, region: str, node: int, load: Load) -> None:
        self.name = name
        self.region = region
        self.home = node  # index of the node of its region it logs in to first
        self.load = load
        self.partners: list[str] = []
        self.stream: Stream | None = None
        self.node: str | None = None
        self.ready = asyncio.Event()
        self.sm_id: str | None = None
        self.h_in = 0  # stanzas received on this SM session
        self.server_h = 0  # our stanzas the server acknowledged on it
        self.unacked: deque[Msg | None] = deque()  # None: a stanza that is not a chaos message (presence…)
        self.outbox: deque[Msg] = deque()  # created while offline
        self.seq = 0
        self.since_r = 0
        self.moving = False
        self.archive_last: str | None = None  # the archive id of the last message received live
        self.bound_at = datetime.datetime.now(datetime.UTC)  # when the current session was bound
        self.queries = 0
        self.reconnecting: asyncio.Task[None] | None = None
        self.stats: Counter[str] = Counter()

    # -- connecting

    def nodes(self) -> list[NodeProcess]:
        """The region's nodes, the one it was last on (or its home) first."""
        nodes = self.load.world.regions[self.region].nodes
        first = next((i for i, n in enumerate(nodes) if n.name == self.node), self.home % len(nodes))
        return nodes[first:] + nodes[:first]

    async def connect(self, deadline: float) -> None:
        """Log in (resuming the SM session if there is one) on a node of the region, retrying."""
        delay = 0.1
        while True:
            for node in self.nodes():
                stream = Stream(node.port, node.cert, domain=DOMAIN)
                times = [now()]
                try:
                    async with asyncio.timeout(10):
                        await stream.connect()
                        times.append(now())
                        await stream.login(self.name, PASSWORD)
                        times.append(now())
                        await self._session(stream)
                        times.append(now())
                except PermissionError as e:  # SASL <failure/>: which condition
                    tags = re.findall(r"<(?:ns\d+:)?([a-z-]+)", str(e))
                    self.stats[f"login refused: {tags[1] if len(tags) > 1 else e}"] += 1
                    stream.drop()
                    continue
                except Exception as e:  # noqa: BLE001 — any failure: the next node, or later
                    self.stats[f"connect failed: {type(e).__name__}"] += 1
                    stream.drop()
                    continue
                self.load.phases.append((times[1] - times[0], times[2] - times[1], times[3] - times[2]))
                m = stream.marks
                self.load.tls_phases.append(tuple(b - a for a, b in zip(m, m[1:], strict=False)))
                self._online(stream, node.name)
                return
            if now() > deadline:
                raise ChaosError(f"{self.name} could not log in to any node of {self.region}")
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    async def _session(self, stream: Stream) -> None:
        if self.sm_id is not None:
            answer = await stream.resume(self.sm_id, self.h_in)
            if local(answer) == "resumed":
                self.stats["resumed"] += 1
                self._acked(int(answer.get("h", "0")))
                for msg in self.unacked:  # XEP-0198 §5: what the server did not handle is sent again
                    if msg is not None:
                        stream.send(msg.xml())
                        msg.writes += 1
                self.unacked = deque(m for m in self.unacked if m is not None)
                return
            self.stats["resume failed"] += 1
        failed = self.sm_id is not None
        self._unknown()
        self.sm_id, self.h_in, self.server_h = None, 0, 0
        await stream.bind(RESOURCE)
        enabled = await stream.enable()
        if local(enabled) != "enabled" or not enabled.get("id"):
            raise ChaosError(f"{self.name}: SM not enabled: {ET.tostring(enabled)!r}")
        self.sm_id = enabled.get("id")
        self._stanza(stream, "<presence/>")  # available: bare-JID messages come here, offline storage is flushed
        self.stats["bound"] += 1
        if failed:
            # What the old session had been given but not acknowledged died with it (a node's
            # crash): a client catches up from its archive, as Conversations does (XEP-0313).
            self._catch_up(stream, self.archive_last)
        self.bound_at = datetime.datetime.now(datetime.UTC)

    def _catch_up(self, stream: Stream, after: str | None, page: str | None = None) -> None:
        """One page of the archive from the last message received live (or since the lost
        session was bound), forward; the next page (RSM ``<after/>`` the last one: no form needed
        any more) is asked for when this one's ``<fin/>`` comes."""
        self.queries += 1
        if page is not None:
            form = ""
        else:
            if after is not None:
                field = f"<field var='after-id'><value>{after}</value></field>"
            else:
                stamp = (self.bound_at - datetime.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                field = f"<field var='start'><value>{stamp}</value></field>"
            form = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                    f"<value>{MAM_NS}</value></field>{field}</x>")
        rsm = f"<set xmlns='{RSM_NS}'><max>100</max>{f'<after>{page}</after>' if page else ''}</set>"
        self._stanza(stream, f"<iq type='set' id='catch-up-{self.queries}'><query xmlns='{MAM_NS}'>"
                             f"{form}{rsm}</query></iq>")

    def _unknown(self) -> None:
        """The SM session is gone with stanzas unacknowledged: the client cannot know their fate."""
        for msg in self.unacked:
            if msg is not None:
                msg.unknown = True
        self.unacked.clear()

    def _stanza(self, stream: Stream, data: str) -> None:
        """A stanza that is not a chaos message: the server counts it in ``h`` too."""
        stream.send(data)
        self.unacked.append(None)

    def _online(self, stream: Stream, node: str) -> None:
        self.stream, self.node = stream, node
        self.ready.set()
        self.load.spawn(self._read(stream))
        while self.outbox:
            self._write(self.outbox.popleft())
        self.ask()

    def _lost(self, stream: Stream) -> None:
        """The stream broke (not by our choice): reconnect."""
        if stream is not self.stream or self.moving:
            return
        self.stream = None
        self.ready.clear()
        self.stats["disconnected"] += 1
        if self.load.running and (self.reconnecting is None or self.reconnecting.done()):
            self.reconnecting = self.load.spawn(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self.connect(now() + 300)
        except Exception as e:  # noqa: BLE001 — counted and shown: the client stays offline
            self.stats[f"gave up reconnecting: {type(e).__name__}: {e}"] += 1
            say(f"{self.name} gave up reconnecting: {type(e).__name__}: {e}")

    # -- reading

    async def _read(self, stream: Stream) -> None:
        try:
            while True:
                el = await stream.next(timeout=3600)
                if local(el) == "stream" or stream.closed:
                    break
                self._element(stream, el)
        except Exception:  # noqa: BLE001 — reset, closed, TLS error: the connection is gone
            pass
        stream.drop()
        self._lost(stream)

    def _element(self, stream: Stream, el: ET.Element) -> None:
        name = local(el)
        if name in ("message", "presence", "iq"):
            if not stream.closing:
                self.h_in += 1
            if name == "message":
                result = el.find(f"{{{MAM_NS}}}result")
                if result is not None:
                    self.load.from_archive(self, result)
                    return
                sid = el.find(f"{{{SID_NS}}}stanza-id")
                if sid is not None and sid.get("by") == f"{self.name}@{DOMAIN}" and not stream.closing:
                    self.archive_last = sid.get("id")
                self.load.received(self, stream, el)
            elif name == "iq" and el.get("type") in ("get", "set"):
                self._stanza(stream, f"<iq type='result' id='{el.get('id', '')}' to='{el.get('from', DOMAIN)}'/>")
            elif name == "iq" and (el.get("id") or "").startswith("catch-up-"):
                self._caught_up(stream, el)
        elif el.tag == f"{{{SM}}}r":
            stream.send(f"<a xmlns='{SM}' h='{self.h_in}'/>")
        elif el.tag == f"{{{SM}}}a":
            self._acked(int(el.get("h", "0")))
        elif el.tag == f"{{{STREAM_NS}}}error":
            cond = next((local(c) for c in el if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-streams}")), "?")
            self.stats[f"stream error: {cond}"] += 1

    def _caught_up(self, stream: Stream, el: ET.Element) -> None:
        fin = el.find(f"{{{MAM_NS}}}fin")
        if el.get("type") != "result" or fin is None:
            self.stats["archive catch-up failed"] += 1
            return
        last = fin.findtext(f"{{{RSM_NS}}}set/{{{RSM_NS}}}last")
        if fin.get("complete") != "true" and last:
            self._catch_up(stream, None, last)
        else:
            self.stats["caught up from the archive"] += 1

    def _acked(self, h: int) -> None:
        t = now()
        while self.server_h < h and self.unacked:
            msg = self.unacked.popleft()
            if msg is not None and msg.acked is None:
                msg.acked = t
            self.server_h += 1
        self.server_h = h
        self.load.ledger.touch()

    # -- writing

    def send(self, msg: Msg) -> None:
        if self.stream is None or not self.ready.is_set():
            self.outbox.append(msg)  # a real client keeps what its user typed while it reconnects
        else:
            self._write(msg)

    def _write(self, msg: Msg) -> None:
        assert self.stream is not None
        self.stream.send(msg.xml())
        msg.written = msg.written or now()
        msg.writes += 1
        self.unacked.append(msg)
        self.since_r += 1
        if self.since_r >= 3:
            self.ask()

    def ask(self) -> None:
        """``<r/>``: the server answers with how many of our stanzas it handled."""
        self.since_r = 0
        if self.stream is not None and self.ready.is_set():
            self.stream.send(f"<r xmlns='{SM}'/>")

    # -- moving region

    async def move(self, region: str) -> None:
        """Close the stream cleanly (everything acknowledged both ways first), log in in ``region``."""
        old = self.stream
        self.moving = True
        self.ready.clear()
        try:
            if old is not None:
                deadline = now() + 3
                old.send(f"<r xmlns='{SM}'/>")
                while self.unacked and now() < deadline:
                    await asyncio.sleep(0.05)
                old.send(f"<a xmlns='{SM}' h='{self.h_in}'/>")
                old.closing = True
                old.send("</stream:stream>")
                for _ in range(60):  # until the server closes too
                    if old.closed:
                        break
                    await asyncio.sleep(0.05)
                old.drop()
            self._unknown()
            self.stream, self.sm_id, self.h_in, self.server_h = None, None, 0, 0
            self.region, self.node = region, None
        finally:
            self.moving = False
        await self.connect(now() + 60)
        self.stats["moved"] += 1

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.closing = True
            await stream.close()


class Load:
    """The users, their senders, and what they received."""

    def __init__(self, world: World, users: int, rate: float) -> None:
        self.world = world
        self.rate = rate
        self.ledger = Ledger()
        self.running = True
        self.scenario = ""
        self.senders: list[asyncio.Task[None]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.phases: list[tuple[float, float, float]] = []  # each login: TCP + TLS, SASL, resume or bind
        self.tls_phases: list[tuple[float, ...]] = []  # TCP connect, features, STARTTLS + handshake, features
        self.lag = 0.0  # the longest the clients' event loop was late (a busy load generator shows here)
        half = max(2, users // 2)
        self.users: dict[str, User] = {}
        for region in ("eu", "us"):
            for k in range(half):
                name = f"{region}{k:03d}"
                self.users[name] = User(name, region, k % 2, self)
        for k in range(half):  # the other region's user k, and the next one of its own region (other node)
            for region, other in (("eu", "us"), ("us", "eu")):
                self.users[f"{region}{k:03d}"].partners = [f"{other}{k:03d}", f"{region}{(k + 1) % half:03d}"]

    async def watch_lag(self) -> None:
        while True:
            t = now()
            await asyncio.sleep(0.05)
            self.lag = max(self.lag, now() - t - 0.05)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def login_all(self, timeout: float) -> None:
        gate = asyncio.Semaphore(16)
        deadline = now() + timeout

        async def one(u: User) -> None:
            async with gate:
                await u.connect(deadline)

        await asyncio.gather(*(one(u) for u in self.users.values()))

    async def all_online(self, timeout: float) -> None:
        async def ready() -> bool:
            return all(u.ready.is_set() for u in self.users.values())

        try:
            await wait_for(ready, timeout, "every client online")
        except ChaosError:
            offline = {u.name: dict(u.stats) for u in self.users.values() if not u.ready.is_set()}
            raise ChaosError(f"clients still offline after {timeout:g} s: {offline}") from None

    # -- the senders

    def begin(self, scenario: str) -> None:
        self.scenario = scenario
        self.senders = [asyncio.ensure_future(self._talk(u)) for u in self.users.values()]

    async def stop_sending(self) -> None:
        for task in self.senders:
            task.cancel()
        await asyncio.gather(*self.senders, return_exceptions=True)
        self.senders = []

    async def _talk(self, u: User) -> None:
        interval = 1.0 / self.rate
        due = now() + random.uniform(0, interval)
        turn = random.randrange(2)
        while True:
            await asyncio.sleep(max(0.0, due - now()))
            due += interval
            turn ^= 1
            msg = Msg(u.name, u.seq, u.partners[turn], self.scenario, now())
            u.seq += 1
            self.ledger.msgs[(msg.sender, msg.seq)] = msg
            u.send(msg)

    # -- receiving

    def received(self, u: User, stream: Stream, el: ET.Element) -> None:
        t = now()
        self.ledger.touch()
        if el.get("type") == "error":
            msg = self.ledger.by_id(el.get("id"))
            if msg is not None:
                err = el.find("{jabber:client}error")
                cond = next((local(c) for c in err if c.tag.startswith(f"{{{STANZAS_NS}}}")), "?") \
                    if err is not None else "?"
                msg.error = msg.error or cond
            return
        body = el.findtext("{jabber:client}body") or ""
        m = BODY.match(body)
        if m is None:
            return
        msg = self.ledger.msgs.get((m.group(2), int(m.group(3))))
        if msg is None or msg.to != u.name:
            self.ledger.strays += 1
            return
        if stream.closing:
            msg.late_copies += 1
            return
        msg.deliveries.append((t, el.find(f"{{{DELAY_NS}}}delay") is not None))

    def from_archive(self, u: User, result: ET.Element) -> None:
        """A message of ``u``'s catch-up query: the recipient has it now, if it had not yet."""
        inner = result.find(f"{{{FORWARD_NS}}}forwarded/{{jabber:client}}message")
        m = BODY.match(inner.findtext("{jabber:client}body") or "") if inner is not None else None
        msg = self.ledger.msgs.get((m.group(2), int(m.group(3)))) if m else None
        if msg is not None and msg.to == u.name and not msg.archived:
            msg.archived = True
            self.ledger.touch()

    # -- the end of a scenario

    def pending(self, scenario: str) -> int:
        """Messages of ``scenario`` whose fate is not known yet."""
        return sum(1 for m in self.ledger.msgs.values()
                   if m.scenario == scenario and not (m.error or m.reached or m.unknown))

    async def drain(self, scenario: str, timeout: float, quiet: float) -> None:
        """Until every message of ``scenario`` is accounted for, or nothing changed for ``quiet`` s."""
        deadline = now() + timeout
        last_read = 0.0
        while now() < deadline:
            for u in self.users.values():
                u.ask()
            if now() - last_read > 2.0:
                await self.read_offline(scenario)
                last_read = now()
            if not self.pending(scenario) or now() - self.ledger.changed > quiet:
                break
            await asyncio.sleep(0.5)
        await self.read_offline(scenario)

    async def read_offline(self, scenario: str) -> None:
        """Mark the messages of ``scenario`` found in offline storage (read, not removed)."""
        storage = open_storage(self.world.db_url)
        await storage.open()
        try:
            for name in self.users:
                for _, raw in await storage.fetch_offline(DOMAIN, name):
                    m = STORED_BODY.search(raw)
                    if m and m.group(1).decode() == scenario:
                        msg = self.ledger.msgs.get((m.group(2).decode(), int(m.group(3))))
                        if msg is not None and not msg.stored:
                            msg.stored = True
                            self.ledger.touch()
        finally:
            await storage.close()

    async def close(self) -> None:
        self.running = False
        await self.stop_sending()
        for u in self.users.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(u.close(), 3)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# -- the scenarios --------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What a scenario did: when the fault began, when it was repaired (recovery counts from
    there), and a restore step that brings the deployment back afterwards (not measured)."""

    began: float
    repaired: float
    what: str
    restore: Callable[[], Awaitable[None]] | None = None


async def node_kill(world: World, load: Load, p: Params) -> Fault:
    n1 = world.process("eu-n1")
    t = now()
    await kill(n1)
    on = sum(1 for u in load.users.values() if u.node == "eu-n1")
    return Fault(t, t, f"kill -9 eu-n1 ({on} users on it)", lambda: start(n1))


async def gateway_kill(world: World, load: Load, p: Params) -> Fault:
    gw2 = world.process("eu-gw2")
    t = now()
    await kill(gw2)
    return Fault(t, t, "kill -9 eu-gw2 (eu-gw1 stays)", lambda: start(gw2))


async def only_gateway_kill(world: World, load: Load, p: Params) -> Fault:
    gw = world.process("us-gw1")
    t = now()
    await kill(gw)
    await asyncio.sleep(p.gateway_down)
    repaired = now()
    await start(gw)
    return Fault(t, repaired, f"kill -9 us-gw1, restarted after {p.gateway_down:g} s "
                              f"(up {now() - repaired:.1f} s later)")


async def redis_failover(world: World, load: Load, p: Params) -> Fault:
    sentinels = world.redis
    t = now()
    old, survivor = sentinels.primary, sentinels.kill_primary()
    promoted = await asyncio.to_thread(sentinels.wait_promoted, survivor, 30.0)
    await asyncio.sleep(max(0.0, p.redis_down - (now() - t)))
    await asyncio.to_thread(old.start)  # empty, as a primary: the Sentinels make it the new one's replica
    sentinels.primary, sentinels.replica = survivor, old
    return Fault(t, t, f"kill -9 of the Redis primary, replica promoted in {promoted:.1f} s, old primary back "
                       f"after {p.redis_down:g} s")


async def postgres_restart(world: World, load: Load, p: Params) -> Fault:
    pg = world.postgres
    if pg is None:
        raise ChaosError("postgres-restart needs PostgreSQL (the domain is on SQLite here)")
    t = now()
    await asyncio.to_thread(pg.kill)
    await asyncio.sleep(p.postgres_down)
    repaired = now()
    await asyncio.to_thread(pg.restart)
    return Fault(t, repaired, f"PostgreSQL stopped at once, restarted after {p.postgres_down:g} s "
                              f"(up {now() - repaired:.1f} s later)")


async def partition(world: World, load: Load, p: Params) -> Fault:
    proxies = list(world.proxies.values())
    t = now()
    for proxy in proxies:
        await asyncio.to_thread(proxy.partition, "blackhole")
    await asyncio.sleep(p.partition)
    repaired = now()
    for proxy in proxies:
        await asyncio.to_thread(proxy.heal)
    return Fault(t, repaired, f"eu–us link blackholed {p.partition:g} s, then healed")


async def move_region(world: World, load: Load, p: Params) -> Fault:
    eu = [u for u in load.users.values() if u.region == "eu"]
    movers = eu[: max(2, len(eu) // 10)]
    t = now()
    await asyncio.gather(*(u.move("us") for u in movers))
    return Fault(t, t, f"{len(movers)} eu users moved to us ({now() - t:.1f} s)")


async def rolling_restart(world: World, load: Load, p: Params) -> Fault:
    eu = world.regions["eu"]
    t = now()
    steps = []
    for proc in eu.processes:
        s = now()
        await terminate(proc)
        stopped = now()
        await start(proc)
        await wait_for(functools.partial(joined, world, proc), 60, f"{proc.name} to rejoin")
        if proc in eu.gateways:
            await wait_for(lambda: links_up(world), 60, "the eu–us links")
        steps.append(f"{proc.name} {stopped - s:.1f}+{now() - stopped:.1f} s")
    return Fault(t, t, "SIGTERM, restart, rejoin, in turn: " + ", ".join(steps))


Scenario = Callable[[World, Load, Params], Awaitable[Fault]]
SCENARIOS: dict[str, tuple[Scenario, str]] = {
    "node-kill": (node_kill, "1. kill -9 of a node"),
    "gateway-kill": (gateway_kill, "2. kill -9 of one of two gateways"),
    "only-gateway-kill": (only_gateway_kill, "3. kill -9 of the only gateway, restarted"),
    "redis-failover": (redis_failover, "4. Redis primary killed, Sentinel failover"),
    "partition": (partition, "5. eu–us link partitioned, healed"),
    "move-region": (move_region, "6. users move region mid-conversation"),
    "rolling-restart": (rolling_restart, "7. rolling restart of a region"),
    "postgres-restart": (postgres_restart, "8. PostgreSQL restarted"),
}


# -- accounting ----------------------------------------------------------------------------------------


def account(load: Load, name: str, fault: Fault, p: Params) -> dict[str, Any]:
    msgs = [m for m in load.ledger.msgs.values() if m.scenario == name]
    delivered = [m for m in msgs if m.deliveries]
    lost = [m for m in msgs if m.acked is not None and not m.reached and not m.error]
    row: dict[str, Any] = {
        "scenario": name,
        "fault": fault.what,
        "created": len(msgs),
        "sent": sum(1 for m in msgs if m.written is not None),
        "acked": sum(1 for m in msgs if m.acked is not None),
        "delivered": len(delivered),
        "via_offline": sum(1 for m in delivered if m.deliveries[0][1]),
        "via_archive": sum(1 for m in msgs if m.archived and not m.deliveries and not m.stored),
        "parked": sum(1 for m in msgs if m.stored and not m.deliveries),
        "errors": sum(1 for m in msgs if m.error and not m.deliveries),
        "duplicates": sum(1 for m in msgs if len(m.deliveries) > 1 or (m.deliveries and m.stored)),
        "lost": len(lost),
        "unacked_lost": sum(1 for m in msgs if m.written is not None and m.acked is None and not m.reached
                            and not m.error),
        "unsent": sum(1 for m in msgs if m.written is None),
        "resent_after_resume": sum(1 for m in msgs if m.writes > 1),
        "error_but_delivered": sum(1 for m in msgs if m.error and m.deliveries),
        "late_copies_after_close": sum(m.late_copies for m in msgs),
    }
    errors = Counter(m.error for m in msgs if m.error)
    row["error_conditions"] = dict(errors)
    # Which way the trouble went (the users' home regions: eu000 is eu's, whichever region it moved to).
    ways: dict[str, Counter[str]] = defaultdict(Counter)
    for m in msgs:
        way = ways[f"{m.sender[:2]}→{m.to[:2]}"]
        way["sent"] += m.written is not None
        way["parked"] += m.stored and not m.deliveries
        way["errors"] += bool(m.error) and not m.deliveries
        way["via_offline"] += bool(m.deliveries) and m.deliveries[0][1]
    row["by_direction"] = {k: dict(v) for k, v in sorted(ways.items())}
    # Out of order: per sender→recipient pair, first deliveries in arrival order, each one that
    # arrives after a later message of the pair counts.
    pairs: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for m in delivered:
        pairs[(m.sender, m.to)].append((m.deliveries[0][0], m.seq))
    disorder: list[tuple[Msg, int]] = []  # (the message, the later one of its pair that arrived first)
    for (sender, _), arrivals in pairs.items():
        top = -1
        for _, seq in sorted(arrivals):
            if seq < top:
                disorder.append((load.ledger.msgs[(sender, seq)], top))
            top = max(top, seq)
    row["out_of_order"] = len(disorder)
    # Recovery: the last message created after the fault that was not on time (live, within p.slow).
    late = [m for m in msgs if m.created >= fault.began
            and not (m.deliveries and not m.deliveries[0][1] and m.deliveries[0][0] - m.created <= p.slow)]
    row["recovery_s"] = round(max(0.0, max(m.created for m in late) - fault.repaired), 2) if late else 0.0
    row["late_messages"] = len(late)
    latencies = sorted(m.deliveries[0][0] - m.created for m in delivered)
    row["latency_p50_ms"] = round(latencies[len(latencies) // 2] * 1e3, 1) if latencies else None
    row["latency_max_s"] = round(latencies[-1], 2) if latencies else None
    row["goal_met"] = row["lost"] == 0 and row["duplicates"] == 0
    row["examples"] = {
        "lost": [describe(m, fault, load) for m in lost[:10]],
        "duplicates": [describe(m, fault, load) for m in msgs
                       if len(m.deliveries) > 1 or (m.deliveries and m.stored)][:10],
        "parked": [describe(m, fault, load) for m in msgs if m.stored and not m.deliveries][:5],
        "via_archive": [describe(m, fault, load) for m in msgs
                        if m.archived and not m.deliveries and not m.stored][:5],
        "last_late": [describe(m, fault, load) for m in sorted(late, key=lambda m: m.created)[-5:]],
        "out_of_order": [{**describe(m, fault, load), "overtaken_by": describe(load.ledger.msgs[(m.sender, top)],
                                                                               fault, load)}
                         for m, top in disorder[:5]],
    }
    return row


def describe(m: Msg, fault: Fault, load: Load) -> dict[str, Any]:
    """A message's story, times in seconds from the fault."""
    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - fault.began, 3)

    return {"id": m.id, "from": m.sender, "to": m.to, "created": rel(m.created), "written": rel(m.written),
            "writes": m.writes, "acked": rel(m.acked), "error": m.error, "stored": m.stored,
            "archived": m.archived,
            "deliveries": [(rel(t), "offline" if off else "live") for t, off in m.deliveries],
            "sender_now_on": load.users[m.sender].node, "recipient_now_on": load.users[m.to].node}


COLUMNS = [("scenario", "scenario"), ("sent", "sent"), ("acked", "acked"), ("delivered", "delivered"),
           ("via_offline", "via offline"), ("via_archive", "via archive"), ("parked", "parked"),
           ("errors", "errors"), ("duplicates", "dup"),
           ("lost", "lost"), ("unacked_lost", "unacked lost"), ("out_of_order", "out of order"),
           ("late_messages", "late"), ("recovery_s", "recovery s"), ("goal", "0 lost, 0 dup")]


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[h for _, h in COLUMNS]]
    for r in rows:
        r = {**r, "goal": "met" if r["goal_met"] else "MISSED"}
        cells.append([f"{r[k]:,}" if isinstance(r[k], int) and not isinstance(r[k], bool) else str(r[k])
                      for k, _ in COLUMNS])
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = []
    for j, c in enumerate(cells):
        padded = [x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths, strict=True))]
        lines.append("  ".join(padded))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------------------------


async def run_scenario(world: World, load: Load, name: str, p: Params) -> dict[str, Any]:
    inject, title = SCENARIOS[name]
    say(f"{title} ({name}): getting everything up")
    await world_ready(world, p.settle)
    await load.all_online(p.settle)
    sizes = log_sizes(world)
    for u in load.users.values():
        u.stats.clear()
    load.phases.clear()
    load.tls_phases.clear()
    load.lag = 0.0
    cpu0 = cpu_s()
    say(f"{name}: load on ({len(load.users)} users, {load.rate:g} msg/s each), fault in {p.warm:g} s")
    load.begin(name)
    await asyncio.sleep(p.warm)
    fault = await inject(world, load, p)
    say(f"{name}: {fault.what}")
    await asyncio.sleep(p.after)
    await load.stop_sending()
    say(f"{name}: load off, draining")
    await load.drain(name, p.drain, p.quiet)
    row = account(load, name, fault, p)
    row["title"] = title
    row["server_warnings"] = warnings_since(world, sizes)
    row["clients"] = dict(sum((u.stats for u in load.users.values()), Counter()))
    row["load_cpu_s"] = round(cpu_s() - cpu0, 2)
    row["logins_s"] = {phase: spread([x[i] for x in load.phases])
                       for i, phase in enumerate(("tcp_tls", "sasl", "resume_or_bind"))}
    row["connect_s"] = {phase: spread([x[i] for x in load.tls_phases if len(x) > i])
                        for i, phase in enumerate(("tcp", "features", "starttls", "features_after_tls"))}
    row["client_loop_lag_max_s"] = round(load.lag, 3)
    say(f"{name}: sent {row['sent']}, acked {row['acked']}, delivered {row['delivered']} "
        f"({row['via_offline']} via offline, {row['via_archive']} more from the archive), "
        f"parked {row['parked']}, errors {row['errors']}, "
        f"duplicates {row['duplicates']}, lost {row['lost']}, unacked lost {row['unacked_lost']}, "
        f"out of order {row['out_of_order']}, recovery {row['recovery_s']} s")
    if fault.restore is not None:
        await fault.restore()
    return row


async def run(args: argparse.Namespace, p: Params, base: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    world = await asyncio.to_thread(build, base)
    load = Load(world, p.users, p.rate)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    try:
        await register(world, list(load.users))
        load.spawn(load.watch_lag())
        t = now()
        await asyncio.gather(*(start(proc) for proc in world.processes))
        await world_ready(world, 90)
        info["setup_s"] = round(now() - t, 1)
        say(f"{len(world.processes)} server processes up, joined and linked in {info['setup_s']} s")
        t = now()
        await load.login_all(120)
        say(f"{len(load.users)} users online in {now() - t:.1f} s")
        info["database"] = "postgresql" if world.postgres is not None else "sqlite"
        names = args.scenario or [n for n in SCENARIOS if n != "postgres-restart" or world.postgres is not None]
        for name in names:
            rows.append(await run_scenario(world, load, name, p))
        info["strays"] = load.ledger.strays
    finally:
        await load.close()
        for proc in world.processes:
            await terminate(proc)
        for proxy in world.proxies.values():
            proxy.stop()
        world.redis.close()
        if world.postgres is not None:
            world.postgres.stop()
        problems = [f"{proc.name}: Traceback in its log" for proc in world.processes if "Traceback" in proc.log()]
        info["tracebacks"] = problems
    return rows, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 users, short faults (the smoke test's run)")
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="run this one (repeatable)")
    ap.add_argument("--users", type=int, help="users, half per region (200; quick: 20)")
    ap.add_argument("--rate", type=float, help="messages per second per user (0.5; quick: 1)")
    ap.add_argument("--out", type=Path, help="results file (benchmarks/results/chaos-<date>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the processes' directories and logs")
    args = ap.parse_args(argv)
    p = Params.quick() if args.quick else Params()
    if args.users is not None:
        p.users = max(4, args.users)
    if args.rate is not None:
        p.rate = args.rate
    if redis_server_binary() is None:
        print("CHAOS FAILED: redis-server is not installed", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    started = datetime.datetime.now()
    say(f"Meridian chaos suite{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = Path(tempfile.mkdtemp(prefix="meridian-chaos-"))
    code = 0
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    try:
        rows, info = asyncio.run(run(args, p, base))
    except (ChaosError, RuntimeError, TimeoutError) as e:
        print(f"CHAOS FAILED: {e}", file=sys.stderr)
        code = 2
    finally:
        if args.keep:
            say(f"directories and logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if rows:
        print()
        print(table(rows))
        print()
        for r in rows:
            for kind in ("lost", "duplicates"):
                for ex in r["examples"][kind][:5]:
                    print(f"  {r['scenario']}: {kind}: {json.dumps(ex)}")
            if r["server_warnings"] and not r["goal_met"]:
                print(f"  {r['scenario']}: server warnings: {json.dumps(r['server_warnings'])}")
    out = args.out or ROOT / "benchmarks" / "results" / f"chaos-{started:%Y-%m-%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"), "quick": args.quick, "params": p.__dict__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "run": info, "failed": code == 2, "scenarios": rows}, indent=2) + "\n")
    say(f"results written to {out}")
    if code:
        return code
    for tb in info.get("tracebacks", []):
        print(f"GOAL MISSED: {tb}")
    for r in rows:
        if r["parked"] or r["errors"]:
            print(f"NOT LIVE: {r['scenario']}: {r['parked']} parked in offline storage for online recipients, "
                  f"{r['errors']} bounced with an error ({', '.join(r['error_conditions']) or 'none'})")
    for r in rows:
        if not r["goal_met"]:
            print(f"GOAL MISSED: {r['scenario']}: {r['lost']} lost, {r['duplicates']} duplicates")
    return 0 if all(r["goal_met"] for r in rows) and not info.get("tracebacks") else 1


if __name__ == "__main__":
    sys.exit(main())
