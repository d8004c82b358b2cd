"""The per-cluster PrometheusRule is monitoring/rules.yaml limited to one cluster: the same
alerts (names, thresholds, annotations, runbook links), valid for Prometheus (`promtool check
rules`), and firing exactly where the shared rules fire for that cluster and nowhere else
(monitoring/rules_test.yaml replayed by `promtool test rules` once per cluster it mentions)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from graven.operator import render
from tests.operator.harness import ROOT

RULES = ROOT / "monitoring" / "rules.yaml"
RULES_TEST = ROOT / "monitoring" / "rules_test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "REAL TOOL MISSING, TEST NOT RUN: promtool (tools/install-prometheus.sh)"
        if os.environ.get("GRAVEN_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def shared_alerts() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def rendered_alerts(name: str, namespace: str) -> dict[str, dict]:
    spec = render.prometheus_rule(name, namespace)["spec"]
    return {r["alert"]: r for g in spec["groups"] for r in g["rules"]}


def write_rule(tmp_path: Path, name: str, namespace: str) -> Path:
    path = tmp_path / "rules.yaml"
    # A PrometheusRule's spec is a Prometheus rule file.
    path.write_text(yaml.safe_dump(render.prometheus_rule(name, namespace)["spec"]))
    return path


def test_the_rule_carries_the_shared_alerts_unchanged_but_the_expression() -> None:
    shared = shared_alerts()
    mine = rendered_alerts("demo", "ns")
    assert set(mine) == set(shared)
    for alert, rule in mine.items():
        assert {**rule, "expr": None} == {**shared[alert], "expr": None}, alert
        assert rule["annotations"]["runbook_url"].startswith("docs/runbook.md#")
        assert shared[alert]["expr"].strip() in rule["expr"]
        assert rule["expr"].rstrip().endswith('"cluster", "demo", "", "")')


def test_the_rule_is_valid_for_prometheus(promtool: str, tmp_path: Path) -> None:
    path = write_rule(tmp_path, "demo", "ns")
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(shared_alerts())} rules found" in done.stdout


def _clusters_in_tests() -> list[tuple[str, str]]:
    found = set()
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            for alert in case.get("exp_alerts") or []:
                labels = alert["exp_labels"]
                found.add((labels["namespace"], labels["cluster"]))
    return sorted(found)


def _only(tests: dict, namespace: str, name: str) -> tuple[dict, set[str], int]:
    """rules_test.yaml expecting only this cluster's alerts: (tests, alerts left, dropped)."""
    tests = copy.deepcopy(tests)
    kept: set[str] = set()
    dropped = 0
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            alerts = case.get("exp_alerts") or []
            mine = [
                a
                for a in alerts
                if (a["exp_labels"]["namespace"], a["exp_labels"]["cluster"]) == (namespace, name)
            ]
            dropped += len(alerts) - len(mine)
            kept |= {case["alertname"]} if mine else set()
            case["exp_alerts"] = mine
    return tests, kept, dropped


def test_each_cluster_gets_its_share_of_the_shared_alerts(promtool: str, tmp_path: Path) -> None:
    shared = yaml.safe_load(RULES_TEST.read_text())
    clusters = _clusters_in_tests()
    assert len(clusters) >= 2, "rules_test.yaml should exercise several clusters"
    fired: set[str] = set()
    dropped_total = 0
    for namespace, name in clusters:
        work = tmp_path / f"{namespace}-{name}"
        work.mkdir()
        write_rule(work, name, namespace)
        tests, kept, dropped = _only(shared, namespace, name)
        fired |= kept
        dropped_total += dropped
        (work / "rules_test.yaml").write_text(yaml.safe_dump(tests))
        done = subprocess.run(
            [promtool, "test", "rules", str(work / "rules_test.yaml")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{namespace}/{name}:\n{done.stdout}{done.stderr}"
    # Meaningful only if some other cluster's alert was expected NOT to fire somewhere, and
    # every alert was seen firing for its own cluster.
    assert dropped_total > 0
    assert fired == set(shared_alerts())
