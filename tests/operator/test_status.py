"""Status: Available is quorum math over ready members, and the phase follows the conditions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graven.operator import health, status
from graven.operator.layout import check_layout
from graven.operator.topology import Topology

T0, T1 = "2030-01-01T00:00:00Z", "2030-01-01T00:01:00Z"


def pod(name: str, ready: bool, terminating: bool = False) -> dict:
    meta: dict = {"name": name}
    if terminating:
        meta["deletionTimestamp"] = T0
    cond = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": meta, "status": {"podIP": "10.0.0.1", "conditions": [cond]}}


def observe(quorums: dict, n: int, ready: set[int], **kw: object) -> status.Observed:
    running = Topology(n, quorums)
    verdict = check_layout(quorums, n)
    pods = [pod(f"c-{i}", i in ready) for i in range(n)]
    members = health.members("c", n, pods)
    return status.Observed(n, verdict.summary, running, verdict, members, **kw)  # type: ignore[arg-type]


def cond(st: dict, kind: str) -> dict:
    found = status.find(st["conditions"], kind)
    assert found is not None
    return dict(found)


@pytest.mark.parametrize(
    ("quorums", "n", "ready", "available"),
    [
        ({"preset": "paxos"}, 3, {0, 1, 2}, True),
        ({"preset": "paxos"}, 3, {0, 2}, True),
        ({"preset": "paxos"}, 3, {1}, False),
        ({"preset": "paxos"}, 5, {0, 1, 4}, True),
        ({"preset": "paxos"}, 5, {3, 4}, False),
        # 2x3 grid, phase 1 = a full row, phase 2 = a full column: not a head count.
        ({"preset": "flexible", "grid": "2x3"}, 6, {0, 1, 2, 3}, True),
        ({"preset": "flexible", "grid": "2x3"}, 6, {0, 1, 2, 4}, True),
        ({"preset": "flexible", "grid": "2x3"}, 6, {0, 1, 2}, False),  # a row, no column
        ({"preset": "flexible", "grid": "2x3"}, 6, {0, 3, 1, 4}, False),  # columns, no row
        ({"preset": "flexible", "q1": 4, "q2": 2}, 5, {0, 1, 2}, False),  # no phase-1 quorum
        ({"preset": "flexible", "q1": 4, "q2": 2}, 5, {0, 1, 2, 3}, True),
        ({"preset": "fast"}, 5, {0, 1, 2}, True),  # classic quorums of the last segment
    ],
)
def test_available_is_quorum_math(quorums: dict, n: int, ready: set[int], available: bool) -> None:
    built = status.build({}, observe(quorums, n, ready), None, T0)
    assert cond(built, "Available")["status"] == ("True" if available else "False")
    assert built["readyMembers"] == f"{len(ready)}/{n}"
    assert [m["ready"] for m in built["members"]] == [i in ready for i in range(n)]


def test_starting_then_ready_then_degraded_then_quorum_lost() -> None:
    paxos = {"preset": "paxos"}
    st = status.build({}, observe(paxos, 3, set()), None, T0)
    assert st["phase"] == "Pending"
    assert cond(st, "Available")["reason"] == "QuorumNotReady"
    assert cond(st, "Degraded")["status"] == "False"

    st = status.build(st, observe(paxos, 3, {0, 1, 2}), None, T1)
    assert st["phase"] == "Ready"
    assert cond(st, "Available") | {"lastTransitionTime": T1} == cond(st, "Available")
    assert st["tolerates"] == 1

    st = status.build(st, observe(paxos, 3, {0, 1}), None, "2030-01-01T00:02:00Z")
    assert st["phase"] == "Degraded"
    assert cond(st, "Available")["status"] == "True"
    assert cond(st, "Available")["lastTransitionTime"] == T1  # no flip, no new time
    degraded = cond(st, "Degraded")
    assert degraded["reason"] == "MembersNotReady"
    assert "c-2 (NotReady)" in degraded["message"]
    assert "0 more failure(s) tolerated" in degraded["message"]

    st = status.build(st, observe(paxos, 3, {0}), None, "2030-01-01T00:03:00Z")
    assert st["phase"] == "Degraded"
    assert cond(st, "Available")["reason"] == "QuorumLost"
    assert cond(st, "Degraded")["reason"] == "QuorumLost"

    # Still lost on the next refresh (not "not ready yet", which would read like a new cluster).
    st = status.build(st, observe(paxos, 3, {0}), None, "2030-01-01T00:04:00Z")
    assert cond(st, "Available")["reason"] == "QuorumLost"


def test_terminating_and_missing_pods_are_not_ready() -> None:
    pods = [pod("c-0", True), pod("c-1", True, terminating=True)]
    members = health.members("c", 3, pods)
    assert [(m.ready, m.reason) for m in members] == [
        (True, "Ready"),
        (False, "Terminating"),
        (False, "PodMissing"),
    ]


def test_direct_probe_overrides_a_stale_ready_condition() -> None:
    pods = [pod("c-0", True), pod("c-1", True)]
    members = health.members("c", 2, pods, probes={"c-0": True, "c-1": False})
    assert [m.reason for m in members] == ["Ready", "ProbeFailed"]


def test_sticky_refusal_survives_health_refreshes_until_the_next_reconcile() -> None:
    obs = observe({"preset": "paxos"}, 3, {0, 1, 2})
    refused = status.Outcome(
        2, status.Cond(True, "LayoutSafe", "ok"), status.Cond(False, status.REFUSED, "no")
    )
    st = status.build({}, obs, refused, T0)
    assert st["observedGeneration"] == 2
    assert cond(st, "Progressing")["reason"] == status.REFUSED
    st = status.build(st, obs, None, T1)  # a health refresh
    assert cond(st, "Progressing")["reason"] == status.REFUSED
    assert st["phase"] == "Ready"  # the running cluster is fine
    accepted = status.Outcome(3, status.Cond(True, "LayoutSafe", "ok"))
    st = status.build(st, obs, accepted, T1)
    assert cond(st, "Progressing")["reason"] != status.REFUSED
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])


def test_nothing_deployed_with_a_bad_layout_is_failed() -> None:
    verdict = check_layout({"preset": "flexible", "q1": 1, "q2": 1}, 3)
    assert not verdict.ok and verdict.reason == "LayoutUnsafe"
    outcome = status.Outcome(
        1,
        status.Cond(False, verdict.reason, verdict.message),
        status.Cond(False, status.LAYOUT_REJECTED, "nothing changed"),
    )
    st = status.build({}, status.Observed(3, verdict.summary), outcome, T0)
    assert st["phase"] == "Failed"
    assert cond(st, "LayoutValid")["status"] == "False"
    assert "C2" in cond(st, "LayoutValid")["message"]
    assert "tolerates" not in st


@pytest.mark.parametrize(
    ("sts", "reason"),
    [
        (None, "NotDeployed"),
        ({"metadata": {"generation": 2}, "spec": {"replicas": 3}}, "RollingOut"),
        (
            {
                "metadata": {"generation": 2},
                "spec": {"replicas": 3},
                "status": {"observedGeneration": 2, "updatedReplicas": 1},
            },
            "RollingUpdate",
        ),
        (
            {
                "metadata": {"generation": 2},
                "spec": {"replicas": 3},
                "status": {"observedGeneration": 2, "updatedReplicas": 3},
            },
            "UpToDate",
        ),
    ],
)
def test_progressing_follows_the_rollout(sts: dict | None, reason: str) -> None:
    assert status.rollout(sts).reason == reason


def test_ready_condition_summarises_for_kubectl_wait() -> None:
    paxos = {"preset": "paxos"}
    st = status.build({}, observe(paxos, 3, {0, 1}), None, T0)
    assert cond(st, "Ready")["status"] == "False"  # a member still starting
    assert cond(st, "Ready")["reason"] == "MembersNotReady"
    st = status.build(st, observe(paxos, 3, {0, 1, 2}), None, T1)
    assert cond(st, "Ready") | {"status": "True", "reason": "ClusterReady"} == cond(st, "Ready")
    assert st["conditions"][0]["type"] == "Ready"
    # A change the operator refuses leaves a healthy cluster, but not Ready for the new spec.
    refused = status.Outcome(
        2, status.Cond(True, "LayoutSafe", "ok"), status.Cond(False, status.REFUSED, "no")
    )
    st = status.build(st, observe(paxos, 3, {0, 1, 2}), refused, T1)
    assert st["phase"] == "Ready"
    assert (cond(st, "Ready")["status"], cond(st, "Ready")["reason"]) == ("False", status.REFUSED)
    assert cond(st, "Ready")["observedGeneration"] == 2


def test_condition_messages_fit_the_status_schema() -> None:
    huge = "x" * 70_975  # an unsafe explicit layout once produced a message this long
    outcome = status.Outcome(
        1,
        status.Cond(False, "LayoutUnsafe", huge),
        status.Cond(False, status.LAYOUT_REJECTED, huge),
    )
    st = status.build({}, observe({"preset": "paxos"}, 3, set()), outcome, T0)
    for c in st["conditions"]:
        assert len(c["message"]) <= status.MAX_MESSAGE
    assert cond(st, "LayoutValid")["message"].endswith("more characters)")
    assert cond(st, "LayoutValid")["message"].startswith("x" * 1000)
    crd = yaml.safe_load(
        (Path(__file__).parents[2] / "crds/consensusclusters.graven.dev.yaml").read_text()
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    item = schema["properties"]["conditions"]["items"]["properties"]
    assert item["message"]["maxLength"] == status.MAX_MESSAGE
    assert "Ready" in item["type"]["enum"]
