"""Shared fixtures for the Helm chart, dashboard, alert-rule and Dockerfile tests.

Real tools only: helm is fetched by tools/fetch-helm.sh (pinned, sha256-checked, cached),
promtool comes from Debian's `prometheus` package (tools/install-prometheus.sh). When a tool
cannot be had, its tests are skipped with the reason; with GRAVEN_REQUIRE_TOOLS=1 they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "graven-operator"
MONITORING = REPO / "monitoring"
RUNBOOK = REPO / "docs" / "runbook.md"

# The metric contract (design/architecture.md, "Observability"): the only series the dashboard
# and the alert rules may use. name -> (type, labels the exporter sets). Prometheus adds
# job/instance/namespace/pod; a histogram `x` is scraped as x_bucket{le}, x_sum and x_count.
METRIC_CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    # node / acceptor
    "graven_register_ops_total": ("counter", ("op", "result")),
    "graven_http_request_duration_seconds": ("histogram", ("route", "method", "status")),
    "graven_commit_duration_seconds": ("histogram", ()),
    "graven_commit_batch_size": ("histogram", ()),
    "graven_stored_keys": ("gauge", ()),
    "graven_fence_watermark": ("gauge", ()),
    "graven_storage_bytes": ("gauge", ()),
    "graven_config_epoch": ("gauge", ()),
    "graven_config_live_epochs": ("gauge", ()),
    "graven_carried_keys_total": ("counter", ()),
    "graven_node_info": ("gauge", ("node", "cluster")),
    "graven_store_failed": ("gauge", ()),
    # proposer / gateway
    "graven_decisions_total": ("counter", ("path",)),
    "graven_decision_duration_seconds": ("histogram", ()),
    "graven_decision_round_trips": ("histogram", ()),
    "graven_decision_register_sets": ("histogram", ()),
    "graven_proposal_conflicts_total": ("counter", ()),
    "graven_proposal_retries_total": ("counter", ()),
    "graven_acceptor_rpc_duration_seconds": ("histogram", ("member",)),
    "graven_proposals_in_flight": ("gauge", ()),
    "graven_member_up": ("gauge", ("member",)),
    "graven_quorum_margin": ("gauge", ()),
    # operator (labels name the ConsensusCluster; scraped with honorLabels)
    "graven_cluster_available": ("gauge", ("namespace", "cluster")),
    "graven_cluster_reconfiguring": ("gauge", ("namespace", "cluster")),
    "graven_cluster_reconfiguration_step": ("gauge", ("namespace", "cluster")),
    "graven_cluster_reconfiguration_keys_carried": ("gauge", ("namespace", "cluster")),
    "graven_cluster_reconfiguration_keys_total": ("gauge", ("namespace", "cluster")),
    "graven_cluster_members_ready": ("gauge", ("namespace", "cluster")),
}

OPERATOR_METRICS = {n for n in METRIC_CONTRACT if n.startswith("graven_cluster_")}
# Series Prometheus itself writes for every scrape target (no exporter involved).
PROMETHEUS_SERIES = {"up"}


def scraped_series_names() -> set[str]:
    """Every series name a scrape of the contract metrics can produce."""
    names: set[str] = set(PROMETHEUS_SERIES)
    for name, (kind, _labels) in METRIC_CONTRACT.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Series names referenced by a PromQL expression (a lexer-level scan, not a parser).

    Strings, label matchers, range/subquery brackets, grouping label lists, numbers and Grafana
    variables are removed first; an identifier followed by "(" is a function or aggregation.
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    s = re.sub(r"\boffset\s+-?(\d+[a-z]+)+", " ", s)
    s = re.sub(r"(?<![\w.])\d+(\.\d*)?([eE][-+]?\d+)?", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("("):
            continue
        if m.group(0).lower() in _PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def tool_missing(reason: str) -> None:
    message = f"REAL TOOL MISSING, TEST NOT RUN: {reason}"
    if os.environ.get("GRAVEN_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm() -> str:
    """Path to the pinned helm binary (downloaded once into the tool cache)."""
    script = REPO / "tools" / "fetch-helm.sh"
    try:
        proc = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        tool_missing("tools/fetch-helm.sh timed out")
    if proc.returncode != 0:
        tool_missing(f"tools/fetch-helm.sh failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        tool_missing("promtool not on PATH: run tools/install-prometheus.sh (Debian prometheus)")
    return path


class Helm:
    """Runs the real helm binary against charts/graven-operator."""

    def __init__(self, binary: str, tmp: Path):
        self.binary = binary
        self.tmp = tmp
        self._cache: dict[str, list[dict]] = {}
        self._n = 0

    def run(self, *args: str, values: dict | None = None) -> subprocess.CompletedProcess:
        cmd = [self.binary, *args]
        if values is not None:
            self._n += 1
            path = self.tmp / f"values-{self._n}.json"
            path.write_text(json.dumps(values))
            cmd += ["--values", str(path)]
        env = {
            **os.environ,
            # Keep helm away from the user's config, cache and any kube context: offline only.
            "HELM_CACHE_HOME": str(self.tmp / "cache"),
            "HELM_CONFIG_HOME": str(self.tmp / "config"),
            "HELM_DATA_HOME": str(self.tmp / "data"),
            "KUBECONFIG": str(self.tmp / "no-kubeconfig"),
        }
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    def template(
        self,
        values: dict | None = None,
        *flags: str,
        release: str = "graven",
        namespace: str = "graven-system",
    ) -> list[dict]:
        key = json.dumps([values, flags, release, namespace], sort_keys=True)
        if key not in self._cache:
            proc = self.run(
                "template", release, str(CHART), "--namespace", namespace, *flags, values=values
            )
            assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
            docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            self._cache[key] = docs
        return self._cache[key]


@pytest.fixture(scope="session")
def helm_chart(helm, tmp_path_factory) -> Helm:
    return Helm(helm, tmp_path_factory.mktemp("helm"))


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


@pytest.fixture(scope="session")
def chart_tools():
    """Helpers for test modules (conftest is not importable under --import-mode=importlib)."""

    class Tools:
        find = staticmethod(find)
        metric_names = staticmethod(promql_metric_names)
        scraped_names = staticmethod(scraped_series_names)
        contract = METRIC_CONTRACT
        operator_metrics = OPERATOR_METRICS

    return Tools
