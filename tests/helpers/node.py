"""Run real ``meridian node`` processes for integration tests."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .ports import free_ports

__all__ = ["NodeProcess", "toml_dump", "ADMIN_USER", "ADMIN_PASSWORD"]

ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-secret-for-tests"

ROOT = Path(__file__).resolve().parents[2]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _key(k: str) -> str:
    """A bare key, or a quoted one when it holds dots or other characters (e.g. a domain)."""
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def toml_dump(settings: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for our settings files: keys, then tables (nested ones as ``[a.b]``)."""
    lines = [f"{_key(k)} = {_toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for k, v in settings.items():
        if isinstance(v, dict):
            lines.append(f"\n[{prefix}{_key(k)}]")
            lines.append(toml_dump(v, f"{prefix}{_key(k)}.").rstrip("\n"))
    return "\n".join(lines) + "\n"


class NodeProcess:
    """A ``meridian node`` subprocess with its own data dir and free ports."""

    role = "node"

    def __init__(self, workdir: Path, *, name: str = "node1", domains: list[str] | None = None,
                 storage_url: str | None = None, settings: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port, self.tls_port = free_ports(2) if self.role == "node" else (0, 0)
        # The operations API on free ports: the admin one on every process, the user one on nodes.
        self.admin_port, self.user_api_port = free_ports(2)
        if self.role != "node":
            self.user_api_port = 0
        conf: dict[str, Any] = {
            "node_name": name,
            "domains": domains or ["localhost"],
            "data_dir": str(workdir / "data"),
            "log_level": "INFO",
            "c2s": {"host": "127.0.0.1", "port": self.port, "tls_port": self.tls_port},
            "admin": {"host": "127.0.0.1", "port": self.admin_port, "username": ADMIN_USER,
                      "password": ADMIN_PASSWORD},
            "user_api": {"host": "127.0.0.1", "port": self.user_api_port},
            # Many tests fail logins on purpose from 127.0.0.1; the throttling test connects from
            # other loopback addresses, which keep the defaults.
            "auth_throttle": {"exempt": ["127.0.0.1/32"]},
        }
        if storage_url:
            conf["storage"] = {"url": storage_url}
        for key, value in (settings or {}).items():
            if isinstance(value, dict):
                conf.setdefault(key, {}).update(value)
            else:
                conf[key] = value
        self.config = workdir / f"{name}.toml"
        self.config.write_text(toml_dump(conf))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec: Callable[[], None] | None = None  # run in the child before exec (e.g. its rlimits)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def user_api_url(self) -> str:
        return f"http://127.0.0.1:{self.user_api_port}"

    @property
    def cert(self) -> Path:
        return self.workdir / "data" / "tls" / "cert.pem"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env["PYTHONPATH"] = str(ROOT)
        return env

    def start(self, timeout: float = 60.0) -> NodeProcess:
        """Start the process; return once every listener is up.  The bound is loose (a loaded CI
        machine, coverage measuring) since a healthy start returns as soon as it is up."""
        log = open(self.log_path, "ab")
        control = self.workdir / "data" / "control.sock"
        control.unlink(missing_ok=True)  # left by a process killed with SIGKILL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", self.role, "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env=self._env(), cwd=self.workdir, preexec_fn=self.preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if control.exists():  # made once every listener is up
                return self
            time.sleep(0.05)
        self.proc.kill()  # not left running behind the failed test
        self.proc.wait()
        raise TimeoutError(f"{self.role} {self.name} did not start in {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    async def http(self, method: str, url: str, *, auth: tuple[str, str] | None = None,
                   json_body: Any = None, data: bytes | None = None) -> tuple[int, Any]:
        """(status, JSON body or text) of one HTTP request to this process's API."""
        import aiohttp

        headers = {}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.request(method, url, headers=headers, json=json_body, data=data) as resp:
                if resp.content_type == "application/json":
                    return resp.status, await resp.json()
                return resp.status, await resp.text()

    async def admin(self, query: str, variables: dict[str, Any] | None = None, *,
                    auth: tuple[str, str] | None = (ADMIN_USER, ADMIN_PASSWORD)) -> tuple[int, Any]:
        """A GraphQL request to the admin API (POST /api/graphql) with the admin's credentials."""
        return await self.http("POST", f"{self.admin_url}/api/graphql", auth=auth,
                               json_body={"query": query, "variables": variables or {}})

    async def user_api(self, query: str, auth: tuple[str, str] | None,
                       variables: dict[str, Any] | None = None) -> tuple[int, Any]:
        """A GraphQL request to the user API as ``auth`` = (bare JID, password)."""
        return await self.http("POST", f"{self.user_api_url}/api/graphql", auth=auth,
                               json_body={"query": query, "variables": variables or {}})

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([sys.executable, "-m", "gateway.cli", "ctl", "--config", str(self.config),
                              *args], capture_output=True, text=True, env=self._env(), cwd=self.workdir,
                             timeout=60)
        if check and res.returncode != 0:
            raise RuntimeError(f"ctl {args} failed ({res.returncode}): {res.stderr}")
        return res

    def register(self, username: str, password: str, domain: str = "localhost") -> None:
        self.ctl("account", "register-user", "--domain", domain, "--username", username,
                 "--password", password)
