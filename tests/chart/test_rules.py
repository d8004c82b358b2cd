"""monitoring/rules.yaml: checked and unit-tested by promtool, every alert shown both firing and
silent, annotated, and explained in docs/runbook.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "rules.yaml"
RULES_TEST = REPO / "monitoring" / "rules_test.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"

REQUIRED_ALERTS = {
    "GravenQuorumLost",
    "GravenQuorumAtRisk",
    "GravenMemberDown",
    "GravenMembersAbsent",
    "GravenDecisionLatencyHigh",
    "GravenConflictStorm",
    "GravenCommitLatencyHigh",
    "GravenConfigChangeStuck",
    "GravenClusterNotAvailable",
}
RUNBOOK_SUBSECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation")


def _alerts() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def _runbook_sections() -> dict[str, str]:
    """Level-2 sections of the runbook: anchor -> body."""
    text = RUNBOOK.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {_github_anchor(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def test_promtool_check_rules(promtool):
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in proc.stdout


def test_promtool_unit_tests(promtool):
    proc = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_required_alerts_exist():
    assert set(_alerts()) >= REQUIRED_ALERTS


@pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS))
def test_alert_is_labelled_and_annotated(name):
    alert = _alerts()[name]
    assert alert["labels"]["severity"] in {"critical", "warning"}
    ann = alert["annotations"]
    assert ann["summary"].strip()
    assert ann["description"].strip()
    assert ann["runbook_url"] == f"docs/runbook.md#{name.lower()}"
    assert re.fullmatch(r"\d+[smh]", alert["for"]), "every alert waits before firing"


def test_durations_asked_for():
    alerts = _alerts()
    assert alerts["GravenClusterNotAvailable"]["for"] == "15m"
    assert alerts["GravenQuorumLost"]["labels"]["severity"] == "critical"


def test_rule_expressions_use_only_contract_metrics(chart_tools):
    allowed = chart_tools.scraped_names()
    for name, alert in _alerts().items():
        names = chart_tools.metric_names(alert["expr"])
        assert names, name
        assert not names - allowed, f"{name}: {sorted(names - allowed)} not in the contract"


def test_every_alert_is_unit_tested_firing_and_silent():
    doc = yaml.safe_load(RULES_TEST.read_text())
    assert doc["rule_files"] == ["rules.yaml"]
    firing, silent = set(), set()
    for group in doc["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), f"never shown firing: {sorted(alerts - firing)}"
    assert alerts - silent == set(), f"never shown silent: {sorted(alerts - silent)}"


@pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS))
def test_runbook_has_a_section_per_alert(name):
    sections = _runbook_sections()
    anchor = _alerts()[name]["annotations"]["runbook_url"].split("#", 1)[1]
    assert anchor in sections, f"docs/runbook.md has no '## {name}' section"
    body = sections[anchor]
    for sub in RUNBOOK_SUBSECTIONS:
        assert re.search(rf"^### {sub}\b", body, flags=re.M), f"{name}: no '### {sub}'"
    assert "kubectl" in body or "graven" in body, f"{name}: no command to run"


def test_runbook_has_no_section_for_an_unknown_alert():
    alerts = {a.lower() for a in _alerts()}
    stale = {s for s in _runbook_sections() if s.startswith("graven") and s not in alerts}
    assert not stale, stale
