#!/usr/bin/env python3
"""One-shot job of the compose deployment: a private CA and the certificates every service uses.

    meridian-make-certs /certs example.com eu-gw1 eu-gw2 us-gw1 us-gw2

Writes ``ca.pem`` (+ ``ca-key.pem``), a certificate for the XMPP domain (c2s, served by every node)
and one per gateway (inter-region links: mutual TLS, the name is checked against the endpoint the
gateway advertises).  An existing CA is kept, so re-running it after a restart changes nothing
clients trust; leaf certificates already present are kept too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.link.tls import issue_cert, make_ca


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    ca, ca_key = make_ca(out)
    for name in argv[1:]:
        if not (out / f"{name}.pem").exists():
            issue_cert(ca, ca_key, out, name, [name])
        print(f"{out / name}.pem")
    for path in out.glob("*.pem"):
        path.chmod(0o644 if not path.name.endswith("-key.pem") else 0o640)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
