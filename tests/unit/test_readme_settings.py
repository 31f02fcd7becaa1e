"""Every key the README's TOML examples show is a real setting: an example copied into a
configuration file never stops the start with "unknown setting"."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cluster_node.modules import BUILTIN
from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]


def _blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _unknown(model: type[BaseModel], values: dict[str, Any], path: str) -> list[str]:
    out = []
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is None:
            out.append(f"{path}{key}")
            continue
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _unknown(sub, value, f"{path}{key}.")
    return out


def test_the_readme_examples_name_only_real_settings() -> None:
    blocks = _blocks()
    assert len(blocks) >= 4
    modules = {name: cls.Settings for name, cls in BUILTIN.items()}
    unknown: list[str] = []
    for text in blocks:
        values = tomllib.loads(text)
        for name, table in values.pop("modules", {}).items():
            if name not in modules:
                unknown.append(f"modules.{name}")
            else:
                unknown += _unknown(modules[name], {k: v for k, v in table.items() if k != "enabled"},
                                    f"modules.{name}.")
        unknown += _unknown(GatewaySettings, values, "")
    assert unknown == []
