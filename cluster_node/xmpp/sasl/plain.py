"""SASL PLAIN (RFC 4616), only ever offered over TLS."""

from __future__ import annotations

import functools
from collections.abc import Callable

from ..errors import SaslFailure
from ..jid import InvalidJid, nodeprep
from . import Challenge, NeedCredentials, Success
from .scram import ScramCredentials, verify_password

__all__ = ["PlainServer"]


class PlainServer:
    name = "PLAIN"

    def __init__(self, *, domain: str) -> None:
        self.domain = domain
        self._state = "start"
        self._username = ""
        self._password = ""

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

    def slow_check(self, creds: ScramCredentials | None) -> Callable[[], bool] | None:
        """The password check (PBKDF2 over the stored salt: milliseconds of CPU) as a function of
        nothing shared, for the adapter to run off its event loop; pass its answer to
        :meth:`provide` as ``checked``."""
        if self._state != "wait-creds" or creds is None:
            return None
        return functools.partial(verify_password, self._password, creds)

    def provide(self, creds: ScramCredentials | None, checked: bool | None = None) -> Success:
        if self._state != "wait-creds":
            raise SaslFailure("malformed-request")
        self._state = "done"
        password, self._password = self._password, ""
        if creds is None:
            raise SaslFailure("not-authorized")
        if not (checked if checked is not None else verify_password(password, creds)):
            raise SaslFailure("not-authorized")
        return Success(self._username)
