"""A throwaway PostgreSQL server for the tests, on a free loopback port.

Debian's ``postgresql`` package gives the binaries; initdb refuses to run as root, so as root
the server runs as the ``postgres`` system user (or ``nobody``) in a directory chowned to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .ports import free_port

__all__ = ["PostgresServer", "pg_bindir"]


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL binaries not found (apt-get install postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="meridian-pg-"))
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                    self.user = name
                    break
                except KeyError:
                    continue
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def db_user(self) -> str:
        return self.user or pwd.getpwuid(os.geteuid()).pw_name

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.db_user}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        return (["runuser", "-u", self.user, "--"] if self.user else []) + list(args)

    def start(self) -> PostgresServer:
        data = self.dir / "data"
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", self.db_user,
                                 "--no-sync", "-E", "UTF8"), check=True, capture_output=True)
        return self._launch()

    def _postmaster_pid(self) -> int | None:
        """The server's own pid (``postmaster.pid``): as root, ``self.proc`` is ``runuser``, which
        does not pass every signal on — signalling it would leave PostgreSQL running."""
        try:
            return int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _signal_server(self, sig: int, timeout: float) -> None:
        """Send ``sig`` to the postmaster and wait until it has exited (SIGKILL after ``timeout``)."""
        pid = self._postmaster_pid()
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pid = None
        deadline = time.monotonic() + timeout
        while pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
            time.sleep(0.05)
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """An immediate shutdown (SIGQUIT to the postmaster: every backend killed, no checkpoint;
        the data stays for :meth:`restart`, which then runs crash recovery).  Unlike a kill -9 of
        the postmaster alone, it leaves no orphaned backend holding the shared memory the restart
        needs."""
        self._signal_server(signal.SIGQUIT, 15)

    def shut_down(self) -> None:
        """A fast shutdown (SIGINT: clients cut off, a checkpoint written): the database is away
        and everything committed is kept, although the tests' server runs with
        ``synchronous_commit=off`` (whose last commits an immediate shutdown may lose).  Back with
        :meth:`restart`."""
        self._signal_server(signal.SIGINT, 15)

    def restart(self) -> PostgresServer:
        """Start the server again on its data and port (after :meth:`kill`): crash recovery runs."""
        self.kill()
        return self._launch()

    def _launch(self) -> PostgresServer:
        data = self.dir / "data"
        self.proc = subprocess.Popen(
            self._cmd(str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                      "-k", str(self.dir), "-c", "fsync=off", "-c", "full_page_writes=off",
                      "-c", "synchronous_commit=off", "-c", "max_connections=300"),
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "postgres.log", "ab"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            res = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                 capture_output=True)
            if res.returncode == 0:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "postgres.log").read_text())
            time.sleep(0.1)
        raise TimeoutError("PostgreSQL did not start")

    def create_database(self, name: str) -> str:
        subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.db_user,
                        "-d", "postgres", "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
        return self.url(name)

    def stop(self) -> None:
        self._signal_server(signal.SIGTERM, 15)  # a smart shutdown, SIGKILL if it takes longer
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
