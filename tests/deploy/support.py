"""Paths and small readers shared by the deployment tests."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
SHARED = REPO.parent / "shared"
MNIST = SHARED / "datasets" / "mnist"
DOCKERFILES = (REPO / "Dockerfile", DOCKER / "Dockerfile.cuda")
DASHBOARD = DOCKER / "grafana" / "dashboards" / "gloro-serve.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_manifests() -> list[Path]:
    """Every Kubernetes resource file under docker/k8s (kustomizations are not resources)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SERIES = re.compile(r"\b(gloro_[a-zA-Z0-9_]+|gloro:[a-zA-Z0-9_:]+)\b")
_SELECTOR = re.compile(r"\b(gloro_[a-zA-Z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')


def series_names(expr: str) -> set[str]:
    """The gloro_* metrics and gloro:* recording rules a PromQL expression reads."""
    return set(_SERIES.findall(expr))


def label_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) for every label matcher written on a gloro_* selector."""
    return [
        (metric, label, value)
        for metric, inner in _SELECTOR.findall(expr)
        for label, value in _MATCHER.findall(inner)
    ]


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows included."""
    out = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append((inner["title"], target["expr"]))
    return out


def alert_rule_exprs() -> dict[str, str]:
    """name -> expr for every recording and alerting rule of docker/alerts.yml."""
    rules = {}
    for group in load_yaml(DOCKER / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            rules[rule.get("record") or rule["alert"]] = rule["expr"]
    return rules
