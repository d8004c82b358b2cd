"""The operator's NetworkPolicy, enforced on the real Kubernetes of `make kube`.

The bridge CNI of that cluster enforces no policy; kube-router's network policy controller
(module v2.1.0, started by tools/kube/up.sh as a firewall only) does, with iptables and ipset in
the cluster's network namespace. What is shown, with real pods opening real TCP connections to
the members' port (one port serves peers, clients and metrics, so the rules are by source):
with the default security, a pod of another namespace cannot connect to any member, neither at
its pod IP nor through the client Service, not even wearing the members' labels; a pod of the
cluster's namespace, one of the monitoring namespace and the operator's pod can; the members
still reach one another (a proposal decides). Then the spec moves the client rule to the other
namespace: the pod there connects, the one of the cluster's namespace no longer does, and the
members still decide. The first check waits (bounded) for the firewall to catch up; without
enforcement it times out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubeenv import NS, OPERATOR_NS, Kubectl, wait_for
from test_e2e import READY_TIMEOUT, example, service_url, token_secret

from graven.node.security.identity import WRITE
from graven.operator import names

NAME = "np"  # the cluster
TOKENS = "np-tokens"
OTHER_NS = "graven-np-other"  # a namespace the default policy does not admit
MONITORING_NS = "monitoring"  # spec.security.networkPolicy.metricsNamespace's default
ENFORCED_TIMEOUT = 60  # seconds for kube-router to program a new or changed policy
CLIENT_LABELS = {"app": "np-client"}

# Run in a pod: connect to each (host, port) once and say what happened. A refusal is
# kube-router's REJECT (icmp-port-unreachable); a timeout would be a DROP.
PROBE = """
import json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=3).close()
        out[host] = "connected"
    except OSError as exc:
        out[host] = type(exc).__name__
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Source:
    namespace: str
    pod: str


CLIENT = Source(NS, "np-client")  # a pod of the cluster's namespace
STRANGER = Source(OTHER_NS, "np-stranger")  # same labels, another namespace
LOOKALIKE = Source(OTHER_NS, "np-lookalike")  # the members' labels, another namespace
PROMETHEUS = Source(MONITORING_NS, "np-prometheus")


def cluster() -> dict:
    """examples/cluster.yaml (three members: a decision needs member-to-member traffic)."""
    doc = example()
    doc["metadata"] = {"name": NAME}
    doc["spec"]["storage"] = {"size": "1Gi", "retention": {"whenDeleted": "Delete"}}
    doc["spec"]["security"] = {"clientTokensSecret": TOKENS}
    return doc


def client_pod(source: Source, labels: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": source.pod, "namespace": source.namespace, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "probe",
                    "image": "graven:0.1.0",  # the image `make kube` loaded: it has python
                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                }
            ],
        },
    }


def connect(kubectl: Kubectl, source: Source, hosts: list[str]) -> dict[str, str]:
    """What each host's member port does for a connection from ``source``'s pod."""
    done = kubectl(
        *("exec", "-n", source.namespace, source.pod, "--", "python", "-c", PROBE),
        json.dumps([[h, names.PORT] for h in hosts]),
        timeout=30 + 5 * len(hosts),
    )
    return json.loads(done.stdout)


@dataclass(frozen=True)
class Targets:
    members: list[str]  # pod IPs
    service: str  # the client Service's cluster IP

    @property
    def all(self) -> list[str]:
        return [*self.members, self.service]


@pytest.fixture(scope="module")
def write_token(kubectl: Kubectl, operator: str) -> str:
    return token_secret(kubectl, TOKENS, "np")[WRITE]


@pytest.fixture(scope="module")
def targets(kubectl: Kubectl, operator: str, write_token: str) -> Iterator[Targets]:
    for ns in (OTHER_NS, MONITORING_NS):
        kubectl("create", "namespace", ns, check=False)
    pods = [
        client_pod(CLIENT, CLIENT_LABELS),
        client_pod(STRANGER, CLIENT_LABELS),
        client_pod(LOOKALIKE, names.selector(NAME)),
        client_pod(PROMETHEUS, {"app": "prometheus"}),
    ]
    try:
        for pod in pods:
            kubectl.apply(pod, namespace=pod["metadata"]["namespace"])
        kubectl.apply(cluster())
        for src in (CLIENT, STRANGER, LOOKALIKE, PROMETHEUS):
            kubectl("wait", "-n", src.namespace, "--for=condition=Ready", f"pod/{src.pod}",
                    "--timeout=180s", timeout=200)  # fmt: skip
        done = kubectl(
            *("wait", "-n", NS, "--for=condition=Ready", f"gcc/{NAME}"),
            f"--timeout={READY_TIMEOUT}s",
            check=False,
            timeout=READY_TIMEOUT + 30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        members = kubectl.json("get", "pods", "-n", NS, "-l", f"app.kubernetes.io/instance={NAME}")
        ips = sorted(p["status"]["podIP"] for p in members["items"])
        assert len(ips) == 3, ips
        service = kubectl.json("get", "service", NAME, "-n", NS)["spec"]["clusterIP"]
        yield Targets(ips, service)
    finally:
        kubectl("delete", "gcc", NAME, "-n", NS, "--wait=true", "--timeout=120s", check=False)
        kubectl("delete", "pod", CLIENT.pod, "-n", NS, "--wait=false", check=False)
        for ns in (OTHER_NS, MONITORING_NS):  # gone before a next run creates them again
            kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)


def operator_pod(kubectl: Kubectl) -> Source:
    pods = kubectl.json("get", "pods", "-n", OPERATOR_NS)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert running, pods
    return Source(OPERATOR_NS, running[0]["metadata"]["name"])


def decides(kubectl: Kubectl, token: str, key: str) -> dict:
    """A proposal through the client Service, made in member 0: it decides only if members
    reach one another's peer API (a quorum of two of three)."""
    done = kubectl(
        *("exec", "-n", NS, f"{NAME}-0", "--", "graven", "propose", "--json"),
        *("--timeout", "10", "--endpoint", service_url(NAME)),
        *("--ca", f"{names.CA_DIR}/ca.crt", "--token", token, key, "decided"),
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def settles(kubectl: Kubectl, source: Source, hosts: list[str], outcome: str, what: str) -> None:
    """Wait (bounded) until every host gives ``outcome`` to ``source``: kube-router programs a
    new or changed policy within seconds. On a timeout, say what was seen and the live policy."""
    last: dict[str, str] = {}

    def probe() -> bool:
        nonlocal last
        last = connect(kubectl, source, hosts)
        return set(last.values()) == {outcome}

    try:
        wait_for(probe, ENFORCED_TIMEOUT, what, interval=2)
    except AssertionError as exc:
        live = kubectl("get", "networkpolicy", "-n", NS, "-o", "yaml", check=False).stdout
        raise AssertionError(f"{exc}\nlast from {source}: {last}\nlive policies:\n{live}") from None


def test_the_default_network_policy_admits_members_namespace_monitoring_and_operator_only(
    kubectl: Kubectl, targets: Targets, write_token: str
) -> None:
    # kube-router programs the policy within seconds of the pods and the policy appearing
    settles(
        kubectl,
        STRANGER,
        targets.all,
        "ConnectionRefusedError",
        "the NetworkPolicy to refuse a pod of another namespace",
    )
    for stranger in (STRANGER, LOOKALIKE):
        result = connect(kubectl, stranger, targets.all)
        assert set(result.values()) == {"ConnectionRefusedError"}, (stranger, result)
    for admitted in (CLIENT, PROMETHEUS, operator_pod(kubectl)):
        result = connect(kubectl, admitted, targets.all)
        assert set(result.values()) == {"connected"}, (admitted, result)
    assert decides(kubectl, write_token, "np/default") == {
        "key": "np/default",
        "value": "decided",
        "won": True,
    }


def test_the_spec_moves_the_client_rule_and_the_firewall_follows(
    kubectl: Kubectl, targets: Targets, write_token: str
) -> None:
    """The positive control: the same pod of another namespace connects once the spec admits
    it, so its refusal above came from the policy and nothing else."""
    clients = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OTHER_NS}},
            "podSelector": {"matchLabels": CLIENT_LABELS},
        }
    ]
    patch = {"spec": {"security": {"networkPolicy": {"clients": clients}}}}
    kubectl("patch", "gcc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))
    settles(
        kubectl, STRANGER, targets.all, "connected", "the pod of the other namespace to be admitted"
    )
    # the members' labels still open nothing outside the namespace; the cluster's namespace
    # is no longer a client
    for refused in (LOOKALIKE, CLIENT):
        result = connect(kubectl, refused, targets.all)
        assert set(result.values()) == {"ConnectionRefusedError"}, (refused, result)
    result = connect(kubectl, operator_pod(kubectl), targets.all)
    assert set(result.values()) == {"connected"}, result
    assert decides(kubectl, write_token, "np/moved")["won"] is True
