"""The module host: ``[modules.<name>]`` validation, start in dependency order, stop removing hooks,
and configuration errors as the operator sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from cluster_node.core.hooks import Hook
from cluster_node.core.module import Module, ModuleHost, ModuleSettings
from cluster_node.modules import BUILTIN
from cluster_node.modules.loader import module_settings, start_modules, stop_modules
from cluster_node.settings import ConfigError, NodeSettings, load_settings
from tests.helpers.fake_host import fake_node

# -- small modules for the loader ----------------------------------------------------------------

EVENTS: list[str] = []


class CountSettings(ModuleSettings):
    count: int = Field(3, ge=0)
    label: str = "x"


class Base(Module):
    def start(self, host: ModuleHost) -> None:
        self.host = host
        EVENTS.append(f"start {self.name}")
        host.hook(f"hook_{self.name}", lambda: self.name)
        host.hook("shared", lambda: EVENTS.append(f"shared {self.name}"))

    def stop(self) -> None:
        EVENTS.append(f"stop {self.name}")


class A(Base):
    name = "a"
    Settings = CountSettings


class B(Base):
    name = "b"
    depends = ("a",)


class C(Base):
    name = "c"
    depends = ("b", "a")


class Req(Base):
    name = "req"
    required = True


class AsyncStart(Module):
    name = "async_start"

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        EVENTS.append("start async_start")

    async def stop(self) -> None:
        EVENTS.append("stop async_start")


class Loop1(Base):
    name = "loop1"
    depends = ("loop2",)


class Loop2(Base):
    name = "loop2"
    depends = ("loop1",)


@pytest.fixture(autouse=True)
def _clear_events():
    EVENTS.clear()
    yield
    EVENTS.clear()


# -- settings validation --------------------------------------------------------------------------


def test_defaults_for_every_known_module():
    out = module_settings({})
    assert set(out) == set(BUILTIN)
    assert all(s.enabled for s in out.values())
    assert out["stream_management"].resume_timeout == 300


def test_configured_values_are_applied():
    out = module_settings({"a": {"count": 7, "label": "y"}}, known={"a": A})
    assert (out["a"].count, out["a"].label, out["a"].enabled) == (7, "y", True)


def test_unknown_module_names_modules_dot_name():
    with pytest.raises(ValueError) as e:
        module_settings({"nope": {}})
    assert str(e.value).startswith("modules.nope: unknown module")
    assert "roster" in str(e.value)  # the known ones are listed


def test_unknown_key():
    with pytest.raises(ValueError) as e:
        module_settings({"ping": {"bogus": 1}})
    assert str(e.value) == "modules.ping.bogus: unknown setting"


def test_wrong_type_names_the_key():
    with pytest.raises(ValueError) as e:
        module_settings({"stream_management": {"resume_timeout": "abc"}})
    msg = str(e.value)
    assert msg.startswith("modules.stream_management.resume_timeout: ")
    assert "integer" in msg and "'abc'" in msg


def test_out_of_range_value_names_the_key():
    with pytest.raises(ValueError) as e:
        module_settings({"a": {"count": -1}}, known={"a": A})
    assert str(e.value).startswith("modules.a.count: ")


def test_a_table_is_expected():
    with pytest.raises(ValueError) as e:
        module_settings({"ping": 3})
    assert str(e.value).startswith("modules.ping: a table of settings is expected")


def test_required_module_cannot_be_disabled():
    with pytest.raises(ValueError) as e:
        module_settings({"roster": {"enabled": False}})
    assert str(e.value) == "modules.roster.enabled: the roster module cannot be disabled"
    with pytest.raises(ValueError) as e:
        module_settings({"req": {"enabled": False}}, known={"req": Req})
    assert str(e.value) == "modules.req.enabled: the req module cannot be disabled"


def test_optional_module_can_be_disabled():
    out = module_settings({"ping": {"enabled": False}})
    assert out["ping"].enabled is False


def test_disabled_dependency_is_refused():
    with pytest.raises(ValueError) as e:
        module_settings({"a": {"enabled": False}}, known={"a": A, "b": B})
    assert str(e.value) == "modules.b: needs module a, which is disabled"


def test_disabling_a_dependent_with_its_dependency_is_fine():
    out = module_settings({"a": {"enabled": False}, "b": {"enabled": False}}, known={"a": A, "b": B})
    assert (out["a"].enabled, out["b"].enabled) == (False, False)


# -- start and stop --------------------------------------------------------------------------------


async def test_start_order_respects_depends(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        started = await start_modules(node.services, {}, known={"c": C, "b": B, "a": A})
        assert [m.name for m in started] == ["a", "b", "c"]
        assert EVENTS == ["start a", "start b", "start c"]
        assert list(node.services.modules) == ["a", "b", "c"]
        assert node.services.modules["a"] is started[0]
        assert isinstance(started[0].settings, CountSettings)


async def test_disabled_modules_are_not_started(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        started = await start_modules(node.services, {"c": {"enabled": False}}, known={"c": C, "b": B, "a": A})
        assert [m.name for m in started] == ["a", "b"]
        assert "c" not in node.services.modules
        assert node.hooks.has("hook_c") is False


async def test_settings_reach_the_module(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        [a] = await start_modules(node.services, {"a": {"count": 9}}, known={"a": A})
        assert a.settings.count == 9


async def test_circular_dependency_is_refused(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        with pytest.raises(ValueError) as e:
            await start_modules(node.services, {}, known={"loop1": Loop1, "loop2": Loop2})
        assert str(e.value) == "modules.loop1: circular dependency (loop1 -> loop2 -> loop1)"
        assert EVENTS == []


async def test_async_start_and_stop_are_awaited(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        started = await start_modules(node.services, {}, known={"async_start": AsyncStart})
        assert EVENTS == ["start async_start"]
        await stop_modules(node.services, started)
        assert EVENTS == ["start async_start", "stop async_start"]


async def test_stop_removes_the_hooks_the_module_owns(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        foreign: list[str] = []
        node.hooks.add("shared", lambda: foreign.append("foreign"), 99)
        started = await start_modules(node.services, {}, known={"a": A, "b": B})
        assert node.hooks.first("hook_a") == "a"
        assert node.hooks.first("hook_b") == "b"
        node.hooks.run("shared")
        assert EVENTS[-2:] == ["shared a", "shared b"] and foreign == ["foreign"]

        await stop_modules(node.services, started[1:])  # b only
        assert node.hooks.has("hook_b") is False
        assert node.hooks.first("hook_a") == "a"
        assert "b" not in node.services.modules and "a" in node.services.modules
        EVENTS.clear()
        node.hooks.run("shared")
        assert EVENTS == ["shared a"]

        await stop_modules(node.services, started[:1])
        assert node.hooks.has("hook_a") is False
        assert node.hooks.handlers("shared") and len(node.hooks.handlers("shared")) == 1
        assert node.services.modules == {}


async def test_stop_runs_in_reverse_order(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        started = await start_modules(node.services, {}, known={"c": C, "b": B, "a": A})
        EVENTS.clear()
        await stop_modules(node.services, started)
        assert EVENTS == ["stop c", "stop b", "stop a"]


async def test_a_failing_stop_still_removes_its_hooks(tmp_path: Path):
    class Broken(Base):
        name = "broken"

        def stop(self) -> None:
            raise RuntimeError("boom")

    async with fake_node(tmp_path) as node:
        started = await start_modules(node.services, {}, known={"broken": Broken, "a": A})
        await stop_modules(node.services, started)
        assert node.hooks.has("hook_broken") is False
        assert node.hooks.has("shared") is False
        assert node.services.modules == {}


async def test_builtin_modules_start_and_stop_clean(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        started = await start_modules(node.services, {})
        assert {m.name for m in started} == set(BUILTIN)
        assert node.hooks.has(Hook.PRESENCE_IN) and node.hooks.has(Hook.OFFLINE_MESSAGE)
        await stop_modules(node.services, started)
        names = [v for k, v in vars(Hook).items() if k.isupper() and isinstance(v, str)]
        assert Hook.C2S_FEATURES in names and len(names) > 20
        assert [name for name in names if node.hooks.has(name)] == []
        assert node.services.modules == {}


# -- the node's settings ----------------------------------------------------------------------------


def test_node_settings_refuse_an_unknown_module(tmp_path: Path):
    with pytest.raises(ValidationError) as e:
        NodeSettings(data_dir=tmp_path, modules={"nope": {}})
    assert "modules.nope: unknown module" in str(e.value)


def test_node_settings_accept_a_known_module_table(tmp_path: Path):
    s = NodeSettings(data_dir=tmp_path, modules={"stream_management": {"resume_timeout": 60}})
    assert s.modules == {"stream_management": {"resume_timeout": 60}}


def test_load_settings_names_the_module_key_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "node.toml"
    path.write_text('[modules.stream_management]\nresume_timeout = "abc"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"config error in {path}: modules.stream_management.resume_timeout: ")
    assert "'abc'" in msg


def test_load_settings_unknown_module_in_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "node.toml"
    path.write_text("[modules.nope]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"config error in {path}: modules.nope: unknown module")


async def test_stop_releases_everything_the_module_added(tmp_path: Path):
    """IQ handlers (and their disco feature), cluster calls and admin queries go with the module."""
    async with fake_node(tmp_path) as node:
        started = await start_modules(node.services, {})
        s = node.services
        assert "urn:xmpp:ping" in s.router.features
        assert {"sm.takeover", "sm.adopt"} <= set(s.call_handlers)
        assert ("sm", "status") in s.queries
        await stop_modules(s, started)
        assert "urn:xmpp:ping" not in s.router.features
        assert not any(n.startswith("sm.") for n in s.call_handlers)
        assert ("sm", "status") not in s.queries
        assert not any(s.hooks.handlers(name) for name in vars(Hook).values() if isinstance(name, str))


def test_a_dependency_on_a_module_that_does_not_exist_is_named():
    class Needy(Module):
        name = "needy"
        depends = ("ghost",)

    with pytest.raises(ValueError, match=r"modules\.needy: needs module ghost, which does not exist"):
        module_settings({}, {"needy": Needy})


async def test_every_runs_a_job_until_the_module_stops_and_survives_a_failure(tmp_path: Path):
    import asyncio

    runs: list[int] = []

    class Ticker(Module):
        name = "ticker"

        def start(self, host: ModuleHost) -> None:
            self.host = host

            async def job() -> None:
                runs.append(len(runs))
                if len(runs) == 1:
                    raise RuntimeError("a bad run is logged, the next one comes")

            self.task = host.every(0.01, job, "ticking")

    async with fake_node(tmp_path) as node:
        started = await start_modules(node.services, {}, known={"ticker": Ticker})
        await asyncio.sleep(0.2)
        assert len(runs) >= 3
        await stop_modules(node.services, started)
        await asyncio.sleep(0)
        assert started[0].task.cancelled() or started[0].task.done()
        count = len(runs)
        await asyncio.sleep(0.05)
        assert len(runs) == count
