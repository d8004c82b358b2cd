"""The Graven alert rules, limited to one ConsensusCluster (for its PrometheusRule).

monitoring/rules.yaml is the one source of the alerts; ``rules.yaml`` next to this file is a
byte-identical copy shipped as package data (tools/sync-chart-files.sh writes it, tests/chart
checks it). Every alert there aggregates by (namespace, cluster), so one cluster's share of an
alert is the alert's expression ``and on (namespace, cluster)`` a constant series carrying that
cluster's two labels. The expression itself is never rewritten: names, thresholds, ``for``,
annotations and runbook links stay exactly those of the shared rules.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

import yaml

RULES_FILE = "rules.yaml"


@functools.cache
def _shared() -> dict[str, Any]:
    # Read once per process: the file is part of the installed package, it cannot change.
    text = resources.files(__package__).joinpath(RULES_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def shared_groups() -> list[dict[str, Any]]:
    """The shared rule groups as shipped (a copy: callers may change it)."""
    return copy.deepcopy(_shared()["groups"])


def selector(namespace: str, name: str) -> str:
    """A constant series {namespace=..., cluster=...} 1: what an alert is matched against.
    (label_replace with an empty source label and regex sets a label unconditionally.)"""
    # A JSON string literal is a valid PromQL one (same quotes and backslash escapes).
    ns, cluster = json.dumps(namespace), json.dumps(name)
    with_ns = f'label_replace(vector(1), "namespace", {ns}, "", "")'
    return f'label_replace({with_ns}, "cluster", {cluster}, "", "")'


def scoped(expr: str, namespace: str, name: str) -> str:
    # The shared text verbatim, so it reads (and diffs) like monitoring/rules.yaml.
    return f"(\n{expr.strip()}\n)\nand on (namespace, cluster)\n{selector(namespace, name)}\n"


def cluster_groups(namespace: str, name: str) -> list[dict[str, Any]]:
    """The shared alerting rules, each limited to the cluster ``namespace/name``.

    Recording rules (none today) are left out: a per-cluster copy would write the same series
    once per cluster.
    """
    groups = []
    for group in shared_groups():
        rules = [
            {**rule, "expr": scoped(rule["expr"], namespace, name)}
            for rule in group["rules"]
            if "alert" in rule
        ]
        if rules:
            # Distinct names in Prometheus' rules page; the shared group name leads.
            groups.append({**group, "name": f"{group['name']}.{namespace}.{name}", "rules": rules})
    return groups
