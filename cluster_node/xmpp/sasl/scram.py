"""SCRAM (RFC 5802, RFC 7677): stored keys, and the server side of the exchange.

Accounts keep only ``(salt, iterations, StoredKey, ServerKey)`` per hash; the clear password is
never stored.  PLAIN logins are verified by re-deriving StoredKey from the offered password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from ..errors import SaslFailure
from ..jid import InvalidJid, nodeprep
from . import Challenge, NeedCredentials, Success

__all__ = ["ScramCredentials", "ScramServer", "MECHANISM_HASHES", "derive_credentials",
           "make_credentials", "verify_password", "saslprep"]

MECHANISM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def saslprep(password: str) -> str:
    """RFC 8265 OpaqueString (the successor of SASLprep, RFC 7613 §4)."""
    if password.isascii() and password.isprintable():
        return password
    from precis_i18n import get_profile

    try:
        return str(get_profile("OpaqueString").enforce(password))
    except (UnicodeError, ValueError) as e:
        raise ValueError(f"password not allowed: {e}") from None


def _h(name: str, data: bytes) -> bytes:
    return hashlib.new(name, data).digest()


def _hmac(name: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, name).digest()


@dataclass(frozen=True)
class ScramCredentials:
    hash_name: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_dict(self) -> dict[str, str | int]:
        def b(v: bytes) -> str:
            return base64.b64encode(v).decode()

        return {"hash": self.hash_name, "salt": b(self.salt), "iterations": self.iterations,
                "stored_key": b(self.stored_key), "server_key": b(self.server_key)}

    @classmethod
    def from_dict(cls, d: dict[str, str | int]) -> ScramCredentials:
        def u(key: str) -> bytes:
            return base64.b64decode(str(d[key]))

        return cls(str(d["hash"]), u("salt"), int(d["iterations"]), u("stored_key"), u("server_key"))


def _salted(password: str, hash_name: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(hash_name, saslprep(password).encode(), salt, iterations)


def derive_credentials(password: str, hash_name: str, *, salt: bytes | None = None,
                       iterations: int = 4096) -> ScramCredentials:
    salt = os.urandom(16) if salt is None else salt
    salted = _salted(password, hash_name, salt, iterations)
    client_key = _hmac(hash_name, salted, b"Client Key")
    return ScramCredentials(hash_name, salt, iterations, _h(hash_name, client_key),
                            _hmac(hash_name, salted, b"Server Key"))


def make_credentials(password: str, iterations: int = 4096) -> dict[str, ScramCredentials]:
    return {h: derive_credentials(password, h, iterations=iterations) for h in ("sha1", "sha256")}


def verify_password(password: str, creds: ScramCredentials) -> bool:
    try:
        salted = _salted(password, creds.hash_name, creds.salt, creds.iterations)
    except ValueError:
        return False
    stored = _h(creds.hash_name, _hmac(creds.hash_name, salted, b"Client Key"))
    return hmac.compare_digest(stored, creds.stored_key)


def _attrs(msg: str) -> list[tuple[str, str]]:
    out = []
    for part in msg.split(","):
        if len(part) < 2 or part[1] != "=":
            raise SaslFailure("malformed-request", "bad SCRAM attribute")
        out.append((part[0], part[2:]))
    return out


_SASLNAME = re.compile("(?:[^=]|=2C|=3D)*")  # RFC 5802 §5.1: '=' only as '=2C' or '=3D'


def _unescape_name(name: str) -> str:
    if not _SASLNAME.fullmatch(name):  # (removing the escapes first let "==2C3D" through)
        raise SaslFailure("malformed-request", "bad escaping in username")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramServer:
    """One SCRAM exchange, server side (RFC 5802 §5): single use."""

    def __init__(self, name: str, *, domain: str, secret: bytes, nonce: bytes | None = None,
                 decoy_iterations: int = 4096) -> None:
        """``decoy_iterations``: the count announced for an unknown user — the server's own
        setting for new passwords, so the challenge does not tell a missing account apart."""
        self.name = name
        self.decoy_iterations = decoy_iterations
        self.hash_name = MECHANISM_HASHES[name]
        self.domain = domain
        self.secret = secret
        self._nonce_suffix = nonce
        self._state = "start"
        self._username = ""
        self._gs2 = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._creds: ScramCredentials | None = None

    def start(self, initial: bytes | None) -> Challenge | NeedCredentials:
        if self._state != "start":
            raise SaslFailure("malformed-request")
        if initial is None:
            self._state = "wait-first"
            return Challenge(b"")
        return self._client_first(initial)

    def respond(self, data: bytes) -> Challenge | Success | NeedCredentials:
        if self._state == "wait-first":
            return self._client_first(data)
        if self._state == "wait-final":
            return self._client_final(data)
        raise SaslFailure("malformed-request", "unexpected response")

    def _client_first(self, data: bytes) -> NeedCredentials:
        try:
            msg = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SaslFailure("malformed-request") from None
        parts = msg.split(",", 2)
        if len(parts) != 3:
            raise SaslFailure("malformed-request")
        cb, authzid, bare = parts
        if cb.startswith("p="):
            raise SaslFailure("not-authorized", "channel binding is not offered")
        if cb not in ("n", "y"):
            raise SaslFailure("malformed-request")
        attrs = _attrs(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise SaslFailure("malformed-request")
        if attrs[0][0] == "m":
            raise SaslFailure("malformed-request", "unsupported mandatory extension")
        nonce = attrs[1][1]
        if not nonce or not all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce):
            raise SaslFailure("malformed-request", "bad nonce")
        try:
            self._username = nodeprep(_unescape_name(attrs[0][1]))
        except InvalidJid:
            raise SaslFailure("not-authorized") from None
        if authzid:
            if not authzid.startswith("a=") or _unescape_name(authzid[2:]) != f"{self._username}@{self.domain}":
                raise SaslFailure("invalid-authzid")
        self._gs2 = f"{cb},{authzid},"
        self._client_first_bare = bare
        suffix = self._nonce_suffix or os.urandom(18)
        self._nonce = nonce + (suffix.decode() if self._nonce_suffix else base64.b64encode(suffix).decode())
        self._state = "wait-creds"
        return NeedCredentials(self._username)

    def provide(self, creds: ScramCredentials | None) -> Challenge:
        if self._state != "wait-creds":
            raise SaslFailure("malformed-request")
        if creds is None or creds.hash_name != self.hash_name:
            # Unknown user: a deterministic fake salt, so probing reveals nothing; fails at the proof.
            salt = _hmac("sha256", self.secret, self._username.encode())[:16]
            self._creds = None
            salt_b64, iterations = base64.b64encode(salt).decode(), self.decoy_iterations
        else:
            self._creds = creds
            salt_b64, iterations = base64.b64encode(creds.salt).decode(), creds.iterations
        self._server_first = f"r={self._nonce},s={salt_b64},i={iterations}"
        self._state = "wait-final"
        return Challenge(self._server_first.encode())

    def _client_final(self, data: bytes) -> Success:
        self._state = "done"
        try:
            msg = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SaslFailure("malformed-request") from None
        without_proof, sep, proof_attr = msg.rpartition(",p=")
        if not sep:
            raise SaslFailure("malformed-request", "no proof")
        attrs = dict(_attrs(without_proof))
        if attrs.get("c") != base64.b64encode(self._gs2.encode()).decode():
            raise SaslFailure("not-authorized", "channel binding mismatch")
        if attrs.get("r") != self._nonce:
            raise SaslFailure("not-authorized", "nonce mismatch")
        try:
            proof = base64.b64decode(proof_attr, validate=True)
        except ValueError:
            raise SaslFailure("incorrect-encoding") from None
        if self._creds is None:
            raise SaslFailure("not-authorized")
        h = self.hash_name
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(h, self._creds.stored_key, auth_message)
        if len(proof) != len(signature):
            raise SaslFailure("not-authorized")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(_h(h, client_key), self._creds.stored_key):
            raise SaslFailure("not-authorized")
        server_sig = _hmac(h, self._creds.server_key, auth_message)
        return Success(self._username, f"v={base64.b64encode(server_sig).decode()}".encode())
