"""compose/ is a deployment that can work: the compose file is valid against the Compose
Specification, every file it mounts exists, and every Meridian service's config loads with the
project's own settings loader under the environment that service gets (compose interpolation
defaults, plus what compose/entrypoint.sh derives per container).  The certificate job really runs
and the gateways' link TLS contexts build from what it wrote.  No Docker needed.

tests/data/compose_spec.json is the Compose Specification schema (JSON Schema draft 2019-09) as
shipped in the docker-compose 1.29.2 wheel on PyPI (``compose/config/compose_spec.json``), the
schema ``docker-compose config`` validated against; vendored because the tests have no internet.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cluster_node.net.tls import server_context as c2s_context
from cluster_node.settings import NodeSettings, load_settings
from gateway.link.tls import client_context, server_context
from gateway.settings import GatewaySettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
SCHEMA = REPO / "tests" / "data" / "compose_spec.json"
ROLES: dict[str, type[NodeSettings]] = {"node": NodeSettings, "gateway": GatewaySettings}


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose variable interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op is None:
            raise AssertionError(f"${{{name}}} has no default: the compose file would need it set")
        return default

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", sub, value)


def meridian_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items()
            if s.get("image") == "meridian:local" and s.get("command", [None])[0] in ROLES}


def mounted_config(service: dict[str, Any]) -> Path:
    command = service["command"]
    target = command[command.index("--config") + 1]
    for volume in service["volumes"]:
        source, dest, *_ = volume.split(":")
        if dest == target:
            return (COMPOSE / source).resolve()
    raise AssertionError(f"{target} is not mounted")


def container_env(service: dict[str, Any], tmp: Path, hostname: str) -> dict[str, str]:
    """The MERIDIAN_… environment the process sees: the service's, then compose/entrypoint.sh's
    additions (run for real, with ``meridian`` replaced by ``env`` and ``hostname`` answering as
    the container would)."""
    env = {k: interpolate(str(v)) for k, v in service.get("environment", {}).items()}
    shims = tmp / "bin"
    shims.mkdir(exist_ok=True)
    (shims / "meridian").write_text("#!/bin/sh\nexec env\n")
    (shims / "hostname").write_text(f'#!/bin/sh\n[ "$1" = -i ] && echo "172.18.0.7 fd00::7" || echo {hostname}\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    out = subprocess.run(["sh", str(COMPOSE / "entrypoint.sh"), *service["command"]], capture_output=True, text=True,
                         env={"PATH": f"{shims}:/usr/bin:/bin", **env}, check=True, timeout=30).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("MERIDIAN_"))
    return seen


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    # Its "$schema" is http://json-schema.org/draft/2019-09/schema#, an unofficial spelling of 2019-09.
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # The schema is strict enough to catch a typo (so the check above can fail).
    broken = json.loads(json.dumps(compose))
    broken["services"]["eu-node"]["deploy"]["replica"] = 3
    broken["services"]["us-gw1"]["depends_on"]["redis-us"]["condition"] = "service_up"
    assert len(list(validator.iter_errors(broken))) == 2


def test_topology_two_regions_of_three_nodes_and_two_gateways(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for region in ("eu", "us"):
        assert services[f"{region}-node"]["deploy"]["replicas"] == 3
        assert services[f"{region}-node"]["ports"] == ["5222", "5223", "5280"]  # host ports picked by Docker: scalable
        assert {f"{region}-gw1", f"{region}-gw2"} <= set(services)
    assert services["sentinel"]["deploy"]["replicas"] == 3
    assert "--replicaof" in services["redis-us"]["command"]
    assert services["pg-us"]["entrypoint"] == ["/usr/local/bin/meridian-replica.sh"]
    names = set(services)
    for name, s in services.items():  # every dependency is a service of this file
        assert set(s.get("depends_on", {})) <= names, name


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes", {}))
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                path = (COMPOSE / source).resolve()
                assert path.is_file(), f"{name}: {source} does not exist"
                if path.suffix == ".sh":
                    assert os.access(path, os.X_OK), f"{source} is not executable"
                mounts += 1
            else:
                assert source in named, f"{name}: volume {source} is not declared"
    assert mounts >= 8
    build = compose["services"]["certs"]["build"]
    dockerfile = (COMPOSE / build["context"] / build["dockerfile"]).resolve()
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE)
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    for line in text.splitlines():
        if line.startswith("COPY "):
            sources = line.split()[1:-1]
            if sources[0].startswith("--from="):  # from an earlier stage of this file
                assert sources[0].removeprefix("--from=") in stages, line
                continue
            for source in sources:
                assert (dockerfile.parents[1] / source).exists(), f"Dockerfile copies missing {source}"
                if (dockerfile.parents[1] / source).is_file():
                    assert in_build_context(source, ignore), f"{ignore.name} leaves out {source}"


def in_build_context(path: str, dockerignore: Path) -> bool:
    """Whether ``path`` survives the .dockerignore (its last matching pattern is not an exclusion)."""
    kept = True
    for pattern in dockerignore.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        glob = re.escape(pattern.removeprefix("!")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if re.fullmatch(glob, path):
            kept = negated
    return kept


def test_browsers_reach_every_node_on_its_web_port(compose: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each node serves WebSocket, BOSH, host-meta and the web client on [websocket]'s port: the
    compose file publishes it, the image exposes it and holds the web client where web_root says."""
    for key in [k for k in os.environ if k.startswith("MERIDIAN_")]:
        monkeypatch.delenv(key)
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    exposed = re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE)
    assert exposed is not None
    for region in ("eu", "us"):
        service = compose["services"][f"{region}-node"]
        with monkeypatch.context() as m:
            for key, value in container_env(service, tmp_path, hostname="n").items():
                m.setenv(key, value)
            ws = load_settings(mounted_config(service), NodeSettings).websocket
        assert ws.port and ws.tls and ws.host == "0.0.0.0"
        assert str(ws.port) in service["ports"] and str(ws.port) in exposed.group(1).split()
        assert f"COPY web/index.html {ws.web_root}/index.html" in dockerfile
        assert re.search(rf"^COPY --from=web /web/dist {re.escape(ws.web_root)}/dist$", dockerfile, re.MULTILINE)
    pinned = json.loads((REPO / "web" / "package.json").read_text())["dependencies"]["converse.js"]
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "the web client is pinned to one version"
    assert lock["packages"]["node_modules/converse.js"]["version"] == pinned
    assert "COPY web/package.json web/package-lock.json ./" in dockerfile and "npm ci" in dockerfile


def test_every_meridian_config_loads_with_the_service_environment(
        compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = meridian_services(compose)
    assert sorted(services) == ["eu-gw1", "eu-gw2", "eu-node", "us-gw1", "us-gw2", "us-node"]
    for key in [k for k in os.environ if k.startswith("MERIDIAN_")]:
        monkeypatch.delenv(key)
    loaded: dict[str, NodeSettings] = {}
    for name, service in services.items():
        env = container_env(service, tmp_path, hostname="3f2a9c1b7d0e")
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            loaded[name] = load_settings(mounted_config(service), ROLES[service["command"][0]])
    for region in ("eu", "us"):
        node = loaded[f"{region}-node"]
        assert node.node_name == "3f2a9c1b7d0e" and node.cluster.advertise == "172.18.0.7:7100"
        assert node.cluster.name == region and node.cluster.enabled and node.domains == ["example.com"]
        assert node.storage_url.startswith("postgresql://meridian:") and "@pg-eu:5432/" in node.storage_url
        for i in (1, 2):
            gw = loaded[f"{region}-gw{i}"]
            assert isinstance(gw, GatewaySettings)
            assert gw.node_name == f"{region}-gw{i}" and gw.cluster.name == region
            assert gw.gdistrib.local_host == region
            assert gw.gdistrib.connections.advertised_endpoints == [f"{region}-gw{i}:5555"]
            assert gw.cluster.secret == node.cluster.secret and gw.storage_url == node.storage_url
    assert loaded["eu-gw1"].gdistrib.redis.read_url == ""
    assert loaded["us-gw1"].gdistrib.redis.read_url == "redis://redis-us:6379/0"
    # A typo in a config is caught by the same loader (this test can fail).
    bad = tmp_path / "bad.toml"
    bad.write_text(mounted_config(services["eu-node"]).read_text().replace("[cluster]", "[cluster]\nport_ = 1"))
    with pytest.raises(Exception, match="cluster.port_: unknown setting"):
        load_settings(bad, NodeSettings)


def test_the_certificate_job_writes_what_the_configs_name(
        compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = compose["services"]["certs"]
    assert job["entrypoint"] == ["meridian-make-certs"] and job["command"][0] == "/certs"
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, str(COMPOSE / "make_certs.py"), str(certs), *job["command"][1:]],
                   check=True, capture_output=True, timeout=60)
    for key in [k for k in os.environ if k.startswith("MERIDIAN_")]:
        monkeypatch.delenv(key)

    def local(path: Path | None) -> Path:
        assert path is not None and str(path).startswith("/certs/"), path
        return certs / path.name

    for name, service in meridian_services(compose).items():
        env = container_env(service, tmp_path, hostname=name)
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            settings = load_settings(mounted_config(service), ROLES[service["command"][0]])
        c2s_context(local(settings.tls.cert_file), local(settings.tls.key_file))
        if isinstance(settings, GatewaySettings):
            c = settings.gdistrib.connections
            server_context(local(c.cert_file), local(c.key_file), local(c.ca_file))
            client_context(local(c.cert_file), local(c.key_file), local(c.ca_file))
            from cryptography import x509
            cert = x509.load_pem_x509_certificate(local(c.cert_file).read_bytes())
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName)
            host = c.advertised_endpoints[0].rsplit(":", 1)[0]
            assert host in sans and host in compose["services"], (host, sans)  # the name peers dial and check


def test_docker_compose_itself_accepts_the_file() -> None:
    """Where a Compose CLI is installed (Debian's docker-compose, or the v2 plugin), it parses,
    interpolates and validates the file too (``config`` needs no Docker daemon)."""
    import shutil

    if shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                   timeout=30).returncode == 0:
        cmd = ["docker", "compose"]
    else:
        pytest.skip("no docker-compose / docker compose CLI (apt-get install docker-compose)")
    res = subprocess.run([*cmd, "-f", str(COMPOSE / "docker-compose.yml"), "config", "-q"], capture_output=True,
                         text=True, timeout=120, cwd=COMPOSE)
    assert res.returncode == 0, res.stderr
