"""A throwaway ejabberd (Debian's 23.01) on loopback, the second real peer of S2S interop tests.

Like :class:`~tests.helpers.prosody.ProsodyServer`: its own directory (config, spool, logs,
certificate), free c2s/s2s ports on 127.0.0.1, its own Erlang node name, started in the foreground
through ``ejabberdctl`` (which insists on running as root or ``ejabberd``; as root it switches to
``ejabberd``, so the directory is given to that user).

Name resolution, found by trying: ejabberd resolves SRV and A records with Erlang's ``inet_res``,
whose name servers come from the file in ``ERL_INETRC``; ``ejabberdctl`` points that at
``<config dir>/inetrc``.  ``{resolv_conf, ""}.`` then ``{nameserver, {127,0,0,1}, PORT}.`` there
sends every lookup to our :class:`~tests.helpers.dns.DnsServer` (without the first line the system
resolv.conf's servers win; with it after the second, the list ends up empty).  But only the SRV
lookups go there: p1_xmpp 1.6.1 (``xmpp_stream_out:a_lookup``) resolves the SRV *target* with
``net:getaddrinfo``, i.e. libc (/etc/hosts, the system resolver).  So a server ejabberd dials must
publish SRV records whose target libc knows: ``srv_target="localhost"`` (our DnsServer also gets an
A record for it, for Meridian; libunbound answers ``localhost`` itself).

STARTTLS is always required on S2S.  ``dialback=False`` leaves out mod_s2s_dialback, and so does
``secure_auth=True``: then only a peer certificate the CA vouches for gets in (SASL EXTERNAL).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.link.tls import issue_cert, make_ca

from .dns import DnsServer
from .ports import free_port
from .process import wait_listening

__all__ = ["EjabberdServer", "ejabberdctl_binary"]

_USER = "ejabberd"


def ejabberdctl_binary() -> str | None:
    return shutil.which("ejabberdctl") or ("/usr/sbin/ejabberdctl" if Path("/usr/sbin/ejabberdctl").exists() else None)


class EjabberdServer:
    """``with EjabberdServer("e.example.net", ca=ca, dns=dns, users={"bob": "pw"}) as e: ...``.

    Like :class:`~tests.helpers.prosody.ProsodyServer`: ``c2s_port``/``s2s_port``, ``jid()``,
    ``register()`` (through ``ejabberdctl`` once running), ``publish()`` (SRV + A records).
    """

    def __init__(self, host: str, *, ca: tuple[Path, Path] | None = None, trust: list[Path] | None = None,
                 dns: DnsServer | None = None, users: dict[str, str] | None = None, dialback: bool = True,
                 secure_auth: bool = False, srv_target: str | None = None) -> None:
        binary = ejabberdctl_binary()
        if binary is None:
            raise RuntimeError("ejabberdctl not found (apt-get install ejabberd)")
        if os.geteuid() != 0:
            raise RuntimeError("Debian's ejabberdctl runs only as root or the ejabberd user")
        self.binary = binary
        self.host = host
        self.dns = dns
        self.users = dict(users or {})
        self.dialback = dialback
        self.secure_auth = secure_auth
        self.srv_target = srv_target or host
        self.dir = Path(tempfile.mkdtemp(prefix=f"meridian-ejabberd-{host}-"))
        self.node_name = f"ejabberd-{uuid.uuid4().hex[:8]}@localhost"
        self.c2s_port = free_port()
        self.s2s_port = free_port()
        if ca is None:
            ca = make_ca(self.dir / "ca", name=f"ejabberd test CA {host}")
        self.ca_cert = ca[0]
        cert, key = issue_cert(ca[0], ca[1], self.dir / "certs", host, [host])
        self.certfile = self.dir / "certs" / "server.pem"
        self.certfile.write_text(cert.read_text() + key.read_text())
        self.cafile = self.dir / "certs" / "trust.pem"
        self.cafile.write_text("".join(p.read_text() for p in [ca[0], *(trust or [])]))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "logs" / "ejabberd.log"

    def log(self) -> str:
        out = []
        for path in (self.log_path, self.dir / "logs" / "error.log", self.dir / "stdout.log"):
            if path.exists():
                out.append(f"--- {path.name} ---\n{path.read_text(errors='replace')}")
        return "\n".join(out)

    def jid(self, user: str) -> str:
        return f"{user}@{self.host}"

    def _config(self) -> str:
        modules = {"mod_roster": "{}", "mod_disco": "{}", "mod_ping": "{}"}
        if self.dialback:
            modules["mod_s2s_dialback"] = "{}"
        mods = "\n".join(f"  {k}: {v}" for k, v in modules.items())
        # 23.01 spells "trusted certificates only" as STARTTLS required and no mod_s2s_dialback (it
        # rewrites the older ``required_trusted`` to that, with a warning)
        if self.secure_auth:
            modules.pop("mod_s2s_dialback", None)
        return f"""\
hosts:
  - "{self.host}"
loglevel: debug
log_rotate_count: 0
certfiles:
  - "{self.certfile}"
ca_file: "{self.cafile}"
s2s_use_starttls: required
auth_method: internal
auth_password_format: plain
shaper: {{}}
acl: {{}}
access_rules:
  local:
    allow: all
  c2s:
    allow: all
  s2s:
    allow: all
shaper_rules: {{}}
listen:
  - port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
  - port: {self.s2s_port}
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
modules:
{mods}
"""

    def _write(self) -> None:
        conf = self.dir / "conf"
        conf.mkdir(exist_ok=True)
        (self.dir / "spool").mkdir(exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        (conf / "ejabberd.yml").write_text(self._config())
        (conf / "ejabberdctl.cfg").write_text(
            "POLL=true\nERL_PROCESSES=250000\nINET_DIST_INTERFACE=127.0.0.1\n"
            f"ERLANG_NODE={self.node_name}\n"
            # the scheduler busy-wait would burn the CPU the other processes of a test need
            'ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none"\n')
        port = self.dns.port if self.dns else 1
        # {resolv_conf, ""} first: it empties the name server list, and a resolv.conf left in place
        # would override ours.  /etc/hosts stays (ejabberdctl finds the node at "localhost" in it).
        (conf / "inetrc").write_text(
            f"{{resolv_conf, \"\"}}.\n{{nameserver, {{127,0,0,1}}, {port}}}.\n{{lookup, [file, dns]}}.\n")
        for root, dirs, files in os.walk(self.dir):
            for name in (*dirs, *files):
                shutil.chown(os.path.join(root, name), _USER, _USER)
        shutil.chown(self.dir, _USER, _USER)

    def _ctl_args(self) -> list[str]:
        conf = self.dir / "conf"
        return [self.binary, "--config-dir", str(conf), "--config", str(conf / "ejabberd.yml"),
                "--spool", str(self.dir / "spool"), "--logs", str(self.dir / "logs"), "--node", self.node_name]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EJABBERD_", "ERL_"))}
        env["EJABBERD_CONFIG_PATH"] = str(self.dir / "conf" / "ejabberd.yml")
        env["EJABBERD_PID_PATH"] = str(self.dir / "ejabberd.pid")
        return env

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._ctl_args(), *args], capture_output=True, text=True, env=self._env(),
                              timeout=timeout, cwd=self.dir)

    def register(self, user: str, password: str) -> None:
        self.users[user] = password
        if self.running:
            res = self.ctl("register", user, self.host, password)
            if res.returncode != 0:
                raise RuntimeError(f"ejabberdctl register {user}: {res.stdout}{res.stderr}")

    def publish(self, dns: DnsServer | None = None, *, target: str | None = None) -> None:
        dns = dns or self.dns
        if dns is None:
            raise ValueError("no DnsServer to publish to")
        target = target or self.srv_target
        dns.add_srv(f"_xmpp-server._tcp.{self.host}", target, self.s2s_port)
        dns.add_srv(f"_xmpp-client._tcp.{self.host}", target, self.c2s_port)
        dns.add_a(target, "127.0.0.1")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 90.0) -> EjabberdServer:
        if self.running:
            return self
        self._write()
        if self.dns is not None:
            self.publish()
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen([*self._ctl_args(), "foreground"], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self._env(), cwd=self.dir,
                                         start_new_session=True)
        self.wait_ready(timeout)
        for user, password in self.users.items():
            self.register(user, password)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wait_listening(self.proc, [self.c2s_port, self.s2s_port], timeout, f"ejabberd for {self.host}", self.log,
                       poll=0.2)
        # the listeners open before the node answers ejabberdctl; registering needs the latter
        while self.ctl("status", timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ejabberd for {self.host} never reported started:\n{self.log()}")
            time.sleep(0.5)

    def _beam_pids(self) -> list[int]:
        """The Erlang VM of this instance: ``su -c`` puts it in a session of its own, out of reach of
        signals to our child's process group, so find it by its unique node name."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"beam.smp") and self.node_name.encode() in args:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """``ejabberdctl stop`` (a clean shutdown), then SIGKILL to its VM if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.ctl("stop", timeout=30)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        for pid in self._beam_pids():
            os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EjabberdServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: object, *exc: Any) -> None:
        if exc_type is None:
            self.close()
            return
        self.stop()
        print(f"ejabberd {self.host} in {self.dir}:\n{self.log()[-30000:]}", file=sys.stderr)
