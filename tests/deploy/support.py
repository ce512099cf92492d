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


def mnist_test_pngs(count: int) -> list[tuple[bytes, int]]:
    """The first `count` MNIST test images as PNG bytes, with their labels (IDX gz files)."""
    import gzip
    import io

    import numpy as np
    from PIL import Image

    images = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert images[:4] == b"\x00\x00\x08\x03" and labels[:4] == b"\x00\x00\x08\x01", "not IDX files"
    pixels = np.frombuffer(images, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    out = []
    for image, label in zip(pixels[:count], labels[8 : 8 + count]):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        out.append((buffer.getvalue(), int(label)))
    return out


def wait_ready(base_url: str, process, timeout_s: float) -> None:
    """Poll /readyz until 200; fail at once if the process died, or after timeout_s."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the server exited with {process.returncode} before it was ready:\n{output}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{base_url}/readyz not ready after {timeout_s} s")


def predict(base_url: str, pngs: list[bytes], **params: object) -> dict:
    import httpx

    files = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    response = httpx.post(f"{base_url}/v1/predict", files=files, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()
