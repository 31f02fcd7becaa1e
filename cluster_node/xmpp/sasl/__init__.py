"""SASL server mechanisms (RFC 6120 §6), sans-IO.

A mechanism takes the client's decoded messages and returns a :class:`Challenge`, a
:class:`Success`, or :class:`NeedCredentials` (the caller looks the account up and calls
``provide``); failures raise :class:`~cluster_node.xmpp.errors.SaslFailure`.  The same mechanisms
serve RFC 6120's SASL profile and XEP-0388's (SASL2); the token mechanisms of XEP-0484
(:mod:`.ht`) only the latter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import SaslFailure

if TYPE_CHECKING:
    from .cache import LoginCache
    from .scram import ScramCredentials

__all__ = ["Challenge", "Success", "NeedCredentials", "ServerMechanism", "server_mechanism",
           "offered_mechanisms"]


@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class Success:
    username: str
    data: bytes = b""
    token: str | None = None  # a token mechanism (HT): which of the keys it was given matched


@dataclass(frozen=True)
class NeedCredentials:
    username: str


class ServerMechanism(Protocol):
    name: str

    def start(self, initial: bytes | None) -> Challenge | NeedCredentials: ...
    def respond(self, data: bytes) -> Challenge | Success | NeedCredentials: ...
    def provide(self, creds: ScramCredentials | None) -> Challenge | Success: ...


def offered_mechanisms(tls: bool, allow_plain: bool = True) -> list[str]:
    mechs = ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    if tls and allow_plain:
        mechs.append("PLAIN")
    return mechs


def server_mechanism(name: str, *, domain: str, secret: bytes, tls: bool,
                     login_cache: LoginCache | None = None, decoy_iterations: int = 4096) -> ServerMechanism:
    """``login_cache``: PLAIN's memory of passwords verified recently (SCRAM needs none: the
    server side only computes HMACs over the stored keys, the client does the PBKDF2).
    ``decoy_iterations``: the PBKDF2 rounds of new passwords (``scram_iterations``), what an
    unknown user is answered with (SCRAM) or costs (PLAIN)."""
    from .plain import PlainServer
    from .scram import MECHANISM_HASHES, ScramServer

    if name in MECHANISM_HASHES:
        return ScramServer(name, domain=domain, secret=secret, decoy_iterations=decoy_iterations)
    if name == "PLAIN":
        if not tls:
            raise SaslFailure("encryption-required")
        return PlainServer(domain=domain, secret=secret, cache=login_cache, decoy_iterations=decoy_iterations)
    raise SaslFailure("invalid-mechanism")
