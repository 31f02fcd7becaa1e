"""The servers of ``compare.py``, each started with its own config on loopback, tuned for benchmarking.

- :class:`Meridian` — ``python -m gateway.cli node`` (one node), or two nodes of one cluster sharing a
  SQLite file (``nodes=2``): accounts written straight into SQLite through the storage API.
- :class:`Ejabberd` — Debian's ejabberd 23.01 through ``ejabberdctl foreground``: listen backlog
  4096 (its default, 5, makes a login storm wait for SYN retransmits: 1, 3, 7 s…), no shapers, no
  mod_fail2ban/mod_pres_counter, no session limit, log level warning, BEAM busy-wait off
  (``+sbwt none …``, see ``docs/peers.md``), caches of 100,000 entries (1,000 by default:
  "Shrinking cache 'ejabberd_auth_mnesia_cache'" with 10,000 users); users in Mnesia, registered once through
  ``mod_http_api`` (~7 ms each) and kept in the spool between starts.
- :class:`EjabberdScram` — ejabberd keeping SCRAM keys (Meridian's storage model); :class:`EjabberdModules`
  — ejabberd with mod_mam (in a PostgreSQL of its own), mod_stream_mgmt, mod_carboncopy and
  mod_client_state, beside ``meridian-mam`` (the one node with MAM on as well).
- :class:`Prosody` — Debian's Prosody 0.12 (``-F``, as ``nobody``): ``limits = {}`` (Debian's
  c2s 10 kb/s shaper off), ``network_backend = "epoll"``, listen backlog 4096 (128 by default),
  ``internal_plain`` accounts written as files.

Every server: STARTTLS required on c2s, a certificate from a throwaway CA, the same users
``user1..userN`` with passwords ``pass1..passN`` (Tsung's naming), domain :data:`DOMAIN`, no offline
storage, no archive (but for the two "modules" kinds).  Persistent data (accounts, rosters) lives in
the server's directory, which survives restarts so users are registered once per state directory.

Peers take the cheaper password check where the server offers one (plain passwords: ejabberd's
default, Prosody's ``internal_plain``); Meridian stores only SCRAM keys, so SASL PLAIN runs PBKDF2
(4096 rounds) per login there.  That favours the peers in the login figures, on purpose.

With ``web=True`` the peers also serve XMPP over WebSocket (RFC 7395) and BOSH (XEP-0124/0206) on
one HTTPS listener of their own (port ``web_port``, the same certificate; ``benchmarks/websocket.py``):
ejabberd an ``ejabberd_http`` listener with ``tls: true``, ``/ws`` (``ejabberd_http_ws``) and ``/bosh``
(``mod_bosh``); Prosody ``https_ports`` with ``mod_websocket`` (``/xmpp-websocket``) and ``mod_bosh``
(``/http-bind``).  ``ws_path`` and ``bosh_path`` say where.

:class:`ProcTree` reads CPU seconds and RSS of a server's process tree (psutil), so BEAM's
``beam.smp`` under ``ejabberdctl``'s shell counts, and two cluster nodes add up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.node import toml_dump  # noqa: E402
from tests.helpers.ports import free_port, free_ports  # noqa: E402
from tests.helpers.prosody import _encode, _lua  # noqa: E402  (Lua literals, Prosody's file names)

__all__ = ["DOMAIN", "Server", "Meridian", "Ejabberd", "Prosody", "ProcTree", "user", "password",
           "make_server", "SERVER_KINDS", "DEFAULT_KINDS"]

DOMAIN = "localhost"
NOFILE = 20_000
SERVER_KINDS = ("meridian", "meridian-cluster", "meridian-cores", "meridian-mam", "ejabberd", "ejabberd-scram",
                "ejabberd-modules", "prosody")
DEFAULT_KINDS = ("meridian", "meridian-cluster", "ejabberd", "prosody")  # what compare.py runs unless told


def user(i: int) -> str:
    return f"user{i}"


def password(i: int) -> str:
    return f"pass{i}"


class BenchError(Exception):
    pass


def _raise_nofile(n: int = NOFILE) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(n, hard)), hard))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float, what: str, log: Any) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}:\n{log()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not listening on {port} after {timeout:.0f}s:\n{log()}")
        time.sleep(0.1)


class ProcTree:
    """CPU seconds and RSS of some root processes and all their descendants."""

    def __init__(self, pids: list[int]) -> None:
        self.roots = [psutil.Process(p) for p in pids]
        self._dead_cpu = 0.0
        self._seen: dict[int, tuple[psutil.Process, float]] = {}

    def procs(self) -> list[psutil.Process]:
        out = []
        for r in self.roots:
            with contextlib.suppress(psutil.Error):
                out.append(r)
                out += r.children(recursive=True)
        return out

    def cpu_s(self) -> float:
        total = 0.0
        alive = set()
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                c = float(t.user + t.system)
                self._seen[p.pid] = (p, c)
                alive.add(p.pid)
                total += c
        for pid in list(self._seen):  # a process that ended keeps its last reading
            if pid not in alive:
                self._dead_cpu += self._seen.pop(pid)[1]
        return total + self._dead_cpu

    def rss(self) -> int:
        total = 0
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                total += int(p.memory_info().rss)
        return total

    def set_affinity(self, cpus: list[int]) -> None:
        for p in self.procs():
            with contextlib.suppress(psutil.Error, OSError):
                p.cpu_affinity(cpus)


class Server:
    """What ``compare.py`` needs from every server under test."""

    kind = "?"
    label = "?"

    def __init__(self, base: Path, cpus: list[int]) -> None:
        self.dir = base / self.kind
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cpus = cpus
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tree: ProcTree | None = None

    # endpoints: (host, STARTTLS c2s port) of each node; clients are spread over them
    endpoints: list[tuple[str, int]]

    def prepare(self, users: int) -> float:
        """Users 1..``users`` registered (once per state directory); seconds it took."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """What outlives the rounds (a database server of its own), once the run is over."""

    def log(self) -> str:
        return ""

    def _preexec(self, cpus: list[int] | None = None) -> Any:
        """Run in the server's child: the descriptor limit, and its CPUs (``cpus``, else the server's)."""
        cpus = self.cpus if cpus is None else cpus

        def prepare() -> None:
            _raise_nofile()
            if cpus:
                os.sched_setaffinity(0, cpus)
        return prepare

    def warnings(self) -> list[str]:
        return [line for line in self.log().splitlines()
                if re.search(r"\b(ERROR|CRITICAL|error)\b", line) and "self-signed" not in line]


# -- Meridian ------------------------------------------------------------------------------------


def _credentials(i: int) -> tuple[str, dict[str, Any]]:
    """User ``i``'s SCRAM keys (two PBKDF2 derivations)."""
    from cluster_node.xmpp.sasl.scram import make_credentials

    return user(i), {n: c.to_dict() for n, c in make_credentials(password(i)).items()}


async def _store_accounts(db: Path, accounts: list[tuple[str, dict[str, Any]]]) -> None:
    from cluster_node.storage import open_storage

    storage = open_storage(f"sqlite:///{db}")
    await storage.open()
    try:
        for name, creds in accounts:
            await storage.create_account(DOMAIN, name, creds)
    finally:
        await storage.close()


class Meridian(Server):
    """One ``meridian node``, or ``nodes`` of one cluster sharing a SQLite file (discovery through it):
    each on its own ports (``meridian-cluster``, the clients split between them), or, with
    ``shared_port``, one process per server CPU on one port (``meridian-cores``: ``c2s.reuse_port``,
    the kernel spreading the connections; each process pinned to its own CPU when the run pins)."""

    def __init__(self, base: Path, cpus: list[int], nodes: int = 1, log_level: str = "WARNING",
                 mam: bool = False, shared_port: bool = False) -> None:
        if shared_port:
            nodes = len(cpus) or os.cpu_count() or 1
        self.kind = "meridian-mam" if mam else "meridian-cores" if shared_port else "meridian" if nodes == 1 \
            else "meridian-cluster"
        self.label = "Meridian 1 node + MAM" if mam else f"Meridian {nodes} processes, 1 port" if shared_port \
            else "Meridian 1 node" if nodes == 1 else f"Meridian {nodes}-node cluster"
        super().__init__(base, cpus)
        self.mam = mam
        self.nodes = nodes
        self.shared_port = shared_port
        self.db = self.dir / "meridian.db"
        self.log_level = log_level
        self.ports = free_ports(2) * nodes if shared_port else free_ports(2 * nodes)
        self.endpoints = sorted({("127.0.0.1", self.ports[2 * k]) for k in range(nodes)})
        tls: dict[str, str] = {}
        if shared_port:  # one certificate, whichever process answers
            from cluster_node.net.tls import ensure_self_signed

            cert, key = ensure_self_signed(self.dir / "tls", [DOMAIN])
            tls = {"cert_file": str(cert), "key_file": str(key)}
        self.configs: list[Path] = []
        for k in range(nodes):
            conf: dict[str, Any] = {
                "node_name": f"bench-n{k + 1}", "domains": [DOMAIN], "data_dir": str(self.dir / f"n{k + 1}"),
                "log_level": log_level, "scram_iterations": 4096,
                "c2s": {"host": "127.0.0.1", "port": self.ports[2 * k], "tls_port": self.ports[2 * k + 1],
                        "handshake_timeout": 120.0, "idle_timeout": 3600.0, "reuse_port": shared_port},
                "limits": {"max_connections_per_ip": 100_000, "max_connections": 100_000,
                           "shaper_rate": 10_000_000, "shaper_burst": 10_000_000,
                           "stanza_rate": 10_000_000, "stanza_burst": 10_000_000},
                "storage": {"url": f"sqlite:///{self.db}"},
                "admin": {"port": 0}, "user_api": {"port": 0},
                # The peers run without a message archive: so does Meridian here, but for
                # meridian-mam (every module on, MAM too: beside ejabberd-modules).
                "modules": {} if mam else {"mam": {"enabled": False}},
            }
            if tls:
                conf["tls"] = tls
            if nodes > 1:
                conf["cluster"] = {"enabled": True, "name": "bench", "secret": "benchmark-cluster-secret-0123",
                                   "port": free_port(), "refresh_interval": 1.0}
            path = self.dir / f"n{k + 1}.toml"
            path.write_text(toml_dump(conf))
            self.configs.append(path)

    def prepare(self, users: int) -> float:
        t = time.perf_counter()
        marker = self.dir / "users.json"
        have = json.loads(marker.read_text())["users"] if marker.exists() else 0
        if have >= users:
            return 0.0
        # PBKDF2 for both SCRAM variants per user, on threads (hashlib releases the GIL); one writer
        with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
            accounts = list(pool.map(_credentials, range(have + 1, users + 1), chunksize=64))
        asyncio.run(_store_accounts(self.db, accounts))
        marker.write_text(json.dumps({"users": users}))
        return time.perf_counter() - t

    def start(self) -> None:
        if self.mam:
            self._empty_archive()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.procs = []
        for k, config in enumerate(self.configs):
            control = self.dir / f"n{k + 1}" / "control.sock"
            control.unlink(missing_ok=True)
            with open(self.dir / f"n{k + 1}.log", "ab") as log:
                cmd = [sys.executable, "-m", "gateway.cli", "node", "--config", str(config)]
                own = [self.cpus[k % len(self.cpus)]] if self.shared_port and self.cpus else None
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                                                   preexec_fn=self._preexec(own)))
            deadline = time.monotonic() + 60
            while not control.exists():
                if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"meridian node {k + 1} did not start:\n{self.log()}")
                time.sleep(0.05)
        if self.nodes > 1:
            self._wait_joined(60)
        self.tree = ProcTree([p.pid for p in self.procs])

    def _empty_archive(self) -> None:
        """Each round archives into an empty archive, as ejabberd-modules' does (its PostgreSQL
        tables are emptied at each start): the same start for both, and a run does not depend on
        how many rounds came before (the archive's index maintenance costs more as it grows)."""
        import sqlite3

        if not self.db.exists():
            return
        conn = sqlite3.connect(self.db)
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'mam_messages'").fetchone():
                conn.execute("DELETE FROM mam_messages")
                conn.commit()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def _wait_joined(self, timeout: float) -> None:
        from cluster_node.net.control import query_control

        names = sorted(f"bench-n{k + 1}" for k in range(self.nodes))

        async def joined() -> bool:
            for k in range(self.nodes):
                status, body = await query_control(self.dir / f"n{k + 1}" / "control.sock", "cets", "systemInfo")
                if status != 200 or sorted(body["data"]["cets"]["systemInfo"]["joinedNodes"]) != names:
                    return False
            return True

        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                if asyncio.run(joined()):
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"the cluster did not join within {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def log(self) -> str:
        out = []
        for k in range(self.nodes):
            path = self.dir / f"n{k + 1}.log"
            if path.exists():
                out.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def warnings(self) -> list[str]:
        return [line for line in self.log().splitlines() if " ERROR " in line or "Traceback" in line]


# -- ejabberd -------------------------------------------------------------------------------------


def _cert(base: Path, name: str) -> tuple[Path, Path]:
    from gateway.link.tls import issue_cert, make_ca

    if not (base / "certs" / "cert.pem").exists():
        ca, ca_key = make_ca(base / "ca", name=f"benchmark CA {name}")
        cert, key = issue_cert(ca, ca_key, base / "certs", DOMAIN, [DOMAIN, "127.0.0.1"])
        shutil.copy(cert, base / "certs" / "cert.pem")
        shutil.copy(key, base / "certs" / "key.pem")
    return base / "certs" / "cert.pem", base / "certs" / "key.pem"


class Ejabberd(Server):
    kind = "ejabberd"
    label = "ejabberd 23.01"
    USER = "ejabberd"

    ws_path = "/ws"
    bosh_path = "/bosh"

    password_format = "plain"  # ejabberd's default

    def __init__(self, base: Path, cpus: list[int], *, web: bool = False) -> None:
        super().__init__(base, cpus)
        self.web = web  # WebSocket and BOSH on an HTTPS listener of their own (web_port)
        self.web_port = free_port() if web else 0
        self.binary = shutil.which("ejabberdctl") or "/usr/sbin/ejabberdctl"
        if not Path(self.binary).exists():
            raise BenchError("ejabberdctl not found (apt-get install ejabberd)")
        if os.geteuid() != 0:
            raise BenchError("Debian's ejabberdctl runs only as root or the ejabberd user")
        self.c2s_port, self.http_port = free_ports(2)
        self.endpoints = [("127.0.0.1", self.c2s_port)]
        # Mnesia (the users) belongs to the node name that made it: one name per state directory
        name_file = self.dir / "node-name"
        if not name_file.exists():
            name_file.write_text(f"bench-{uuid.uuid4().hex[:8]}@localhost")
        self.node_name = name_file.read_text().strip()
        cert, key = _cert(self.dir, "ejabberd")
        self.certfile = self.dir / "certs" / "server.pem"
        self.certfile.write_text(cert.read_text() + key.read_text())
        self._write()

    def _config(self) -> str:
        return f"""\
hosts:
  - "{DOMAIN}"
loglevel: warning
log_rotate_count: 0
certfiles:
  - "{self.certfile}"
auth_method: internal
auth_password_format: {self.password_format}
cache_size: 100000
shaper: {{}}
shaper_rules: {{}}
acl:
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  local:
    allow: all
  c2s:
    allow: all
  register:
    allow: all
api_permissions:
  "benchmark admin":
    from:
      - ejabberd_ctl
      - mod_http_api
    who:
      - acl: loopback
    what: "*"
listen:
  - port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
    max_stanza_size: 262144
    backlog: 4096
  - port: {self.http_port}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
{self._web_listener()}{self._sql()}modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
{self._web_modules()}{self._more_modules()}"""

    def _sql(self) -> str:
        """Top-level SQL settings (none: everything in Mnesia)."""
        return ""

    def _more_modules(self) -> str:
        return ""

    def _web_listener(self) -> str:
        """WebSocket (``/ws``) and BOSH (``/bosh``) over HTTPS, when ``web``; no shaper (none is defined)."""
        if not self.web:
            return ""
        return f"""\
  - port: {self.web_port}
    ip: "127.0.0.1"
    module: ejabberd_http
    tls: true
    backlog: 4096
    request_handlers:
      {self.ws_path}: ejabberd_http_ws
      {self.bosh_path}: mod_bosh
"""

    def _web_modules(self) -> str:
        """mod_bosh, when ``web`` (its session ends after 120 s without a request; 30 by default)."""
        return "  mod_bosh:\n    max_inactivity: 120\n" if self.web else ""

    def _write(self) -> None:
        conf = self.dir / "conf"
        conf.mkdir(exist_ok=True)
        (self.dir / "spool").mkdir(exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        (conf / "ejabberd.yml").write_text(self._config())
        (conf / "ejabberdctl.cfg").write_text(
            "POLL=true\nERL_PROCESSES=250000\nERL_MAX_PORTS=65536\nINET_DIST_INTERFACE=127.0.0.1\n"
            f"ERLANG_NODE={self.node_name}\n"
            'ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none"\n')
        (conf / "inetrc").write_text("{lookup, [file, native]}.\n")
        for root, dirs, files in os.walk(self.dir):
            for name in (*dirs, *files):
                shutil.chown(os.path.join(root, name), self.USER, self.USER)
        shutil.chown(self.dir, self.USER, self.USER)
        self.dir.chmod(0o755)
        for parent in self.dir.parents:  # ejabberd must reach its directory
            if parent == Path("/") or parent == Path("/tmp"):
                break
            with contextlib.suppress(OSError):
                parent.chmod(parent.stat().st_mode | 0o011)

    def _ctl_args(self) -> list[str]:
        conf = self.dir / "conf"
        return [self.binary, "--config-dir", str(conf), "--config", str(conf / "ejabberd.yml"),
                "--spool", str(self.dir / "spool"), "--logs", str(self.dir / "logs"), "--node", self.node_name]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EJABBERD_", "ERL_"))}
        env["HOME"] = "/var/lib/ejabberd"  # the Erlang cookie of the ejabberd user
        env["EJABBERD_CONFIG_PATH"] = str(self.dir / "conf" / "ejabberd.yml")
        env["EJABBERD_PID_PATH"] = str(self.dir / "ejabberd.pid")
        return env

    def _as_user(self) -> dict[str, Any]:
        # As root, ejabberdctl re-runs itself through ``su``, whose PAM session resets the descriptor
        # limit to 1024 (10,000 clients then end in "too many open files" and Mnesia stops): run it
        # as the ejabberd user straight away, with the limit raised here (NOFILE) inherited.
        return {"user": self.USER, "group": self.USER, "extra_groups": []}

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._ctl_args(), *args], capture_output=True, text=True, env=self._env(),
                              timeout=timeout, cwd=self.dir, **self._as_user())

    def start(self) -> None:
        with open(self.dir / "stdout.log", "ab") as out:
            _raise_nofile()  # inherited through the user switch
            cpus = self.cpus
            proc = subprocess.Popen([*self._ctl_args(), "foreground"], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self._env(), cwd=self.dir, start_new_session=True,
                                    preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
                                    **self._as_user())
        self.procs = [proc]
        _wait_port(self.c2s_port, proc, 120, "ejabberd", self.log)
        _wait_port(self.http_port, proc, 60, "ejabberd", self.log)
        if self.web:
            _wait_port(self.web_port, proc, 60, "ejabberd", self.log)
        deadline = time.monotonic() + 60
        while self.ctl("status", timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise BenchError(f"ejabberd never reported started:\n{self.log()}")
            time.sleep(0.5)
        self.tree = ProcTree([proc.pid])
        beam = [p for p in self.tree.procs() if p.name().startswith("beam")]
        if beam:
            limit = int(Path(f"/proc/{beam[0].pid}/limits").read_text().split("Max open files")[1].split()[0])
            if limit < NOFILE:
                raise BenchError(f"ejabberd runs with {limit} descriptors at most, {NOFILE} are needed")

    def prepare(self, users: int) -> float:
        marker = self.dir / "users.json"
        have = json.loads(marker.read_text())["users"] if marker.exists() else 0
        if have >= users:
            return 0.0
        t = time.perf_counter()
        started = bool(self.procs)
        if not started:
            self.start()
        try:
            asyncio.run(self._register(range(have + 1, users + 1)))
        finally:
            if not started:
                self.stop()
        marker.write_text(json.dumps({"users": users}))
        return time.perf_counter() - t

    async def _register(self, ids: range) -> None:
        import aiohttp

        sem = asyncio.Semaphore(16)
        url = f"http://127.0.0.1:{self.http_port}/api/register"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def one(i: int) -> None:
                async with sem:
                    body = {"user": user(i), "host": DOMAIN, "password": password(i)}
                    async with session.post(url, json=body) as resp:
                        text = await resp.text()
                        if resp.status != 200 and "already registered" not in text:
                            raise BenchError(f"ejabberd register {user(i)}: {resp.status} {text[:200]}")
            await asyncio.gather(*(one(i) for i in ids))

    def stop(self) -> None:
        if not self.procs:
            return
        proc = self.procs[0]
        if proc.poll() is None:
            try:
                self.ctl("stop", timeout=60)
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs = []

    def log(self) -> str:
        out = []
        for path in (self.dir / "logs" / "ejabberd.log", self.dir / "logs" / "error.log", self.dir / "stdout.log"):
            if path.exists():
                out.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def warnings(self) -> list[str]:
        path = self.dir / "logs" / "error.log"
        return path.read_text(errors="replace").splitlines()[-50:] if path.exists() else []


# -- Prosody --------------------------------------------------------------------------------------


class Prosody(Server):
    kind = "prosody"
    label = "Prosody 0.12"

    ws_path = "/xmpp-websocket"
    bosh_path = "/http-bind"

    def __init__(self, base: Path, cpus: list[int], *, web: bool = False) -> None:
        super().__init__(base, cpus)
        self.web = web  # WebSocket and BOSH on an HTTPS port of their own (web_port)
        self.web_port = free_port() if web else 0
        self.binary = shutil.which("prosody") or "/usr/bin/prosody"
        if not Path(self.binary).exists():
            raise BenchError("prosody not found (apt-get install prosody)")
        self.c2s_port, self.s2s_port = free_ports(2)
        self.endpoints = [("127.0.0.1", self.c2s_port)]
        self.cert, self.key = _cert(self.dir, "prosody")
        (self.dir / "data").mkdir(exist_ok=True)
        d = self.dir
        settings: dict[str, Any] = {
            "daemonize": False, "pidfile": d / "prosody.pid", "data_path": d / "data",
            "admin_socket": d / "admin.sock", "interfaces": ["127.0.0.1"], "local_interfaces": ["127.0.0.1"],
            "c2s_ports": [self.c2s_port], "s2s_ports": [self.s2s_port], "c2s_direct_tls_ports": [],
            "s2s_direct_tls_ports": [], "legacy_ssl_ports": [], "component_ports": [], "http_ports": [],
            "https_ports": [],
            "modules_enabled": ["roster", "saslauth", "tls", "disco", "ping"],
            "modules_disabled": ["offline", "s2s"],
            "authentication": "internal_plain", "storage": "internal",
            "limits": {}, "network_backend": "epoll", "network_settings": {"tcp_backlog": 4096},
            "c2s_require_encryption": True, "log": {"warn": d / "prosody.log"},
        }
        if web:
            # mod_websocket (/xmpp-websocket) and mod_bosh (/http-bind) over HTTPS with the c2s
            # certificate; requests for any Host go to DOMAIN
            settings["modules_enabled"] = [*settings["modules_enabled"], "bosh", "websocket"]
            settings["https_ports"] = [self.web_port]
            settings["https_interfaces"] = ["127.0.0.1"]
            settings["https_ssl"] = {"certificate": self.cert, "key": self.key}
            settings["http_default_host"] = DOMAIN
            settings["bosh_max_inactivity"] = 120
        lines = [f"{k} = {_lua(v)}" for k, v in settings.items()]
        lines.append(f"VirtualHost {_lua(DOMAIN)}")
        lines.append(f"    ssl = {_lua({'certificate': self.cert, 'key': self.key})}")
        (d / "prosody.cfg.lua").write_text("\n".join(lines) + "\n")
        self._chown()

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        for root, dirs, files in os.walk(self.dir):
            for name in (*dirs, *files):
                shutil.chown(os.path.join(root, name), "nobody", "nogroup")
        shutil.chown(self.dir, "nobody", "nogroup")
        self.dir.chmod(0o755)

    def prepare(self, users: int) -> float:
        t = time.perf_counter()
        accounts = self.dir / "data" / _encode(DOMAIN) / "accounts"
        accounts.mkdir(parents=True, exist_ok=True)
        for i in range(1, users + 1):
            path = accounts / f"{_encode(user(i))}.dat"
            if not path.exists():
                path.write_text(f'return {{\n\t["password"] = "{password(i)}";\n}};\n')
        self._chown()
        return time.perf_counter() - t

    def start(self) -> None:
        args = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--", self.binary, "--config",
                str(self.dir / "prosody.cfg.lua"), "-F"]
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            kwargs = {"user": "nobody", "group": "nogroup", "extra_groups": []}
        cpus = self.cpus
        with open(self.dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.dir, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
                                    **kwargs)
        self.procs = [proc]
        _wait_port(self.c2s_port, proc, 60, "prosody", self.log)
        if self.web:
            _wait_port(self.web_port, proc, 60, "prosody", self.log)
        self.tree = ProcTree([proc.pid])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []

    def log(self) -> str:
        out = []
        for path in (self.dir / "prosody.log", self.dir / "stdout.log"):
            if path.exists():
                out.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def warnings(self) -> list[str]:
        path = self.dir / "prosody.log"
        return [line for line in path.read_text(errors="replace").splitlines() if "error" in line.lower()][-50:] \
            if path.exists() else []


class EjabberdScram(Ejabberd):
    """ejabberd storing SCRAM keys instead of passwords (``auth_password_format: scram``, which its
    docs advise for security): Meridian's storage model, so SASL PLAIN costs it a PBKDF2 per
    login too and SCRAM none.  Its own directory: the users are registered in that format."""

    kind = "ejabberd-scram"
    label = "ejabberd 23.01 (SCRAM store)"
    password_format = "scram"


class EjabberdModules(Ejabberd):
    """ejabberd with the modules Meridian runs on every message: XEP-0313 archive (``mod_mam``,
    every message archived — its default is ``never``), XEP-0198 (``mod_stream_mgmt``), XEP-0280
    (``mod_carboncopy``) and XEP-0352 (``mod_client_state``).  The archive in PostgreSQL, the SQL
    database its docs advise for archives (Mnesia is limited to 2 GB a table; its SQLite driver
    commits with the rollback journal, two fsyncs a message: 343 msg/s in the closed loop here),
    through a PostgreSQL server of its own (``tests/helpers/postgres.py``: fsync off, as Meridian's
    SQLite in WAL mode does not sync a commit either), pinned to the server's CPUs; its processes
    count in the server's CPU and memory.  Users stay in Mnesia.  Needs Debian's erlang-p1-pgsql."""

    kind = "ejabberd-modules"
    label = "ejabberd 23.01 + MAM, SM, carbons, CSI"

    def __init__(self, base: Path, cpus: list[int]) -> None:
        from tests.helpers.postgres import PostgresServer

        if not list(Path("/usr/lib/erlang/lib").glob("p1_pgsql-*")):
            raise BenchError("ejabberd's PostgreSQL driver is missing (apt-get install erlang-p1-pgsql)")
        self.pg = PostgresServer()
        self._pg_ready = False
        super().__init__(base, cpus)

    def _sql(self) -> str:
        return (f'sql_type: pgsql\nsql_server: "127.0.0.1"\nsql_port: {self.pg.port}\nsql_database: "ejabberd"\n'
                f'sql_username: "{self.pg.db_user}"\nsql_password: ""\n')

    def _more_modules(self) -> str:
        return ("  mod_mam:\n    db_type: sql\n    default: always\n"
                "  mod_stream_mgmt: {}\n  mod_carboncopy: {}\n  mod_client_state: {}\n")

    def start(self) -> None:
        """Its PostgreSQL first (created once, then started again for each round, the archive
        emptied), then ejabberd; both in the tree measured."""
        import asyncpg

        if not self._pg_ready:
            self.pg.start()
            self.pg.create_database("ejabberd")
            schema = Path("/usr/share/ejabberd/sql/pg.sql").read_text()
            self._pg_ready = True
        else:
            self.pg.restart()
            schema = "TRUNCATE archive, archive_prefs"
        pid = self.pg._postmaster_pid()
        if pid is not None and self.cpus:
            os.sched_setaffinity(pid, self.cpus)  # the backends it forks inherit it

        async def run_sql() -> None:
            conn = await asyncpg.connect(self.pg.url("ejabberd"))
            try:
                await conn.execute(schema)
            finally:
                await conn.close()

        asyncio.run(run_sql())
        super().start()
        if pid is not None:
            self.tree = ProcTree([self.procs[0].pid, pid])

    def stop(self) -> None:
        super().stop()
        self.pg.shut_down()

    def close(self) -> None:
        """The PostgreSQL server and its files (the run is over)."""
        self.pg.stop()


def make_server(kind: str, base: Path, cpus: list[int]) -> Server:
    if kind == "meridian":
        return Meridian(base, cpus, nodes=1)
    if kind == "meridian-mam":
        return Meridian(base, cpus, nodes=1, mam=True)
    if kind == "ejabberd-modules":
        return EjabberdModules(base, cpus)
    if kind == "meridian-cluster":
        return Meridian(base, cpus, nodes=2)
    if kind == "meridian-cores":
        return Meridian(base, cpus, shared_port=True)
    if kind == "ejabberd":
        return Ejabberd(base, cpus)
    if kind == "ejabberd-scram":
        return EjabberdScram(base, cpus)
    if kind == "prosody":
        return Prosody(base, cpus)
    raise ValueError(kind)
