"""A throwaway Prosody (Debian's 0.12) on loopback, as the real peer of S2S interop tests.

Each instance is self-contained in its own directory (config, data, pid, log, certificate), runs in
the foreground (``-F``, ``daemonize = false``) on free c2s/s2s ports of 127.0.0.1, and as ``nobody``
when the tests run as root (Prosody's mod_posix objects to root), with more descriptors than the
default 1024.

Name resolution, found by trying (recorded so the next person does not have to):
- Prosody 0.12 resolves through libunbound when ``lua-unbound`` is installed (Debian's
  ``lua-unbound``; ``lua5.4-unbound`` is a virtual name).  ``unbound = { forward = "127.0.0.1@PORT",
  resolvconf = false, hoststxt = false }`` sends every query to our :class:`~tests.helpers.dns.DnsServer`
  (it accepts the authoritative answers without RA; ``do-not-query-localhost`` did not need changing).
- libunbound answers NXDOMAIN itself for the RFC 6761 names (``*.test``, ``*.invalid``, ``localhost``)
  without asking the forwarder, so peers in tests use names under ``example.org``/``example.net``/
  ``example.com``.
- Prosody dials the SRV target and port, so every instance can share 127.0.0.1 with its own s2s port;
  without an SRV record it dials port 5269 on the domain's address.
- ``srv_target``: the SRV records name the virtual host itself by default; ``"localhost"`` for a
  server that ejabberd must dial (ejabberd resolves SRV targets through libc, see
  :mod:`tests.helpers.ejabberd`).

Certificates come from a CA the test passes in (``ca=(cert, key)``, see :mod:`gateway.link.tls`) and
are valid for the virtual host (dNSName SAN), so peers that trust that CA accept them.  ``trust``
lists the CA files Prosody verifies peers with (``ssl.cafile``, a bundle written here).

``secure_auth=True`` sets ``s2s_secure_auth`` (a valid certificate is required: SASL EXTERNAL, or
dialback only over a verified certificate); ``dialback=False`` leaves out ``mod_dialback``, so the only
way to authenticate with this server is SASL EXTERNAL (XEP-0178).

``modules=["smacks"]`` adds modules to ``modules_enabled`` (0.12's XEP-0198 ``mod_smacks`` is a core
module, off unless listed); ``c2s_direct_tls=True`` also listens for direct-TLS c2s (XEP-0368) on a
free port, ``p.c2s_tls_port`` (``None`` otherwise).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.link.tls import issue_cert, make_ca

from .dns import DnsServer
from .ports import free_port
from .process import terminate, wait_listening

__all__ = ["ProsodyServer", "prosody_binary", "unbound_available"]

_RUN_AS = "nobody"
_RUN_GROUP = "nogroup"
_NOFILE = 16384


def prosody_binary() -> str | None:
    """``prosody`` if the Debian package is installed (``scripts/install-test-deps.sh``)."""
    return shutil.which("prosody") or ("/usr/bin/prosody" if Path("/usr/bin/prosody").exists() else None)


def unbound_available() -> bool:
    """Whether Prosody will resolve through libunbound (and so through our DNS server)."""
    return any(Path("/usr/lib").glob("*/lua/*/lunbound.so")) or any(Path("/usr/lib").glob("lua/*/lunbound.so"))


def _lua(value: Any) -> str:
    """A Python value as a Lua literal (strings, numbers, booleans, lists, dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if isinstance(value, (list, tuple)):
        return "{ " + "; ".join(_lua(v) for v in value) + " }"
    if isinstance(value, dict):
        return "{ " + "; ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no Lua literal for {value!r}")


def _encode(part: str) -> str:
    """Prosody's datamanager file-name encoding: every non-alphanumeric byte as ``%xx``."""
    return re.sub(r"[^A-Za-z0-9]", lambda m: "".join(f"%{b:02x}" for b in m.group().encode()), part)


class ProsodyServer:
    """``with ProsodyServer("a.example.org", ca=ca, dns=dns, users={"alice": "pw"}) as p: ...``.

    ``p.c2s_port``/``p.s2s_port`` are free loopback ports; with ``dns`` the server's SRV and A records
    (``_xmpp-server._tcp``/``_xmpp-client._tcp`` → 127.0.0.1) are added to it and Prosody resolves
    other domains through it.
    """

    def __init__(self, host: str, *, ca: tuple[Path, Path] | None = None, trust: list[Path] | None = None,
                 dns: DnsServer | None = None, users: dict[str, str] | None = None, dialback: bool = True,
                 secure_auth: bool = False, srv_target: str | None = None, require_encryption: bool = True,
                 extra_config: str = "", modules: list[str] | tuple[str, ...] = (), c2s_direct_tls: bool = False,
                 directory: Path | None = None) -> None:
        binary = prosody_binary()
        if binary is None:
            raise RuntimeError("prosody not found (apt-get install prosody lua-unbound)")
        self.binary = binary
        self.host = host
        self.dns = dns
        self.users = dict(users or {})
        self.dialback = dialback
        self.secure_auth = secure_auth
        self.srv_target = srv_target or host
        self.require_encryption = require_encryption
        self.extra_config = extra_config
        self.extra_modules = list(modules)
        self.dir = directory or Path(tempfile.mkdtemp(prefix=f"meridian-prosody-{host}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.c2s_port = free_port()
        self.s2s_port = free_port()
        self.c2s_tls_port = free_port() if c2s_direct_tls else None
        if ca is None:
            ca = make_ca(self.dir / "ca", name=f"Prosody test CA {host}")
        self.ca_cert = ca[0]
        self.cert, self.key = issue_cert(ca[0], ca[1], self.dir / "certs", host, [host])
        self.trust = [ca[0], *(trust or [])]
        self.proc: subprocess.Popen[bytes] | None = None

    # files ------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / "prosody.cfg.lua"

    @property
    def log_path(self) -> Path:
        return self.dir / "prosody.log"

    def log(self) -> str:
        out = []
        for path in (self.log_path, self.dir / "stdout.log"):
            if path.exists():
                out.append(f"--- {path.name} ---\n{path.read_text(errors='replace')}")
        return "\n".join(out)

    def _config(self) -> str:
        modules = ["roster", "saslauth", "tls", "disco", "ping", "version", "uptime", "time"]
        if self.dialback:
            modules.append("dialback")
        modules += [m for m in self.extra_modules if m not in modules]
        bundle = self.dir / "certs" / "trust.pem"
        bundle.write_text("".join(p.read_text() for p in self.trust))
        d = self.dir
        settings: dict[str, Any] = {
            "daemonize": False,
            "pidfile": d / "prosody.pid",
            "data_path": d / "data",
            "admin_socket": d / "admin.sock",
            "interfaces": ["127.0.0.1"],
            "local_interfaces": ["127.0.0.1"],
            "c2s_ports": [self.c2s_port],
            "s2s_ports": [self.s2s_port],
            "c2s_direct_tls_ports": [self.c2s_tls_port] if self.c2s_tls_port else [],
            "s2s_direct_tls_ports": [],
            "legacy_ssl_ports": [],
            "component_ports": [],
            "http_ports": [],
            "https_ports": [],
            "modules_enabled": modules,
            "authentication": "internal_plain",
            "storage": "internal",
            "limits": {},
            "c2s_require_encryption": True,
            "s2s_require_encryption": self.require_encryption,
            "s2s_secure_auth": self.secure_auth,
            "s2s_timeout": 30,
            "log": {"debug": d / "prosody.log"},
            "unbound": {"forward": f"127.0.0.1@{self.dns.port}" if self.dns else "127.0.0.1@1",
                        "resolvconf": False, "hoststxt": False},
            "ssl": {"cafile": bundle},
        }
        if self.c2s_tls_port:
            settings["c2s_direct_tls_ssl"] = {"certificate": self.cert, "key": self.key}
        lines = [f"{k} = {_lua(v)}" for k, v in settings.items()]
        lines.append(self.extra_config)
        lines.append(f"VirtualHost {_lua(self.host)}")
        lines.append(f"    ssl = {_lua({'certificate': self.cert, 'key': self.key, 'cafile': bundle})}")
        return "\n".join(lines) + "\n"

    def register(self, user: str, password: str) -> None:
        """Create or replace an account (works while running: internal storage reads the file per login)."""
        self.users[user] = password
        accounts = self.dir / "data" / _encode(self.host) / "accounts"
        accounts.mkdir(parents=True, exist_ok=True)
        pw = password.replace("\\", "\\\\").replace('"', '\\"')
        (accounts / f"{_encode(user)}.dat").write_text(f'return {{\n\t["password"] = "{pw}";\n}};\n')
        self._chown()

    def jid(self, user: str) -> str:
        return f"{user}@{self.host}"

    def publish(self, dns: DnsServer | None = None, *, target: str | None = None) -> None:
        """SRV (priority 0) and A records of this server in ``dns``."""
        dns = dns or self.dns
        if dns is None:
            raise ValueError("no DnsServer to publish to")
        target = target or self.srv_target
        dns.add_srv(f"_xmpp-server._tcp.{self.host}", target, self.s2s_port)
        dns.add_srv(f"_xmpp-client._tcp.{self.host}", target, self.c2s_port)
        dns.add_a(target, "127.0.0.1")

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        for root, dirs, files in os.walk(self.dir):
            for name in (*dirs, *files):
                shutil.chown(os.path.join(root, name), _RUN_AS, _RUN_GROUP)
        shutil.chown(self.dir, _RUN_AS, _RUN_GROUP)
        self.dir.chmod(0o755)

    # lifecycle --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> ProsodyServer:
        if self.running:
            return self
        (self.dir / "data").mkdir(exist_ok=True)
        self.config_path.write_text(self._config())
        for user, password in self.users.items():
            self.register(user, password)
        self._chown()
        if self.dns is not None:
            self.publish()
        # prlimit raises the soft limit up to the hard one, which needs no privilege
        args = ["prlimit", f"--nofile={_NOFILE}:", "--", self.binary, "--config", str(self.config_path), "-F"]
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            kwargs = {"user": _RUN_AS, "group": _RUN_GROUP, "extra_groups": []}
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir, **kwargs)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until both ports accept connections; the log is in the error if it dies or never listens."""
        ports = [self.c2s_port, self.s2s_port, *([self.c2s_tls_port] if self.c2s_tls_port else [])]
        wait_listening(self.proc, ports, timeout, f"prosody for {self.host}", self.log)

    def stop(self) -> None:
        """SIGTERM (Prosody closes its streams and exits), SIGKILL if it takes more than 15 s."""
        terminate(self.proc, 15)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ProsodyServer:
        try:
            return self.start()
        except BaseException:
            self.stop()  # it may be running without listening
            raise

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # a failing test shows what Prosody said (pytest prints captured stderr), and keeps the directory
        self.stop()
        print(f"prosody {self.host} in {self.dir}:\n{self.log()[-30000:]}", file=sys.stderr)
