"""The rendered PrometheusRule is valid for Prometheus and its alerts fire when they should
(`promtool check rules` and `promtool test rules` on synthetic `up` series)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from graven.operator import render

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def rules_file(tmp_path: Path, replicas: int, tolerates: int) -> tuple[Path, dict]:
    rule = render.prometheus_rule("demo", "ns", replicas, tolerates)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))  # a PrometheusRule's spec is a rule file
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    return path, alerts


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("replicas", "tolerates"), [(3, 1), (5, 2), (1, 0)])
def test_rules_are_valid(tmp_path: Path, replicas: int, tolerates: int) -> None:
    path, _ = rules_file(tmp_path, replicas, tolerates)
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def series(pod: str, values: str) -> dict:
    return {"series": f'up{{namespace="ns", job="demo-peers", pod="{pod}"}}', "values": values}


def expected(alert: dict, **labels: str) -> dict:
    annotations = {
        k: v.replace("{{ $labels.pod }}", labels.get("pod", ""))
        for k, v in alert["annotations"].items()
    }
    return {"exp_labels": {**labels, **alert["labels"]}, "exp_annotations": annotations}


def test_alerts_fire_on_member_and_quorum_loss(tmp_path: Path) -> None:
    path, alerts = rules_file(tmp_path, replicas=3, tolerates=1)
    member = {"namespace": "ns", "job": "demo-peers"}
    tests = {
        "rule_files": [str(path)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                # demo-2 dies at minute 2, demo-1 at minute 10.
                "input_series": [
                    series("demo-0", "1x20"),
                    series("demo-1", "1x9 0x11"),
                    series("demo-2", "1x1 0x19"),
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "GravenMemberDown", "exp_alerts": []},
                    {
                        "eval_time": "8m",
                        "alertname": "GravenMemberDown",
                        "exp_alerts": [
                            expected(alerts["GravenMemberDown"], pod="demo-2", **member)
                        ],
                    },
                    {
                        "eval_time": "8m",
                        "alertname": "GravenQuorumAtRisk",
                        "exp_alerts": [expected(alerts["GravenQuorumAtRisk"])],
                    },
                    {"eval_time": "8m", "alertname": "GravenQuorumLost", "exp_alerts": []},
                    {
                        "eval_time": "12m",
                        "alertname": "GravenQuorumLost",
                        "exp_alerts": [expected(alerts["GravenQuorumLost"])],
                    },
                    {"eval_time": "12m", "alertname": "GravenMembersAbsent", "exp_alerts": []},
                ],
            },
            {
                "interval": "1m",
                "input_series": [],  # nothing scraped at all
                "alert_rule_test": [
                    {
                        "eval_time": "11m",
                        "alertname": "GravenMembersAbsent",
                        "exp_alerts": [expected(alerts["GravenMembersAbsent"], **member)],
                    }
                ],
            },
        ],
    }
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    done = promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr
