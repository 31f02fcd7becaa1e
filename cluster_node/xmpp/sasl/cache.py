"""A per-process memory of PLAIN passwords verified recently, so a returning client costs no PBKDF2.

Accounts keep only SCRAM keys, so SASL PLAIN re-derives StoredKey from the offered password:
PBKDF2 over the stored salt, 4096 rounds or more, about a millisecond of CPU per login — most of
what a login costs the node.  Once a password has been verified, this cache remembers the fact
as ``HMAC-SHA256(K, account, password, hash, salt, iterations, StoredKey)`` under the account,
``K`` being 32 random bytes drawn when the process starts and never written anywhere:

- nothing stored lets anyone recover or test a password offline (without ``K`` the entries are
  random strings; with it, one HMAC per guess, but ``K`` lives only in this process's memory);
- the MAC covers the stored credentials the login just read, so a password changed anywhere — on
  another member of the cluster, by ``meridian ctl`` in another process, straight in the database —
  draws a new salt and StoredKey and the old entry can never match again: invalidation needs no
  message between members.  :meth:`LoginCache.forget` also drops an account's entries at once
  when the change is made here (memory, and defence in depth);
- only successes are remembered.  A wrong password and an unknown user both pay a full PBKDF2
  (the latter over a decoy salt, see :mod:`.plain`), so the cache gives nobody a timing signal
  they did not already have by logging in;
- an entry lives ``ttl`` seconds from the PBKDF2 that proved it (a hit does not extend it), and at
  most ``max_entries`` are kept (one per account, ~300 bytes each), least recently used out first.

Sans-IO: the caller may pass a clock; the event loop's thread is the only one touching it.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .scram import ScramCredentials

if TYPE_CHECKING:
    from ...settings import LoginCacheSettings

__all__ = ["LoginCache"]


class LoginCache:
    """Successful PLAIN verifications, keyed by a secret-keyed hash; bounded, with a TTL."""

    def __init__(self, *, max_entries: int = 20_000, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic, secret: bytes | None = None) -> None:
        if max_entries < 0 or ttl < 0:
            raise ValueError("max_entries and ttl must not be negative")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._secret = os.urandom(32) if secret is None else secret
        # One entry per account: only one password verifies against an account's stored keys, and
        # an entry made against older keys can never match again.  account -> (MAC, expires)
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.counters = {"hits": 0, "misses": 0, "stored": 0, "evicted": 0, "expired": 0, "forgotten": 0}

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def _mac(self, account: str, password: str, creds: ScramCredentials) -> bytes:
        """Length-prefixed fields, so no two different tuples hash the same input."""
        mac = hmac.new(self._secret, digestmod="sha256")
        for part in (account.encode(), password.encode("utf-8", "surrogatepass"), creds.hash_name.encode(),
                     creds.salt, str(creds.iterations).encode(), creds.stored_key):
            mac.update(len(part).to_bytes(4, "big"))
            mac.update(part)
        return mac.digest()

    def verified(self, account: str, password: str, creds: ScramCredentials) -> bool:
        """True when ``password`` was verified against exactly these credentials within the TTL."""
        if not self.enabled:
            return False
        entry = self._entries.get(account)
        if entry is None or not hmac.compare_digest(entry[0], self._mac(account, password, creds)):
            self.counters["misses"] += 1
            return False
        if entry[1] <= self._clock():
            del self._entries[account]
            self.counters["expired"] += 1
            self.counters["misses"] += 1
            return False
        self._entries.move_to_end(account)
        self.counters["hits"] += 1
        return True

    def remember(self, account: str, password: str, creds: ScramCredentials) -> None:
        """Record a verification that succeeded (PBKDF2 matched StoredKey); never call on failure."""
        if not self.enabled:
            return
        self._entries.pop(account, None)
        self._entries[account] = (self._mac(account, password, creds), self._clock() + self.ttl)
        self.counters["stored"] += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.counters["evicted"] += 1

    def forget(self, account: str) -> int:
        """Drop the entry of ``account`` (``user@domain``): its password changed or it is gone."""
        if self._entries.pop(account, None) is None:
            return 0
        self.counters["forgotten"] += 1
        return 1

    def clear(self) -> None:
        self._entries.clear()

    @classmethod
    def from_settings(cls, s: LoginCacheSettings) -> LoginCache:
        return cls(max_entries=s.max_entries if s.enabled else 0, ttl=s.ttl)
