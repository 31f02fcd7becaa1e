"""Interop: Meridian federates with Debian's ejabberd 23.01 over standard S2S.

The same world and exchange as :mod:`tests.integration.test_s2s_prosody` (a Meridian region for
``eu1.example.com``, SRV records on a loopback DNS server, messages and presence subscriptions
both ways, once by dialback and once by SASL EXTERNAL only), with ejabberd as the peer.
Meridian's SRV record names ``localhost``: ejabberd looks SRV records up in our DNS server but
resolves their targets through libc (see :mod:`tests.helpers.ejabberd`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dns import DnsServer
from tests.helpers.ejabberd import EjabberdServer, ejabberdctl_binary
from tests.helpers.redis import redis_server_binary
from tests.integration.test_s2s_prosody import MERIDIAN, World, exchange_both_ways, start_world

EJABBERD = "ejabberd.example.net"

pytestmark = pytest.mark.skipif(
    ejabberdctl_binary() is None or os.geteuid() != 0 or redis_server_binary() is None,
    reason="Debian packages ejabberd, redis-server not installed, or not root (Debian's ejabberdctl "
           "runs only as root or ejabberd)")


def _ejabberd(ca: tuple[Path, Path], dns: DnsServer, external: bool) -> EjabberdServer:
    return EjabberdServer(EJABBERD, ca=ca, dns=dns, dialback=not external, secure_auth=external)


@pytest.fixture(scope="module", params=["dialback", "sasl-external"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from start_world(tmp_path_factory.mktemp(f"s2s-ejabberd-{request.param}"), request.param, _ejabberd,
                           srv_target="localhost")


async def test_messages_and_subscriptions_both_ways(world: World) -> None:
    await exchange_both_ways(world)
    assert isinstance(world.peer, EjabberdServer)
    log = world.peer.log_path.read_text()
    # ejabberd's INFO line for each authenticated stream names the method and the direction
    method = "EXTERNAL" if world.method == "sasl-external" else "dialback"
    assert f"Accepted inbound s2s {method} authentication {MERIDIAN} -> {EJABBERD}" in log
    assert f"Accepted outbound s2s {method} authentication {EJABBERD} -> {MERIDIAN}" in log
    other = "dialback" if method == "EXTERNAL" else "EXTERNAL"
    assert f"Accepted inbound s2s {other} authentication" not in log
    assert f"Accepted outbound s2s {other} authentication" not in log
