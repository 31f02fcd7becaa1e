"""SASL PLAIN (RFC 4616), only ever offered over TLS.

Accounts keep only SCRAM keys, so the password is checked by re-deriving StoredKey (PBKDF2) — a
millisecond of CPU — unless a :class:`~.cache.LoginCache` remembers it verified against the same
stored keys.  An unknown user costs the same PBKDF2 as a wrong password (over a decoy salt derived
from the username, as SCRAM's fake salt is), so neither the work nor its time says whether the
account exists.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import SaslFailure
from ..jid import InvalidJid, nodeprep
from . import Challenge, NeedCredentials, Success
from .scram import ScramCredentials, verify_password

if TYPE_CHECKING:
    from .cache import LoginCache

__all__ = ["PlainServer", "DECOY_ITERATIONS"]

DECOY_ITERATIONS = 4096  # the default of scram_iterations: an unknown user's PBKDF2 rounds


def _decoy_check(password: str, creds: ScramCredentials) -> bool:
    """The PBKDF2 a wrong password costs, for a user who does not exist; always False."""
    verify_password(password, creds)
    return False


class PlainServer:
    name = "PLAIN"

    def __init__(self, *, domain: str, secret: bytes = b"", cache: LoginCache | None = None,
                 decoy_iterations: int = DECOY_ITERATIONS) -> None:
        """``decoy_iterations``: PBKDF2 rounds spent for an unknown user — the server's setting for
        new passwords, so that a missing account costs what a wrong password does."""
        self.domain = domain
        self.decoy_iterations = decoy_iterations
        self.secret = secret
        self.cache = cache
        self._state = "start"
        self._username = ""
        self._password = ""
        self._cached = False

    def start(self, initial: bytes | None) -> Challenge | NeedCredentials:
        if self._state != "start":
            raise SaslFailure("malformed-request")
        if initial is None:
            self._state = "wait"
            return Challenge(b"")
        return self._message(initial)

    def respond(self, data: bytes) -> NeedCredentials:
        if self._state != "wait":
            raise SaslFailure("malformed-request")
        return self._message(data)

    def _message(self, data: bytes) -> NeedCredentials:
        try:
            authzid, authcid, password = data.decode("utf-8").split("\0")
        except (UnicodeDecodeError, ValueError):
            raise SaslFailure("malformed-request") from None
        try:
            self._username = nodeprep(authcid)
        except InvalidJid:
            raise SaslFailure("not-authorized") from None
        if authzid and authzid.lower() != f"{self._username}@{self.domain}":
            raise SaslFailure("invalid-authzid")
        if not password:
            raise SaslFailure("not-authorized")
        self._password = password
        self._state = "wait-creds"
        return NeedCredentials(self._username)

    @property
    def _account(self) -> str:
        return f"{self._username}@{self.domain}"

    def _decoy(self) -> ScramCredentials:
        salt = hmac.new(self.secret, b"plain-decoy\0" + self._username.encode(), "sha256").digest()[:16]
        return ScramCredentials("sha256", salt, self.decoy_iterations, b"\0" * 32, b"")

    def slow_check(self, creds: ScramCredentials | None) -> Callable[[], bool] | None:
        """The password check (PBKDF2 over the stored salt, or a decoy one for an unknown user:
        milliseconds of CPU) as a function of nothing shared, for the adapter to run off its event
        loop; pass its answer to :meth:`provide` as ``checked``.  None when the cache already
        knows this password verified against ``creds``: nothing slow to do."""
        if self._state != "wait-creds":
            return None
        if creds is None:
            return functools.partial(_decoy_check, self._password, self._decoy())
        if self.cache is not None and self.cache.verified(self._account, self._password, creds):
            self._cached = True
            return None
        return functools.partial(verify_password, self._password, creds)

    def provide(self, creds: ScramCredentials | None, checked: bool | None = None) -> Success:
        if self._state != "wait-creds":
            raise SaslFailure("malformed-request")
        self._state = "done"
        password, self._password = self._password, ""
        cached, self._cached = self._cached, False
        if creds is None:
            if checked is None:
                _decoy_check(password, self._decoy())  # the same work as a wrong password
            raise SaslFailure("not-authorized")
        if checked is None:
            cached = cached or (self.cache is not None and self.cache.verified(self._account, password, creds))
            checked = cached or verify_password(password, creds)
        if not checked:
            raise SaslFailure("not-authorized")
        if not cached and self.cache is not None:
            self.cache.remember(self._account, password, creds)
        return Success(self._username)
