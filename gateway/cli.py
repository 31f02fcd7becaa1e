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


def _add_roles(sub: Any) -> None:
    gw = sub.add_parser("gateway", help="run the region's global-distribution gateway (a cluster member)")
    gw.add_argument("--config", required=True, help="TOML settings file with a [gdistrib] section")
    gw.set_defaults(func=_gateway)


def main(argv: list[str] | None = None) -> int:
    return node_cli.main(argv, extend=_add_roles, settings_loader=load_any_settings)


if __name__ == "__main__":
    sys.exit(main())
