"""The protocol cores stay sans-IO, and cluster_node never imports gateway (docs/architecture.md)."""

import ast
from collections.abc import Callable
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


# -- the module host's layers: core ← net, core ← modules; modules meet only on hooks ------------------

PACKAGE = ROOT / "cluster_node"
MODULE_PACKAGE_DEPS = ("cluster_node.core", "cluster_node.xmpp", "cluster_node.storage", "cluster_node.cluster")


def module_of(path: Path) -> tuple[str, bool]:
    """The dotted name of a source file under ROOT, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every module an import statement may load, as absolute dotted names with the line: relative
    imports resolved against ``module``; ``from X import y`` gives both X and X.y (y may be a
    submodule).  Imports anywhere count: inside functions and under ``if TYPE_CHECKING:``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                assert len(base) == len(package) - (node.level - 1), f"{module}: relative import above the top"
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*")
    return found


def file_imports(path: Path) -> list[tuple[int, str]]:
    module, is_package = module_of(path)
    return imported_names(path.read_text(encoding="utf-8"), module, is_package)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(paths: list[Path], allowed: Callable[[Path, str], bool]) -> list[str]:
    out = []
    for path in paths:
        for line, name in file_imports(path):
            if not allowed(path, name):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return sorted(set(out))


def test_imported_names_resolves_relative_and_type_checking_imports():
    src = ("from __future__ import annotations\n"
           "from typing import TYPE_CHECKING\n"
           "from .hooks import Hook\n"
           "from .. import modules\n"
           "if TYPE_CHECKING:\n"
           "    from ..net.c2s_server import C2SListener\n"
           "def f():\n"
           "    import cluster_node.modules.roster\n")
    names = {n for _, n in imported_names(src, "cluster_node.core.x")}
    assert {"cluster_node.core.hooks", "cluster_node.core.hooks.Hook", "cluster_node.modules",
            "cluster_node.net.c2s_server", "cluster_node.modules.roster"} <= names
    in_init = {n for _, n in imported_names("from .module import Roster\nfrom ...core import hooks\n",
                                            "cluster_node.modules.roster", is_package=True)}
    assert in_init == {"cluster_node.modules.roster.module", "cluster_node.modules.roster.module.Roster",
                       "cluster_node.core", "cluster_node.core.hooks"}


def test_the_checks_see_a_violation():
    bad = PACKAGE / "core" / "bad.py"
    assert module_of(bad) == ("cluster_node.core.bad", False)
    names = [n for _, n in imported_names("if TYPE_CHECKING:\n    from ..modules.roster import Roster\n",
                                          "cluster_node.core.bad")]
    assert any(within(n, "cluster_node.modules") for n in names)


def test_core_imports_neither_modules_nor_net():
    paths = sorted((PACKAGE / "core").rglob("*.py"))
    assert len(paths) >= 5

    def allowed(path: Path, name: str) -> bool:
        return not (within(name, "cluster_node.modules") or within(name, "cluster_node.net"))

    assert violations(paths, allowed) == []


def test_net_imports_no_modules():
    paths = sorted((PACKAGE / "net").rglob("*.py"))
    assert paths

    def allowed(path: Path, name: str) -> bool:
        return not within(name, "cluster_node.modules")

    assert violations(paths, allowed) == []


def test_module_packages_import_only_their_own_package_and_the_shared_layers():
    packages = sorted(p for p in (PACKAGE / "modules").iterdir() if (p / "__init__.py").is_file())
    assert {p.name for p in packages} >= {"roster", "presence", "offline", "disco", "ping", "version", "register"}
    paths = sorted(path for pkg in packages for path in pkg.rglob("*.py"))

    def allowed(path: Path, name: str) -> bool:
        if not within(name, "cluster_node"):
            return True  # the standard library and third-party packages
        own = "cluster_node.modules." + path.relative_to(PACKAGE / "modules").parts[0]
        return any(within(name, prefix) for prefix in (own, *MODULE_PACKAGE_DEPS))

    assert violations(paths, allowed) == []
