"""JIDs (RFC 7622): parsing, PRECIS normalisation, bare/full helpers.

Parsing sits on the hot path (every stanza's 'to' and 'from'), so results are cached and
already-canonical ASCII skips the PRECIS profiles.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from typing import NamedTuple

__all__ = ["Jid", "InvalidJid", "parse_jid", "nodeprep"]

_ASCII_LOCAL = re.compile(r"^[a-z0-9._\-+]+$")
_ASCII_RESOURCE = re.compile(r"^[\x21-\x7e ]+$")
_ASCII_DOMAIN = re.compile(r"^[a-z0-9.\-]+$")
_LOCAL_FORBIDDEN = set("\"&'/:<>@")  # RFC 7622 §3.3.1


class InvalidJid(ValueError):
    """Not a valid JID; the message says which part and why."""


def _check_len(part: str, what: str) -> None:
    try:
        n = len(part.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in a JSON string): not Unicode text
        raise InvalidJid(f"{what} is not valid Unicode") from None
    if n == 0:
        raise InvalidJid(f"empty {what}")
    if n > 1023:
        raise InvalidJid(f"{what} longer than 1023 bytes")


@functools.lru_cache(maxsize=8192)
def nodeprep(local: str) -> str:
    """RFC 7622 §3.3: the UsernameCaseMapped profile of RFC 8265."""
    if _ASCII_LOCAL.match(local):
        out = local
    else:
        from precis_i18n import get_profile

        try:
            out = get_profile("UsernameCaseMapped").enforce(local)
        except (UnicodeError, ValueError) as e:
            raise InvalidJid(f"invalid localpart {local!r}: {e}") from None
    if any(c in _LOCAL_FORBIDDEN for c in out):
        raise InvalidJid(f"invalid character in localpart {local!r}")
    _check_len(out, "localpart")
    return out


def _resourceprep(resource: str) -> str:
    """RFC 7622 §3.4: the OpaqueString profile of RFC 8265."""
    if _ASCII_RESOURCE.match(resource) and not resource.startswith(" ") and not resource.endswith(" "):
        out = resource
    else:
        from precis_i18n import get_profile

        try:
            out = get_profile("OpaqueString").enforce(resource)
        except (UnicodeError, ValueError) as e:
            raise InvalidJid(f"invalid resourcepart {resource!r}: {e}") from None
    _check_len(out, "resourcepart")
    return out


def _domainprep(domain: str) -> str:
    """RFC 7622 §3.2: lowercase, NFC, one trailing dot stripped; IP literals allowed."""
    if domain.endswith("."):
        domain = domain[:-1]
    if domain.startswith("[") and domain.endswith("]"):
        try:
            ipaddress.IPv6Address(domain[1:-1])
        except ValueError:
            raise InvalidJid(f"invalid IPv6 literal {domain!r}") from None
        return domain.lower()
    if not _ASCII_DOMAIN.match(domain):
        domain = unicodedata.normalize("NFC", domain).lower()
        if any(c.isspace() or c in "@/\\\"'<>&:" or ord(c) < 0x21 for c in domain):
            raise InvalidJid(f"invalid character in domainpart {domain!r}")
    _check_len(domain, "domainpart")
    for label in domain.split("."):
        if not label:
            raise InvalidJid(f"empty label in domainpart {domain!r}")
        if len(label.encode("utf-8")) > 63:
            raise InvalidJid(f"label longer than 63 bytes in {domain!r}")
    return domain


class Jid(NamedTuple):
    """A JID's three parts, normalised.  A tuple: every dict keyed by a JID (sessions, rosters,
    routes, caches) hashes and compares it on the message path, in C for a tuple (a frozen
    dataclass's ``__hash__``/``__eq__`` are Python, ~3× slower, and its construction ~4×)."""

    local: str | None
    domain: str
    resource: str | None

    @classmethod
    def parse(cls, s: str) -> Jid:
        return parse_jid(s)

    @property
    def bare(self) -> Jid:
        return self if self.resource is None else Jid(self.local, self.domain, None)

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    @property
    def is_domain(self) -> bool:
        return self.local is None and self.resource is None

    def with_resource(self, resource: str) -> Jid:
        return Jid(self.local, self.domain, _resourceprep(resource))

    def __str__(self) -> str:
        s = self.domain
        if self.local is not None:
            s = f"{self.local}@{s}"
        if self.resource is not None:
            s = f"{s}/{self.resource}"
        return s


@functools.lru_cache(maxsize=65536)
def parse_jid(s: str) -> Jid:
    """Split and normalise ``local@domain/resource`` (RFC 7622 §3.1)."""
    if not isinstance(s, str):
        raise InvalidJid("a JID is a string")
    rest, slash, resource = s.partition("/")
    local, at, domain = rest.rpartition("@")
    if not at:
        local, domain = "", rest
    elif not local:
        raise InvalidJid(f"empty localpart in {s!r}")
    if "@" in local:
        raise InvalidJid(f"more than one '@' in {s!r}")
    if slash and not resource:
        raise InvalidJid(f"empty resourcepart in {s!r}")
    return Jid(
        nodeprep(local) if at else None,
        _domainprep(domain),
        _resourceprep(resource) if slash else None,
    )
