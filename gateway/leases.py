"""Service domains served by one region at a time, taken over when that region is gone.

A module that serves a domain for every region of the deployment (MUC with ``home_cluster`` and
``rehome_after``) has each of its members write a *claim* into the replicated routes,
``claim/<domain>/<member>`` → ``{"home": bool, "after": seconds}`` (``ModuleHost.claim_domain``).
The region's gateways turn the claims into a **lease**: the domain's mapping entry
(``gd:domain:{<domain>}`` → region), which expires after ``expire_after`` unless renewed.

* The holder renews it every ``every`` seconds (``MappingStore.claim_domain``: renewed only by its
  holder, taken only when free, atomically).
* A region whose members claim the domain as their home takes it as soon as it is free.
* Any other claiming region takes it once it has been free for ``after`` seconds: the home region
  wins a cold start, and a short outage of the holder's gateways moves nothing.
* Nobody takes it back while it is held: a fail-back would drop the live rooms.  It goes home
  again when its holder goes (or when an operator deletes the entry).
* A holder that could not renew for ``expire_after`` (Redis out of its reach) gives it up here,
  since another region may hold it by now: its members stop serving.

Each gateway writes what it found into the routes, ``holder/<domain>/<gateway>`` →
``{"region": r}`` (``""``: nobody), which members read (``ModuleHost.domain_holder``) to decide
whether to serve; a change is also reported (``on_change``) so the router updates its cache of the
domain's region and tells the other regions' gateways to forget theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from cluster_node.cluster.table import Op, ReplicatedTable

from .mapping import MappingStore

__all__ = ["Leases", "claims", "may_take"]

log = logging.getLogger("meridian.gdistrib")


def may_take(home: bool, free_since: float | None, now: float, after: float) -> bool:
    """Whether a claiming region takes a free domain now (``free_since``: when it was first seen free)."""
    return home or (free_since is not None and after > 0 and now - free_since >= after)


def claims(routes: ReplicatedTable) -> dict[str, tuple[bool, float]]:
    """The domains this region's members claim: domain → (home for any of them, the shortest wait)."""
    out: dict[str, tuple[bool, float]] = {}
    for r in routes:
        kind, _, rest = r.key.partition("/")
        domain = rest.rpartition("/")[0]
        if kind != "claim" or not domain or not isinstance(r.value, dict):
            continue
        home = r.value.get("home") is True
        after = r.value.get("after")
        wait = float(after) if isinstance(after, int | float) and not isinstance(after, bool) and after > 0 else 0.0
        was_home, was_wait = out.get(domain, (False, 0.0))
        waits = [w for w in (was_wait, wait) if w > 0]
        out[domain] = (was_home or home, min(waits) if waits else 0.0)
    return out


class Leases:
    def __init__(self, store: MappingStore, routes: ReplicatedTable, broadcast: Callable[[Op], None], *,
                 node: str, region: str, expire_after: float, every: float,
                 on_change: Callable[[str, str | None], None] = lambda domain, holder: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.routes = routes
        self.broadcast = broadcast
        self.node = node
        self.region = region
        self.expire_after = expire_after
        self.every = every
        self.on_change = on_change
        self.clock = clock
        self.held: dict[str, str | None] = {}  # domain -> the holder last found (None: nobody)
        self._free_since: dict[str, float] = {}
        self._renewed: dict[str, float] = {}  # domain -> when we last renewed our lease on it
        self._task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        return {domain: holder or "" for domain, holder in sorted(self.held.items())}

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for domain in list(self.held):
            self._forget(domain)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("service leases: a round failed")
            await asyncio.sleep(self.every)

    async def tick(self) -> None:
        """One round: renew, take or learn the holder of every claimed domain."""
        now = self.clock()
        wanted = claims(self.routes)
        for domain, (home, after) in sorted(wanted.items()):
            take = may_take(home, self._free_since.get(domain), now, after)
            try:
                holder = await self.store.claim_domain(domain, take)
            except RedisError as e:
                if self.held.get(domain) == self.region and now - self._renewed.get(domain, now) >= self.expire_after:
                    log.warning("service leases: could not renew %s for %.0f s (%s): not serving it here",
                                domain, self.expire_after, e)
                    self._found(domain, None)
                continue
            if holder is None and domain not in self._free_since:
                self._free_since[domain] = now
                if not take and after > 0:
                    log.warning("service leases: nobody serves %s; this region takes it in %.0f s unless its "
                                "home region does first", domain, after)
            elif holder is not None:
                self._free_since.pop(domain, None)
            if holder == self.region:
                self._renewed[domain] = now
            self._found(domain, holder)
        for domain in set(self.held) - set(wanted):  # no member claims it any more
            self._forget(domain)

    def _found(self, domain: str, holder: str | None) -> None:
        if domain in self.held and self.held[domain] == holder:
            return
        previous = self.held.get(domain)
        self.held[domain] = holder
        self.broadcast(self.routes.insert(f"holder/{domain}/{self.node}", {"region": holder or ""}))
        log.log(logging.WARNING if previous is not None else logging.INFO,
                "service leases: %s is served by region %s", domain, holder or "(none)")
        self.on_change(domain, holder)

    def _forget(self, domain: str) -> None:
        self.held.pop(domain, None)
        op = self.routes.delete(f"holder/{domain}/{self.node}")
        if op is not None:
            self.broadcast(op)
