"""Global-distribution mapping: where each JID, routed domain and region is, kept in Redis.

``keys`` is the key layout, ``store`` the Redis access (conditional writes, replica reads),
``cache`` the sans-IO cache the router consults first.
"""

from .cache import Kind, MappingCache
from .keys import (
    PREFIX,
    REGIONS_KEY,
    domain_key,
    endpoints_key,
    resources_key,
    split_full_jid,
    status_key,
)
from .store import Location, MappingStore

__all__ = [
    "Location",
    "MappingStore",
    "MappingCache",
    "Kind",
    "PREFIX",
    "REGIONS_KEY",
    "resources_key",
    "domain_key",
    "endpoints_key",
    "status_key",
    "split_full_jid",
]
