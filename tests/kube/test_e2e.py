"""Graven on a real Kubernetes (`make kube`: v1.34 built here, containerd, Graven's own image).

What a user does and sees: install the chart, apply examples/cluster.yaml, wait for Ready,
make decisions through the client Service, lose a member, delete the cluster. The tests run in
file order and share one operator release and one example cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubeenv import ENV, NS, REPO, Kubectl, wait_for

from graven.operator import status

EXAMPLE = REPO / "examples" / "cluster.yaml"
GRAVEN = Path(sys.executable).with_name("graven")
IMAGE = "graven:0.1.0"  # the chart's and the example's default, loaded by `make kube`
READY_TIMEOUT = 240  # seconds for a fresh cluster to become Ready on 2 shared cores


# These tests reach members over plain http from the node's network namespace (pod and service
# IPs, which no member certificate names): they run the clusters with TLS off. TLS, the
# operator's Secrets and the NetworkPolicy have not run on this real cluster yet
# (docs/security.md, "Not done").
PLAIN = {"tls": False}


def example() -> dict:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["security"] = dict(PLAIN)
    return doc


def small(name: str, **spec: object) -> dict:
    doc = example()
    doc["metadata"] = {"name": name}
    doc["spec"] = {**doc["spec"], "replicas": 1, **spec}
    return doc


def condition(obj: dict, kind: str) -> dict:
    found = status.find((obj.get("status") or {}).get("conditions") or [], kind)
    return dict(found or {})


def events(kubectl: Kubectl, name: str, kind: str = "ConsensusCluster") -> list[dict]:
    selector = f"involvedObject.name={name},involvedObject.kind={kind}"
    return kubectl.json("get", "events", "-n", NS, "--field-selector", selector)["items"]


def graven(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(GRAVEN), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def service_url(kubectl: Kubectl, name: str) -> str:
    ip = kubectl.json("get", "service", name, "-n", NS)["spec"]["clusterIP"]
    return f"http://{ip}:7100"


def propose(endpoint: str, key: str, value: str, attempts: int = 5) -> str:
    """Propose through the client Service from the node; returns the decided value. A few
    attempts: the Service may still route one request to a member that is going away."""
    last = None
    for _ in range(attempts):
        last = graven("propose", "--json", "--timeout", "5", "--endpoint", endpoint, key, value)
        if last.returncode == 0:
            return json.loads(last.stdout)["value"]
    raise AssertionError(
        f"propose {key}: {last.stdout if last else ''}{last.stderr if last else ''}"
    )


def read(endpoint: str, key: str) -> str:
    done = graven("get", "--json", "--endpoint", endpoint, key)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["value"]


# --- the operator ------------------------------------------------------------------------


def operator_pods(kubectl: Kubectl, namespace: str) -> list[dict]:
    selector = "app.kubernetes.io/name=graven-operator"
    return kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]


def test_the_chart_runs_the_operator_from_the_real_image(kubectl: Kubectl, operator: str) -> None:
    pods = operator_pods(kubectl, operator)
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"] is True
        assert container["image"].endswith(IMAGE)
        assert container["imageID"].startswith("sha256:")  # a real image, from containerd


def test_one_operator_replica_works_and_the_other_waits(kubectl: Kubectl, operator: str) -> None:
    pods = {p["metadata"]["name"] for p in operator_pods(kubectl, operator)}

    def registered() -> dict | None:
        peering = kubectl.get("clusterkopfpeering", "graven") or {}
        peers = peering.get("status") or {}
        return peers if pods <= set(peers) else None

    peers = wait_for(registered, 120, "both replicas in the peering object")
    low, high = sorted(pods, key=lambda p: peers[p]["priority"])
    assert peers[low]["priority"] < peers[high]["priority"]

    def logs(pod: str) -> str:
        return kubectl("logs", "-n", operator, pod).stdout

    def active(pod: str) -> bool:
        # kopf starts paused until its first look at the peering object; then it logs
        # "Resuming operations" when it may work and "Pausing operations in favour of" when
        # a peer of higher priority appears. The last of the two says what it does now.
        text = logs(pod)
        resumed, paused = text.rfind("Resuming operations"), text.rfind("Pausing operations")
        return resumed > paused

    wait_for(lambda: active(high) and not active(low), 120, f"{high} active, {low} waiting")
    for pod in pods:
        assert "Possibly conflicting operators" not in logs(pod)


# --- the example cluster -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(kubectl: Kubectl, operator: str) -> str:
    kubectl.apply(example())
    return example()["metadata"]["name"]


def test_kubectl_wait_for_condition_ready(kubectl: Kubectl, demo: str) -> None:
    done = kubectl(
        "wait",
        "-n",
        NS,
        "--for=condition=Ready",
        f"gcc/{demo}",
        f"--timeout={READY_TIMEOUT}s",
        check=False,
        timeout=READY_TIMEOUT + 30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "condition met" in done.stdout
    ready = condition(kubectl.json("get", "gcc", demo, "-n", NS), "Ready")
    assert ready["reason"] == status.CLUSTER_READY


def test_members_run_the_real_image(kubectl: Kubectl, demo: str) -> None:
    kubectl(
        *("wait", "-n", NS, "--for=condition=Ready", f"gcc/{demo}"),
        *(f"--timeout={READY_TIMEOUT}s",),
        timeout=READY_TIMEOUT + 30,
    )
    pods = kubectl.json("get", "pods", "-n", NS, "-l", f"app.kubernetes.io/instance={demo}")
    names = sorted(p["metadata"]["name"] for p in pods["items"])
    assert names == [f"{demo}-{i}" for i in range(3)]
    for pod in pods["items"]:
        assert pod["status"]["phase"] == "Running"
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"] is True
        assert container["image"].endswith(IMAGE)
    claims = kubectl.json("get", "pvc", "-n", NS)["items"]
    assert {c["metadata"]["name"]: c["status"]["phase"] for c in claims} == {
        f"data-{demo}-{i}": "Bound" for i in range(3)
    }


def test_get_gcc_shows_the_printer_columns(kubectl: Kubectl, demo: str) -> None:
    lines = kubectl("get", "gcc", demo, "-n", NS).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "READY", "LAYOUT", "EPOCH", "TOLERATES", "AGE"]
    assert lines[1].split()[:6] == [demo, "Ready", "3/3", "paxos", "0", "1"]


def test_decisions_through_the_client_service_from_a_pod_and_from_the_node(
    kubectl: Kubectl, demo: str
) -> None:
    in_cluster = f"http://{demo}.{NS}.svc:7100"  # cluster DNS (CoreDNS) from inside a pod
    done = kubectl(
        "exec",
        "-n",
        NS,
        f"{demo}-0",
        "--",
        "graven",
        "propose",
        "--json",
        "--endpoint",
        in_cluster,
        "from-pod",
        "pod-value",
    )
    assert json.loads(done.stdout) == {"key": "from-pod", "value": "pod-value", "won": True}
    node = service_url(kubectl, demo)
    assert read(node, "from-pod") == "pod-value"
    assert propose(node, "from-node", "node-value") == "node-value"
    done = kubectl(
        "exec",
        "-n",
        NS,
        f"{demo}-2",
        "--",
        "graven",
        "get",
        "--endpoint",
        in_cluster,
        "from-node",
    )
    assert done.stdout.strip() == "node-value"


def test_a_deleted_member_comes_back_and_no_decision_is_lost(kubectl: Kubectl, demo: str) -> None:
    node = service_url(kubectl, demo)
    decided = {f"before/{i}": propose(node, f"before/{i}", f"v{i}") for i in range(10)}
    old_uid = kubectl.json("get", "pod", f"{demo}-1", "-n", NS)["metadata"]["uid"]
    kubectl("delete", "pod", f"{demo}-1", "-n", NS, "--wait=false")
    # One member of three is gone: the other two still form quorums.
    decided |= {f"during/{i}": propose(node, f"during/{i}", f"w{i}") for i in range(10)}

    def back() -> bool:
        pod = kubectl.get("pod", f"{demo}-1", "-n", NS)
        if not pod or pod["metadata"]["uid"] == old_uid:
            return False
        statuses = pod["status"].get("containerStatuses") or []
        return bool(statuses) and statuses[0]["ready"]

    wait_for(back, READY_TIMEOUT, f"{demo}-1 to come back ready")
    done = kubectl(
        "wait", "-n", NS, "--for=condition=Ready", f"gcc/{demo}", "--timeout=120s", timeout=150
    )
    assert "condition met" in done.stdout
    # Every decision is still there, read through the member that was replaced.
    member = kubectl.json("get", "pod", f"{demo}-1", "-n", NS)["status"]["podIP"]
    for key, value in decided.items():
        assert read(f"http://{member}:7100", key) == value, key
        assert propose(node, key, "a later value") == value, key  # write-once


# --- monitoring: the dashboard against a Prometheus using Kubernetes service discovery -----


@pytest.fixture(scope="module")
def prometheus(kubectl: Kubectl, demo: str, tmp_path_factory: pytest.TempPathFactory):
    sys.path.insert(0, str(REPO / "tests" / "chart"))
    import test_dashboard_live as live  # the same dashboard checks as on a local cluster

    # Built by `make kube` from its Go module: Debian's prometheus has no Kubernetes discovery.
    binary = f"{ENV['KUBE_BIN']}/prometheus"
    root = tmp_path_factory.mktemp("prometheus")
    pki = Path(ENV["KUBECONFIG_ADMIN"]).parent
    tls = {
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / "admin.crt"),
        "key_file": str(pki / "admin.key"),
    }
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "graven",
                # Members found through this apiserver: every pod of a ConsensusCluster, on
                # its "http" port, labelled with its namespace and pod like a ServiceMonitor.
                "kubernetes_sd_configs": [
                    {
                        "role": "pod",
                        "api_server": "https://127.0.0.1:6443",
                        "tls_config": tls,
                        "namespaces": {"names": [NS]},
                    }
                ],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                        "regex": "graven",
                        "action": "keep",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                        "regex": "http",
                        "action": "keep",
                    },
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = root / "prometheus.log"
    port = 19090
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = live.Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        wait_for(lambda: _ready(prom.url, proc, log), 30, "prometheus /-/ready")
        yield live, prom
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _ready(url: str, proc: subprocess.Popen, log: Path) -> bool:
    assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as rsp:
            return rsp.status == 200
    except OSError:
        return False


def test_every_dashboard_panel_shows_data(kubectl: Kubectl, demo: str, prometheus) -> None:
    live, prom = prometheus
    wait_for(lambda: len(prom.query('up{job="graven"} == 1')) == 3, 60, "the 3 members scraped")
    pods = kubectl.json("get", "pods", "-n", NS, "-l", f"app.kubernetes.io/instance={demo}")
    for pod in pods["items"]:  # every member proposes, so every member counts decisions
        url = f"http://{pod['status']['podIP']}:7100"
        for n in range(5):
            assert propose(url, f"dash/{pod['metadata']['name']}/{n}", "v") == "v"
    deciding = 'sum by (pod) (rate(graven_decisions_total{job="graven"}[1m])) > 0'
    wait_for(lambda: len(prom.query(deciding)) == 3, 60, "a decision rate on every member")

    found = live._resolve_variables(prom)
    assert found["namespace"] == [NS]
    assert found["cluster"] == [demo]
    queries = [
        (where, live.substitute(expr, {"namespace": NS, "cluster": demo}))
        for where, expr in live._panel_queries()
    ]
    assert len(queries) >= 20

    def empty_panels() -> list[str]:
        return [where for where, expr in queries if not live._shows_data(prom.query(expr))]

    empty: list[str] = []

    def all_show_data() -> bool:
        empty[:] = empty_panels()
        return not empty

    try:
        wait_for(all_show_data, 30, "every panel to show data")
    except AssertionError:
        pytest.fail(f"panels without data on a healthy cluster: {empty}")


# --- refusals and what the real apiserver does with what the operator writes -------------


def test_a_layout_the_crd_refuses_never_reaches_the_operator(
    kubectl: Kubectl, operator: str
) -> None:
    doc = small("cel-refused", quorums={"preset": "flexible", "q1": 5, "q2": 1})
    done = kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(doc), check=False)
    assert done.returncode != 0
    assert "quorums.q1 must be between 1 and replicas" in done.stderr
    assert kubectl.get("gcc", "cel-refused", "-n", NS) is None


def test_an_unsafe_layout_is_refused_and_nothing_runs(kubectl: Kubectl, operator: str) -> None:
    pairs = [[a, b] for a in range(4) for b in range(a + 1, 4)]
    explicit = {"type": "explicit", "sets": pairs}
    doc = small(
        "unsafe",
        replicas=4,
        quorums={"segments": [{"kind": "intersecting", "phase1": explicit, "phase2": explicit}]},
    )
    kubectl.apply(doc)

    def refused() -> dict | None:
        obj = kubectl.get("gcc", "unsafe", "-n", NS) or {}
        return obj if (obj.get("status") or {}).get("phase") == "Failed" else None

    obj = wait_for(refused, 60, "phase Failed")
    assert condition(obj, "LayoutValid")["reason"] == "LayoutUnsafe"
    assert condition(obj, "Ready")["reason"] == status.LAYOUT_REJECTED
    assert kubectl.get("statefulset", "unsafe", "-n", NS) is None
    done = kubectl(
        "wait", "-n", NS, "--for=condition=Ready", "gcc/unsafe", "--timeout=3s", check=False
    )
    assert done.returncode != 0
    warnings = [e for e in events(kubectl, "unsafe") if e["type"] == "Warning"]
    assert any(e["reason"] == "LayoutUnsafe" for e in warnings)


def test_status_messages_fit_the_schema_the_apiserver_enforces(
    kubectl: Kubectl, operator: str
) -> None:
    kubectl.apply(small("long-message", paused=True))
    huge = "x" * 70_975
    refused = {
        "status": {
            "conditions": [
                {
                    "type": "LayoutValid",
                    "status": "False",
                    "reason": "LayoutUnsafe",
                    "message": huge,
                }
            ]
        }
    }
    done = kubectl(
        "patch",
        "gcc",
        "long-message",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(refused),
        check=False,
    )
    assert done.returncode != 0 and "Too long" in done.stderr  # what the operator once hit
    outcome = status.Outcome(
        1,
        status.Cond(False, "LayoutUnsafe", huge),
        status.Cond(False, status.LAYOUT_REJECTED, huge),
    )
    built = status.build({}, status.Observed(1, "paxos"), outcome, "2030-01-01T00:00:00Z")
    kubectl(
        "patch",
        "gcc",
        "long-message",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": built}),
    )


def test_an_image_tag_that_is_no_label_value_still_deploys(kubectl: Kubectl, operator: str) -> None:
    # A valid image tag, an invalid label value (it ends with "-"): the apiserver refused the
    # StatefulSet with the tag as app.kubernetes.io/version (422), and nothing ran.
    kubectl.apply(small("odd-tag", image="graven:0.1.0-"))
    sts = wait_for(lambda: kubectl.get("statefulset", "odd-tag", "-n", NS), 60, "the StatefulSet")
    assert "app.kubernetes.io/version" not in sts["metadata"]["labels"]
    obj = kubectl.json("get", "gcc", "odd-tag", "-n", NS)
    assert condition(obj, "Progressing").get("reason") != status.APPLY_FAILED


def test_drift_repair_converges_when_the_apiserver_drops_a_field(
    kubectl: Kubectl, operator: str
) -> None:
    # The apiserver drops unknown fields of builtin kinds with a warning. A containment check
    # then saw "drift" forever and patched the StatefulSet every drift interval.
    affinity = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]
                    },
                    "bogusField": 1,
                }
            ]
        }
    }
    kubectl.apply(small("dropped", affinity=affinity))
    wait_for(lambda: kubectl.get("statefulset", "dropped", "-n", NS), 60, "the StatefulSet")
    wait_for(
        lambda: any(e["reason"] == "FieldsDropped" for e in events(kubectl, "dropped")),
        30,
        "a FieldsDropped warning",
    )
    # Absence of patches is only seen over time: the operator runs with --drift-interval=5,
    # so this window holds four drift passes. Each vain patch used to post an "Updated" event.
    time.sleep(20)
    updates = [e for e in events(kubectl, "dropped") if e["reason"] == "Updated"]
    assert updates == []
    assert kubectl.json("get", "statefulset", "dropped", "-n", NS)["metadata"]["generation"] == 1


def test_a_label_the_operator_no_longer_renders_is_removed(kubectl: Kubectl, operator: str) -> None:
    kubectl.apply(small("relabel"))
    version = "app.kubernetes.io/version"
    sts = wait_for(lambda: kubectl.get("statefulset", "relabel", "-n", NS), 60, "the StatefulSet")
    assert sts["metadata"]["labels"][version] == "0.1.0"
    digest = "graven@sha256:" + "a" * 64
    kubectl(
        "patch",
        "gcc",
        "relabel",
        "-n",
        NS,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"image": digest}}),
    )

    def relabelled() -> bool:
        sts = kubectl.json("get", "statefulset", "relabel", "-n", NS)
        template = sts["spec"]["template"]
        return (
            template["spec"]["containers"][0]["image"] == digest
            and version not in sts["metadata"]["labels"]
            and version not in template["metadata"]["labels"]
        )

    wait_for(relabelled, 60, "the version label gone from the StatefulSet and its pods")


# --- deletion ----------------------------------------------------------------------------


def test_deleting_a_retain_cluster_keeps_its_volumes(kubectl: Kubectl, demo: str) -> None:
    assert example()["spec"]["storage"]["retention"]["whenDeleted"] == "Retain"
    kubectl("delete", "gcc", demo, "-n", NS, "--wait=true", "--timeout=120s", timeout=150)
    selector = f"app.kubernetes.io/instance={demo}"
    wait_for(
        lambda: not kubectl.json("get", "pods", "-n", NS, "-l", selector)["items"],
        120,
        "the members to be gone",
    )
    assert kubectl.get("statefulset", demo, "-n", NS) is None
    claims = {c["metadata"]["name"] for c in kubectl.json("get", "pvc", "-n", NS)["items"]}
    assert {f"data-{demo}-{i}" for i in range(3)} <= claims


def test_deleting_a_delete_cluster_removes_its_volumes(kubectl: Kubectl, operator: str) -> None:
    doc = small("ephemeral", storage={"size": "1Gi", "retention": {"whenDeleted": "Delete"}})
    kubectl.apply(doc)
    done = kubectl(
        "wait",
        "-n",
        NS,
        "--for=condition=Ready",
        "gcc/ephemeral",
        f"--timeout={READY_TIMEOUT}s",
        timeout=READY_TIMEOUT + 30,
    )
    assert "condition met" in done.stdout
    assert kubectl.get("pvc", "data-ephemeral-0", "-n", NS) is not None
    kubectl("delete", "gcc", "ephemeral", "-n", NS, "--wait=true", "--timeout=120s", timeout=150)
    wait_for(
        lambda: kubectl.get("pvc", "data-ephemeral-0", "-n", NS) is None, 60, "the claim deleted"
    )
