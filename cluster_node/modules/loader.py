"""Which modules a node runs, with what settings: validation of ``[modules.<name>]`` tables, start in
dependency order, stop in reverse."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..core.module import Module, ModuleHost, ModuleSettings
from ..core.services import Services
from . import BUILTIN

__all__ = ["module_settings", "start_modules", "stop_modules"]

log = logging.getLogger("meridian.modules")


def module_settings(raw: Mapping[str, Any], known: Mapping[str, type[Module]] = BUILTIN) -> dict[str, ModuleSettings]:
    """Every known module's settings (defaults for those not configured).  Raises ValueError with
    ``modules.<name>[.<key>]: problem`` for an unknown module, an unknown key or a bad value."""
    for name in raw:
        if name not in known:
            raise ValueError(f"modules.{name}: unknown module (known: {', '.join(sorted(known))})")
    out: dict[str, ModuleSettings] = {}
    for name, cls in known.items():
        table = raw.get(name) or {}
        if not isinstance(table, Mapping):
            raise ValueError(f"modules.{name}: a table of settings is expected (got {table!r})")
        try:
            settings = cls.Settings(**table)
        except ValidationError as e:
            first = e.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            msg = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
            got = first.get("input")
            plain = first["type"] in ("extra_forbidden", "missing") or isinstance(got, dict)
            shown = "" if plain else f" (got {got!r})"
            raise ValueError(f"modules.{name}.{key}: {msg}{shown}") from None
        if cls.required and not settings.enabled:
            raise ValueError(f"modules.{name}.enabled: the {name} module cannot be disabled")
        out[name] = settings
    for name, settings in out.items():
        if settings.enabled:
            for dep in known[name].depends:
                if dep not in out:
                    raise ValueError(f"modules.{name}: needs module {dep}, which does not exist")
                if not out[dep].enabled:
                    raise ValueError(f"modules.{name}: needs module {dep}, which is disabled")
    return out


async def start_modules(services: Services, raw: Mapping[str, Any],
                        known: Mapping[str, type[Module]] = BUILTIN) -> list[Module]:
    """Start the enabled modules, dependencies first; return them in start order."""
    configured = module_settings(raw, known)
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"modules.{name}: circular dependency ({' -> '.join(path + (name,))})")
        for dep in known[name].depends:
            visit(dep, path + (name,))
        order.append(name)

    for name in known:
        if configured[name].enabled:
            visit(name)
    started: list[Module] = []
    for name in order:
        module = known[name](configured[name])
        host = ModuleHost(services, module)
        module.host = host
        result = module.start(host)
        if inspect.isawaitable(result):
            await result
        services.modules[name] = module
        started.append(module)
    log.debug("modules: %s", ", ".join(order))
    return started


async def stop_modules(services: Services, modules: list[Module]) -> None:
    for module in reversed(modules):
        try:
            result = module.stop()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("module %s did not stop cleanly", module.name)
        if isinstance(module.host, ModuleHost):
            module.host.release()
        services.hooks.remove_owner(module)
        services.modules.pop(module.name, None)
