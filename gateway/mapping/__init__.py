"""Global-distribution mapping: where each JID, routed domain and region is, kept in Redis.

``keys`` is the key layout, ``store`` the Redis access (conditional writes, replica reads),
``cache`` the sans-IO cache the router consults first, ``connect`` the client for a URL (one
server, or a Redis Cluster with ``redis+cluster://``) or, with ``sentinel``, for the primary
and replicas Redis Sentinel names.
"""

from .cache import Kind, MappingCache
from .connect import MappingClients, mapping_clients, redis_client
from .keys import (
    PREFIX,
    REGIONS_KEY,
    domain_key,
    endpoints_key,
    resources_key,
    split_full_jid,
    status_key,
)
from .store import Client, Location, MappingStore

__all__ = [
    "Client",
    "redis_client",
    "MappingClients",
    "mapping_clients",
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
