"""The dashboard and the alert rules query series that a real gloro-serve exports.

Starts `python -m server serve` with the shipped model, sends a certified and an abstained
prediction, scrapes /metrics, and checks every gloro_* name, label and label value that
docker/grafana and docker/alerts.yml use against the scrape.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import (
    DASHBOARD,
    REPO,
    alert_rule_exprs,
    dashboard_exprs,
    free_port,
    label_matchers,
    mnist_test_pngs,
    predict,
    series_names,
    wait_ready,
)

pytestmark = pytest.mark.e2e

TARGET_LABELS = {"job", "instance"}  # added by Prometheus, not by the server


@pytest.fixture(scope="module")
def scrape() -> Iterator[dict[str, dict[str, set[str]]]]:
    """sample name -> label name -> values seen, from a real server's /metrics."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, timeout_s=60)
        (png, _), = mnist_test_pngs(1)
        predict(base, [png])
        answer = predict(base, [png], epsilon=1000.0)  # no MNIST certificate reaches 1000
        assert answer["predictions"][0]["certified"] is False
        text = httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    samples: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = samples.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    yield samples


def queries() -> list[tuple[str, str]]:
    """(where, expr) for every dashboard query and every rule, recording rules inlined by name."""
    out = [(f"dashboard panel {title!r}", expr) for title, expr in dashboard_exprs(json.loads(DASHBOARD.read_text()))]
    out += [(f"rule {name}", expr) for name, expr in alert_rule_exprs().items()]
    return out


def test_every_queried_series_is_exported(scrape: dict[str, dict[str, set[str]]]) -> None:
    recorded = set(alert_rule_exprs())
    missing = [
        (where, name)
        for where, expr in queries()
        for name in series_names(expr)
        if name not in scrape and name not in recorded
    ]
    assert not missing, missing


def test_every_label_matcher_names_an_exported_label(scrape: dict[str, dict[str, set[str]]]) -> None:
    checked = 0
    for where, expr in queries():
        for metric, label, value in label_matchers(expr):
            assert label in scrape[metric] or label in TARGET_LABELS, (where, metric, label)
            if label == "outcome":  # a closed vocabulary: certified | abstained
                assert value in scrape[metric]["outcome"], (where, value)
            if label == "status":
                assert all(re.fullmatch(r"\d{3}", s) for s in scrape[metric]["status"])
                assert re.fullmatch(value, "503") or re.fullmatch(value, "200"), (where, value)
            if label == "route":  # route templates the server really reports
                assert any(re.fullmatch(value, r) for r in scrape[metric]["route"]), (where, value)
            checked += 1
    assert checked >= 10, "the matcher scan found too little: it is broken"


def test_grouping_labels_exist(scrape: dict[str, dict[str, set[str]]]) -> None:
    for where, expr in queries():
        metrics = [n for n in series_names(expr) if n in scrape]
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in TARGET_LABELS or any(label in scrape[m] for m in metrics), (where, label)
