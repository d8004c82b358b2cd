"""The real kopf operator against the test apiserver: what a user sees through the API."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import pytest
import yaml

from tests.operator.apiclient import Api, ApiError, condition, wait_for
from tests.operator.harness import NAMESPACE, Cluster, OperatorRunner, demo, monitoring_crd
from tests.operator.kubelet import FakeKubelet

NS = NAMESPACE
CHILDREN = [
    ("ConfigMap", "demo-config"),
    ("Service", "demo-peers"),
    ("Service", "demo"),
    ("StatefulSet", "demo"),
    ("PodDisruptionBudget", "demo"),
]
CHILD_PATHS = ("/configmaps", "/services", "/statefulsets", "/poddisruptionbudgets")


def cluster(api: Api, name: str = "demo") -> dict:
    obj = api.get("ConsensusCluster", NS, name)
    assert obj is not None
    return obj


def wait_cluster(api: Api, test: Callable[[dict], bool], what: str, timeout: float = 15) -> dict:
    def probe() -> dict | None:
        obj = api.get("ConsensusCluster", NS, "demo")
        return obj if obj is not None and test(obj) else None

    return wait_for(probe, timeout=timeout, what=what)


def has_condition(kind: str, status: str, reason: str | None = None) -> Callable[[dict], bool]:
    def test(obj: dict) -> bool:
        c = condition(obj, kind)
        return c.get("status") == status and (reason is None or c.get("reason") == reason)

    return test


def children(api: Api) -> dict[tuple[str, str], dict | None]:
    return {(kind, name): api.get(kind, NS, name) for kind, name in CHILDREN}


def wait_children(api: Api) -> dict[tuple[str, str], dict]:
    found = wait_for(lambda: (c := children(api)) and all(c.values()) and c, what="children")
    return found  # type: ignore[return-value]


def versions(api: Api) -> dict[tuple[str, str], str | None]:
    return {
        k: (v or {}).get("metadata", {}).get("resourceVersion") for k, v in children(api).items()
    }


def child_writes(apiserver: Cluster, since: int) -> list[tuple[str, str]]:
    return [
        (method, path)
        for method, path in apiserver.server.requests()[since:]
        if method in ("POST", "PATCH", "PUT", "DELETE") and any(p in path for p in CHILD_PATHS)
    ]


def events(api: Api, reason: str) -> list[dict]:
    return [e for e in api.events(NS, "demo") if e.get("reason") == reason]


def running(api: Api) -> FakeKubelet:
    wait_children(api)
    kubelet = FakeKubelet(api, NS, "demo")
    kubelet.run()
    wait_cluster(api, lambda o: o["status"].get("phase") == "Ready", "phase Ready")
    return kubelet


def test_create_builds_children_and_reports_status(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    api = apiserver.api
    created = api.create(demo())
    uid = created["metadata"]["uid"]
    found = wait_children(api)
    for obj in found.values():
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("ConsensusCluster", "demo", uid)
        assert owner["controller"] is True
    assert found[("StatefulSet", "demo")]["spec"]["replicas"] == 3
    assert found[("PodDisruptionBudget", "demo")]["spec"]["maxUnavailable"] == 1

    obj = wait_cluster(api, lambda o: o.get("status", {}).get("observedGeneration") == 1, "status")
    st = obj["status"]
    assert (st["phase"], st["readyMembers"], st["layout"], st["tolerates"], st["epoch"]) == (
        "Pending",
        "0/3",
        "paxos",
        1,
        0,
    )
    assert condition(obj, "LayoutValid")["reason"] == "LayoutSafe"
    assert condition(obj, "Available")["status"] == "False"

    FakeKubelet(api, NS, "demo").run()  # pods turn ready one by one: await the end state
    obj = wait_cluster(api, lambda o: o["status"]["readyMembers"] == "3/3", "all ready")
    assert obj["status"]["phase"] == "Ready"
    assert condition(obj, "Available")["reason"] == "QuorumReady"
    assert condition(obj, "Degraded")["status"] == "False"
    # The StatefulSet's status (written by the "controller" after the pods) ends the rollout.
    wait_cluster(api, has_condition("Progressing", "False", "UpToDate"), "rollout done")
    assert wait_for(lambda: events(api, "Created"), what="Created event")


def test_member_failures_flip_available_within_seconds(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    api = apiserver.api
    api.create(demo())
    kubelet = running(api)

    started = time.monotonic()
    kubelet.set_ready(2, False)
    obj = wait_cluster(api, lambda o: o["status"]["phase"] == "Degraded", "one member down")
    assert time.monotonic() - started < 5
    assert condition(obj, "Available")["status"] == "True"
    assert condition(obj, "Degraded")["reason"] == "MembersNotReady"
    assert obj["status"]["readyMembers"] == "2/3"
    assert [m["ready"] for m in obj["status"]["members"]] == [True, True, False]

    kubelet.set_ready(1, False)
    obj = wait_cluster(api, has_condition("Available", "False", "QuorumLost"), "quorum lost")
    assert obj["status"]["phase"] == "Degraded"
    assert condition(obj, "Degraded")["reason"] == "QuorumLost"

    kubelet.set_ready(1, True)
    kubelet.set_ready(2, True)
    wait_cluster(api, lambda o: o["status"]["phase"] == "Ready", "recovered")


def test_update_image_and_resources_rolls_the_statefulset(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    api = apiserver.api
    api.create(demo())
    before = wait_children(api)
    wait_cluster(api, lambda o: o.get("status", {}).get("observedGeneration") == 1, "gen 1")
    resources = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    api.patch(
        "ConsensusCluster", NS, "demo", {"spec": {"image": "graven:0.2.0", "resources": resources}}
    )

    def rolled() -> dict | None:
        sts = api.get("StatefulSet", NS, "demo")
        container = sts["spec"]["template"]["spec"]["containers"][0] if sts else {}
        return sts if container.get("image") == "graven:0.2.0" else None

    sts = wait_for(rolled, what="new image")
    assert sts["spec"]["template"]["spec"]["containers"][0]["resources"] == resources
    assert sts["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "0.2.0"
    obj = wait_cluster(api, lambda o: o["status"]["observedGeneration"] == 2, "gen 2")
    assert all(c["observedGeneration"] == 2 for c in obj["status"]["conditions"])
    # The configuration did not change, so it was not rewritten.
    cm = api.get("ConfigMap", NS, "demo-config")
    assert cm is not None
    same = before[("ConfigMap", "demo-config")]["metadata"]["resourceVersion"]
    assert cm["metadata"]["resourceVersion"] == same


def test_unsafe_layout_is_never_rolled_out(apiserver: Cluster, operator: OperatorRunner) -> None:
    api = apiserver.api
    api.create(demo(quorums={"preset": "flexible", "q1": 1, "q2": 1}))
    obj = wait_cluster(api, has_condition("LayoutValid", "False", "LayoutUnsafe"), "unsafe")
    assert obj["status"]["phase"] == "Failed"
    assert "C2" in condition(obj, "LayoutValid")["message"]
    assert condition(obj, "Progressing")["reason"] == "LayoutRejected"
    (event,) = wait_for(lambda: events(api, "LayoutUnsafe"), what="warning event")
    assert event["type"] == "Warning"
    operator.wait_reconciles(2)  # drift passes reach the same verdict...
    assert len(events(api, "LayoutUnsafe")) == 1  # ...and do not repeat the warning
    assert all(v is None for v in children(api).values())

    api.patch(
        "ConsensusCluster",
        NS,
        "demo",
        {"spec": {"quorums": {"preset": "paxos", "q1": None, "q2": None}}},
    )
    wait_children(api)
    obj = wait_cluster(api, has_condition("LayoutValid", "True"), "fixed layout")
    assert obj["status"]["phase"] == "Pending"


def test_unsafe_change_leaves_the_running_cluster_untouched(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    api = apiserver.api
    api.create(demo())
    running(api)
    before = versions(api)
    mark = len(apiserver.server.requests())
    api.patch(
        "ConsensusCluster",
        NS,
        "demo",
        {"spec": {"quorums": {"preset": "flexible", "q1": 1, "q2": 1}}},
    )
    obj = wait_cluster(api, has_condition("LayoutValid", "False", "LayoutUnsafe"), "unsafe")
    assert obj["status"]["phase"] == "Ready"  # the running members are fine
    assert obj["status"]["layout"] == "paxos"  # and still run the old layout
    operator.wait_reconciles()
    assert child_writes(apiserver, mark) == []
    assert versions(api) == before


def test_too_many_removals_are_refused_and_other_edits_still_apply(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    """5 -> 2 members at once would let the fence depend on members being removed: refused,
    with the reason in status and one event; the image edit made with it still rolls out."""
    api = apiserver.api
    api.create(demo(replicas=5))
    running(api)
    api.patch("ConsensusCluster", NS, "demo", {"spec": {"replicas": 2, "image": "graven:9.9"}})
    obj = wait_cluster(
        api, has_condition("Progressing", "False", "ReconfigurationRefused"), "refusal"
    )
    message = condition(obj, "Progressing")["message"]
    assert "spec.replicas 5 -> 2: refused" in message
    assert "removing demo-2, demo-3, demo-4 at once is more than epoch 0 tolerates" in message
    assert obj["status"]["observedGeneration"] == 2
    assert condition(obj, "Ready")["reason"] == "ReconfigurationRefused"
    sts = api.get("StatefulSet", NS, "demo")
    assert sts is not None
    assert sts["spec"]["replicas"] == 5  # the members are left as they are
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "graven:9.9"
    assert api.get("ConfigMap", NS, "demo-reconfiguration") is None  # nothing started
    operator.wait_reconciles()
    (event,) = events(api, "ReconfigurationRefused")  # not repeated by the drift timer
    assert event["type"] == "Warning"

    api.patch("ConsensusCluster", NS, "demo", {"spec": {"replicas": 5}})
    obj = wait_cluster(
        api,
        lambda o: condition(o, "Progressing").get("reason") != "ReconfigurationRefused",
        "refusal cleared",
    )
    assert obj["status"]["observedGeneration"] == 3


def test_a_layout_change_is_recorded_and_published_before_any_member_is_asked(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    """paxos -> fast: the master's record first, then both epochs in the members' document;
    status, phase and events say so. The members here are not real, so the transition waits
    (and says why) at publish: a member that does not serve the epochs yet."""
    api = apiserver.api
    api.create(demo())
    running(api)
    before = api.get("StatefulSet", NS, "demo")
    assert before is not None
    api.patch("ConsensusCluster", NS, "demo", {"spec": {"quorums": {"preset": "fast"}}})
    obj = wait_cluster(api, lambda o: o["status"].get("phase") == "Reconfiguring", "phase")
    progressing = condition(obj, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "Reconfiguring")
    assert condition(obj, "Ready")["status"] == "False"
    rec = obj["status"]["reconfiguration"]
    assert (rec["fromEpoch"], rec["toEpoch"], rec["step"]) == (0, 1, "publish")
    assert rec["startTime"].endswith("Z")
    record = api.get("ConfigMap", NS, "demo-reconfiguration")
    assert record is not None
    assert record["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    cm = api.get("ConfigMap", NS, "demo-config")
    assert cm is not None
    doc = yaml.safe_load(cm["data"]["cluster.yaml"])
    assert (doc["epoch"], doc["quorums"]) == (1, {"preset": "fast"})
    assert [p["epoch"] for p in doc["previous"]] == [0]
    sts = api.get("StatefulSet", NS, "demo")
    assert sts is not None
    hash_key = "graven.dev/config-hash"
    meta = sts["spec"]["template"]["metadata"]["annotations"]
    # the members get the document pushed (no restart): the pod template stays the same
    assert meta[hash_key] == before["spec"]["template"]["metadata"]["annotations"][hash_key]
    # the StatefulSet keeps naming the epoch that stays valid until retirement
    assert sts["metadata"]["annotations"]["graven.dev/epoch"] == "0"
    obj = wait_cluster(
        api,
        lambda o: (
            "waiting for members to serve epochs [0, 1]"
            in o["status"]["reconfiguration"].get("lastError", "")
        ),
        "the reason it waits",
        timeout=30,
    )
    assert obj["status"]["epoch"] == 0
    (event,) = events(api, "ReconfigurationStarted")
    assert 'spec.quorums {"preset":"paxos"} -> {"preset":"fast"}: epoch 0 -> 1' in event["message"]


def test_drift_is_repaired(apiserver: Cluster, operator: OperatorRunner) -> None:
    api = apiserver.api
    api.create(demo())
    wait_children(api)
    api.delete("Service", NS, "demo")
    api.patch(
        "StatefulSet",
        NS,
        "demo",
        {"spec": {"template": {"spec": {"containers": [{"name": "graven", "image": "evil"}]}}}},
    )
    wait_for(lambda: api.get("Service", NS, "demo"), what="client service back")

    def repaired() -> bool:
        sts = api.get("StatefulSet", NS, "demo") or {}
        container = sts["spec"]["template"]["spec"]["containers"][0]
        return container["image"] == "graven:0.1.0" and "readinessProbe" in container

    wait_for(repaired, what="StatefulSet template repaired")
    assert wait_for(lambda: events(api, "Recreated"), what="Recreated event")
    assert wait_for(lambda: events(api, "Updated"), what="Updated event")


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_delete_cleans_up_children_and_volumes_per_retention(
    apiserver: Cluster, operator: OperatorRunner, policy: str
) -> None:
    api = apiserver.api
    api.create(demo(storage={"retention": {"whenDeleted": policy}}))
    running(api)
    claims = [c["metadata"]["name"] for c in api.list("PersistentVolumeClaim", NS)]
    assert sorted(claims) == ["data-demo-0", "data-demo-1", "data-demo-2"]
    api.delete("ConsensusCluster", NS, "demo")
    wait_for(lambda: api.get("ConsensusCluster", NS, "demo") is None, what="cluster deleted")
    assert all(v is None for v in children(api).values())
    left = [c["metadata"]["name"] for c in api.list("PersistentVolumeClaim", NS)]
    assert len(left) == (3 if policy == "Retain" else 0)


def scraped(url: str) -> dict[str, float]:
    """The graven_cluster_* samples of demo in the operator's /metrics, by metric name."""
    with urllib.request.urlopen(url, timeout=5) as rsp:
        text = rsp.read().decode()
    labels = f'{{cluster="demo",namespace="{NS}"}}'
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(labels)
        if rest and name.startswith("graven_cluster_"):
            out[name] = float(rest)
    return out


def test_metrics_endpoint_reports_availability_until_the_cluster_is_deleted(
    apiserver: Cluster, crd: dict
) -> None:
    api = apiserver.api
    runner = OperatorRunner(serve_metrics=True).start()
    try:
        api.create(demo())
        wait_children(api)
        wait_for(lambda: scraped(runner.metrics_url), what="series of demo")
        assert scraped(runner.metrics_url)["graven_cluster_available"] == 0.0  # no pod yet
        kubelet = running(api)
        wait_for(
            lambda: scraped(runner.metrics_url).get("graven_cluster_available") == 1.0,
            what="available in /metrics",
        )
        assert scraped(runner.metrics_url) == {
            "graven_cluster_available": 1.0,
            "graven_cluster_reconfiguring": 0.0,
            "graven_cluster_reconfiguration_step": 0.0,
            "graven_cluster_reconfiguration_keys_carried": 0.0,
            "graven_cluster_reconfiguration_keys_total": 0.0,
            "graven_cluster_members_ready": 3.0,
        }
        kubelet.set_ready(1, False)
        kubelet.set_ready(2, False)
        wait_for(
            lambda: scraped(runner.metrics_url).get("graven_cluster_available") == 0.0,
            what="quorum loss in /metrics",
        )
        assert scraped(runner.metrics_url)["graven_cluster_members_ready"] == 1.0

        api.delete("ConsensusCluster", NS, "demo")
        wait_for(lambda: api.get("ConsensusCluster", NS, "demo") is None, what="cluster deleted")
        # A deleted cluster leaves no series behind (a stale 0 would keep an alert firing).
        wait_for(lambda: scraped(runner.metrics_url) == {}, what="series removed")
    finally:
        runner.stop()


def test_operator_restart_creates_no_duplicates(apiserver: Cluster, crd: dict) -> None:
    api = apiserver.api
    first = OperatorRunner().start()
    try:
        api.create(demo())
        running(api)
    finally:
        first.stop()
    # A change made while no operator runs is picked up on restart.
    api.patch("ConsensusCluster", NS, "demo", {"spec": {"image": "graven:0.3.0"}})
    mark = len(apiserver.server.requests())
    second = OperatorRunner().start()
    try:

        def updated() -> bool:
            sts = api.get("StatefulSet", NS, "demo") or {}
            return sts["spec"]["template"]["spec"]["containers"][0]["image"] == "graven:0.3.0"

        wait_for(updated, what="change applied after restart")
        second.wait_reconciles()
        posts = [p for m, p in apiserver.server.requests()[mark:] if m == "POST"]
        assert not [p for p in posts if any(c in p for c in CHILD_PATHS)]
        instance = "app.kubernetes.io/instance=demo"
        assert len(api.list("StatefulSet", NS, instance)) == 1
        assert len(api.list("Service", NS, instance)) == 2
        assert len(api.list("ConfigMap", NS, instance)) == 1
        assert cluster(api)["status"]["observedGeneration"] == 2
    finally:
        second.stop()


def test_paused_cluster_is_reported_but_not_changed(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    api = apiserver.api
    api.create(demo())
    kubelet = running(api)
    before = versions(api)
    api.patch("ConsensusCluster", NS, "demo", {"spec": {"paused": True, "image": "graven:9"}})
    wait_cluster(api, has_condition("Progressing", "False", "Paused"), "paused")
    mark = len(apiserver.server.requests())
    kubelet.set_ready(0, False)  # still reported while paused
    wait_cluster(api, lambda o: o["status"]["readyMembers"] == "2/3", "health while paused")
    api.delete("Service", NS, "demo")  # and not repaired while paused
    wait_for(
        lambda: (
            apiserver.server.requests()[mark:].count(
                ("GET", "/apis/apps/v1/namespaces/default/statefulsets/demo")
            )
            >= 6
        ),
        what="several health checks",
    )
    assert api.get("Service", NS, "demo") is None
    sts = api.get("StatefulSet", NS, "demo")
    assert sts is not None
    assert sts["metadata"]["resourceVersion"] == before[("StatefulSet", "demo")]

    api.patch("ConsensusCluster", NS, "demo", {"spec": {"paused": False}})
    wait_for(lambda: api.get("Service", NS, "demo"), what="unpaused: service recreated")
    sts = wait_for(
        lambda: (
            (s := api.get("StatefulSet", NS, "demo"))
            and s["spec"]["template"]["spec"]["containers"][0]["image"] == "graven:9"
            and s
        ),
        what="unpaused: image applied",
    )
    assert sts


def test_monitoring_objects_appear_with_their_crds_and_go_when_unwanted(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    api = apiserver.api
    api.create(demo(monitoring={"serviceMonitor": True, "prometheusRule": True}))
    wait_children(api)
    operator.wait_reconciles(1)
    assert not [p for m, p in apiserver.server.requests() if "servicemonitors" in p]

    api.create(monitoring_crd("ServiceMonitor", "servicemonitors"))
    api.create(monitoring_crd("PrometheusRule", "prometheusrules"))
    monitor = wait_for(lambda: api.get("ServiceMonitor", NS, "demo"), what="ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    rule = wait_for(lambda: api.get("PrometheusRule", NS, "demo"), what="PrometheusRule")
    alerts = {r["alert"] for r in rule["spec"]["groups"][0]["rules"]}
    assert {"GravenMemberDown", "GravenQuorumLost"} <= alerts

    api.patch("ConsensusCluster", NS, "demo", {"spec": {"monitoring": {"prometheusRule": False}}})
    wait_for(lambda: api.get("PrometheusRule", NS, "demo") is None, what="rule removed")
    assert api.get("ServiceMonitor", NS, "demo") is not None


def test_objects_it_did_not_create_are_not_taken_over(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    api = apiserver.api
    mine = api.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "demo-config", "namespace": NS},
            "data": {"cluster.yaml": "someone else's"},
        }
    )
    api.create(demo())
    obj = wait_cluster(api, has_condition("Progressing", "False", "ApplyFailed"), "conflict")
    assert "ConfigMap/demo-config" in condition(obj, "Progressing")["message"]
    cm = api.get("ConfigMap", NS, "demo-config")
    assert cm is not None
    assert cm["data"] == mine["data"]
    assert cm["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]


def test_schema_refuses_bad_specs_before_the_operator_sees_them(
    apiserver: Cluster, crd: dict
) -> None:
    with pytest.raises(ApiError) as err:
        apiserver.api.create(demo(replicas=0))
    assert err.value.status == 422
    assert "replicas" in str(err.value.body)


def test_a_child_the_apiserver_refuses_is_reported(
    apiserver: Cluster, operator: OperatorRunner
) -> None:
    """spec.affinity passes through unchecked by the CRD; the apiserver refuses the pods."""
    api = apiserver.api
    api.create(demo(affinity={"nodeAffinity": {"preferredSomewhere": True}}))
    obj = wait_cluster(api, has_condition("Progressing", "False", "ApplyFailed"), "refused")
    assert "422" in condition(obj, "Progressing")["message"]
    assert condition(obj, "LayoutValid")["status"] == "True"  # not the layout's fault
    assert api.get("StatefulSet", NS, "demo") is None
    (event,) = wait_for(lambda: events(api, "ApplyFailed"), what="warning")
    assert "StatefulSet" in event["message"]

    api.patch("ConsensusCluster", NS, "demo", {"spec": {"affinity": None}})
    wait_for(lambda: api.get("StatefulSet", NS, "demo"), what="fixed spec applied")
