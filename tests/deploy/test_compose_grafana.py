"""docker/compose.yaml parses and points at files that exist; Grafana is provisioned coherently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from server.settings import ServerSettings

from .support import DASHBOARD, DOCKER, DOCKERFILES, REPO, dashboard_exprs, load_yaml, series_names

pytestmark = pytest.mark.unit

COMPOSE = DOCKER / "compose.yaml"


def compose() -> dict:
    return load_yaml(COMPOSE)


def bind_mounts(service: dict) -> dict[str, Path]:
    """container path -> host path, for the bind mounts (named volumes skipped)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (DOCKER / source).resolve()
    return out


def test_compose_services_and_build() -> None:
    doc = compose()
    assert {"gloro-serve", "prometheus", "grafana"} <= set(doc["services"])
    build = doc["services"]["gloro-serve"]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).is_file()
    assert "8000:8000" in doc["services"]["gloro-serve"]["ports"]


def test_compose_bind_mounts_exist() -> None:
    doc = compose()
    mounts = [(name, target, host) for name, svc in doc["services"].items() for target, host in bind_mounts(svc).items()]
    assert len(mounts) >= 4
    for name, target, host in mounts:
        assert host.exists(), f"{name}: {host} (mounted at {target}) does not exist"
    named = {spec.split(":")[0] for svc in doc["services"].values() for spec in svc.get("volumes", [])
             if not spec.startswith((".", "/"))}
    assert named <= set(doc.get("volumes", {})), "every named volume is declared"


def test_prometheus_in_compose_finds_its_rules() -> None:
    mounts = bind_mounts(compose()["services"]["prometheus"])
    config_path = "/etc/prometheus/prometheus.yml"
    assert mounts[config_path] == DOCKER / "prometheus.yml"
    for rule_file in load_yaml(DOCKER / "prometheus.yml")["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert mounts[in_container] == DOCKER / rule_file
    target = load_yaml(DOCKER / "prometheus.yml")["scrape_configs"][0]["dns_sd_configs"][0]
    assert target["names"] == ["gloro-serve"] and target["port"] == 8000


def test_grafana_provisioning() -> None:
    svc = compose()["services"]["grafana"]
    mounts = bind_mounts(svc)
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(provisioning / "dashboards" / "gloro-serve.yml")["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / DASHBOARD.name).read_text() == DASHBOARD.read_text()
    home = svc["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[str(Path(home).parent)] / Path(home).name == DASHBOARD
    # every panel queries the provisioned datasource
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_dashboard_covers_what_an_operator_needs() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"]), "panel ids are unique"
    by_metric: dict[str, list[str]] = {}
    for title, expr in dashboard_exprs(dash):
        for name in series_names(expr):
            by_metric.setdefault(name, []).append(expr)
    assert any("rate(gloro_requests_total" in e for e in by_metric["gloro_requests_total"])  # request rate
    latency = by_metric["gloro_request_duration_seconds_bucket"]
    assert {q for q in ("0.5", "0.9", "0.99") if any(f"histogram_quantile({q}," in e for e in latency)} == {"0.5", "0.9", "0.99"}
    assert "gloro_batch_size_bucket" in by_metric and "gloro_batch_size_sum" in by_metric
    assert "gloro_queue_depth" in by_metric
    assert any('outcome="abstained"' in e for e in by_metric["gloro_predictions_total"])
    assert any("by (outcome)" in e for e in by_metric["gloro_predictions_total"])  # certified vs abstained
    heatmaps = [p for p in dash["panels"] if p["type"] == "heatmap"]
    assert any("gloro_certified_radius_bucket" in t["expr"] for p in heatmaps for t in p["targets"])


def test_gloro_env_names_are_server_settings() -> None:
    """A GLORO_* variable that the server does not know would be silently ignored."""
    fields = {f"GLORO_{name.upper()}" for name in ServerSettings.model_fields}
    texts = [p.read_text() for p in (*DOCKERFILES, COMPOSE, REPO / "docs" / "deploy.md") if p.exists()]
    used = {name for text in texts for name in re.findall(r"\bGLORO_[A-Z_]+[A-Z]\b", text)}
    assert used, "no GLORO_ variable found: the scan is broken"
    assert used <= fields, used - fields


def test_deploy_guide_documents_every_setting() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    documented = set(re.findall(r"^\| `(GLORO_[A-Z_]+)` \|", guide, flags=re.M))
    assert documented == {f"GLORO_{name.upper()}" for name in ServerSettings.model_fields}
