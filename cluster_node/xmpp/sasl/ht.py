"""The Hashed Token SASL mechanisms (draft-schmaus-kitten-sasl-ht), server side, sans-IO: what
XEP-0484 (FAST) logs in with, in one round trip, offered only inside SASL2 (XEP-0388).

The client sends ``authcid NUL HMAC(token, "Initiator" || cb-data)``; the server answers, in
SASL2's ``<additional-data/>``, ``HMAC(token, "Responder" || cb-data)``.  ``HT-SHA-256-NONE`` is
the variant without channel binding (cb-data is empty).  The ``-ENDP``/``-EXPR``/``-UNIQ``
variants need the TLS channel-binding data, which Python's ``ssl`` does not give a server (no
keying-material exporter, no access to the local certificate; ``tls-unique`` is undefined for
TLS 1.3): they are not offered.

Looking the token up is the caller's business, the way SCRAM's stored keys are:
:meth:`HtServer.start` returns :class:`NeedToken`, the caller finds the keys of the tokens that
may have been used (XEP-0484 keeps two per client: the current one and a new one not used yet) and
calls :meth:`HtServer.provide_token` with them.  A key is what the HMAC is computed with: the
token itself, or its SHA-256 — the same HMAC whenever the token is longer than SHA-256's block
(64 bytes), because HMAC (RFC 2104 §2) first hashes a key that long.  So a server that issues
tokens of more than 64 bytes need only store their SHA-256 (:func:`token_key`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SaslFailure
from ..jid import InvalidJid, nodeprep
from . import Success

__all__ = ["HtServer", "NeedToken", "TokenKey", "HT_MECHANISMS", "MIN_TOKEN_BYTES", "token_key",
           "initiator", "responder"]

HT_MECHANISMS = {"HT-SHA-256-NONE": "sha256"}  # mechanism -> hash; cb-data is empty for -NONE
MIN_TOKEN_BYTES = 65  # longer than SHA-256's block: HMAC(token, m) == HMAC(sha256(token), m)


@dataclass(frozen=True)
class NeedToken:
    """Find the keys of ``username``'s tokens for this mechanism, then ``provide_token``."""
    username: str


@dataclass(frozen=True)
class TokenKey:
    """One token the client may have used: ``id`` names it to the caller (e.g. its slot), ``key``
    is the token or its SHA-256 (see the module docstring)."""
    id: str
    key: bytes


def token_key(token: str, hash_name: str = "sha256") -> bytes:
    """What a server stores of ``token`` (at least :data:`MIN_TOKEN_BYTES` long) to verify it."""
    raw = token.encode("utf-8")
    if len(raw) < MIN_TOKEN_BYTES:
        raise ValueError(f"a token must be at least {MIN_TOKEN_BYTES} bytes for its hash to verify it")
    return hashlib.new(hash_name, raw).digest()


def initiator(key: bytes, cb_data: bytes = b"", hash_name: str = "sha256") -> bytes:
    return hmac.new(key, b"Initiator" + cb_data, hash_name).digest()


def responder(key: bytes, cb_data: bytes = b"", hash_name: str = "sha256") -> bytes:
    return hmac.new(key, b"Responder" + cb_data, hash_name).digest()


class HtServer:
    """One HT exchange, server side: a single message from the client, then success or failure."""

    def __init__(self, name: str, *, cb_data: bytes = b"") -> None:
        if name not in HT_MECHANISMS:
            raise SaslFailure("invalid-mechanism")
        self.name = name
        self.hash_name = HT_MECHANISMS[name]
        self.cb_data = cb_data
        self._state = "start"
        self._username = ""
        self._proof = b""

    def start(self, initial: bytes | None) -> NeedToken:
        if self._state != "start":
            raise SaslFailure("malformed-request")
        if initial is None:
            # The mechanism is client-first and single round trip (XEP-0484): no empty challenge.
            raise SaslFailure("malformed-request", "HT needs an initial response")
        authcid, sep, proof = initial.partition(b"\0")
        if not sep or not authcid or len(proof) != hashlib.new(self.hash_name).digest_size:
            raise SaslFailure("malformed-request")
        try:
            self._username = nodeprep(authcid.decode("utf-8"))
        except (UnicodeDecodeError, InvalidJid):
            raise SaslFailure("not-authorized") from None
        self._proof = proof
        self._state = "wait-token"
        return NeedToken(self._username)

    def respond(self, data: bytes) -> Success:
        raise SaslFailure("malformed-request", "HT takes no response")

    def provide_token(self, keys: Sequence[TokenKey]) -> Success:
        """Check the client's proof against each key (every one, in constant time each)."""
        if self._state != "wait-token":
            raise SaslFailure("malformed-request")
        self._state = "done"
        matched: TokenKey | None = None
        for candidate in keys:
            expected = initiator(candidate.key, self.cb_data, self.hash_name)
            if hmac.compare_digest(expected, self._proof) and matched is None:
                matched = candidate
        if matched is None:
            raise SaslFailure("not-authorized")
        return Success(self._username, responder(matched.key, self.cb_data, self.hash_name), token=matched.id)
