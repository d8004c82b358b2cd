"""The dashboard and the alert rules against a REAL Prometheus scraping a live 3-member cluster.

test_dashboard.py runs every query on synthetic series; this runs them on what real `graven node`
processes export, as scraped by the Debian prometheus binary (tools/install-prometheus.sh): a
renamed metric or label, or a panel that stays empty on a healthy cluster, fails here.

Everything listens on 127.0.0.1. Prometheus scrapes the members every second with the static
label namespace="default" (a ServiceMonitor's target label); `cluster` needs no static label,
the dashboard's variable reads it from graven_node_info{cluster}, which every node exports.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from graven.operator import render
from tests.support.cluster import HOST, LocalCluster, free_ports

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "monitoring" / "dashboard.json"
RULES = REPO / "monitoring" / "rules.yaml"
NAMESPACE = "default"
JOB = "graven"
MEMBERS = 3
DECISIONS_PER_NODE = 10
READY_TIMEOUT = 15.0  # Prometheus answering /-/ready
SCRAPED_TIMEOUT = 20.0  # every target up, then scraped again after the decisions
SETTLE_TIMEOUT = 5.0  # extra time for a panel whose last target is one scrape behind
POLL = 0.2
STOP_GRACE = 10.0

# Grafana's built-in interval variables for a "last 5 minutes" view of a data source whose
# scrape interval is left at Grafana's default (15s): $__rate_interval is then
# max($__interval + 15s, 4 * 15s) = 1m, the value docs/monitoring.md tells users to use.
BUILTINS = {
    "__interval": "15s",
    "__interval_ms": "15000",
    "__rate_interval": "1m",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
# $var, ${var}, ${var:format} and the deprecated [[var]]
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"^label_values\((?:(.*),\s*)?(\w+)\)$", re.S)


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        message = (
            "REAL TOOL MISSING, TEST NOT RUN: prometheus not on PATH "
            "(run tools/install-prometheus.sh: Debian's prometheus package)"
        )
        if os.environ.get("GRAVEN_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


# --- plain HTTP (synchronous, like tests.support.cluster) ---------------------------------------


def _request(
    url: str, method: str = "GET", body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """(status, JSON body); error statuses are returned, not raised (both APIs explain them
    in JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as rsp:
            return rsp.status, json.loads(rsp.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            return exc.code, json.loads(text)
        except ValueError:
            raise AssertionError(f"{method} {url}: HTTP {exc.code}: {text[:500]}") from None


def _node(url: str, method: str = "GET", body: Any = None) -> Any:
    status, doc = _request(url, method, body)
    assert status == 200, f"{method} {url}: {status} {doc}"
    return doc


@dataclass
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises AssertionError with Prometheus' error."""
        query = urllib.parse.urlencode(params)
        _, doc = _request(f"{self.url}/api/v1/{path}?{query}")  # 400/422 carry the error
        if doc.get("status") != "success":
            raise AssertionError(f"{doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return data["result"]


def _wait(test: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if test():
            return
        time.sleep(POLL)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


# --- fixtures: the cluster, Prometheus, and a scraped burst of decisions -------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    _prometheus_binary()  # skip before starting anything
    with LocalCluster(tmp_path_factory.mktemp("live"), MEMBERS, {"preset": "paxos"}) as c:
        yield c


@pytest.fixture(scope="module")
def prometheus(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = _prometheus_binary()
    root = tmp_path_factory.mktemp("prometheus")
    targets = [url.removeprefix("http://") for url in cluster.urls]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [{"targets": targets, "labels": {"namespace": NAMESPACE}}],
            }
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    (port,) = free_ports(1)
    log = root / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address={HOST}:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://{HOST}:{port}", log)
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as rsp:
                    return rsp.status == 200
            except OSError:  # not listening yet, or 503 while it replays its (empty) WAL
                return False

        _wait(ready, READY_TIMEOUT, "prometheus /-/ready", log)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_GRACE)


@pytest.fixture(scope="module")
def scraped(cluster: LocalCluster, prometheus: Prometheus) -> Prometheus:
    """Prometheus after it scraped every member before AND after a burst of decisions, so
    rate() over the burst has two samples per member."""

    def all_up() -> bool:
        return len(prometheus.query(f'up{{job="{JOB}"}} == 1')) == MEMBERS

    _wait(all_up, SCRAPED_TIMEOUT, f"{MEMBERS} targets up", prometheus.log)
    for i in range(MEMBERS):  # every node proposes, so every node has decisions to count
        for n in range(DECISIONS_PER_NODE):
            key = f"live/{i}/{n}"
            value = f"value-{n}"
            put = _node(f"{cluster.url(i)}/v1/decisions/{key}", "PUT", {"value": value})
            assert put["value"] == value, put
            got = _node(f"{cluster.url((i + 1) % MEMBERS)}/v1/decisions/{key}")
            assert got["value"] == value, got

    deciding = f'sum by (instance) (rate(graven_decisions_total{{job="{JOB}"}}[1m])) > 0'
    _wait(
        lambda: len(prometheus.query(deciding)) == MEMBERS,
        SCRAPED_TIMEOUT,
        "a non-zero decision rate on every member",
        prometheus.log,
    )
    return prometheus


# --- the dashboard, as Grafana would send it --------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panel_queries() -> list[tuple[str, str]]:
    out = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            walk(p.get("panels", []))  # panels inside collapsed rows
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"{p['title']} [{t.get('refId', '?')}]", t["expr"]))

    walk(_dashboard()["panels"])
    return out


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables; an unknown one fails (it would reach Prometheus verbatim)."""

    def one(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise AssertionError(f"unknown Grafana variable ${name} in {expr}")

    return VARIABLE.sub(one, expr)


def _resolve_variables(prom: Prometheus) -> dict[str, list[str]]:
    """Run each query variable's label_values() the way Grafana does (series API), in order,
    each seeing the variables defined before it selected as "All"."""
    found: dict[str, list[str]] = {}
    selected: dict[str, str] = {}
    for var in _dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = LABEL_VALUES.match(query.strip())
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        match, label = m.groups()
        params = {"match[]": substitute(match, selected)} if match else {}
        found[var["name"]] = prom.api(f"label/{label}/values", **params)
        selected[var["name"]] = var.get("allValue") or ".*"
    return found


def _shows_data(result: list[dict]) -> bool:
    """Grafana draws nothing for no series, nor for series that are all NaN (0/0, quantiles
    of empty histograms)."""
    return any(not math.isnan(float(s["value"][1])) for s in result)


def test_template_variables_find_the_cluster(cluster: LocalCluster, scraped: Prometheus) -> None:
    values = _resolve_variables(scraped)
    assert values["namespace"] == [NAMESPACE]
    assert values["cluster"] == [cluster.cluster]


@pytest.mark.parametrize("selection", ["all", "one-cluster"])
def test_every_panel_shows_data_for_a_healthy_cluster(
    cluster: LocalCluster, scraped: Prometheus, selection: str
) -> None:
    if selection == "all":
        values = {"namespace": ".*", "cluster": ".*"}  # the variables' allValue
    else:
        values = {"namespace": NAMESPACE, "cluster": cluster.cluster}
    queries = [(where, substitute(expr, values)) for where, expr in _panel_queries()]
    assert len(queries) >= 20, "the dashboard lost its panels"

    errors: dict[str, str] = {}
    empty: dict[str, str] = {}

    def check() -> bool:
        empty.clear()
        for where, expr in queries:
            if where in errors:
                continue
            try:
                result = scraped.query(expr)
            except AssertionError as exc:
                errors[where] = f"{exc}\n    {expr}"
                continue
            if not _shows_data(result):
                empty[where] = expr
        return not errors and not empty

    # A panel whose last target was scraped one interval later may need another scrape; a
    # broken query stays broken, so the wait only costs time when the test fails anyway.
    with contextlib.suppress(AssertionError):
        _wait(check, SETTLE_TIMEOUT, "every panel to show data")
    assert not errors, "queries Prometheus refused:\n" + "\n".join(
        f"- {k}: {v}" for k, v in errors.items()
    )
    assert not empty, "panels without data on a healthy cluster:\n" + "\n".join(
        f"- {k}:\n    {v}" for k, v in empty.items()
    )


def _alerts(cluster: LocalCluster) -> list[tuple[str, str, str]]:
    """(group, alert, expr) of monitoring/rules.yaml, and of the operator's per-cluster
    PrometheusRule for this cluster (the same alerts, each limited to it)."""
    doc = yaml.safe_load(RULES.read_text())
    out = [(g["name"], r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]
    spec = render.prometheus_rule(cluster.cluster, NAMESPACE)["spec"]
    for group in spec["groups"]:
        shared = group["name"].removesuffix(f".{NAMESPACE}.{cluster.cluster}")
        out += [(shared, f"{r['alert']} (per cluster)", r["expr"]) for r in group["rules"]]
    return out


def test_every_alert_rule_evaluates_against_live_series(
    cluster: LocalCluster, scraped: Prometheus
) -> None:
    alerts = _alerts(cluster)
    assert len(alerts) >= 2 * 9
    failures = []
    firing = []
    for group, name, expr in alerts:
        try:
            result = scraped.query(expr)
        except AssertionError as exc:
            failures.append(f"- {name}: {exc}")
            continue
        # A healthy cluster (every member up, quorum margin 1) raises no availability alert;
        # the performance alerts depend on this machine's disk, so they are not judged here.
        if group == "graven.quorum" and result:
            firing.append(f"- {name}: {result}")
    assert not failures, "alert expressions Prometheus refused:\n" + "\n".join(failures)
    assert not firing, "quorum alerts firing for a healthy cluster:\n" + "\n".join(firing)
