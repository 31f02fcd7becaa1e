"""Certificates renewed without a restart: the files are replaced, then SIGHUP (or the admin API's
``server { reloadCertificates }``) makes every listener present the new one from the next
handshake on, while open connections carry on."""

from __future__ import annotations

import asyncio
import shutil
import signal
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from gateway.link.tls import issue_cert, make_ca
from tests.helpers.topologies import one_node
from tests.helpers.xmpp_raw import RawClient

pytestmark = pytest.mark.asyncio


async def presented(port: int, ca: Path) -> int:
    """Serial number of the certificate the node's direct TLS port presents."""
    ctx = ssl.create_default_context(cafile=str(ca))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


def serial(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


async def test_sighup_and_the_admin_api_reload_certificates(tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path / "ca")
    first = issue_cert(ca, ca_key, tmp_path / "first", "localhost", ["localhost"])
    second = issue_cert(ca, ca_key, tmp_path / "second", "localhost", ["localhost"])
    third = issue_cert(ca, ca_key, tmp_path / "third", "localhost", ["localhost"])
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live-key.pem"
    shutil.copy(first[0], live_cert)
    shutil.copy(first[1], live_key)
    tls = {"tls": {"cert_file": str(live_cert), "key_file": str(live_key)}}
    with one_node(tmp_path / "n", "n1", users=["alice"], password="alice-pw", settings=tls) as node:
        assert await presented(node.tls_port, ca) == serial(first[0])
        open_client = RawClient(node.port, ca)
        await open_client.start("alice", "alice-pw", "kept", sm=False)

        # A renewal: new files, SIGHUP.
        shutil.copy(second[0], live_cert)
        shutil.copy(second[1], live_key)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if await presented(node.tls_port, ca) == serial(second[0]):
                break
            await asyncio.sleep(0.1)
        assert await presented(node.tls_port, ca) == serial(second[0])

        # Half-written files: the reload reports it and the previous certificate stays.
        live_key.write_text("not a key")
        status, body = await node.admin("mutation { server { reloadCertificates { reloaded errors } } }")
        result = body["data"]["server"]["reloadCertificates"]
        assert status == 200 and result["errors"] and str(live_cert) in result["errors"][0]
        assert await presented(node.tls_port, ca) == serial(second[0])

        shutil.copy(third[1], live_key)
        shutil.copy(third[0], live_cert)
        status, body = await node.admin("mutation { server { reloadCertificates { reloaded errors } } }")
        result = body["data"]["server"]["reloadCertificates"]
        assert result["errors"] == [] and result["reloaded"] >= 1
        assert await presented(node.tls_port, ca) == serial(third[0])

        # The connection opened before all this still works.
        open_client.send(f"<message to='{open_client.jid}' id='self'><body>still here</body></message>")
        echo = await open_client.next(lambda el: el.get("id") == "self")
        assert echo.findtext("{jabber:client}body") == "still here"
        await open_client.close()
