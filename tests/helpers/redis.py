"""A throwaway ``redis-server`` for the tests, on a free loopback port, never the system one.

No persistence (``--save "" --appendonly no``), so a restart comes back empty, like a Redis that
lost its data: :meth:`RedisServer.stop` then :meth:`RedisServer.start` (same port) is how tests
play "Redis down for 10 s".  ``replicaof=(host, port)`` starts a replica of another server.
:class:`RedisClusterServer` is a throwaway Redis Cluster of three primaries.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from .ports import free_port, free_ports
from .process import terminate

__all__ = ["RedisClusterServer", "RedisServer", "redis_cli_binary", "redis_server_binary"]


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


class RedisServer:
    def __init__(self, *, replicaof: tuple[str, int] | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self.binary = binary
        self.replicaof = replicaof
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="meridian-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.running:
            return self
        args = [self.binary, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
                # a primary otherwise waits 5 s for more replicas before the first full sync
                "--repl-diskless-sync-delay", "0"]
        if self.replicaof is not None:
            args += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)
        return self

    def client(self) -> redis.Redis:
        """A synchronous client, for setup and checks in tests."""
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until PING answers (the server may refuse connections for a moment after start)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not start:\n{self.log()}")
            time.sleep(0.05)

    def wait_synced(self, timeout: float = 10.0) -> None:
        """For a replica: until its link to the primary is up (the initial sync is done)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.client() as c:
                info = c.info("replication")
            if info.get("master_link_status") == "up":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica on port {self.port} did not sync: {info}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server; ``start()`` brings it back on the same port, empty."""
        terminate(self.proc, 10)
        self.proc = None

    def close(self) -> None:
        """Stop for good and remove the directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def redis_cli_binary() -> str | None:
    return shutil.which("redis-cli") or ("/usr/bin/redis-cli" if Path("/usr/bin/redis-cli").exists() else None)


class RedisClusterServer:
    """A throwaway Redis Cluster: ``size`` primaries (no replicas) on free loopback ports.

    Each node has its own directory (its ``nodes.conf`` lives there) and its own cluster-bus
    port (``--cluster-port``, Redis >= 7.0), so the bus is never the default ``port + 10000``,
    which may be taken or out of range.  No persistence.  :attr:`url` is the
    ``redis+cluster://`` URL that :func:`gateway.mapping.redis_client` understands.
    """

    def __init__(self, size: int = 3) -> None:
        if size < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        server, cli = redis_server_binary(), redis_cli_binary()
        if server is None or cli is None:
            raise RuntimeError("redis-server or redis-cli not found (apt-get install redis-server)")
        self.binary, self.cli = server, cli
        self.host = "127.0.0.1"
        ports = free_ports(2 * size)
        self.ports, self.bus_ports = ports[:size], ports[size:]
        self.dir = Path(tempfile.mkdtemp(prefix="meridian-redis-cluster-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.created = False

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{self.host}:{p}" for p in self.ports) + "/"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(self.host, p) for p in self.ports]

    def node_dir(self, port: int) -> Path:
        return self.dir / f"node-{port}"

    def log(self) -> str:
        parts = []
        for port in self.ports:
            path = self.node_dir(port) / "redis.log"
            if path.exists():
                parts.append(f"--- node {port} ---\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def node_client(self, port: int) -> redis.Redis:
        """A synchronous client of one node (not cluster-aware), for setup and checks."""
        return redis.Redis(host=self.host, port=port, socket_timeout=5)

    def start(self, timeout: float = 30.0) -> RedisClusterServer:
        """Start the nodes, create the cluster (first start only), wait until every node sees all
        slots served.  After :meth:`stop`, the nodes come back on the same ports with their
        ``nodes.conf`` (same cluster, same slots) and no data, like a cluster that lost power."""
        if self.procs:
            return self
        deadline = time.monotonic() + timeout
        try:
            for port, bus in zip(self.ports, self.bus_ports, strict=True):
                d = self.node_dir(port)
                d.mkdir(exist_ok=True)
                self.procs.append(subprocess.Popen(
                    [self.binary, "--port", str(port), "--bind", self.host, "--cluster-enabled", "yes",
                     "--cluster-config-file", str(d / "nodes.conf"), "--cluster-port", str(bus),
                     "--save", "", "--appendonly", "no", "--dir", str(d), "--logfile", str(d / "redis.log"),
                     "--daemonize", "no"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for port in self.ports:
                self._wait(deadline, lambda c: bool(c.ping()), port, "answer PING")
            if not self.created:
                create = subprocess.run(
                    [self.cli, "--cluster", "create", *(f"{self.host}:{p}" for p in self.ports),
                     "--cluster-replicas", "0", "--cluster-yes"],
                    capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()), check=False)
                if create.returncode != 0:
                    raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
                self.created = True
            for port in self.ports:
                self._wait(deadline, self._cluster_ok, port, "report cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        return self

    def _cluster_ok(self, c: redis.Redis) -> bool:
        # every node must know the others and the full slot map, or a client starting from it
        # would see uncovered slots
        info = c.cluster("INFO")  # parsed by redis-py into a dict of str -> str or int
        return (str(info.get("cluster_state")) == "ok" and str(info.get("cluster_slots_ok")) == "16384"
                and str(info.get("cluster_known_nodes")) == str(len(self.ports)))

    def _wait(self, deadline: float, ready: Callable[[redis.Redis], bool], port: int, what: str) -> None:
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{self.log()}")
            try:
                with self.node_client(port) as c:
                    if ready(c):
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster node on port {port} did not {what}:\n{self.log()}")
            time.sleep(0.05)

    def flushall(self) -> None:
        """Empty every node (data and script caches): a clean cluster for the next test."""
        for port in self.ports:
            with self.node_client(port) as c:
                c.flushall()
                c.script_flush()

    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        """Stop every node; ``start()`` brings the same cluster back, empty."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def close(self) -> None:
        """Stop every node and remove the directories."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
