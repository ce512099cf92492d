"""docker/prometheus.yml and docker/alerts.yml pass promtool; every alert has unit tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from promtool_run import promtool as run_promtool

from .support import DASHBOARD, DOCKER, alert_rule_exprs, dashboard_exprs, load_yaml

pytestmark = pytest.mark.unit

REQUIRED_ALERTS = {"GloroAbstainRateHigh", "GloroHigh5xxRate", "GloroQueueSaturated", "GloroP99LatencyHigh"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return run_promtool(*args, cwd=DOCKER)


def test_check_config() -> None:
    run = promtool("check", "config", "prometheus.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_check_rules() -> None:
    run = promtool("check", "rules", "alerts.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_rule_unit_tests() -> None:
    run = promtool("test", "rules", "alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests bite: with the abstain alert's threshold raised tenfold they fail."""
    rules = (DOCKER / "alerts.yml").read_text()
    assert rules.count("> 3 * gloro:abstain_ratio:rate1d") == 1
    (tmp_path / "alerts.yml").write_text(rules.replace("> 3 * gloro:abstain_ratio", "> 30 * gloro:abstain_ratio"))
    shutil.copy(DOCKER / "alerts_test.yml", tmp_path)
    run = run_promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert run.returncode != 0 and "GloroAbstainRateHigh" in run.stdout + run.stderr


def test_required_alerts_exist_and_each_alert_is_unit_tested() -> None:
    alerts = {
        rule["alert"]
        for group in load_yaml(DOCKER / "alerts.yml")["groups"]
        for rule in group["rules"] if "alert" in rule
    }
    assert REQUIRED_ALERTS <= alerts
    tested = {
        case["alertname"]
        for test in load_yaml(DOCKER / "alerts_test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert alerts <= tested, alerts - tested


def test_prometheus_loads_the_rules_file() -> None:
    config = load_yaml(DOCKER / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "gloro-serve" in jobs
    # the alerts select the scrape job by this name
    assert 'up{job="gloro-serve"}' in alert_rule_exprs()["GloroServerDown"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every Grafana query (Grafana's variables replaced by values)."""
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "1m").replace("$model", ".*")}
        for i, (_, e) in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = promtool("check", "rules", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    # and promtool does reject broken PromQL
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(a[5m])"}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0
