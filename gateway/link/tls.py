"""Mutual TLS for the inter-region link, against one configured CA (TLS 1.2 or newer).

Gateways of all regions trust exactly one CA — the inter-region CA, not the system store — and each
presents a certificate it issued, on both ends: the server requires a client certificate
(``CERT_REQUIRED``), the client checks the server's certificate and its name (``check_hostname``),
so a stolen endpoint address or a certificate from any other CA gets nowhere.

:func:`make_ca` and :func:`issue_cert` make such a CA and its certificates with ``cryptography``:
for the tests, ``meridian demo`` and operators without a PKI of their own.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster_node.net.tls import reloadable

__all__ = ["make_ca", "issue_cert", "server_context", "client_context"]

_CA_DAYS = 3650
_CERT_DAYS = 825  # the longest validity clients commonly accept for leaf certificates


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key readable by its owner only, atomically (never a half-written key)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(directory: Path, name: str = "Meridian inter-region CA") -> tuple[Path, Path]:
    """Return ``(ca.pem, ca-key.pem)`` in ``directory``, creating the CA if it does not exist yet.

    An existing CA is kept: replacing it would silently invalidate every certificate it issued.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_cert(ca_cert: Path, ca_key: Path, directory: Path, name: str, sans: Sequence[str]) -> tuple[Path, Path]:
    """Issue ``(name.pem, name-key.pem)`` in ``directory``, signed by the CA, for host names/IPs ``sans``.

    The certificate is good for both ends of a link (serverAuth and clientAuth): every gateway
    listens for other regions and dials them.  An existing pair of that name is replaced.
    """
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key}: expected an EC private key")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=_CERT_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_san(s) for s in (sans or [name])]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}-key.pem", directory / f"{name}.pem"
    _write_private(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _base(purpose: int, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    reloadable(ctx, cert, key)
    ctx.load_verify_locations(cafile=str(ca))  # only the inter-region CA: no system roots
    return ctx


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """For :class:`~gateway.link.pool.LinkServer`: a client certificate signed by ``ca`` is required."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, cert, key, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """For :class:`~gateway.link.pool.RegionPool`: presents ``cert``, verifies the server and its name.

    The name checked is the endpoint's host, or the pool's configured ``server_hostname``.
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
