"""TLS for S2S (RFC 6120 §5, §13.7): a certificate per local domain, peers verified by default.

Outgoing: the peer's certificate must be valid for the *domain* we connect to (RFC 6125, the
source domain, not the SRV target), against ``ca_file`` or the system store.  Incoming: the
certificate is chosen by SNI; a client certificate is asked for (not required) so a peer may
use SASL EXTERNAL.  ``verify = false`` turns every check off, for test setups with self-signed
certificates, and is logged as a warning by the service.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509

from cluster_node.net.tls import reloadable

__all__ = ["client_context", "server_context", "peer_names", "cert_names"]


def client_context(cert: tuple[Path, Path] | None, ca_file: Path | None, verify: bool, *,
                   direct: bool = False) -> ssl.SSLContext:
    """``direct``: for XEP-0368 direct TLS, which names the protocol with ALPN ``xmpp-server``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if direct:
        ctx.set_alpn_protocols(["xmpp-server"])
    if verify:
        if ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        reloadable(ctx, cert[0], cert[1])
    return ctx


def _server_ctx(cert: tuple[Path, Path], ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    reloadable(ctx, cert[0], cert[1])
    if verify:
        # Optional: a peer without a certificate still gets dialback; one with an invalid
        # certificate fails the handshake (OpenSSL has no "ask, keep going" mode).
        ctx.verify_mode = ssl.CERT_OPTIONAL
        if ca_file is not None:
            ctx.load_verify_locations(cafile=str(ca_file))
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return ctx


def server_context(certs: Mapping[str, tuple[Path, Path]], default: tuple[Path, Path], ca_file: Path | None,
                   verify: bool) -> ssl.SSLContext:
    """The listener's context: ``default`` unless SNI names a domain of ``certs``."""
    main = _server_ctx(default, ca_file, verify)
    main.set_alpn_protocols(["xmpp-server"])  # XEP-0368 on the direct TLS port; ignored by STARTTLS peers
    by_name = {domain: _server_ctx(pair, ca_file, verify) for domain, pair in certs.items()}

    def pick(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name and name in by_name:
            sock.context = by_name[name]

    if by_name:
        main.sni_callback = pick
    return main


def peer_names(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[str]:
    """DNS names of the peer's certificate, only if it verified (``getpeercert`` is empty else)."""
    if ssl_object is None:
        return []
    cert = ssl_object.getpeercert()
    if not cert:
        return []
    names: list[str] = []
    for entry in cert.get("subjectAltName", ()):
        if len(entry) == 2 and entry[0] == "DNS":
            names.append(str(entry[1]))
    return names


def cert_names(path: Path) -> list[str]:
    """DNS names in our own certificate: SASL EXTERNAL only for a domain it names."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]
