"""``meridian demo``: the whole system on one machine, as real processes.

It writes every file under one directory (``--dir``, default ``./meridian-demo``): a demo CA and
certificates, one TOML file per process, the SQLite files, the processes' logs.  Secrets (cluster
secret, admin and user passwords) are made once and kept in ``secrets.json`` (mode 0600), so a
restart logs the same users in.  The pids of a run are kept in ``pids.json``: a start after a
crash stops what the crashed run left behind before it takes the ports again, and each child also
gets SIGKILL from the kernel if the demo itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from cluster_node.net.control import control_socket, query_control
from cluster_node.settings import NodeSettings, load_settings
from cluster_node.wiring import open_accounts

from ..link.tls import issue_cert, make_ca
from ..settings import GatewaySettings
from .lobby import LobbyError, make_lobby
from .sentinel import MASTER, DemoSentinel, add_sentinels, wait_sentinels, wait_synced
from .topology import HOST, LOBBY, SHARED_DOMAIN, DemoProcess, DemoRedis, Topology, build_topology
from .web import REPO_WEB, prepare_web_root

__all__ = ["DemoError", "run_demo"]

READY_TIMEOUT = 120.0


class DemoError(Exception):
    """A reason the demo cannot start, said in one line."""


# -- files ------------------------------------------------------------------------------------

def _secrets(directory: Path, topology_users: list[str]) -> dict[str, Any]:
    path = directory / "secrets.json"
    data: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(path.read_text())
    changed = False
    for key in ("cluster_secret", "admin_password"):
        if not isinstance(data.get(key), str):
            data[key] = secrets.token_urlsafe(18)
            changed = True
    users = data.setdefault("users", {})
    for jid in topology_users:
        if not isinstance(users.get(jid), str):
            users[jid] = secrets.token_urlsafe(9)
            changed = True
    if changed:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
    return data


def _certificates(topo: Topology) -> None:
    ca, ca_key = make_ca(topo.ca_dir, "Meridian demo CA")
    for region in topo.regions:
        # One certificate per region for its domains: c2s on every node, and S2S on its gateway.
        issue_cert(ca, ca_key, topo.ca_dir, f"{region.name}-c2s",
                   [*region.domains, *region.services, "localhost", HOST])
        for gw in region.gateways:
            issue_cert(ca, ca_key, topo.ca_dir, gw.name, [HOST, "localhost", gw.name])


def _write_configs(topo: Topology) -> None:
    for p in topo.processes:
        p.workdir.mkdir(parents=True, exist_ok=True)
        p.config.write_text(tomli_w.dumps(p.settings))
        control_socket(p.data_dir).unlink(missing_ok=True)


def _load(p: DemoProcess) -> NodeSettings:
    return load_settings(p.config, GatewaySettings if p.role == "gateway" else NodeSettings)


async def _register_users(topo: Topology, passwords: dict[str, str]) -> None:
    """Create (or reset the password of) each demo user, before any node opens the database."""
    for user in topo.users:
        region = topo.region(user.region)
        async with open_accounts(_load(region.nodes[0])) as (_storage, accounts):
            if await accounts.exists(user.domain, user.local):
                await accounts.change_password(user.domain, user.local, passwords[user.jid])
            else:
                await accounts.register(user.domain, user.local, passwords[user.jid])


# -- processes --------------------------------------------------------------------------------

RESTART_AFTER = 3.0  # seconds before a process that died is started again


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the demo process dies, whatever kills it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_leftovers(directory: Path) -> None:
    """Stop the processes a crashed earlier run left (only ours: their command line names ``directory``)."""
    path = directory / "pids.json"
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return
    marker = str(directory).encode()
    mine = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            mine.append(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while mine and time.monotonic() < deadline:
        mine = [p for p in mine if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.1)
    for pid in mine:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _check_ports(topo: Topology, extra: list[int]) -> None:
    ports = [r.port for r in topo.redis] + [port for p in topo.processes for port in p.ports.values()] + extra
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                raise DemoError(f"port {port} is in use (another demo running? try --base-port)") from None


async def _query(p: DemoProcess, category: str, op: str) -> dict[str, Any]:
    """A live query over the process's control socket; ``{}`` while it cannot answer yet."""
    try:
        status, body = await query_control(control_socket(p.data_dir), category, op)
    except (OSError, aiohttp.ClientError):
        return {}
    result = body.get("data", {}).get(category, {}).get(op) if status == 200 else None
    return result if isinstance(result, dict) else {}


class Demo:
    def __init__(self, topo: Topology, redis_binary: str | None) -> None:
        self.topo = topo
        self.redis_binary = redis_binary
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, argv: list[str], log: Path, cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        (self.topo.directory / "pids.json").write_text(json.dumps([p.pid for p in self.procs.values()]))

    def start_redis(self, r: DemoRedis) -> None:
        assert self.redis_binary is not None
        work = self.topo.directory / f"redis-{r.region}"
        argv = [self.redis_binary, "--bind", HOST, "--port", str(r.port), "--save", "", "--appendonly", "no",
                "--dir", str(work), "--daemonize", "no", "--protected-mode", "yes"]
        if r.replicaof is not None:
            argv += ["--replicaof", HOST, str(r.replicaof)]
        self._spawn(f"redis-{r.region}", argv, work / "redis.log", work)

    def start_sentinel(self, s: DemoSentinel) -> None:
        assert self.redis_binary is not None
        work = self.topo.directory / s.name
        work.mkdir(parents=True, exist_ok=True)
        (work / "sentinel.conf").write_text(s.conf(work))  # fresh each start: the Redis servers are too
        self._spawn(s.name, [self.redis_binary, str(work / "sentinel.conf"), "--sentinel"], work / "redis.log", work)

    async def start_sentinels(self, sentinels: list[DemoSentinel]) -> None:
        """Once the replica has synced (so the Sentinels list it at once), until they know each other."""
        replicas = [r for r in self.topo.redis if r.replicaof == sentinels[0].primary.port]
        try:
            await wait_synced(replicas)
            for s in sentinels:
                self.start_sentinel(s)
            await wait_sentinels(sentinels, replicas, alive=self.check_alive)
        except TimeoutError as e:
            raise DemoError(str(e)) from None

    def start_process(self, p: DemoProcess) -> None:
        argv = [sys.executable, "-m", "gateway.cli", p.role, "--config", str(p.config)]
        self._spawn(p.name, argv, p.log, p.workdir)

    def restart(self, name: str) -> None:
        """Start again a process that died (a node, a gateway, a Redis server or Sentinel)."""
        for p in self.topo.processes:
            if p.name == name:
                self.start_process(p)
                return
        for r in self.topo.redis:
            if f"redis-{r.region}" == name:
                self.start_redis(r)
                return
        raise KeyError(name)

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def _log_tail(self, name: str) -> str:
        p = next((p for p in self.topo.processes if p.name == name), None)
        path = p.log if p is not None else self.topo.directory / name / "redis.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-15:])
        return ""

    def check_alive(self) -> None:
        for name in self.dead():
            raise DemoError(f"{name} exited with {self.procs[name].returncode}; its log ends:\n{self._log_tail(name)}")

    async def wait_redis(self) -> None:
        deadline = time.monotonic() + 20
        for r in ([] if self.redis_binary is None else self.topo.redis):
            while True:
                self.check_alive()
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(HOST, r.port)
                    writer.close()
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"redis-{r.region} did not start on port {r.port}")
                await asyncio.sleep(0.1)

    async def wait_ready(self) -> None:
        """Every process up, each region's cluster complete, eu and us linked."""
        deadline = time.monotonic() + READY_TIMEOUT
        pending = "processes"
        while time.monotonic() < deadline:
            self.check_alive()
            pending = await self._not_ready()
            if not pending:
                return
            await asyncio.sleep(0.3)
        raise DemoError(f"not ready after {READY_TIMEOUT:.0f} s: waiting for {pending}")

    async def _not_ready(self) -> str:
        for p in self.topo.processes:
            if not control_socket(p.data_dir).exists():
                return f"{p.name} to start (log: {p.log})"
        for region in self.topo.regions:
            want = sorted(p.name for p in region.processes)
            for p in region.processes:
                info = await _query(p, "cets", "systemInfo")
                if sorted(info.get("joinedNodes", [])) != want:
                    return f"{p.name} to join cluster {region.name}"
        for name, other in (("eu", "us"), ("us", "eu")):
            gw = self.topo.region(name).gateways[0]
            link = (await _query(gw, "gdistrib", "status")).get("links", {}).get(other, {})
            if not link.get("up"):
                return f"the link from {name} to {other}"
        return ""

    def stop(self) -> None:
        """Gateways and nodes first (they say goodbye to their clients and peers), then Redis."""
        apps = {n: p for n, p in self.procs.items() if not n.startswith("redis-")}
        rest = {n: p for n, p in self.procs.items() if n.startswith("redis-")}
        for group in (apps, rest):
            for proc in group.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for proc in group.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.1, deadline - time.monotonic()))
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        (self.topo.directory / "pids.json").unlink(missing_ok=True)


# -- the state file and the summary -----------------------------------------------------------

def state(topo: Topology, demo: Demo, secret: dict[str, Any], has_admin: bool) -> dict[str, Any]:
    def url(port: int, path: str = "") -> str | None:
        return f"http://{HOST}:{port}{path}" if has_admin else None

    def browser(p: DemoProcess) -> dict[str, str | None]:
        """The node's HTTPS listener: RFC 7395 WebSocket, BOSH, and the web client if installed."""
        base = f"{HOST}:{p.ports['http']}"
        web = p.settings["websocket"].get("web_root")
        return {"websocket_url": f"wss://{base}/ws", "bosh_url": f"https://{base}/http-bind",
                "web_client_url": f"https://{base}/web/" if web else None}

    regions = []
    for r in topo.regions:
        regions.append({
            "name": r.name, "domains": r.domains, "redis_url": r.redis.url,
            "nodes": [{"name": p.name, "pid": demo.procs[p.name].pid, "host": HOST, "c2s_port": p.ports["c2s"],
                       "c2s_tls_port": p.ports["c2s_tls"], "admin_url": url(p.ports["admin"], "/api/graphql"),
                       "user_api_url": url(p.ports["user_api"], "/api/graphql"), **browser(p)} for p in r.nodes],
            "gateways": [{"name": p.name, "pid": demo.procs[p.name].pid,
                          "admin_url": url(p.ports["admin"], "/api/graphql"),
                          "dashboard_url": url(p.ports["admin"], "/dashboard"), "s2s_port": p.ports["s2s"]}
                         for p in r.gateways]})
    return {"ca_cert": str(topo.ca_dir / "ca.pem"), "directory": str(topo.directory),
            "admin": {"username": "admin", "password": secret["admin_password"]},
            "regions": regions,
            "users": [{"jid": u.jid, "password": secret["users"][u.jid], "region": u.region} for u in topo.users]}


def _write_state(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _summary(data: dict[str, Any]) -> str:
    lines = ["", "Meridian demo is ready.", ""]
    for r in data["regions"]:
        lines.append(f"  region {r['name']} ({', '.join(r['domains'])}), Redis {r['redis_url']}")
        for n in r["nodes"]:
            lines.append(f"    {n['name']}: c2s {n['host']}:{n['c2s_port']} (STARTTLS), {n['c2s_tls_port']} (TLS), "
                         f"web client {n['web_client_url'] or '(not installed: npm ci --prefix web)'}")
        for g in r["gateways"]:
            extra = f", dashboard {g['dashboard_url']}" if g["dashboard_url"] else ""
            lines.append(f"    {g['name']}: S2S port {g['s2s_port']}{extra}")
    if data.get("sentinels"):
        lines.append(f"  Redis Sentinels {', '.join(data['sentinels']['addresses'])} watch eu's primary "
                     f"({data['sentinels']['master']!r}): kill -9 it and us's replica takes over")
    lines += ["", f"  group chat: {LOBBY} (persistent, in eu; alice owns it, bob is a member)", "", "  users:"]
    for u in data["users"]:
        lines.append(f"    {u['jid']:24} password {u['password']:14} (ports of region {u['region']})")
    lines += ["", f"  CA certificate for clients (and browsers, or accept the warning): {data['ca_cert']}",
              f"  admin API: {data['admin']['username']} / {data['admin']['password']}", "",
              "Ctrl-C stops everything."]
    return "\n".join(lines)


async def _lobby(topo: Topology, secret: dict[str, Any]) -> None:
    """The room alice (eu) and bob (us) chat in, made through an eu node's admin API."""
    node = topo.region("eu").nodes[0]
    url = f"http://{HOST}:{node.ports['admin']}/api/graphql"
    try:
        await make_lobby(url, ("admin", secret["admin_password"]), LOBBY, f"alice@{SHARED_DOMAIN}",
                         [f"bob@{SHARED_DOMAIN}"])
    except (LobbyError, aiohttp.ClientError, TimeoutError) as e:
        raise DemoError(f"cannot make the room {LOBBY}: {e}") from None


# -- entry point ------------------------------------------------------------------------------

def _settings_have(section: str, cls: type[NodeSettings]) -> bool:
    return section in cls.model_fields


async def run_demo(directory: Path, base_port: int, state_file: Path | None, redis_url: str | None,
                   sentinel: bool = False) -> int:
    """Start everything, write the state file, run until SIGINT/SIGTERM, stop everything."""
    if sentinel and redis_url is not None:
        raise DemoError("--sentinel starts its own Redis servers and Sentinels: not with --redis-url")
    redis_binary = None
    if redis_url is None:
        redis_binary = shutil.which("redis-server") or (
            "/usr/sbin/redis-server" if Path("/usr/sbin/redis-server").exists() else None)
        if redis_binary is None:
            raise DemoError("redis-server not found: install it (apt-get install redis-server) "
                            "or give an existing Redis with --redis-url redis://host:port/0")
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    _stop_leftovers(directory)
    has_admin, has_s2s = _settings_have("admin", NodeSettings), _settings_have("s2s", GatewaySettings)
    probe = build_topology(directory, base_port, secret="", admin=("admin", ""))
    secret = _secrets(directory, [u.jid for u in probe.users])
    web_root = prepare_web_root(directory / "web")
    if web_root is None:
        print(f"web client not installed ({REPO_WEB}/node_modules missing): npm ci --prefix web", flush=True)
    topo = build_topology(directory, base_port, secret=secret["cluster_secret"],
                          admin=("admin", secret["admin_password"]), external_redis=redis_url,
                          has_admin=has_admin, has_s2s=has_s2s, web_root=web_root)
    if redis_url is not None:
        for r in topo.regions:
            r.redis.port = 0
    sentinels = add_sentinels(topo) if sentinel else []
    _check_ports(topo, [s.port for s in sentinels])
    _certificates(topo)
    _write_configs(topo)
    try:
        for p in topo.processes:
            _load(p)  # the settings loader checks every file before anything starts
        await _register_users(topo, secret["users"])
    except (OSError, sqlite3.Error) as e:
        raise DemoError(f"cannot prepare the demo's database: {e}") from None

    demo = Demo(topo, redis_binary)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if redis_binary is not None:
            for server in topo.redis:
                demo.start_redis(server)
            await demo.wait_redis()
            if sentinels:
                await demo.start_sentinels(sentinels)
        for p in topo.processes:
            demo.start_process(p)
        print(f"starting {len(topo.processes)} processes in {directory} …", flush=True)
        ready = asyncio.ensure_future(demo.wait_ready())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            ready.cancel()
            return 130
        ready.result()
        if has_admin:
            await _lobby(topo, secret)
        data = state(topo, demo, secret, has_admin)
        if sentinels:
            data["sentinels"] = {"master": MASTER, "addresses": [s.address for s in sentinels]}
        if state_file is not None:
            _write_state(state_file, data)
        print(_summary(data), flush=True)
        watched = sentinels[0].primary.port if sentinels else None
        survivable = {f"redis-{r.region}" for r in topo.redis
                      if watched is not None and watched in (r.port, r.replicaof)}
        told: set[str] = set()
        restarts: dict[str, float] = {}  # a process that died -> when it starts again
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            now = time.monotonic()
            for name in demo.dead():
                if name in told or name in restarts:
                    continue
                if name in survivable:  # with Sentinels: a Redis server's death is what they handle
                    told.add(name)
                    print(f"meridian demo: {name} exited; the Sentinels fail over to a replica", flush=True)
                    continue
                # A fault-tolerant system's demo stays up when one of its processes dies: the
                # dashboard shows it down, its region serves on, and it comes back and rejoins.
                print(f"meridian demo: {name} exited with {demo.procs[name].returncode}; restarting it in "
                      f"{RESTART_AFTER:.0f} s (Ctrl-C stops the demo)", flush=True)
                restarts[name] = now + RESTART_AFTER
            for name, when in list(restarts.items()):
                if now >= when:
                    del restarts[name]
                    demo.restart(name)
                    print(f"meridian demo: {name} restarted (pid {demo.procs[name].pid})", flush=True)
                    if state_file is not None:
                        data = {**data, **state(topo, demo, secret, has_admin)}
                        _write_state(state_file, data)
        return 0
    finally:
        print("stopping the demo …", flush=True)
        demo.stop()
        if state_file is not None:
            state_file.unlink(missing_ok=True)
        print("demo stopped", flush=True)
