"""What the operator renders for security: TLS wiring of the pods, the ServiceMonitor's TLS,
and a NetworkPolicy that admits exactly the intended paths (checked path by path with a small
evaluator of NetworkPolicy semantics, and strictly against the Kubernetes schema)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kubernetes_validate
import pytest

from graven.node.cluster.spec import SpecError, parse
from graven.operator import render

NS = "team-a"


def objs(raw: dict) -> dict[str, dict]:
    spec = parse(raw)
    caps = render.Capabilities(service_monitor=True, prometheus_rule=True)
    return {o["kind"]: o for o in render.render_all("demo", NS, spec, 1, caps)}


# -- a NetworkPolicy evaluator (ingress, the subset the operator renders) --------------------


def _labels_match(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # nothing else is rendered
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_admits(peer: Mapping[str, Any], src: dict, policy_ns: str) -> bool:
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_sel is None:  # podSelector alone: pods of the policy's own namespace
        return src["namespace"] == policy_ns and _labels_match(pod_sel or {}, src["labels"])
    ns_labels = {"kubernetes.io/metadata.name": src["namespace"]}
    return _labels_match(ns_sel, ns_labels) and _labels_match(pod_sel or {}, src["labels"])


def admitted(policy: dict, src: dict, port: int) -> bool:
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and port not in ports:
            continue
        if any(_peer_admits(peer, src, policy["metadata"]["namespace"]) for peer in rule["from"]):
            return True
    return False


MEMBER = {"namespace": NS, "labels": {"app.kubernetes.io/name": "graven",
                                      "app.kubernetes.io/instance": "demo"}}  # fmt: skip
OTHER_CLUSTER = {"namespace": NS, "labels": {"app.kubernetes.io/name": "graven",
                                             "app.kubernetes.io/instance": "other"}}  # fmt: skip
APP_SAME_NS = {"namespace": NS, "labels": {"app": "web"}}
APP_OTHER_NS = {"namespace": "team-b", "labels": {"app": "web"}}
PROMETHEUS = {"namespace": "monitoring", "labels": {"app": "prometheus"}}
MEMBER_ELSEWHERE = {"namespace": "team-b", "labels": MEMBER["labels"]}


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        (MEMBER, True),
        (OTHER_CLUSTER, True),  # a pod of this namespace: the default client rule
        (APP_SAME_NS, True),
        (APP_OTHER_NS, False),
        (PROMETHEUS, True),
        (MEMBER_ELSEWHERE, False),  # same labels, wrong namespace
    ],
)
def test_default_network_policy_paths(source: dict, allowed: bool) -> None:
    policy = objs({})["NetworkPolicy"]
    kubernetes_validate.validate(policy, "1.33.0", strict=True)
    assert policy["spec"]["podSelector"] == {"matchLabels": MEMBER["labels"]}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert admitted(policy, source, 7100) is allowed
    assert not admitted(policy, source, 22)  # no other port, from anyone


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        (MEMBER, True),
        (OTHER_CLUSTER, False),
        (APP_SAME_NS, True),
        (APP_OTHER_NS, False),
        ({"namespace": "metrics", "labels": {}}, True),
        (PROMETHEUS, False),  # the monitoring namespace was moved to "metrics"
    ],
)
def test_network_policy_follows_the_spec(source: dict, allowed: bool) -> None:
    raw = {
        "security": {
            "networkPolicy": {
                "clients": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                "metricsNamespace": "metrics",
            }
        }
    }
    policy = objs(raw)["NetworkPolicy"]
    kubernetes_validate.validate(policy, "1.33.0", strict=True)
    assert admitted(policy, source, 7100) is allowed


OPERATOR_LABELS = {
    "app.kubernetes.io/component": "operator",
    "app.kubernetes.io/part-of": "graven",
    "app.kubernetes.io/name": "graven-operator",
}
OPERATOR = {"namespace": "graven-system", "labels": OPERATOR_LABELS}
OPERATOR_ELSEWHERE = {"namespace": "team-b", "labels": OPERATOR["labels"]}
OTHER_POD_OF_OPERATOR_NS = {"namespace": "graven-system", "labels": {"app": "web"}}


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        (OPERATOR, True),  # it pushes configurations and probes the members
        (OPERATOR_ELSEWHERE, False),  # same labels, another namespace
        (OTHER_POD_OF_OPERATOR_NS, False),
        (APP_OTHER_NS, False),
        (MEMBER, True),
    ],
)
def test_network_policy_admits_the_operator_of_its_namespace(source: dict, allowed: bool) -> None:
    spec = parse({})
    policy = render.network_policy("demo", NS, spec, operator_namespace="graven-system")
    kubernetes_validate.validate(policy, "1.33.0", strict=True)
    assert admitted(policy, source, 7100) is allowed
    assert not admitted(policy, source, 22)
    # an operator outside the cluster (no namespace known): no rule for it
    assert not admitted(render.network_policy("demo", NS, spec), OPERATOR, 7100)


def test_network_policy_evaluator_can_fail() -> None:
    """The evaluator above is what the path tests rest on: an open policy admits strangers."""
    policy = objs({})["NetworkPolicy"]
    policy["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})
    assert admitted(policy, APP_OTHER_NS, 7100)


def test_network_policy_can_be_switched_off() -> None:
    assert "NetworkPolicy" not in objs({"security": {"networkPolicy": {"enabled": False}}})


def test_tls_wiring_of_the_pods() -> None:
    rendered = objs(
        {"security": {"clientTokensSecret": "demo-tokens"}, "monitoring": {"serviceMonitor": True}}
    )
    sts, cm = rendered["StatefulSet"], rendered["ConfigMap"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "https://demo-0.demo-peers.team-a.svc:7100" in cm["data"]["cluster.yaml"]
    assert container["command"][-2:] == ["--tokens", "/etc/graven-tokens/tokens.yaml"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # the CA Secret contributes only the trust bundle: its key never reaches a pod
    assert volumes["ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert volumes["tls"]["secret"]["secretName"] == "demo-tls"
    assert volumes["tokens"]["secret"]["secretName"] == "demo-tokens"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    kubernetes_validate.validate(sts, "1.33.0", strict=True)
    endpoint = rendered["ServiceMonitor"]["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["keySecret"] == {"name": "demo-tls", "key": "metrics.key"}


def test_tls_off_renders_plain_http() -> None:
    rendered = objs({"security": {"tls": False}, "monitoring": {"serviceMonitor": True}})
    (container,) = rendered["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert "--tls-ca" not in container["command"]
    assert "http://demo-0" in rendered["ConfigMap"]["data"]["cluster.yaml"]
    assert "tlsConfig" not in rendered["ServiceMonitor"]["spec"]["endpoints"][0]


def test_tokens_need_tls() -> None:
    with pytest.raises(SpecError):
        parse({"security": {"tls": False, "clientTokensSecret": "x"}})
