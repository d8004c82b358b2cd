"""End to end: a ConsensusCluster deleted and created again over its retained volumes.

Real `graven node` processes run from the rendered pod template (tests/operator/kubelet.py);
their data directories stand in for the PersistentVolumes and outlive the cluster, as volumes
with ``retention.whenDeleted: Retain`` do. The new cluster must refuse them with a clear status
and event (nothing created), refuse an adoption under another layout, and an explicit adoption
with the same layout must serve every decision the deleted cluster made.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from graven.operator.identity import ANNOTATION_ADOPT, LABEL_INCARNATION
from tests.operator.apiclient import Api, condition, wait_for
from tests.operator.harness import NAMESPACE, Cluster, OperatorRunner, demo
from tests.operator.kubelet import ProcessKubelet
from tests.operator.test_e2e_nodes import MISSING, free_ports

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
NAME = "demo"
KEYS = [f"key-{i}" for i in range(8)]


def manifest(**spec: object) -> dict:
    # about data identity, not security: members reached over plain http (TLS end to end with
    # the operator's certificates: test_e2e_nodes.py)
    return demo(NAMESPACE, **{"security": {"tls": False}, **spec})


def cluster(api: Api) -> dict:
    obj = api.get("ConsensusCluster", NAMESPACE, NAME)
    assert obj is not None
    return obj


def http(method: str, url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as rsp:
        return json.loads(rsp.read())


def run_members(api: Api, kubelet: ProcessKubelet) -> None:
    wait_for(lambda: api.get("StatefulSet", NAMESPACE, NAME), what="StatefulSet")
    kubelet.run(ready=[])
    for i in range(3):
        kubelet.start(i)


def wait_ready(api: Api, kubelet: ProcessKubelet) -> None:
    def ready() -> bool:
        kubelet.sync()
        return cluster(api).get("status", {}).get("phase") == "Ready"

    wait_for(ready, timeout=40, interval=0.2, what="members ready")


def delete_cluster(api: Api, kubelet: ProcessKubelet) -> None:
    """Delete the ConsensusCluster; stop its pods as the garbage collector and kubelet would."""
    api.delete("ConsensusCluster", NAMESPACE, NAME)
    wait_for(lambda: api.get("ConsensusCluster", NAMESPACE, NAME) is None, what="deleted")
    kubelet.stop_all()
    for i in range(3):
        if api.get("Pod", NAMESPACE, f"{NAME}-{i}") is not None:
            api.delete("Pod", NAMESPACE, f"{NAME}-{i}")
    kubelet.ready.clear()


def warnings(api: Api, reason: str) -> list[dict]:
    return [e for e in api.events(NAMESPACE, NAME) if e.get("reason") == reason]


def test_recreated_cluster_refuses_retained_volumes_until_adopted(
    apiserver: Cluster, crd: dict, tmp_path: Path
) -> None:
    api = apiserver.api
    ports = free_ports(3)
    runner = OperatorRunner(
        probe_members=True,
        probe_url=lambda name, ns, member: f"http://127.0.0.1:{ports[member.index]}/readyz",
    ).start()
    kubelet = ProcessKubelet(api, NAMESPACE, NAME, tmp_path, ports)
    try:
        old_uid = api.create(manifest())["metadata"]["uid"]
        run_members(api, kubelet)
        wait_ready(api, kubelet)
        claims = api.list("PersistentVolumeClaim", NAMESPACE)
        assert {c["metadata"]["labels"][LABEL_INCARNATION] for c in claims} == {old_uid}
        decided = {}
        for i, key in enumerate(KEYS):
            url = f"http://127.0.0.1:{ports[i % 3]}/v1/decisions/{key}"
            decided[key] = http("PUT", url, {"value": f"old-{i}"})["value"]

        delete_cluster(api, kubelet)
        assert len(api.list("PersistentVolumeClaim", NAMESPACE)) == 3  # retained

        # The same manifest again: a new incarnation over the old volumes is refused.
        new_uid = api.create(manifest())["metadata"]["uid"]
        assert new_uid != old_uid
        obj = wait_for(
            lambda: (o := cluster(api)).get("status", {}).get("phase") == "Failed" and o,
            what="refusal",
        )
        progressing = condition(obj, "Progressing")
        assert (progressing["status"], progressing["reason"]) == ("False", "RetainedVolumes")
        message = progressing["message"]
        assert f"hold the registers of cluster incarnation {old_uid}" in message
        assert f"this cluster is incarnation {new_uid}" in message
        assert f"kubectl annotate consensuscluster demo {ANNOTATION_ADOPT}={old_uid}" in message
        assert "kubectl delete pvc data-demo-0 data-demo-1 data-demo-2" in message
        (event,) = wait_for(lambda: warnings(api, "RetainedVolumes"), what="event")
        assert event["type"] == "Warning"
        runner.wait_reconciles(2)  # drift passes too: still nothing created, one event
        assert api.get("StatefulSet", NAMESPACE, NAME) is None
        assert api.get("ConfigMap", NAMESPACE, f"{NAME}-config") is None
        assert len(warnings(api, "RetainedVolumes")) == 1

        # Adoption under another layout is refused as well, before anything is created.
        api.patch(
            "ConsensusCluster",
            NAMESPACE,
            NAME,
            {
                "metadata": {"annotations": {ANNOTATION_ADOPT: old_uid}},
                "spec": {"quorums": {"preset": "fast"}},
            },
        )
        wait_for(
            lambda: "adoption refused" in condition(cluster(api), "Progressing")["message"],
            what="adoption under another layout refused",
        )
        message = condition(cluster(api), "Progressing")["message"]
        assert 'written by 3 members with quorums {"preset":"paxos"}' in message
        runner.wait_reconciles(1)
        assert api.get("StatefulSet", NAMESPACE, NAME) is None

        # Back to the layout the volumes were written with: adopted, every decision kept.
        api.patch("ConsensusCluster", NAMESPACE, NAME, {"spec": {"quorums": {"preset": "paxos"}}})
        run_members(api, kubelet)
        cm = api.get("ConfigMap", NAMESPACE, f"{NAME}-config")
        assert cm is not None
        assert yaml.safe_load(cm["data"]["cluster.yaml"])["incarnation"] == old_uid
        wait_ready(api, kubelet)
        assert condition(cluster(api), "Progressing")["reason"] != "RetainedVolumes"
        for i, key in enumerate(KEYS):
            got = http("GET", f"http://127.0.0.1:{ports[(i + 1) % 3]}/v1/decisions/{key}")
            assert got["value"] == decided[key]
        fresh = http("PUT", f"http://127.0.0.1:{ports[0]}/v1/decisions/new", {"value": "x"})
        assert fresh["won"] is True
    finally:
        kubelet.stop_all()
        runner.stop()


def test_members_refuse_another_layout_over_their_data_and_the_status_says_why(
    apiserver: Cluster, crd: dict, tmp_path: Path
) -> None:
    """The StatefulSet and ConfigMap deleted and the spec changed: the operator sees its own
    volumes and renders the new layout at epoch 0; the members refuse it themselves (exit 3),
    and the status names the refusal instead of a generic NotReady."""
    api = apiserver.api
    ports = free_ports(3)
    runner = OperatorRunner(
        probe_members=True,
        probe_url=lambda name, ns, member: f"http://127.0.0.1:{ports[member.index]}/readyz",
    ).start()
    kubelet = ProcessKubelet(api, NAMESPACE, NAME, tmp_path, ports)
    try:
        api.create(manifest())
        run_members(api, kubelet)
        wait_ready(api, kubelet)
        http("PUT", f"http://127.0.0.1:{ports[0]}/v1/decisions/k", {"value": "v"})
        api.patch("ConsensusCluster", NAMESPACE, NAME, {"spec": {"paused": True}})
        wait_for(
            lambda: condition(cluster(api), "Progressing").get("reason") == "Paused",
            what="paused",
        )
        kubelet.stop_all()
        for kind, obj in (("StatefulSet", NAME), ("ConfigMap", f"{NAME}-config")):
            api.delete(kind, NAMESPACE, obj)
        for i in range(3):
            api.delete("Pod", NAMESPACE, f"{NAME}-{i}")
        kubelet.ready.clear()
        api.patch(
            "ConsensusCluster",
            NAMESPACE,
            NAME,
            {"spec": {"paused": False, "quorums": {"preset": "fast"}}},
        )
        run_members(api, kubelet)

        def refused() -> list[dict]:
            kubelet.sync()
            members = cluster(api).get("status", {}).get("members") or []
            found = [m for m in members if m["reason"] == "StartRefused"]
            return found if len(found) == 3 else []

        wait_for(refused, timeout=40, interval=0.2, what="every member's refusal")
        assert set(kubelet.exits.values()) == {3}
        available = condition(cluster(api), "Available")
        assert available["status"] == "False"
        assert "served epoch 0 with other members or another layout" in available["message"]
    finally:
        kubelet.stop_all()
        runner.stop()
