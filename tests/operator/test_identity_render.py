"""Cluster identity in the operator's pure parts: render, drift, claims, health and phase."""

from __future__ import annotations

import pytest
import yaml

from graven.node.cluster import config as clusterconfig
from graven.node.cluster.spec import canonical_quorums, parse
from graven.operator import drift, health, identity, render, status
from graven.operator.topology import Topology

UID = "0b7c-old"


def claim(ordinal: int, incarnation: str | None, members: int = 3, preset: str = "paxos") -> dict:
    labels = {"app.kubernetes.io/instance": "demo"}
    if incarnation is not None:
        labels[identity.LABEL_INCARNATION] = incarnation
    annotations = {
        "graven.dev/members": str(members),
        "graven.dev/quorums": canonical_quorums({"preset": preset}),
        "graven.dev/epoch": "0",
    }
    return {
        "metadata": {"name": f"data-demo-{ordinal}", "labels": labels, "annotations": annotations}
    }


def test_the_incarnation_reaches_the_members_configuration_and_the_claims() -> None:
    objs = render.render_all("demo", "ns", parse({}), 1, incarnation=UID)
    cm, sts = objs[0], objs[3]
    cfg = clusterconfig.parse(yaml.safe_load(cm["data"]["cluster.yaml"]))
    assert cfg.identity().incarnation == UID
    (template,) = sts["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["labels"][identity.LABEL_INCARNATION] == UID
    assert template["metadata"]["annotations"]["graven.dev/members"] == "3"
    assert sts["metadata"]["annotations"]["graven.dev/incarnation"] == UID
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_a_claim_template_from_before_incarnations_is_not_drift() -> None:
    spec = parse({})
    old = render.statefulset("demo", "ns", spec, "hash")  # rendered without an incarnation
    new = render.statefulset("demo", "ns", spec, "hash", incarnation=UID)
    assert drift.plan(new, old).immutable == []
    bigger = render.statefulset("demo", "ns", parse({"storage": {"size": "2Gi"}}), "hash", 0, UID)
    assert drift.plan(bigger, old).immutable  # a real difference is still reported


def test_the_incarnation_is_the_uid_unless_adopted() -> None:
    assert identity.incarnation({"uid": "new"}) == "new"
    meta = {"uid": "new", "annotations": {identity.ANNOTATION_ADOPT: UID}}
    assert identity.incarnation(meta) == UID
    with pytest.raises(identity.AdoptionError, match="must name an incarnation"):
        identity.incarnation({"uid": "new", "annotations": {identity.ANNOTATION_ADOPT: "a b"}})


def refusal(claims: list[dict], own: str = "new", adopting: bool = False, preset: str = "paxos"):  # type: ignore[no-untyped-def]
    found = identity.member_claims("demo", [*claims, {"metadata": {"name": "data-other-0"}}])
    return identity.retained_refusal(
        "demo", own, adopting, found, 3, canonical_quorums({"preset": preset})
    )


def test_retained_claims_are_refused_unless_they_are_this_incarnations() -> None:
    assert refusal([]) is None
    assert refusal([claim(i, "new") for i in range(3)]) is None  # its own (StatefulSet deleted)
    message = refusal([claim(i, UID) for i in range(3)])
    assert message is not None and f"cluster incarnation {UID}" in message
    assert f"{identity.ANNOTATION_ADOPT}={UID}" in message
    assert "kubectl delete pvc data-demo-0 data-demo-1 data-demo-2" in message
    legacy = refusal([claim(0, None)])
    assert legacy is not None and "recorded no incarnation" in legacy
    assert refusal([claim(0, None)], own=UID, adopting=True) is None
    assert refusal([claim(i, UID) for i in range(3)], own=UID, adopting=True) is None


def test_adoption_needs_the_layout_the_claims_were_written_with() -> None:
    claims = [claim(i, UID) for i in range(3)]
    message = refusal(claims, own=UID, adopting=True, preset="fast")
    assert message is not None and message.startswith("adoption refused")
    assert 'written by 3 members with quorums {"preset":"paxos"}' in message
    five = refusal([claim(i, UID, members=5) for i in range(3)], own=UID, adopting=True)
    assert five is not None and "written by 5 members" in five


def test_a_member_that_refused_its_data_is_named_with_its_reason() -> None:
    line = "graven node: refused: /data holds registers of cluster incarnation x, ..."
    pod = {
        "metadata": {"name": "demo-0"},
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"lastState": {"terminated": {"exitCode": 3, "message": f"booting\n{line}"}}}
            ],
        },
    }
    crashed = {
        "metadata": {"name": "demo-1"},
        "status": {"containerStatuses": [{"lastState": {"terminated": {"exitCode": 1}}}]},
    }
    members = health.members("demo", 2, [pod, crashed])
    assert [(m.reason, m.detail) for m in members] == [
        ("StartRefused", line.removeprefix("graven node: refused: ")),
        ("NotReady", None),
    ]


def test_retained_volumes_make_the_phase_failed() -> None:
    outcome = status.Outcome(
        1,
        status.Cond(True, "LayoutSafe", "ok"),
        status.Cond(False, status.RETAINED_VOLUMES, "claims of another incarnation"),
    )
    built = status.build({}, status.Observed(3, "paxos"), outcome, "2026-01-01T00:00:00Z")
    assert built["phase"] == "Failed"
    running = status.Observed(3, "paxos", Topology(3, {"preset": "paxos"}))
    assert status.build({}, running, outcome, "2026-01-01T00:00:00Z")["phase"] != "Failed"
