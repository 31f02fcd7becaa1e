"""A throwaway ``redis-server`` for the tests, on a free loopback port, never the system one.

No persistence (``--save "" --appendonly no``), so a restart comes back empty, like a Redis that
lost its data: :meth:`RedisServer.stop` then :meth:`RedisServer.start` (same port) is how tests
play "Redis down for 10 s".  ``replicaof=(host, port)`` starts a replica of another server.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from .ports import free_port

__all__ = ["RedisServer", "redis_server_binary"]


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
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop for good and remove the directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
