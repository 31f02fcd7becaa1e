"""Redis key layout of the global-distribution mapping (docs/architecture.md, "Global distribution").

Every key that a multi-key operation touches carries the same ``{hash tag}`` (the part of a key
between the first ``{`` and the next ``}``), so the layout works unchanged on Redis Cluster,
where the slot of a key is computed from its tag alone:

==============================  ======  ===================================================
key                             type    content
==============================  ======  ===================================================
``gd:{<bare jid>}:res``         hash    resource -> :class:`~gateway.mapping.Location` JSON;
                                        key TTL = latest field expiry
``gd:domain:{<domain>}``        string  region serving a routed domain (component, MUC), TTL
``gd:regions``                  zset    member = region, score = last-seen epoch
``gd:endpoints:{<region>}``     string  JSON list of ``host:port`` inter-region endpoints, TTL
``gd:status:{<region>}``        string  JSON status dict for the dashboard, TTL
==============================  ======  ===================================================

A tag that itself contains ``}`` is cut short by Redis; the key is still unique and always lands
in the same slot, which is all a single-key operation needs.  The endpoints and status keys of a
region share the tag ``{<region>}``, so they may be written in one transaction.
"""

from __future__ import annotations

__all__ = [
    "PREFIX",
    "REGIONS_KEY",
    "resources_key",
    "domain_key",
    "endpoints_key",
    "status_key",
    "split_full_jid",
]

PREFIX = "gd"
REGIONS_KEY = f"{PREFIX}:regions"


def resources_key(bare: str) -> str:
    """The hash of ``bare``'s resources: one key per user, so all its resources share a slot."""
    return f"{PREFIX}:{{{bare}}}:res"


def domain_key(domain: str) -> str:
    """The region of a routed domain (a component or service registered in one region)."""
    return f"{PREFIX}:domain:{{{domain}}}"


def endpoints_key(region: str) -> str:
    """Where the other regions' gateways connect to reach ``region``."""
    return f"{PREFIX}:endpoints:{{{region}}}"


def status_key(region: str) -> str:
    """``region``'s self-reported status (members, links, queues) for the dashboard."""
    return f"{PREFIX}:status:{{{region}}}"


def split_full_jid(jid: str) -> tuple[str, str]:
    """``user@domain/resource`` -> (``user@domain``, ``resource``).

    The resourcepart is everything after the first ``/`` and may itself hold ``/``
    (RFC 7622 §3.1).  JIDs must already be normalised (``Jid.parse``); the mapping compares
    strings.  A JID without a resource has no session to map, so it is refused.
    """
    bare, sep, resource = jid.partition("/")
    if not sep or not bare or not resource:
        raise ValueError(f"not a full JID: {jid!r}")
    return bare, resource
