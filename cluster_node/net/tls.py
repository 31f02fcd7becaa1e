"""TLS for every listener: server contexts, and a self-signed certificate made on first start.

Secure by default (RFC 7590): TLS 1.2 or newer, the ssl module's modern cipher defaults.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import weakref
from pathlib import Path
from typing import Any

__all__ = ["ensure_self_signed", "server_context", "client_context", "reloadable", "reload_certificates"]

log = logging.getLogger(__name__)


TLS_READ_BUFFER = 64 * 1024  # four full TLS records (16 KiB each) per read


def shared_tls_read_buffer() -> None:
    """asyncio gives every TLS connection its own 256 KiB read buffer, written through when it
    is made: 256 KiB of RSS per idle client, most of a node's memory at 10,000 connections.

    The event loop fills that buffer (``get_buffer``, ``recv_into``) and hands it over
    (``buffer_updated`` copies it into the connection's TLS input) in one synchronous step, so one
    buffer can serve every connection of the process.  This swaps it in on each new connection;
    on a Python whose ``SSLProtocol`` lacks these attributes nothing changes.  Process-wide, so
    roles call it at start.
    """
    from asyncio import sslproto

    cls: Any = sslproto.SSLProtocol
    if getattr(cls, "_meridian_shared", False) or not hasattr(cls, "get_buffer"):
        return
    shared = bytearray(TLS_READ_BUFFER)
    view = memoryview(shared)
    original = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if hasattr(self, "_ssl_buffer") and hasattr(self, "_ssl_buffer_view"):
            self._ssl_buffer, self._ssl_buffer_view = shared, view

    cls.max_size = TLS_READ_BUFFER  # what get_buffer hands out and read() asks for, at most
    cls.__init__ = init
    cls._meridian_shared = True


def ensure_self_signed(directory: Path, domains: list[str]) -> tuple[Path, Path]:
    """Return (cert, key) in ``directory``, generating a self-signed pair for ``domains`` if absent.

    The certificate names every domain (and ``*.domain`` for its services) as a DNS SAN, so
    clients that pin or trust it verify host names as RFC 6125 and RFC 7622 §3.2 expect.
    """
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    sans: list[x509.GeneralName] = []
    for d in domains:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(d)))
        except ValueError:
            sans += [x509.DNSName(d), x509.DNSName(f"*.{d}")]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)
    log.warning("generated a self-signed TLS certificate for %s in %s; configure tls.cert_file and "
                "tls.key_file for production", ", ".join(domains), directory)
    return cert_path, key_path


def server_context(cert: Path, key: Path, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    reloadable(ctx, cert, key)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_context(cafile: Path | None = None, *, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# Every context that presents a certificate read from files, with those files: a renewed
# certificate (an ACME client replaced the files) is loaded into the same context objects, so
# every listener, link and outgoing stream presents it from its next handshake on, without a
# restart and without touching an open connection.
_LOADED: weakref.WeakKeyDictionary[ssl.SSLContext, tuple[Path, Path]] = weakref.WeakKeyDictionary()


def reloadable(ctx: ssl.SSLContext, cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """Load ``cert``/``key`` into ``ctx`` and remember them for :func:`reload_certificates`."""
    ctx.load_cert_chain(str(cert), str(key))
    _LOADED[ctx] = (Path(cert), Path(key))
    return ctx


def reload_certificates() -> tuple[int, list[str]]:
    """Load every remembered certificate again: (contexts reloaded, errors).  A pair that fails
    to load (half-written files, a key that does not match) leaves its context as it was."""
    done, failed = 0, []
    for ctx, (cert, key) in list(_LOADED.items()):
        try:
            ctx.load_cert_chain(str(cert), str(key))
            done += 1
        except (OSError, ssl.SSLError) as e:
            failed.append(f"{cert}: {e}")
            log.warning("certificate %s not reloaded: %s (the previous one stays in use)", cert, e)
    log.info("reloaded %d TLS certificate(s)%s", done, f", {len(failed)} failed" if failed else "")
    return done, failed
