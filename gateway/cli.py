"""``meridian`` with the gateway role: ``meridian gateway --config gw.toml``.

This is the console script: the node's command line (``cluster_node.cli``) plus the role that
lives in this package, since ``cluster_node`` never imports ``gateway``.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from cluster_node import cli as node_cli
from cluster_node.settings import NodeSettings, load_settings

from .settings import GatewaySettings

__all__ = ["main", "load_any_settings"]


def load_any_settings(config: str | None) -> NodeSettings:
    """A gateway's settings when the file has a ``[gdistrib]`` section, else a node's."""
    if config is not None:
        try:
            data = tomllib.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            data = {}  # load_settings reports it properly
        if "gdistrib" in data:
            return load_settings(config, GatewaySettings)
    return load_settings(config)


def _gateway(args: argparse.Namespace) -> int:
    from .wiring import run_gateway

    return node_cli.run_role("gateway", load_settings(args.config, GatewaySettings), run_gateway)


def _demo(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from .demo.runner import DemoError, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s demo %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run_demo(Path(args.dir), args.base_port, Path(args.state_file) if args.state_file else None,
                                    args.redis_url, sentinel=args.sentinel))
    except DemoError as e:
        print(f"meridian demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _add_roles(sub: Any) -> None:
    gw = sub.add_parser("gateway", help="run the region's global-distribution gateway (a cluster member)")
    gw.add_argument("--config", required=True, help="TOML settings file with a [gdistrib] section")
    gw.set_defaults(func=_gateway)
    demo = sub.add_parser("demo", help="run two regions of example.com and a federated other.example on this machine")
    demo.add_argument("--dir", default="meridian-demo", help="where the demo keeps its files (default ./meridian-demo)")
    demo.add_argument("--base-port", type=int, default=15200, help="first of the 300 ports the demo uses")
    demo.add_argument("--state-file", help="write a JSON description of the running demo here once it is ready")
    demo.add_argument("--redis-url", help="use this Redis for every region instead of starting redis-server")
    demo.add_argument("--sentinel", action="store_true",
                      help="also start three Redis Sentinels; the eu and us gateways follow a failover through them")
    demo.set_defaults(func=_demo)


def main(argv: list[str] | None = None) -> int:
    return node_cli.main(argv, extend=_add_roles, settings_loader=load_any_settings)


if __name__ == "__main__":
    sys.exit(main())
