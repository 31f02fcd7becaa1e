"""HTTP Basic credentials of the admin and user APIs.

The admin's password is configured in clear or as a PBKDF2 hash (``hash_password``); a user's is
checked against the SCRAM keys in storage (RFC 5802: StoredKey = H(HMAC(SaltedPassword, "Client
Key"))), which takes thousands of PBKDF2 rounds, so it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os

from ..core.accounts import Accounts
from ..settings import AdminApiSettings
from ..xmpp.sasl.scram import ScramCredentials, derive_credentials, verify_password

__all__ = ["parse_basic", "hash_password", "AdminAuth", "check_password", "is_loopback"]

_HASH_ROUNDS = 200_000


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(username, password) of an ``Authorization: Basic …`` header (RFC 7617), or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def hash_password(password: str, *, rounds: int = _HASH_ROUNDS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ROUNDS$SALT$HASH`` (hex), for ``[admin] password_hash``."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
    return f"pbkdf2_sha256${rounds}${salt.hex()}${digest.hex()}"


def _check_hash(password: str, encoded: str) -> bool:
    try:
        algo, rounds, salt, digest = encoded.split("$")
        if algo != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
        return hmac.compare_digest(got, bytes.fromhex(digest))
    except ValueError:
        return False


def is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


class AdminAuth:
    """The admin's credentials; a hash is checked once per distinct header, then remembered."""

    def __init__(self, settings: AdminApiSettings) -> None:
        self.settings = settings
        self._good: set[bytes] = set()  # SHA-256 of headers that passed a hash check

    @property
    def configured(self) -> bool:
        return bool(self.settings.password or self.settings.password_hash)

    async def allowed(self, header: str | None, remote: str | None) -> bool:
        if self.settings.allow_loopback_without_auth and is_loopback(remote):
            return True
        creds = parse_basic(header)
        if creds is None or not self.configured:
            return False
        user, password = creds
        if not hmac.compare_digest(user.encode(), self.settings.username.encode()):
            return False
        if self.settings.password:
            return hmac.compare_digest(password.encode(), self.settings.password.encode())
        key = hashlib.sha256((header or "").encode()).digest()
        if key in self._good:
            return True
        ok = await asyncio.to_thread(_check_hash, password, self.settings.password_hash)
        if ok and len(self._good) < 64:
            self._good.add(key)
        return ok


async def check_password(accounts: Accounts, domain: str, username: str, password: str) -> bool:
    """Whether ``password`` is the account's, from its stored SCRAM keys (off the event loop)."""
    stored = await accounts.storage.get_credentials(domain, username)
    if not stored:
        # Unknown user: the same PBKDF2 work as a wrong password, so timing tells nothing.
        await asyncio.to_thread(verify_password, password, _unknown_user(accounts.iterations))
        return False
    name = "sha256" if "sha256" in stored else next(iter(stored))
    creds = ScramCredentials.from_dict(stored[name])
    return await asyncio.to_thread(verify_password, password, creds)


_UNKNOWN: dict[int, ScramCredentials] = {}


def _unknown_user(iterations: int) -> ScramCredentials:
    """Credentials no password matches, with the iteration count of real accounts."""
    if iterations not in _UNKNOWN:
        _UNKNOWN[iterations] = derive_credentials(os.urandom(16).hex(), "sha256", iterations=iterations)
    return _UNKNOWN[iterations]
