"""values.schema.json: helm refuses bad values at template/install time, accepts good ones, and
every value is typed and documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "graven-operator"

# (values, a fragment helm's error message must contain)
BAD_VALUES = {
    "unknown-top-level-key": ({"replica": 2}, "replica"),
    "no-replicas": ({"replicas": 0}, "replicas"),
    "typo-in-nested-key": ({"metrics": {"serviceMonitr": {"enabled": True}}}, "serviceMonitr"),
    "watchNamespaces-not-a-list": ({"watchNamespaces": "team-a"}, "watchNamespaces"),
    "watchNamespaces-invalid-name": ({"watchNamespaces": ["Team_A"]}, "watchNamespaces/0"),
    "watchNamespaces-glob": ({"watchNamespaces": ["team-*"]}, "watchNamespaces/0"),
    "watchNamespaces-duplicate": ({"watchNamespaces": ["a", "a"]}, "watchNamespaces"),
    "pullPolicy-enum": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "digest-format": ({"image": {"digest": "latest"}}, "digest"),
    "empty-repository": ({"image": {"repository": ""}}, "repository"),
    "port-out-of-range": ({"metrics": {"port": 70000}}, "port"),
    "port-as-string": ({"operator": {"healthPort": "8080"}}, "healthPort"),
    "boolean-as-string": ({"prometheusRule": {"enabled": "yes"}}, "enabled"),
    "bad-duration": ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "interval"),
    "bad-quantity": ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
    "unknown-resource": ({"resources": {"limits": {"gpu": 1}}}, "gpu"),
    "runbook-url-not-http": ({"prometheusRule": {"runbookBaseURL": "docs/runbook"}}, "runbook"),
    "label-value-not-string": ({"dashboard": {"labels": {"grafana_dashboard": 1}}}, "labels"),
    "extraEnv-without-name": ({"operator": {"extraEnv": [{"value": "x"}]}}, "extraEnv"),
    "negative-grace-period": ({"terminationGracePeriodSeconds": -1}, "terminationGrace"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_helm_rejects_bad_values(helm_chart, case):
    values, fragment = BAD_VALUES[case]
    proc = helm_chart.run("template", "g", str(CHART), values=values)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert "schema" in proc.stderr, proc.stderr
    assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_fail_install_too(helm_chart, case):
    values, _ = BAD_VALUES[case]
    proc = helm_chart.run("install", "g", str(CHART), "--dry-run=client", values=values)
    assert proc.returncode != 0
    assert "schema" in proc.stderr


def test_defaults_satisfy_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


def _leaves(tree, prefix=""):
    """Dotted paths of values.yaml; empty maps/lists and scalars are leaves."""
    if (
        isinstance(tree, dict)
        and tree
        and prefix not in {"resources", "podSecurityContext", "securityContext", "dashboard.labels"}
    ):
        for key, sub in tree.items():
            yield from _leaves(sub, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_every_value_is_typed_in_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _leaves(values):
        node = schema
        for part in path.split("."):
            assert "properties" in node and part in node["properties"], f"{path} not in schema"
            node = node["properties"][part]


def test_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", readme, flags=re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in _leaves(values) if p not in documented]
    assert not missing, f"values missing from README.md's table: {missing}"
    stale = [p for p in documented if p not in set(_leaves(values))]
    assert not stale, f"README.md documents values that do not exist: {stale}"
