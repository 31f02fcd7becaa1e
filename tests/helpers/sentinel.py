"""A throwaway Redis Sentinel set for the tests: a primary, its replica and three Sentinels
(``redis-server --sentinel``), all on free loopback ports, never the system ones.

The Sentinels decide quickly (``down-after-milliseconds`` 1000, ``failover-timeout`` 4000), so
:meth:`SentinelSet.kill_primary` (SIGKILL) is followed by a promotion within a few seconds.
:meth:`SentinelSet.start` returns once every Sentinel knows the replica and the other Sentinels,
so a failover can start at once.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .ports import free_ports
from .process import terminate
from .redis import RedisServer, redis_server_binary

__all__ = ["MASTER", "SentinelSet"]

MASTER = "meridian"
HOST = "127.0.0.1"


class SentinelSet:
    def __init__(self, *, sentinels: int = 3, down_after_ms: int = 1000, failover_timeout_ms: int = 4000) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self.binary = binary
        self.primary = RedisServer()
        self.replica = RedisServer(replicaof=self.primary.address)
        self.ports = free_ports(sentinels)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.dir = Path(tempfile.mkdtemp(prefix="meridian-sentinel-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every Sentinel: the ``gdistrib.redis.sentinels`` setting."""
        return [f"{HOST}:{p}" for p in self.ports]

    @property
    def quorum(self) -> int:
        return len(self.ports) // 2 + 1

    def conf(self, port: int) -> str:
        d = self.dir / f"s{port}"
        return "\n".join([
            f"port {port}", f"bind {HOST}", "daemonize no", f"dir {d}", f"logfile {d / 'sentinel.log'}",
            f"sentinel monitor {MASTER} {HOST} {self.primary.port} {self.quorum}",
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER} 1", ""])

    def log(self) -> str:
        parts = [f"--- primary ---\n{self.primary.log()}", f"--- replica ---\n{self.replica.log()}"]
        for port in self.ports:
            path = self.dir / f"s{port}" / "sentinel.log"
            if path.exists():
                parts.append(f"--- sentinel {port} ---\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def sentinel_client(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, socket_timeout=5, decode_responses=True)

    def start(self, timeout: float = 30.0) -> SentinelSet:
        """Primary, replica (synced), then the Sentinels; until each knows the replica and its peers."""
        self.primary.start()
        self.replica.start()
        self.replica.wait_synced(timeout)
        for port in self.ports:
            d = self.dir / f"s{port}"
            d.mkdir(exist_ok=True)
            conf = d / "sentinel.conf"  # Sentinel rewrites its file: one each, writable
            conf.write_text(self.conf(port))
            self.procs.append(subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not self._knows_everyone(port):
                for proc in self.procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"redis-server --sentinel exited with {proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Sentinel on port {port} did not find its peers:\n{self.log()}")
                time.sleep(0.1)
        return self

    def _knows_everyone(self, port: int) -> bool:
        try:
            with self.sentinel_client(port) as c:
                state = c.sentinel_master(MASTER)
        except redis.RedisError:
            return False
        return (int(state.get("num-slaves", 0)) >= 1
                and int(state.get("num-other-sentinels", 0)) == len(self.ports) - 1)

    def primary_address(self) -> tuple[str, int] | None:
        """Where the Sentinels' majority says the primary is now (None while they disagree)."""
        seen: list[tuple[str, int]] = []
        for port in self.ports:
            try:
                with self.sentinel_client(port) as c:
                    host, p = c.sentinel_get_master_addr_by_name(MASTER)
                seen.append((str(host), int(p)))
            except (redis.RedisError, TypeError, ValueError):
                continue
        for address in seen:
            if seen.count(address) >= self.quorum:
                return address
        return None

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary (no goodbye to anyone); returns the survivor to be promoted."""
        assert self.primary.proc is not None
        self.primary.proc.kill()
        self.primary.proc.wait()
        self.primary.proc = None
        return self.replica

    def wait_promoted(self, server: RedisServer, timeout: float = 30.0) -> float:
        """Until the Sentinels name ``server`` the primary and it says so itself; the seconds it took."""
        started = time.monotonic()
        while True:
            if self.primary_address() == server.address:
                try:
                    with server.client() as c:
                        if c.info("replication").get("role") == "master":
                            return time.monotonic() - started
                except redis.RedisError:
                    pass
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{server.address} not promoted after {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def close(self) -> None:
        for proc in self.procs:
            terminate(proc, 10)
        self.procs = []
        self.replica.close()
        self.primary.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
