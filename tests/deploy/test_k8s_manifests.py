"""docker/k8s: schema-valid for the Kubernetes versions we claim, and wired together."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest

from server.settings import ServerSettings

from .support import K8S, k8s_manifests, load_yaml

pytestmark = pytest.mark.unit

# policy/v1 PDBs and autoscaling/v2 HPAs are in every release from 1.25 on.
VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def resources() -> dict[tuple[str, str], dict]:
    out = {}
    for path in k8s_manifests():
        doc = load_yaml(path)
        out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env(deployment: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(deployment).get("env", [])}


def deployments() -> list[dict]:
    return [doc for (kind, _), doc in resources().items() if kind == "Deployment"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_schema_valid(path: Path, version: str) -> None:
    kubernetes_validate.validate(load_yaml(path), version, strict=True)


def test_validator_rejects_a_broken_deployment() -> None:
    """The validator is live: a misspelt field and a wrong type are both caught."""
    doc = copy.deepcopy(resources()[("Deployment", "gloro-serve")])
    doc["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
    doc = copy.deepcopy(resources()[("Deployment", "gloro-serve")])
    doc["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kustomization", sorted(K8S.rglob("kustomization.yaml")), ids=str)
def test_kustomization_lists_every_resource_file(kustomization: Path) -> None:
    listed = set(load_yaml(kustomization)["resources"])
    present = {p.name for p in kustomization.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["metadata"]["name"])
def test_deployment_probes_and_shutdown(deployment: dict) -> None:
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert selects(deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    port = ports["http"]
    assert str(port) == env(deployment)["GLORO_PORT"]
    assert str(ports["grpc"]) == env(deployment)["GLORO_GRPC_PORT"]
    assert env(deployment)["GLORO_HOST"] == "0.0.0.0"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["port"] == "http"
    # the grace period covers the preStop pause plus the server's drain
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env(deployment).get("GLORO_DRAIN_S") or ServerSettings.model_fields["drain_s"].default)
    assert spec["terminationGracePeriodSeconds"] > drain + float(pre_stop[1])
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["metadata"]["name"])
def test_deployment_security(deployment: dict) -> None:
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    c = container(deployment)["securityContext"]
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"]["drop"] == ["ALL"]
    # with a read-only root, /tmp must be a volume
    mounts = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
    assert "/tmp" in mounts


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["metadata"]["name"])
def test_model_repository_from_a_volume(deployment: dict) -> None:
    c = container(deployment)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == env(deployment)["GLORO_REPOSITORY"])
    assert mount["readOnly"] is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in resources()


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["metadata"]["name"])
def test_env_names_are_server_settings(deployment: dict) -> None:
    fields = {f"GLORO_{name.upper()}" for name in ServerSettings.model_fields}
    names = {n for n in env(deployment) if n.startswith("GLORO_")}
    assert names <= fields, names - fields


def test_each_service_and_pdb_selects_exactly_one_deployment() -> None:
    res = resources()
    for (kind, name), doc in res.items():
        if kind not in ("Service", "PodDisruptionBudget"):
            continue
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        matched = [d["metadata"]["name"] for d in deployments()
                   if selects(selector, d["spec"]["template"]["metadata"]["labels"])]
        assert len(matched) == 1, (kind, name, matched)
        if kind == "Service":
            target = res[("Deployment", matched[0])]
            named = {p["name"] for p in container(target)["ports"]}
            assert {port["targetPort"] for port in doc["spec"]["ports"]} <= named, (name, named)


def test_grpc_reaches_every_pod_by_a_headless_service() -> None:
    """kube-proxy balances connections, and a gRPC client sends every call down one: only a name that
    resolves to each pod lets the client spread its calls (docs/deploy.md)."""
    service = resources()[("Service", "gloro-serve-grpc")]
    assert service["spec"]["clusterIP"] == "None"
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "grpc" and port["appProtocol"] == "kubernetes.io/h2c"


def test_hpa_scales_the_cpu_deployment() -> None:
    hpa = resources()[("HorizontalPodAutoscaler", "gloro-serve")]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "gloro-serve")
    assert ("Deployment", ref["name"]) in resources()
    pdb = resources()[("PodDisruptionBudget", "gloro-serve")]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain must be able to evict"
    # CPU utilisation is measured against requests: the container must request CPU
    assert container(resources()[("Deployment", "gloro-serve")])["resources"]["requests"]["cpu"]


def test_gpu_variant() -> None:
    gpu = resources()[("Deployment", "gloro-serve-gpu")]
    c = container(gpu)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert env(gpu)["GLORO_DEVICE"] == "cuda"
    assert c["image"].endswith(":cuda")
    cpu = container(resources()[("Deployment", "gloro-serve")])
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
