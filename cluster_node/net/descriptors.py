"""How many client connections a node process can hold: its descriptor limit, raised as far as the
system allows at start, less what the rest of the process needs.

A connection past the descriptor limit is not refused politely: ``accept()`` fails with EMFILE,
the client waits in the listen backlog, and asyncio logs a traceback at every retry (a node held
at 20,000 descriptors wrote 1.1 GB of them in two minutes).  So ``limits.max_connections`` is
held below what the process can open, where the node refuses with a stream error instead.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["RESERVE", "raise_descriptor_limit", "connection_budget"]

log = logging.getLogger(__name__)

# Descriptors kept for everything but client connections: listeners, cluster and gateway links,
# the database and Redis pools, log files, s2s, HTTP requests of the admin and upload APIs.
RESERVE = 256


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (what any process may do) and return the
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # a hard limit above fs.nr_open
            log.debug("cannot raise the descriptor limit from %d to %d: %s", soft, hard, e)
    return soft


def connection_budget(max_connections: int) -> int:
    """The client connections this process may hold: ``max_connections``, or fewer when the
    descriptor limit cannot hold them (logged once, naming the setting and the limit)."""
    soft = raise_descriptor_limit()
    if soft == resource.RLIM_INFINITY:
        return max_connections
    room = max(1, soft - RESERVE)
    if max_connections > room:
        log.warning("limits.max_connections = %d, but this process may open %d descriptors "
                    "(RLIMIT_NOFILE): it holds at most %d client connections and refuses the rest; "
                    "raise the limit (ulimit -n, systemd LimitNOFILE) or lower the setting",
                    max_connections, soft, room)
        return room
    return max_connections
