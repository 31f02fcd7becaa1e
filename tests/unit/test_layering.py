"""The protocol cores stay sans-IO, and cluster_node never imports gateway (ARCHITECTURE.md)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "aiosqlite", "asyncpg", "redis", "aiohttp"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_protocol_cores_do_no_io():
    cores = sorted((ROOT / "cluster_node" / "xmpp").rglob("*.py"))
    assert cores
    for path in cores:
        assert not imports(path) & IO_MODULES, f"{path.relative_to(ROOT)} imports {imports(path) & IO_MODULES}"


def test_cluster_node_never_imports_gateway():
    for path in (ROOT / "cluster_node").rglob("*.py"):
        assert "gateway" not in imports(path), path
