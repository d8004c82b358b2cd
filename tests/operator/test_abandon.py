"""When a reverted transition may be abandoned (operator/abandon.py): only while provably
nothing of the new epoch reached a member; otherwise the revert is queued, with the reason."""

from __future__ import annotations

import dataclasses

from graven.node.cluster.spec import parse
from graven.node.protocol import reconfig as rc
from graven.operator import abandon, reconfigure

START = "2026-01-01T10:00:00Z"
BEFORE = "2026-01-01T09:00:00Z"


def transition(replicas: int = 4, step: str = rc.PUBLISH) -> reconfigure.Transition:
    spec = parse({"replicas": 3, "image": "graven:0.1.0", "quorums": {"preset": "paxos"}})
    old = reconfigure.config_for("demo", "ns", spec, 0, "inc")
    target = reconfigure.config_for(
        "demo", "ns", dataclasses.replace(spec, replicas=replicas), 1, "inc"
    )
    return reconfigure.Transition(rc.Record(0, 1, step), old, target, START)


def running(started: str = BEFORE, restarts: int = 0) -> dict:
    state = {"running": {"startedAt": started}}
    return {"status": {"containerStatuses": [{"restartCount": restarts, "state": state}]}}


def pending(reason: str = "Unschedulable") -> dict:
    cond = {"type": "PodScheduled", "status": "False", "reason": reason, "message": "no node"}
    return {"status": {"phase": "Pending", "conditions": [cond]}}


def pull_failing() -> dict:
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope"'}
    return {"status": {"containerStatuses": [{"restartCount": 0, "state": {"waiting": waiting}}]}}


OLD_PODS = {f"demo-{i}": running() for i in range(3)}
ONLY_OLD = {f"demo-{i}": [0] for i in range(3)}


def test_a_revert_with_nothing_of_the_new_epoch_anywhere_abandons() -> None:
    for new_pod in (None, pending(), pull_failing()):
        pods = {**OLD_PODS, **({"demo-3": new_pod} if new_pod else {})}
        verdict = abandon.verdict(transition(), True, pods, ONLY_OLD)
        assert verdict.abandon, verdict


def test_a_spec_not_reverted_is_no_abandon() -> None:
    assert not abandon.verdict(transition(), False, OLD_PODS, ONLY_OLD).reverted


def test_anything_that_may_hold_the_new_epoch_queues_the_revert() -> None:
    cases = {
        "past the publish step": (transition(step=rc.FENCE), OLD_PODS, ONLY_OLD),
        "demo-3 has run": (transition(), {**OLD_PODS, "demo-3": running(START)}, ONLY_OLD),
        "demo-1 serves epochs [0, 1]": (transition(), OLD_PODS, {**ONLY_OLD, "demo-1": [0, 1]}),
        "demo-2 does not answer": (transition(), OLD_PODS, {**ONLY_OLD, "demo-2": None}),
        # a start in the same second as the transition counts as after it
        "demo-0 (re)started after": (
            transition(),
            {**OLD_PODS, "demo-0": running(START)},
            ONLY_OLD,
        ),
    }
    for expected, (t, pods, answers) in cases.items():
        verdict = abandon.verdict(t, True, pods, answers)
        assert verdict.reverted and not verdict.abandon
        assert expected in (verdict.why_not or ""), (expected, verdict)


def test_a_crashed_new_member_has_run() -> None:
    crashed = {
        "status": {
            "containerStatuses": [
                {
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1}},
                }
            ]
        }
    }
    assert not abandon.never_ran(crashed)
    assert abandon.never_ran(pending()) and abandon.never_ran(pull_failing())
    assert abandon.never_ran(None)


def test_blockers_name_what_keeps_a_pod_from_starting() -> None:
    assert abandon.blocker(pending()) == "not scheduled: Unschedulable: no node"
    assert abandon.blocker(pull_failing()) == 'ImagePullBackOff: Back-off pulling image "nope"'
    assert abandon.blocker(running()) is None
    assert abandon.blocker(None) is None


def test_status_and_render_of_an_abandon() -> None:
    t = dataclasses.replace(transition(), abandoned=START)
    assert reconfigure.status_of(t)["step"] == "abandon"
    assert t.replicas == 3  # the new pod goes at once
