"""A small authoritative DNS server on loopback, so S2S tests resolve SRV records through real DNS.

SRV records are served by a DNS server the test starts, not by a static host map:
that exercises the resolver path (``_xmpp-server._tcp`` lookup, priority/weight order, A/AAAA
fallback) of Meridian and of the peer servers (Prosody with ``lua5.4-unbound``) as in production.

It answers UDP and TCP on 127.0.0.1 on one free port, from records the test adds (thread-safe,
also while running).  A name that was never added gets NXDOMAIN; a known name asked for a type it
does not have gets an empty NOERROR (NODATA), as a real zone would.  SRV answers carry the targets'
A/AAAA records in the additional section.  Built on dnspython (a project dependency), one thread
per transport.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from typing import Any

import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer"]

_TTL = 5


def _name(name: str) -> dns.name.Name:
    return dns.name.from_text(name.rstrip(".") + ".")


class _Zone:
    """Records by (name, type); the lock makes adds safe while the server threads answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[dns.name.Name, dict[int, list[str]]] = {}
        self.queries: list[tuple[str, str]] = []

    def add(self, name: str, rdtype: int, text: str) -> None:
        with self._lock:
            self._records.setdefault(_name(name), {}).setdefault(rdtype, []).append(text)

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(_name(name), None)

    def lookup(self, name: dns.name.Name, rdtype: int) -> list[str] | None:
        """The record texts, ``[]`` for a known name without that type, None for an unknown name."""
        with self._lock:
            by_type = self._records.get(name)
            if by_type is None:
                return None
            return list(by_type.get(rdtype, []))

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - garbage on the port: no answer, as many servers do
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        with self._lock:
            self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
        texts = self.lookup(question.name, question.rdtype)
        if texts is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        if texts:
            rrset = dns.rrset.from_text_list(question.name, _TTL, dns.rdataclass.IN, question.rdtype, texts)
            response.answer.append(rrset)
            if question.rdtype == dns.rdatatype.SRV:
                self._add_glue(response, rrset)
        return response.to_wire()

    def _add_glue(self, response: dns.message.Message, srv: dns.rrset.RRset) -> None:
        for rdata in srv:
            target: dns.name.Name = rdata.target
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                texts = self.lookup(target, rdtype)
                if texts:
                    response.additional.append(
                        dns.rrset.from_text_list(target, _TTL, dns.rdataclass.IN, rdtype, texts))


class _Udp(socketserver.ThreadingUDPServer):
    daemon_threads = True
    zone: _Zone


class _Tcp(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    zone: _Zone


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _Udp

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.zone.answer(data)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    """RFC 1035 §4.2.2: each message is preceded by its two-byte length; several per connection."""

    server: _Tcp

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(10)
        try:
            while True:
                head = self._read(conn, 2)
                if head is None:
                    return
                body = self._read(conn, struct.unpack("!H", head)[0])
                if body is None:
                    return
                reply = self.server.zone.answer(body)
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf


class DnsServer:
    """``with DnsServer() as dns: dns.add_srv("_xmpp-server._tcp.a.test", "a.test", 5269)``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._zone = _Zone()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # records -------------------------------------------------------------------------------

    def add_srv(self, name: str, target: str, port: int, priority: int = 0, weight: int = 0) -> None:
        """``name`` is the full owner name, e.g. ``_xmpp-server._tcp.example.com``."""
        self._zone.add(name, dns.rdatatype.SRV, f"{priority} {weight} {port} {_name(target).to_text()}")

    def add_a(self, name: str, ip: str) -> None:
        self._zone.add(name, dns.rdatatype.A, ip)

    def add_aaaa(self, name: str, ip: str) -> None:
        self._zone.add(name, dns.rdatatype.AAAA, ip)

    def remove(self, name: str) -> None:
        """Forget every record of ``name`` (it answers NXDOMAIN again)."""
        self._zone.remove(name)

    @property
    def queries(self) -> list[tuple[str, str]]:
        """(name, type) of every question received so far, e.g. ``("_xmpp-server._tcp.a.test.", "SRV")``."""
        with self._zone._lock:
            return list(self._zone.queries)

    def resolver(self) -> dns.asyncresolver.Resolver:
        """A dnspython async resolver that asks only this server."""
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [self.host]
        r.port = self.port
        r.lifetime = 5
        return r

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> DnsServer:
        """Bind TCP and UDP on one free port (retrying if UDP's half of it is taken) and serve."""
        last: OSError | None = None
        for _ in range(20):
            tcp = _Tcp((self.host, 0), _TcpHandler)
            port = tcp.server_address[1]
            try:
                udp = _Udp((self.host, port), _UdpHandler)
            except OSError as e:
                tcp.server_close()
                last = e
                continue
            break
        else:
            raise RuntimeError(f"no free port for TCP+UDP on {self.host}: {last}")
        tcp.zone = udp.zone = self._zone
        self.port = port
        self._servers = [udp, tcp]
        for server in self._servers:
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                 name=f"dns-{type(server).__name__}-{port}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for t in self._threads:
            t.join(5)
        self._servers, self._threads = [], []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
