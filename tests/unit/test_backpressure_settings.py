"""The backpressure limits and the event loop choice: checked at load, one clear line when wrong."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster_node.cli import loop_factory
from cluster_node.settings import ConfigError, load_settings


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_settings(path)


def test_defaults_leave_room_for_a_human_chat(tmp_path: Path) -> None:
    s = _load(tmp_path, "")
    assert s.limits.outbound_low_water < s.limits.outbound_high_water < s.limits.write_buffer_limit
    assert s.limits.outbound_high_water >= 256 * 1024  # hundreds of chat messages waiting for one client
    assert s.event_loop == "asyncio"


@pytest.mark.parametrize("text, key", [
    ("[limits]\noutbound_high_water = 65536\noutbound_low_water = 65536\n", "outbound_low_water"),
    ("[limits]\noutbound_high_water = 1048576\nwrite_buffer_limit = 1048576\n", "write_buffer_limit"),
    ("[limits]\ninbound_queue = 0\n", "inbound_queue"),
    ('event_loop = "trio"\n', "event_loop"),
])
def test_bad_values_are_one_line_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    message = str(e.value)
    assert key in message and "\n" not in message and "Traceback" not in message


def test_the_stdlib_loop_stays_selectable() -> None:
    assert loop_factory("asyncio") is None


def test_auto_and_uvloop_make_a_uvloop_loop() -> None:
    uvloop = pytest.importorskip("uvloop")
    for choice in ("auto", "uvloop"):
        factory = loop_factory(choice)
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
            assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
        finally:
            loop.close()
