"""Where a domain's XMPP server is (RFC 6120 §3.2, XEP-0368), with dnspython.

``_xmpps-server._tcp`` (direct TLS) and ``_xmpp-server._tcp`` (STARTTLS) SRV records, ordered as
RFC 2782 says (lowest priority first; within a priority, a weighted random order), their targets
resolved to addresses through the same resolver; without any SRV record, the domain's own
A/AAAA on 5269.  A static host map (operators, tests) overrides DNS.  :func:`srv_order` is the
pure part, unit-tested with a seeded random source.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

__all__ = ["Target", "SrvRecord", "srv_order", "S2SResolver", "ResolveError"]

log = logging.getLogger("meridian.s2s")

DEFAULT_PORT = 5269


class ResolveError(Exception):
    """No server could be found for the domain (remote-server-not-found)."""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    target: str
    port: int
    direct_tls: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """One address to try: ``host`` is an IP address (or a name from the static map)."""

    host: str
    port: int
    direct_tls: bool = False
    name: str = ""  # the SRV target it came from, for logs


def srv_order(records: Sequence[SrvRecord], rand: random.Random) -> list[SrvRecord]:
    """RFC 2782: ascending priority; within one, repeatedly pick by running sum of weights
    (weight 0 entries first in the list, so they have a small chance when others have weight)."""
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            pick = rand.randint(0, total) if total else 0
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    ordered.append(group.pop(i))
                    break
    return ordered


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class S2SResolver:
    def __init__(self, *, nameservers: Sequence[str] = (), port: int = 53, static: Mapping[str, str] | None = None,
                 timeout: float = 5.0, rand: random.Random | None = None) -> None:
        self.static = dict(static or {})
        self.rand = rand or random.Random()
        if nameservers:
            self.dns = dns.asyncresolver.Resolver(configure=False)
            self.dns.nameservers = list(nameservers)
            self.dns.port = port
        else:
            self.dns = dns.asyncresolver.Resolver()
        self.dns.lifetime = timeout
        self.dns.timeout = timeout

    async def resolve(self, domain: str) -> list[Target]:
        """Addresses to try in order; :class:`ResolveError` when there are none."""
        if domain in self.static:
            host, _, port = self.static[domain].rpartition(":")
            return [Target(host.strip("[]"), int(port), name=domain)]
        records = [*await self._srv(f"_xmpps-server._tcp.{domain}", True),
                   *await self._srv(f"_xmpp-server._tcp.{domain}", False)]
        if any(r.target == "." for r in records) and all(r.target == "." for r in records):
            raise ResolveError(f"{domain} has no XMPP service (SRV target '.')")
        targets: list[Target] = []
        if records:
            for r in srv_order([r for r in records if r.target != "."], self.rand):
                targets += [Target(ip, r.port, r.direct_tls, r.target) for ip in await self._addresses(r.target)]
        else:
            targets = [Target(ip, DEFAULT_PORT, False, domain) for ip in await self._addresses(domain)]
        if not targets:
            raise ResolveError(f"no address for {domain}")
        log.debug("s2s: %s resolves to %s", domain, targets)
        return targets

    async def _srv(self, name: str, direct_tls: bool) -> list[SrvRecord]:
        try:
            answer = await self.dns.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return []
        except dns.exception.Timeout:
            log.warning("s2s: DNS timeout for %s", name)
            return []
        return [SrvRecord(rr.priority, rr.weight,
                          "." if rr.target == dns.name.root else rr.target.to_text(omit_final_dot=True),
                          rr.port, direct_tls) for rr in answer]

    async def _addresses(self, host: str) -> list[str]:
        if _is_ip(host):
            return [host]
        found: list[str] = []
        for rdtype in ("AAAA", "A"):
            try:
                answer = await self.dns.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers, dns.exception.Timeout):
                continue
            found += [rr.to_text() for rr in answer]
        return found
