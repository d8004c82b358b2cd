"""monitoring/dashboard.json: Grafana structure, the metric contract, and every query run by
Prometheus' own engine (promtool) against the series of a healthy two-cluster deployment."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "monitoring" / "dashboard.json"

# What the dashboard must show (issue 6): topic -> series one of its panels must query.
REQUIRED_TOPICS = {
    "decisions/s by path": "graven_decisions_total",
    "decision latency": "graven_decision_duration_seconds_bucket",
    "round trips per decision": "graven_decision_round_trips_bucket",
    "conflicts": "graven_proposal_conflicts_total",
    "retries": "graven_proposal_retries_total",
    "member up/down and reachability": "graven_member_up",
    "register ops by member": "graven_register_ops_total",
    "commit (fsync) latency": "graven_commit_duration_seconds_bucket",
    "batch sizes": "graven_commit_batch_size_bucket",
    "configuration epoch": "graven_config_epoch",
    "quorum margin": "graven_quorum_margin",
}

# Grafana variables, as the live test (and Grafana's "All") substitutes them.
ALL = {"$namespace": ".*", "$cluster": ".*", "$__rate_interval": "1m"}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def _queries(d: dict) -> list[tuple[str, str]]:
    return [
        (f"{p['title']} [{t['refId']}]", t["expr"])
        for p in _panels(d)
        if p["type"] != "row"
        for t in p["targets"]
    ]


def _variables(d: dict) -> dict[str, dict]:
    return {v["name"]: v for v in d["templating"]["list"]}


def _substitute(expr: str, values: dict[str, str]) -> str:
    for var in sorted(values, key=len, reverse=True):
        expr = expr.replace(var, values[var])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_dashboard_metadata():
    d = _dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    assert d["uid"] == "graven-overview"
    assert d["title"]
    assert d.get("id") is None  # importable into any Grafana
    assert "graven" in d["tags"]


def test_template_variables():
    variables = _variables(_dashboard())
    assert {"datasource", "namespace", "cluster"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "cluster"):
        v = variables[name]
        assert v["type"] == "query"
        assert v["includeAll"] is True and v["allValue"] == ".*"
        assert v["datasource"]["uid"] == "${datasource}"
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert m, query
        assert m.group(2) == name
        assert re.match(r"graven_node_info\b", m.group(1))
    # Picking a namespace narrows the clusters offered.
    assert "$namespace" in variables["cluster"]["query"]["query"]


def test_every_panel_has_targets():
    d = _dashboard()
    panels = [p for p in _panels(d) if p["type"] != "row"]
    assert len(panels) >= 12
    for p in panels:
        assert p["title"], p
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        targets = p.get("targets") or []
        assert targets, f"panel {p['title']!r} has no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), p["title"]
        for t in targets:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_panel_ids_unique_and_layout_does_not_overlap():
    panels = _panels(_dashboard())
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_queries_use_only_contract_metrics(chart_tools):
    allowed = chart_tools.scraped_names()
    d = _dashboard()
    queries = _queries(d)
    for name in ("namespace", "cluster"):
        q = _variables(d)[name]["query"]["query"]
        queries.append((f"variable {name}", q.removeprefix("label_values(").rsplit(",", 1)[0]))
    for where, expr in queries:
        names = chart_tools.metric_names(expr)
        assert names, f"{where}: no metric found in {expr}"
        unknown = names - allowed
        assert not unknown, f"{where}: {sorted(unknown)} not in the metric contract"


def test_metric_name_scan_sees_what_it_should(chart_tools):
    # The scan above is only as good as this: it must see through PromQL syntax.
    scan = chart_tools.metric_names
    assert scan(
        'histogram_quantile(0.99, sum by (le, x) (rate(foo_bucket{a=~"b|c"}[$__rate_interval])'
        ' * on (job) group_left (node) group by (job, node) (bar{n="1e5"}))) > 1e-3'
    ) == {"foo_bucket", "bar"}
    assert scan("sum(rate(a_total[5m])) / sum(b) and on (x) c offset 5m") == {"a_total", "b", "c"}
    assert scan("up") == {"up"}


def test_queries_filter_by_namespace_and_cluster():
    for where, expr in _queries(_dashboard()):
        assert '$namespace"' in expr and '$cluster"' in expr, where


def test_required_topics_are_on_the_dashboard(chart_tools):
    used = set()
    for _, expr in _queries(_dashboard()):
        used |= chart_tools.metric_names(expr)
    missing = {topic for topic, series in REQUIRED_TOPICS.items() if series not in used}
    assert not missing, f"dashboard lacks: {sorted(missing)}"


def test_dashboard_needs_only_node_series(chart_tools):
    # A cluster started by `graven up` (no operator) must fill every panel.
    for where, expr in _queries(_dashboard()):
        assert not chart_tools.metric_names(expr) & chart_tools.operator_metrics, where


# --- evaluated by Prometheus' engine (promtool) ------------------------------------------


def test_queries_parse_in_prometheus(promtool, tmp_path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": _substitute(expr, ALL)}
                    for i, (_, expr) in enumerate(_queries(_dashboard()))
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


CLUSTERS = {("prod", "alpha"): ["alpha-0", "alpha-1", "alpha-2"], ("dev", "beta"): ["beta-0"]}
BUCKETS = ["0.001", "0.01", "0.1", "1", "+Inf"]


def _healthy_series(contract) -> list[dict]:
    """What Prometheus holds after scraping healthy, busy Graven nodes for a few minutes."""
    series = []

    def add(name, labels, values):
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        series.append({"series": f"{name}{{{inner}}}", "values": values})

    label_values = {
        "op": ["read", "write", "fence"],
        "result": ["ok", "refused"],
        "route": ["/v1/decisions/{key}", "/v1/registers/write"],
        "method": ["PUT"],
        "status": ["200"],
        "path": ["fast", "classic", "recovered", "read"],
    }
    for (namespace, cluster), nodes in CLUSTERS.items():
        for node in nodes:
            target = {"job": cluster, "instance": f"{node}:7070", "namespace": namespace,
                      "pod": node}  # fmt: skip
            for name, (kind, labels) in contract.items():
                if name.startswith("graven_cluster_"):
                    continue  # operator series: not scraped from nodes
                combos = [{}]
                for label in labels:
                    if label == "member":
                        choices = nodes
                    elif label == "node":
                        choices = [node]
                    elif label == "cluster":
                        choices = [cluster]
                    else:
                        choices = label_values[label]
                    combos = [dict(c, **{label: v}) for c in combos for v in choices]
                for combo in combos:
                    labels_ = {**target, **combo}
                    if kind == "counter":
                        add(name, labels_, "0+7x40")
                    elif kind == "gauge":
                        add(name, labels_, "1x40")
                    else:
                        for i, le in enumerate(BUCKETS):
                            add(f"{name}_bucket", {**labels_, "le": le}, f"0+{i + 1}x40")
                        add(f"{name}_sum", labels_, "0+0.5x40")
                        add(f"{name}_count", labels_, f"0+{len(BUCKETS)}x40")
    return series


def test_every_query_returns_series_for_a_healthy_cluster_and_honours_filters(
    promtool, chart_tools, tmp_path
):
    """Each panel query, with "All" selected, returns data; selecting a namespace or cluster
    that does not exist empties it (so the variables really filter every panel)."""
    (tmp_path / "empty_rules.yaml").write_text("groups: []\n")
    tests = []
    queries = _queries(_dashboard())
    none_ns = dict(ALL, **{"$namespace": "no-such-namespace"})
    none_cluster = dict(ALL, **{"$cluster": "no-such-cluster"})
    only_beta = dict(ALL, **{"$namespace": "dev", "$cluster": "beta"})
    expr_tests = []
    for _, expr in queries:
        expr_tests += [
            {"expr": f"count({_substitute(expr, ALL)}) > bool 0", "eval_time": "5m",
             "exp_samples": [{"labels": "{}", "value": 1}]},
            {"expr": f"count({_substitute(expr, only_beta)}) > bool 0", "eval_time": "5m",
             "exp_samples": [{"labels": "{}", "value": 1}]},
            {"expr": _substitute(expr, none_ns), "eval_time": "5m", "exp_samples": []},
            {"expr": _substitute(expr, none_cluster), "eval_time": "5m", "exp_samples": []},
        ]  # fmt: skip
    tests.append(
        {
            "interval": "15s",
            "input_series": _healthy_series(chart_tools.contract),
            "promql_expr_test": expr_tests,
        }
    )
    path = tmp_path / "dashboard_test.yaml"
    path.write_text(
        yaml.safe_dump(
            {"rule_files": ["empty_rules.yaml"], "evaluation_interval": "1m", "tests": tests}
        )
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
