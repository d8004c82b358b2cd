"""End to end: a scale-up whose new pod never starts is visible as stuck and is abandoned
cleanly when the user reverts the spec, with real `graven node` processes as members.

The test plays the StatefulSet controller and the kubelet (tests/operator/kubelet.py); the new
ordinal's pod stays Pending (unschedulable), as with too little memory on every node.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.operator.apiclient import wait_for
from tests.operator.harness import NAMESPACE, Cluster, OperatorRunner, demo, loopback_members
from tests.operator.kubelet import Controller, ProcessStatefulSet
from tests.operator.test_e2e_nodes import MISSING, free_ports

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
NAME = "demo"
LONG = 180  # seconds for members to start on a loaded 2-core machine
WATCH = 3.0  # the abandon watch, short for the test (the operator's default is 150 s)


def http(method: str, url: str, body: dict | None = None, timeout: float = 5) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as rsp:
        return json.loads(rsp.read())


def test_a_stuck_scale_up_is_reported_and_abandoned_by_a_revert(
    apiserver: Cluster, crd: dict, tmp_path: Path
) -> None:
    api = apiserver.api
    ports = free_ports(4)
    runner = OperatorRunner(
        **loopback_members(ports),
        abandon_watch=WATCH,
    ).start()
    kubelet = ProcessStatefulSet(api, NAMESPACE, NAME, tmp_path, ports)
    kubelet.unschedulable = {3}
    seen: list[dict] = []

    def status() -> dict:
        obj = api.get("ConsensusCluster", NAMESPACE, NAME)
        assert obj is not None
        st = obj.get("status") or {}
        if st.get("reconfiguration"):
            seen.append(st["reconfiguration"])
        return st

    def settled() -> bool:
        st = status()
        return (
            st.get("phase") == "Ready"
            and st.get("epoch") == 0
            and st.get("readyMembers") == "3/3"
            and "reconfiguration" not in st
        )

    def reasons() -> list[str]:
        return [e["reason"] for e in api.events(NAMESPACE, NAME)]

    try:
        api.create(demo(NAMESPACE, security={"tls": False}))
        wait_for(lambda: api.get("StatefulSet", NAMESPACE, NAME), what="StatefulSet")
        with Controller(kubelet):
            wait_for(settled, timeout=LONG, interval=0.2, what="3 members ready")
            decided = {}
            for i in range(12):
                url = f"http://127.0.0.1:{ports[i % 3]}/v1/decisions/a{i}"
                decided[f"a{i}"] = http("PUT", url, {"value": f"v{i}"})["value"]
            pids = {i: p.pid for i, p in kubelet.procs.items()}

            # 3 -> 4, and demo-3 cannot be scheduled: the transition waits at publish, says
            # why, and tells the user the way out
            api.patch("ConsensusCluster", NAMESPACE, NAME, {"spec": {"replicas": 4}})
            stuck = wait_for(
                lambda: (
                    (rec := status().get("reconfiguration") or {}).get("step") == "publish"
                    and "demo-3 (not scheduled: Unschedulable" in rec.get("lastError", "")
                    and rec
                ),
                timeout=60,
                interval=0.2,
                what="the reason the publish step waits",
            )
            assert status()["phase"] == "Reconfiguring"
            warning = wait_for(
                lambda: [
                    e for e in api.events(NAMESPACE, NAME) if e["reason"] == "ReconfigurationStuck"
                ],
                timeout=30,
                what="a ReconfigurationStuck event",
            )
            assert warning[0]["type"] == "Warning"
            assert "back to epoch 0's to abandon the change" in warning[0]["message"]
            assert "Insufficient memory" in warning[0]["message"]

            # the user reverts: nothing of epoch 1 reached a member, so it is abandoned
            api.patch("ConsensusCluster", NAMESPACE, NAME, {"spec": {"replicas": 3}})
            wait_for(
                lambda: (
                    settled() and api.get("ConfigMap", NAMESPACE, f"{NAME}-reconfiguration") is None
                ),
                timeout=60,
                interval=0.1,
                what="back to epoch 0 alone, the record gone",
            )
            assert "abandon" in {r["step"] for r in seen}, seen
            got = reasons()
            assert {"ReconfigurationAbandoning", "ReconfigurationAbandoned"} <= set(got), got
            assert "ReconfigurationResumed" not in got
            wait_for(lambda: api.get("Pod", NAMESPACE, f"{NAME}-3") is None, what="demo-3 removed")
            sts = api.get("StatefulSet", NAMESPACE, NAME)
            assert sts is not None and sts["spec"]["replicas"] == 3
            cm = api.get("ConfigMap", NAMESPACE, f"{NAME}-config")
            assert cm is not None
            doc = yaml.safe_load(cm["data"]["cluster.yaml"])
            assert doc["epoch"] == 0 and "previous" not in doc
            # the old members were never restarted, and still serve epoch 0 alone
            assert {i: p.pid for i, p in kubelet.procs.items()} == pids
            assert kubelet.restarts == 0
            for i in range(3):
                got_doc = http("GET", f"http://127.0.0.1:{ports[i]}/v1/cluster")
                assert got_doc["liveEpochs"] == [0], got_doc
            for n, (key, value) in enumerate(sorted(decided.items())):
                got_value = http("GET", f"http://127.0.0.1:{ports[n % 3]}/v1/decisions/{key}")
                assert got_value["value"] == value, key
            fresh = http("PUT", f"http://127.0.0.1:{ports[0]}/v1/decisions/after", {"value": "x"})
            assert fresh["value"] == "x"
        print(f"stuck at: {stuck}; steps seen: {sorted({r['step'] for r in seen})}")
    finally:
        kubelet.stop_all()
        runner.stop()


def test_an_old_member_that_shows_the_abandoned_epoch_turns_the_abandon_into_going_forward(
    apiserver: Cluster, crd: dict, tmp_path: Path
) -> None:
    """The kubelet refreshes a mounted ConfigMap late: a member restarted during the watch may
    load the document of the abandoned epoch. The operator then goes forward (always safe)."""
    api = apiserver.api
    ports = free_ports(4)
    runner = OperatorRunner(
        **loopback_members(ports),
        abandon_watch=60.0,
    ).start()
    kubelet = ProcessStatefulSet(api, NAMESPACE, NAME, tmp_path, ports)
    kubelet.unschedulable = {3}

    def status() -> dict:
        obj = api.get("ConsensusCluster", NAMESPACE, NAME)
        assert obj is not None
        return obj.get("status") or {}

    def step() -> str | None:
        return (status().get("reconfiguration") or {}).get("step")

    try:
        api.create(demo(NAMESPACE, security={"tls": False}))
        wait_for(lambda: api.get("StatefulSet", NAMESPACE, NAME), what="StatefulSet")
        with Controller(kubelet):
            wait_for(
                lambda: status().get("readyMembers") == "3/3" and status().get("epoch") == 0,
                timeout=LONG,
                interval=0.2,
                what="3 members ready",
            )
            api.patch("ConsensusCluster", NAMESPACE, NAME, {"spec": {"replicas": 4}})
            wait_for(lambda: step() == "publish", timeout=60, what="the publish step")
            sts = api.get("StatefulSet", NAMESPACE, NAME)
            stale = kubelet._config(sts)  # both epochs, as a pod's mounted copy holds it
            assert "previous" in yaml.safe_load(stale)
            api.patch("ConsensusCluster", NAMESPACE, NAME, {"spec": {"replicas": 3}})
            wait_for(lambda: step() == "abandon", timeout=60, what="the abandon step")

            # demo-2 crashes and its container starts again from the stale copy
            fresh = kubelet._config
            kubelet._config = lambda sts: stale  # type: ignore[method-assign]
            try:
                kubelet.kill(2)
                wait_for(lambda: 2 in kubelet.procs, timeout=30, what="demo-2 restarted")
            finally:
                kubelet._config = fresh  # type: ignore[method-assign]
            resumed = wait_for(
                lambda: [
                    e
                    for e in api.events(NAMESPACE, NAME)
                    if e["reason"] == "ReconfigurationResumed"
                ],
                timeout=60,
                what="the abandon turned back",
            )
            assert (
                resumed[0]["type"] == "Warning" and "demo-2 serves epoch 1" in resumed[0]["message"]
            )
            rec = wait_for(
                lambda: (
                    (r := status().get("reconfiguration") or {}).get("step") == "publish"
                    and "cannot be abandoned" in r.get("lastError", "")
                    and r
                ),
                timeout=60,
                interval=0.2,
                what="the transition waiting again, saying why it stays",
            )
            assert "demo-2 serves epochs [0, 1]" in rec["lastError"]
            record = api.get("ConfigMap", NAMESPACE, f"{NAME}-reconfiguration")
            assert record is not None and "abandoned" not in record["data"]
            cm = api.get("ConfigMap", NAMESPACE, f"{NAME}-config")
            assert cm is not None
            assert [p["epoch"] for p in yaml.safe_load(cm["data"]["cluster.yaml"])["previous"]] == [
                0
            ]
            reasons = [e["reason"] for e in api.events(NAMESPACE, NAME)]
            assert "ReconfigurationAbandoned" not in reasons
    finally:
        kubelet.stop_all()
        runner.stop()
