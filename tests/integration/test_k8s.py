"""compose/k8s is a deployment Kubernetes would accept and that scales without losing clients:

- ``kubectl kustomize`` renders both kustomizations (Debian's ``kubernetes-client``, or any kubectl
  on the PATH; skipped when there is none) and the result is what the files say;
- every object, rendered or as written, passes the official OpenAPI schemas of the Kubernetes
  versions we support, strictly (unknown fields fail), with ``kubernetes-validate`` (the schemas
  bundled in the package, no network); a typo is caught, so the check can fail;
- each container loads its config with the project's own settings loader under the environment
  the pod gives it; the probes, drain, autoscaler, disruption budgets, spread and resources hang
  together with what the node does (its ``/ready`` checks, its stop sequence, its metrics).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster_node.net.c2s_server import LINGER_SECONDS
from cluster_node.settings import NodeSettings, WebSocketSettings, load_settings
from gateway.settings import GatewaySettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
K8S = COMPOSE / "k8s"
MONITORING = K8S / "monitoring"
ROLES: dict[str, type[NodeSettings]] = {"node": NodeSettings, "gateway": GatewaySettings}
# The oldest Kubernetes the manifests are written for (autoscaling/v2 and policy/v1 are older;
# topologySpreadConstraints' matchLabelKeys is beta, on by default, from 1.27) and the newest whose
# schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.27.0", "latest")


def file_objects(directory: Path = K8S, *, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The objects a kustomization lists, with its namespace set (what kustomize does to them)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects = [doc for f in [*kustomization["resources"], *extra]
               for doc in yaml.safe_load_all((directory / f).read_text()) if doc]
    for obj in objects:
        if obj["kind"] != "Namespace":
            obj["metadata"].setdefault("namespace", kustomization["namespace"])
    return objects


def k8s_objects() -> list[dict[str, Any]]:
    """compose/k8s's objects plus the example Secret (not applied by the kustomization)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted(
        [*kustomization["resources"], "secrets.example.yaml", "kustomization.yaml"])
    return file_objects(extra=("secrets.example.yaml",))


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        assert obj["apiVersion"] and obj["metadata"]["name"]
        out.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    return out


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of variables defined earlier in the container's env."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("no kubectl (apt-get install kubernetes-client)")
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    res = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [doc for doc in yaml.safe_load_all(res.stdout) if doc]


def schema_errors(obj: dict[str, Any], version: str) -> str | None:
    """None when ``obj`` passes the Kubernetes ``version`` schema of its kind, strictly; else why."""
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    try:
        kubernetes_validate.validate(obj, latest_version() if version == "latest" else version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}"
    return None


def node_pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Region → the node Deployment."""
    return {d["metadata"]["labels"]["meridian/region"]: d for d in objects
            if d["kind"] == "Deployment" and d["metadata"]["labels"].get("meridian/role") == "node"}


def container_settings(workload: dict[str, Any], objects: list[dict[str, Any]], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch, pod_name: str) -> NodeSettings:
    """The settings the workload's container runs with: its config from the ConfigMap, its env
    (secrets from the example Secret, the downward API as ``pod_name`` / 10.4.0.17)."""
    secrets = {o["metadata"]["name"]: o["stringData"] for o in objects if o["kind"] == "Secret"}
    configs = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = {"metadata.name": pod_name, "status.podIP": "10.4.0.17"}[field]
    args = container["args"]
    target = args[args.index("--config") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == target]
    source = volumes[mount["name"]]["configMap"]["name"]
    path = tmp_path / f"{pod_name}.toml"
    path.write_text(configs[source][mount["subPath"]])
    for key in [k for k in os.environ if k.startswith("MERIDIAN_")]:
        monkeypatch.delenv(key)
    with monkeypatch.context() as m:
        for key, value in env.items():
            if key.startswith("MERIDIAN_"):
                m.setenv(key, value)
        return load_settings(path, ROLES[args[0]])


# -- rendering and schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [K8S, MONITORING], ids=["k8s", "monitoring"])
def test_kubectl_kustomize_renders_what_the_files_say(directory: Path) -> None:
    rendered = render(directory)

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    assert sorted(map(key, rendered)) == sorted(map(key, file_objects(directory)))
    assert {key(o): o for o in rendered} == {key(o): o for o in file_objects(directory)}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_passes_the_kubernetes_schemas(version: str) -> None:
    objects = [*k8s_objects(), *file_objects(MONITORING)]
    if shutil.which("kubectl"):  # and what kustomize made of them, when it is here to ask
        objects += [*render(K8S), *render(MONITORING)]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service",
            "Ingress", "ConfigMap", "Secret", "Namespace"} <= kinds
    errors = [e for o in objects if (e := schema_errors(o, version))]
    assert errors == []


def test_the_schema_check_catches_a_broken_manifest() -> None:
    objects = by_kind(k8s_objects())
    hpa = yaml.safe_load(yaml.safe_dump(objects["HorizontalPodAutoscaler"]["eu-node"]))
    hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilisation"] = 70  # British spelling
    assert schema_errors(hpa, "latest") is not None
    deployment = yaml.safe_load(yaml.safe_dump(objects["Deployment"]["eu-node"]))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "60s"  # a string
    assert schema_errors(deployment, "latest") is not None
    pdb = yaml.safe_load(yaml.safe_dump(objects["PodDisruptionBudget"]["eu-node"]))
    pdb["spec"]["maxUnavaliable"] = 1
    assert schema_errors(pdb, "latest") is not None


def test_regions_are_the_same_manifests_but_for_the_name() -> None:
    eu = (K8S / "region-eu.yaml").read_text()
    assert re.sub(r"\beu\b", "us", eu) == (K8S / "region-us.yaml").read_text()


# -- what runs ------------------------------------------------------------------------------------


def test_nodes_are_a_deployment_gateways_a_statefulset_nothing_on_disk() -> None:
    objects = by_kind(k8s_objects())
    assert sorted(objects["Deployment"]) == ["eu-node", "us-node"]
    assert sorted(objects["StatefulSet"]) == ["eu-gw", "us-gw"]
    for name, workload in [*objects["Deployment"].items(), *objects["StatefulSet"].items()]:
        spec = workload["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        assert "volumeClaimTemplates" not in spec, name  # members keep nothing on disk
        for volume in spec["template"]["spec"]["volumes"]:
            assert "persistentVolumeClaim" not in volume, name
    for sts in objects["StatefulSet"].values():
        assert sts["spec"]["replicas"] == 2
        headless = objects["Service"][sts["spec"]["serviceName"]]  # the pods' DNS names: their certificates
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    for name, deployment in objects["Deployment"].items():
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns the count"
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] == 1  # one drain at a time, new pod ready first
    config = objects["ConfigMap"]["meridian-config"]["data"]
    assert config == {p.name: p.read_text() for p in (COMPOSE / "config").glob("*.toml")}, \
        "compose/k8s/config.yaml must carry compose/config/*.toml unchanged"
    for host in ("pg-eu", "redis-eu", "redis-us"):  # the names the configs use
        assert host in objects["Service"]


def test_containers_load_their_config_with_their_environment(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    objects = k8s_objects()
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        name = workload["metadata"]["name"]
        # A Deployment's pod is <name>-<template hash>-<suffix>, unique among live pods: the node's name.
        pod_name = f"{name}-1" if workload["kind"] == "StatefulSet" else f"{name}-7c9d8f6b5-x2x9z"
        settings = container_settings(workload, objects, tmp_path, monkeypatch, pod_name)
        assert settings.node_name == pod_name and settings.cluster.advertise == "10.4.0.17:7100"
        assert settings.cluster.name == name.split("-")[0] and len(settings.cluster.secret) >= 16
        assert settings.cluster.discovery == "rdbms"  # members meet in the database: no stable names needed
        if isinstance(settings, GatewaySettings):
            host = f"{pod_name}.{workload['spec']['serviceName']}"  # the pod's DNS name in the namespace
            c = settings.gdistrib.connections
            assert c.advertised_endpoints == [f"{host}:5555"]
            assert str(c.cert_file) == f"/certs/{host}.pem" and str(c.key_file) == f"/certs/{host}-key.pem"
            assert settings.gdistrib.local_host == settings.cluster.name


def test_probes_ask_the_admin_port_what_the_node_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness is ``/ready`` (listeners, storage, joined the region), liveness ``/health``, on
    the port and scheme the process's ``[admin]`` section serves."""
    objects = k8s_objects()
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        settings = container_settings(workload, objects, tmp_path, monkeypatch, "p-0")
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["admin"] == settings.admin.port and settings.admin.host == "0.0.0.0"
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health"), ("startupProbe", "/health")):
            get = container[probe]["httpGet"]
            assert get["path"] == path and ports.get(get["port"], get["port"]) == settings.admin.port
            assert get["scheme"] == ("HTTPS" if settings.admin.tls else "HTTP")


def test_a_node_drains_within_its_grace_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """preStop keeps the pod serving while it leaves the Service; SIGTERM then runs the node's stop
    (``cluster_node/wiring.py``): clients kicked with ``<system-shutdown/>`` (LINGER_SECONDS to read
    it, 2 s more to abort), session clean-ups and XEP-0198 hand-overs (``shutdown_timeout``, twice
    at most), leaving the cluster (2 s).  All of it must fit before the SIGKILL."""
    objects = k8s_objects()
    for region, deployment in node_pods(objects).items():
        settings = container_settings(deployment, objects, tmp_path, monkeypatch, f"{region}-node-a-b")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = float(command[1])
        assert pre_stop >= 5  # endpoint removal and the load balancer's next health check
        stop = LINGER_SECONDS + 2.0 + 2 * settings.shutdown_timeout + 2.0
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + stop + 10, (pre_stop, stop)


def test_autoscaler_on_cpu_and_sessions_per_pod_with_slow_scale_down() -> None:
    objects = by_kind(k8s_objects())
    adapter = by_kind(file_objects(MONITORING))["ConfigMap"]["prometheus-adapter"]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    exported = (REPO / "cluster_node" / "api" / "metrics.py").read_text()
    for region, deployment in node_pods(k8s_objects()).items():
        hpa = objects["HorizontalPodAutoscaler"][f"{region}-node"]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": deployment["metadata"]["name"]}
        assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
        metrics = {m["type"]: m for m in hpa["metrics"]}
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        assert metrics["Resource"]["resource"]["target"]["type"] == "Utilization"
        pods = metrics["Pods"]["pods"]
        name = pods["metric"]["name"]
        assert name in served, "the Prometheus Adapter rule serves the metric the autoscaler reads"
        (rule,) = [r for r in rules if r["name"]["as"] == name]
        series = re.match(r"\^?(\w+)\$?", rule["name"]["matches"])
        assert series and f'"{series.group(1)}"' in exported, "the node exports the series"
        assert series.group(1) in rule["seriesQuery"]
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
        assert int(pods["target"]["averageValue"]) > 0
        down = hpa["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 300
        assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"]), "one drain at a time"


def test_disruption_budgets_for_nodes_and_gateways() -> None:
    objects = by_kind(k8s_objects())
    budgets = objects["PodDisruptionBudget"]
    assert sorted(budgets) == ["eu-gw", "eu-node", "us-gw", "us-node"]
    hpas = objects["HorizontalPodAutoscaler"]
    for name, pdb in budgets.items():
        workload = objects["Deployment"].get(name) or objects["StatefulSet"][name]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        least = hpas[name]["spec"]["minReplicas"] if name in hpas else workload["spec"]["replicas"]
        if "maxUnavailable" in pdb["spec"]:
            assert 1 <= pdb["spec"]["maxUnavailable"] < least  # drains possible, never all at once
        else:
            assert 1 <= pdb["spec"]["minAvailable"] < least


def test_pods_spread_across_zones() -> None:
    objects = k8s_objects()
    for workload in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
        spec = workload["spec"]["template"]["spec"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        keys = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
        assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= set(keys)
        for c in keys.values():
            assert c["maxSkew"] == 1 and c["labelSelector"]["matchLabels"].items() <= labels.items()


def test_node_resources_follow_the_measured_memory_per_session() -> None:
    """benchmarks/README.md: ~75 MiB idle, 57 KB per client at worst (WebSocket with TLS in the
    node; 45 KB over TCP), ~1 KB per session of the region in the replicated table.  A pod at the
    autoscaler's sessions target in a region of ten such pods fits its request; twice the target
    (a drained node's clients arriving unevenly) fits its limit."""
    objects = by_kind(k8s_objects())
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}

    def size(q: str) -> int:
        m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", q)
        assert m, q
        return int(m.group(1)) * units[m.group(2)]

    for region, deployment in node_pods(k8s_objects()).items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        resources = container["resources"]
        hpa = objects["HorizontalPodAutoscaler"][f"{region}-node"]["spec"]
        target = int([m for m in hpa["metrics"] if m["type"] == "Pods"][0]["pods"]["target"]["averageValue"])
        region_sessions = 10 * target
        need = 75 * 1024**2 + target * 57_000 + region_sessions * 1_000
        assert size(resources["requests"]["memory"]) >= need
        assert size(resources["limits"]["memory"]) >= need + target * 57_000
        assert "cpu" in resources["requests"] and "cpu" not in resources.get("limits", {})


def test_an_ingress_per_region_routes_browsers_to_its_nodes() -> None:
    objects = by_kind(k8s_objects())
    config = objects["ConfigMap"]["meridian-config"]["data"]
    for region in ("eu", "us"):
        ws = WebSocketSettings(**tomllib.loads(config[f"node-{region}.toml"])["websocket"])
        ingress = objects["Ingress"][f"{region}-web"]
        (rule,) = ingress["spec"]["rules"]
        paths = {p["path"]: p for p in rule["http"]["paths"]}
        assert {"/ws", "/http-bind", "/web", "/.well-known/host-meta", "/.well-known/host-meta.json"} <= set(paths)
        assert paths["/ws"]["pathType"] == "Prefix" and paths["/web"]["pathType"] == "Prefix"
        assert any(rule["host"] in t["hosts"] for t in ingress["spec"]["tls"])
        if ws.tls:  # the controller must speak TLS to the nodes
            assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
        pod = objects["Deployment"][f"{region}-node"]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["MERIDIAN_WEBSOCKET__PUBLIC_URL"] == f"wss://{rule['host']}{ws.path}"
        for p in paths.values():
            backend = p["backend"]["service"]
            service = objects["Service"][backend["name"]]
            assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
            assert service["spec"]["selector"]["meridian/region"] == region
            (sport,) = [sp for sp in service["spec"]["ports"] if sp["name"] == backend["port"]["name"]]
            assert ports[sport["targetPort"]] == ws.port  # reaches the nodes' [websocket] listener
