"""Accounts: registration, password changes, removal — the one place passwords become SCRAM keys.

Passwords are never stored: :func:`make_credentials` derives salted SCRAM keys (RFC 5802) for
SHA-1 and SHA-256, which serve SCRAM logins directly and PLAIN logins by re-derivation.
"""

from __future__ import annotations

import asyncio

from ..storage import Storage
from ..xmpp.jid import InvalidJid, nodeprep
from ..xmpp.sasl.cache import LoginCache
from ..xmpp.sasl.scram import ScramCredentials, make_credentials

__all__ = ["Accounts", "AccountError"]


class AccountError(ValueError):
    """A request about an account that cannot be done; the message says why, for a human."""


class Accounts:
    def __init__(self, storage: Storage, domains: list[str], *, iterations: int = 4096,
                 min_password_length: int = 1, login_cache: LoginCache | None = None) -> None:
        """``login_cache``: the node's PLAIN cache, told here when a password changes or an
        account goes (its MACs cover the stored credentials anyway, so a change made elsewhere
        — another member, ``meridian ctl`` — invalidates it too; this frees the entries at once)."""
        self.storage = storage
        self.login_cache = login_cache
        self.domains = domains
        self.iterations = iterations
        self.min_password_length = min_password_length

    def normalise(self, domain: str, username: str) -> tuple[str, str]:
        domain = domain.lower().rstrip(".")
        if domain not in self.domains:
            raise AccountError(f"domain {domain!r} is not served here (served: {', '.join(self.domains)})")
        try:
            return domain, nodeprep(username)
        except InvalidJid as e:
            raise AccountError(f"invalid username {username!r}: {e}") from None

    async def _credentials(self, password: str) -> dict[str, dict[str, str | int]]:
        if len(password) < self.min_password_length:
            raise AccountError(f"password must be at least {self.min_password_length} characters")
        if not password.strip():
            raise AccountError("password must not be empty")
        creds = await asyncio.to_thread(make_credentials, password, self.iterations)
        return {name: c.to_dict() for name, c in creds.items()}

    async def register(self, domain: str, username: str, password: str) -> str:
        domain, user = self.normalise(domain, username)
        if not await self.storage.create_account(domain, user, await self._credentials(password)):
            raise AccountError(f"user {user}@{domain} already exists")
        return f"{user}@{domain}"

    async def change_password(self, domain: str, username: str, password: str) -> None:
        domain, user = self.normalise(domain, username)
        if self.login_cache is not None:
            self.login_cache.forget(f"{user}@{domain}")
        if not await self.storage.set_credentials(domain, user, await self._credentials(password)):
            raise AccountError(f"user {user}@{domain} does not exist")

    async def remove(self, domain: str, username: str) -> None:
        domain, user = self.normalise(domain, username)
        if self.login_cache is not None:
            self.login_cache.forget(f"{user}@{domain}")
        if not await self.storage.remove_account(domain, user):
            raise AccountError(f"user {user}@{domain} does not exist")

    async def exists(self, domain: str, username: str) -> bool:
        try:
            domain, user = self.normalise(domain, username)
        except AccountError:
            return False
        return await self.storage.account_exists(domain, user)

    async def scram_credentials(self, domain: str, username: str, hash_name: str) -> ScramCredentials | None:
        creds = await self.storage.get_credentials(domain, username)
        if creds is None or hash_name not in creds:
            return None
        return ScramCredentials.from_dict(creds[hash_name])
