"""Graven on a real Kubernetes (`make kube`: v1.34 built here, containerd, Graven's own image).

What a user does and sees: install the chart, apply examples/cluster.yaml, wait for Ready,
make decisions through the client Service, lose a member, delete the cluster. The tests run in
file order and share one operator release and one example cluster.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubeenv import ENV, NS, OPERATOR_NS, REPO, Kubectl, wait_for

from graven.node.client import Client, ClientError
from graven.node.client.credentials import Credentials
from graven.node.cluster.spec import parse
from graven.node.security import pki
from graven.node.security import tokens as tokenlib
from graven.node.security.identity import ADMIN, READ, WRITE
from graven.operator import names, render, status
from graven.operator import pki as opki

EXAMPLE = REPO / "examples" / "cluster.yaml"
GRAVEN = Path(sys.executable).with_name("graven")
IMAGE = "graven:0.1.0"  # the chart's and the example's default, loaded by `make kube`
READY_TIMEOUT = 240  # seconds for a fresh cluster to become Ready on 2 shared cores
TOKENS = "e2e-tokens"  # the Secret every cluster here names in spec.security.clientTokensSecret


# Every cluster here runs with the default security (TLS between members and to clients,
# tokens, the operator's CA). The tests run on the node with the cluster's DNS
# (tools/kube/test.sh), so they reach members by the names their certificates carry and
# verify them with the cluster's CA, as a client in a pod does.
def example() -> dict:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["security"] = {"clientTokensSecret": TOKENS}
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


def service_url(name: str) -> str:
    """The client Service, by the name every member certificate carries."""
    return f"https://{name}.{NS}.svc:{names.PORT}"


def member_url(name: str, index: int) -> str:
    return names.member_url(name, NS, index, "https")


@dataclass(frozen=True)
class Access:
    """What a client outside the pods holds: the cluster's trust bundle (from the CA Secret)
    and bearer tokens by role (the Secret the spec names holds only their digests)."""

    ca: Path
    tokens: dict[str, str]
    dir: Path

    def flags(self, role: str = WRITE) -> list[str]:
        token = self.dir / f"{role}.token"
        token.write_text(self.tokens[role] + "\n")
        return ["--ca", str(self.ca), "--token-file", str(token)]

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def propose(access: Access, endpoint: str, key: str, value: str, attempts: int = 5) -> str:
    """Propose through the client Service from the node; returns the decided value. A few
    attempts: the Service may still route one request to a member that is going away."""
    last = None
    for _ in range(attempts):
        last = graven(
            *("propose", "--json", "--timeout", "5", "--endpoint", endpoint),
            *(*access.flags(), key, value),
        )
        if last.returncode == 0:
            return json.loads(last.stdout)["value"]
    raise AssertionError(
        f"propose {key}: {last.stdout if last else ''}{last.stderr if last else ''}"
    )


def read(access: Access, endpoint: str, key: str) -> str:
    done = graven("get", "--json", "--endpoint", endpoint, *access.flags(READ), key)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["value"]


def secret_data(kubectl: Kubectl, name: str) -> dict[str, bytes]:
    data = kubectl.json("get", "secret", name, "-n", NS)["data"]
    return {k: base64.b64decode(v) for k, v in data.items()}


def token_secret(kubectl: Kubectl, secret: str, prefix: str) -> dict[str, str]:
    """One token per role, in Secret ``secret`` (hashed, as `graven token` writes them): apply
    it before the cluster that names it exists, the members mount it."""
    by_role = {role: tokenlib.new_token() for role in (READ, WRITE, ADMIN)}
    entries = [
        tokenlib.TokenEntry(f"{prefix}-{r}", r, tokenlib.digest(t)) for r, t in by_role.items()
    ]
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret},
            "stringData": {"tokens.yaml": tokenlib.dump(entries)},
        }
    )
    return by_role


@pytest.fixture(scope="module")
def tokens(kubectl: Kubectl, operator: str) -> dict[str, str]:
    return token_secret(kubectl, TOKENS, "e2e")


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
def demo(kubectl: Kubectl, operator: str, tokens: dict[str, str]) -> str:
    kubectl.apply(example())
    return example()["metadata"]["name"]


@pytest.fixture(scope="module")
def access(
    kubectl: Kubectl, demo: str, tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Access:
    root = tmp_path_factory.mktemp("access")
    ca = wait_for(
        lambda: kubectl.get("secret", names.ca_secret(demo), "-n", NS), 120, "the CA Secret"
    )
    (root / "ca.crt").write_bytes(base64.b64decode(ca["data"]["ca.crt"]))
    return Access(root / "ca.crt", tokens, root)


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
    kubectl: Kubectl, demo: str, access: Access
) -> None:
    # In a pod: cluster DNS, the trust bundle the pod mounts, a token of the Secret.
    in_pod = ["--endpoint", service_url(demo), "--ca", f"{names.CA_DIR}/ca.crt"]
    done = kubectl(
        *("exec", "-n", NS, f"{demo}-0", "--", "graven", "propose", "--json", *in_pod),
        *("--token", access.tokens[WRITE], "from-pod", "pod-value"),
    )
    assert json.loads(done.stdout) == {"key": "from-pod", "value": "pod-value", "won": True}
    node = service_url(demo)
    assert read(access, node, "from-pod") == "pod-value"
    assert propose(access, node, "from-node", "node-value") == "node-value"
    done = kubectl(
        *("exec", "-n", NS, f"{demo}-2", "--", "graven", "get", *in_pod),
        *("--token", access.tokens[READ], "from-node"),
    )
    assert done.stdout.strip() == "node-value"


def test_a_deleted_member_comes_back_and_no_decision_is_lost(
    kubectl: Kubectl, demo: str, access: Access
) -> None:
    node = service_url(demo)
    decided = {f"before/{i}": propose(access, node, f"before/{i}", f"v{i}") for i in range(10)}
    old_uid = kubectl.json("get", "pod", f"{demo}-1", "-n", NS)["metadata"]["uid"]
    kubectl("delete", "pod", f"{demo}-1", "-n", NS, "--wait=false")
    # One member of three is gone: the other two still form quorums.
    decided |= {f"during/{i}": propose(access, node, f"during/{i}", f"w{i}") for i in range(10)}

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
    member = member_url(demo, 1)  # by its DNS name, as its certificate names it
    for key, value in decided.items():
        assert read(access, member, key) == value, key
        assert propose(access, node, key, "a later value") == value, key  # write-once


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
    # The members' side exactly as the ServiceMonitor the operator renders for this cluster
    # has it: scheme https, the CA from NAME-ca, its read-only metrics certificate from
    # NAME-tls, and its serverName (every member certificate carries it; targets are pod IPs).
    endpoint = render.service_monitor(demo, NS, parse(example()["spec"]))["spec"]["endpoints"][0]
    wanted = endpoint["tlsConfig"]

    def from_secret(ref: dict, file: str) -> str:
        (root / file).write_bytes(secret_data(kubectl, ref["name"])[ref["key"]])
        return str(root / file)

    members_tls = {
        "ca_file": from_secret(wanted["ca"]["secret"], "ca.crt"),
        "cert_file": from_secret(wanted["cert"]["secret"], "metrics.crt"),
        "key_file": from_secret(wanted["keySecret"], "metrics.key"),
        "server_name": wanted["serverName"],
    }
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "graven",
                "scheme": endpoint["scheme"],
                "metrics_path": endpoint["path"],
                "tls_config": members_tls,
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
                    {  # one cluster per scrape config, as one ServiceMonitor per cluster
                        "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                        "regex": demo,
                        "action": "keep",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                        "regex": endpoint["port"],
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


def test_every_dashboard_panel_shows_data(
    kubectl: Kubectl, demo: str, access: Access, prometheus
) -> None:
    live, prom = prometheus
    wait_for(lambda: len(prom.query('up{job="graven"} == 1')) == 3, 60, "the 3 members scraped")
    for i in range(3):  # every member proposes, so every member counts decisions
        for n in range(5):
            assert propose(access, member_url(demo, i), f"dash/{demo}-{i}/{n}", "v") == "v"
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


# --- security: TLS, tokens, member certificates, NetworkPolicy, renewal -------------------


def call(
    url: str,
    method: str,
    path: str,
    ctx: ssl.SSLContext,
    body: dict | None = None,
    token: str | None = None,
) -> tuple[int, dict, dict] | str:
    """One request: (status, JSON body, headers), or why the TLS handshake was refused."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        rsp = conn.getresponse()
        raw = rsp.read()
        return rsp.status, (json.loads(raw) if raw else {}), dict(rsp.getheaders())
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    finally:
        conn.close()


def test_the_client_service_needs_a_token_with_the_role(
    kubectl: Kubectl, demo: str, access: Access
) -> None:
    url, ctx = service_url(demo), access.context()
    path = "/v1/decisions/role-check"
    no_token = call(url, "GET", path, ctx)
    assert not isinstance(no_token, str), no_token
    assert no_token[0] == 401, no_token
    assert no_token[1]["error"]["code"] == "unauthenticated"
    assert no_token[2].get("WWW-Authenticate", "").startswith("Bearer")
    put = call(url, "PUT", path, ctx, {"value": "from a reader"}, access.tokens[READ])
    assert not isinstance(put, str), put
    assert put[0] == 403, put
    assert put[1]["error"]["code"] == "forbidden"
    # The refused PUT decided nothing: the key is still open for a writer.
    assert propose(access, url, "role-check", "from a writer") == "from a writer"
    # The CLI says the same to a user without a token, in one line.
    done = graven("get", "--endpoint", url, "--ca", str(access.ca), "role-check")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "401" in done.stderr or "unauthenticated" in done.stderr, done.stderr


def _signer(kubectl: Kubectl, demo: str) -> pki.Issued:
    """The cluster's CA, as the operator keeps it (only the test, as an admin, reads its key)."""
    ca = secret_data(kubectl, names.ca_secret(demo))
    return pki.Issued(ca["tls.key"], ca["tls.crt"])


def _context(access: Access, root: Path, name: str, issued: pki.Issued) -> ssl.SSLContext:
    ctx = access.context()
    (root / f"{name}.crt").write_bytes(issued.cert_pem)
    (root / f"{name}.key").write_bytes(issued.key_pem)
    ctx.load_cert_chain(root / f"{name}.crt", root / f"{name}.key")
    return ctx


def check_only_members_write(
    name: str, signer: pki.Issued, access: Access, tmp_path: Path, prefix: str
) -> None:
    """Strangers' register writes to member 0 are refused and change nothing, while a member
    certificate from ``signer`` writes (so the refusals are about who asks)."""
    hosts = opki.member_hosts(name, NS, 0)
    foreign = pki.new_ca(name)  # same cluster name, another CA
    strangers = {
        "no certificate": access.context(),
        "member certificate from another CA": _context(
            access, tmp_path, "foreign", pki.issue_member(foreign, name, f"{name}-0", hosts)
        ),
        "right CA, a name that is no member": _context(
            access, tmp_path, "member-9", pki.issue_member(signer, name, f"{name}-9", hosts)
        ),
        "right CA, a read client": _context(
            access, tmp_path, "reader", pki.issue_client(signer, name, READ, "eve")
        ),
    }
    member = _context(
        access, tmp_path, "member", pki.issue_member(signer, name, f"{name}-1", hosts)
    )
    target = member_url(name, 0)

    def written(key: str) -> bool:
        reply = call(
            target, "POST", "/v1/registers/read", member, {"reads": [{"key": key, "rs": 0}]}
        )
        assert not isinstance(reply, str) and reply[0] == 200, reply
        return "intruder" in json.dumps(reply[1])

    # rs 5 of the paxos layout is a client-restricted set: one owner, whose writes safety
    # rests on. A member certificate writes it (so the refusals below are about who asks).
    write = {"writes": [{"key": f"{prefix}/member", "rs": 5, "value": "intruder"}]}
    assert call(target, "POST", "/v1/registers/write", member, write)[0] == 200
    assert written(f"{prefix}/member")
    refused = {}
    for who, ctx in strangers.items():
        key = f"{prefix}/{who}"
        write = {"writes": [{"key": key, "rs": 5, "value": "intruder"}]}
        outcome = call(target, "POST", "/v1/registers/write", ctx, write)
        refused[who] = outcome if isinstance(outcome, str) else outcome[0]
        assert not written(key), who
    assert refused["no certificate"] == 401
    assert str(refused["member certificate from another CA"]).startswith("refused"), refused
    assert refused["right CA, a name that is no member"] == 403
    assert refused["right CA, a read client"] == 403


def test_only_members_write_registers(
    kubectl: Kubectl, demo: str, access: Access, tmp_path: Path
) -> None:
    check_only_members_write(demo, _signer(kubectl, demo), access, tmp_path, "peer-check")


def test_the_apiserver_accepts_the_network_policies_the_operator_renders(
    kubectl: Kubectl, demo: str
) -> None:
    spec = parse(example()["spec"])
    # the chart's operator pods run in OPERATOR_NS: the policy admits them (POD_NAMESPACE)
    rendered = render.network_policy(demo, NS, spec, OPERATOR_NS)
    live = kubectl.json("get", "networkpolicy", demo, "-n", NS)
    assert live["spec"] == rendered["spec"]  # nothing dropped or defaulted away
    owner = live["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ConsensusCluster", demo)
    # Other shapes a spec allows: clients from labelled namespaces and an address range,
    # metrics from another namespace. Server-side dry run: the real apiserver's validation.
    variant = parse(
        {
            **example()["spec"],
            "security": {
                "networkPolicy": {
                    "clients": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": "a"}},
                            "podSelector": {"matchLabels": {"role": "api"}},
                        },
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    ],
                    "metricsNamespace": "observability",
                }
            },
        }
    )
    for policy in (rendered, render.network_policy("variant", NS, variant)):
        done = kubectl(
            *("apply", "--dry-run=server", "-n", NS, "-f", "-"),
            input=json.dumps(policy),
            check=False,
        )
        assert done.returncode == 0, done.stderr
    broken = json.loads(json.dumps(rendered))  # the same check refuses a broken one
    broken["spec"]["ingress"][0]["ports"][0]["port"] = 0
    done = kubectl(
        "apply", "--dry-run=server", "-n", NS, "-f", "-", input=json.dumps(broken), check=False
    )
    assert done.returncode != 0 and "Invalid" in done.stderr, done.stderr


def _served(url: str, ctx: ssl.SSLContext) -> bytes:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.getpeercert(binary_form=True) or b""


def test_the_operator_renews_an_expiring_member_certificate_while_serving(
    kubectl: Kubectl, demo: str, access: Access
) -> None:
    # A certificate of member 0 that expires tomorrow (from the cluster's CA), as if it had
    # served a year: the operator must renew it, the kubelet must update the mounted Secret,
    # and the member must serve the new one, with no request failing meanwhile.
    signer = _signer(kubectl, demo)
    member = f"{demo}-0"
    short = pki.issue_member(signer, demo, member, opki.member_hosts(demo, NS, 0), days=1)
    patch = {"data": opki.encode({f"{member}.crt": short.cert_pem, f"{member}.key": short.key_pem})}
    secret = names.tls_secret(demo)
    kubectl("patch", "secret", secret, "-n", NS, "--type=merge", "-p", json.dumps(patch))

    def renewed() -> x509.Certificate | None:
        cert = x509.load_pem_x509_certificate(secret_data(kubectl, secret)[f"{member}.crt"])
        left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        return cert if left > datetime.timedelta(days=300) else None

    fresh = wait_for(renewed, 60, "the operator to renew the certificate")
    fresh_der = fresh.public_bytes(serialization.Encoding.DER)
    serves_under_load(access, demo, fresh_der, "renewal")


def serves_under_load(access: Access, name: str, der: bytes, prefix: str) -> int:
    """Propose through the Service and through member 0 until member 0 serves the certificate
    ``der``; asserts no proposal failed meanwhile. Returns the rounds made."""
    creds = Credentials(ca=str(access.ca), token=access.tokens[WRITE])
    failures: list[str] = []
    n = 0

    def serving_it() -> bool:
        nonlocal n
        n += 1
        try:  # the cluster keeps deciding, through the Service and through member 0
            with Client([service_url(name)], credentials=creds, timeout=5) as c:
                c.propose(f"{prefix}/{n}", "v")
            with Client([member_url(name, 0)], credentials=creds, timeout=5, route=False) as c:
                c.propose(f"{prefix}/{n}/direct", "v")
        except Exception as exc:  # any failure is what this test counts
            failures.append(f"{type(exc).__name__}: {exc}")
        return _served(member_url(name, 0), access.context()) == der

    # The kubelet refreshes Secret volumes about once a minute (plus its cache TTL).
    wait_for(serving_it, 180, f"{name}-0 to serve the renewed certificate", 2)
    assert failures == [], f"{len(failures)} of {n} rounds failed"
    return n


def _issuer_of(url: str, ctx: ssl.SSLContext) -> x509.Name:
    return x509.load_der_x509_certificate(_served(url, ctx)).issuer


def _certs(bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle)


def test_the_operator_rotates_the_ca_under_load_and_no_request_fails(
    kubectl: Kubectl, demo: str, access: Access
) -> None:
    """`kubectl annotate gcc demo graven.dev/rotate-ca=...`: trust both CAs, reissue, trust
    only the new one, each step --ca-rotation-settle apart (conftest). A client that, like a
    pod mounting the CA Secret, follows the Secret's ca.crt keeps deciding through the Service
    and through member 0 with no failed request; afterwards members serve certificates of the
    new CA and a client trusting only it reads every decision. (`access.ca` is that followed
    file, so later tests trust the new CA.)"""
    secret = names.ca_secret(demo)
    old = secret_data(kubectl, secret)
    old_ca = x509.load_pem_x509_certificate(old["tls.crt"])
    creds = Credentials(ca=str(access.ca), token=access.tokens[WRITE])
    acked: dict[str, str] = {}
    failures: list[str] = []

    def follow_the_secret() -> dict[str, bytes]:
        data = secret_data(kubectl, secret)
        if data["ca.crt"] != access.ca.read_bytes():  # atomically, as the kubelet swaps files
            (access.dir / "ca.next").write_bytes(data["ca.crt"])
            (access.dir / "ca.next").replace(access.ca)
        return data

    def decide_a_little() -> None:
        for endpoint, route in ((service_url(demo), True), (member_url(demo, 0), False)):
            key = f"ca-rotation/{len(acked)}"
            try:
                with Client([endpoint], credentials=creds, timeout=5, route=route) as c:
                    acked[key] = c.propose(key, "v").value
            except Exception as exc:  # any failure is what this test counts
                failures.append(f"{key}: {type(exc).__name__}: {exc}")

    kubectl("annotate", "gcc", demo, "-n", NS, f"{opki.ROTATE_REQUEST}={time.time_ns()}")
    started = time.monotonic()

    def finished() -> bool:
        data = follow_the_secret()
        decide_a_little()
        notes = kubectl.json("get", "secret", secret, "-n", NS)["metadata"].get("annotations", {})
        bundle = _certs(data["ca.crt"])
        return opki.STEP not in notes and len(bundle) == 1 and bundle[0] != old_ca

    wait_for(finished, 600, "the CA rotation to finish", interval=1)
    new_ca = x509.load_pem_x509_certificate(secret_data(kubectl, secret)["tls.crt"])
    only_new = ssl.create_default_context(
        cadata=new_ca.public_bytes(serialization.Encoding.PEM).decode()
    )

    def every_member_serves_the_new_ca() -> bool:
        decide_a_little()
        return all(_issuer_of(member_url(demo, i), only_new) == new_ca.subject for i in range(3))

    wait_for(every_member_serves_the_new_ca, 120, "members to serve new-CA certificates", 2)
    took = time.monotonic() - started
    print(f"CA rotation: {len(acked)} decided, {len(failures)} failed, in {took:.0f} s")
    assert failures == [], f"{len(failures)} of {len(acked) + len(failures)} failed: {failures}"
    assert len(acked) >= 20, acked  # the load really ran across the rotation
    for key, value in acked.items():
        assert read(access, service_url(demo), key) == value, key
    reasons = [e["message"] for e in events(kubectl, demo) if e["reason"] == "Certificates"]
    assert any("CA rotation finished" in m for m in reasons), reasons


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


def _settled(kubectl: Kubectl, demo: str, epoch: int, members: int) -> bool:
    """The cluster serves ``epoch`` alone with ``members`` ready members, and says Ready."""
    obj = kubectl.json("get", "gcc", demo, "-n", NS)
    st = obj.get("status") or {}
    pods = kubectl.json("get", "pods", "-n", NS, "-l", f"app.kubernetes.io/instance={demo}")
    ready = [
        p
        for p in pods["items"]
        if all(c["ready"] for c in p["status"].get("containerStatuses") or [{"ready": False}])
    ]
    return (
        st.get("epoch") == epoch
        and not st.get("reconfiguration")
        and len(pods["items"]) == members == len(ready)
        and condition(obj, "Ready").get("status") == "True"
    )


def test_kubectl_scale_reconfigures_live_and_loses_nothing(
    kubectl: Kubectl, demo: str, access: Access
) -> None:
    """3 -> 5 by `kubectl scale` (the scale subresource), then back to 3 by an edit of
    spec.replicas: live transitions over mTLS (the operator fences and carries as an admin
    client), decisions made before and during both stay decided, retired pods go. The second
    transition survives every operator process being SIGKILLed in its carry step: the
    restarted operator resumes from the record and its progress count goes on."""
    node = service_url(demo)
    decided = {f"scale/{i}": propose(access, node, f"scale/{i}", f"v{i}") for i in range(10)}
    epoch = kubectl.json("get", "gcc", demo, "-n", NS)["status"]["epoch"]
    kubectl("scale", f"gcc/{demo}", "-n", NS, "--replicas=5")
    seen: set[str] = set()

    def grown() -> bool:
        st = kubectl.json("get", "gcc", demo, "-n", NS).get("status") or {}
        seen.add(st.get("phase", ""))
        key = f"during-grow/{len(decided)}"
        decided[key] = propose(access, node, key, "w")  # the service keeps deciding
        return _settled(kubectl, demo, epoch + 1, 5)

    wait_for(grown, 900, "5 members serving epoch " + str(epoch + 1), interval=5)
    assert "Reconfiguring" in seen, seen
    reasons = {e["reason"] for e in events(kubectl, demo)}
    assert {"ReconfigurationStarted", "Reconfigured"} <= reasons, reasons
    newest = member_url(demo, 4)  # a member that did not exist before: it holds carried keys
    for key, value in decided.items():
        assert read(access, newest, key) == value, key

    # 5 -> 3, with every operator process SIGKILLed in the middle of the carry step: enough
    # keys that the carry (4 keys per batch, see conftest) is still running when it dies
    creds = Credentials(ca=str(access.ca), token=access.tokens[WRITE])
    with Client([node], credentials=creds, timeout=10) as client:
        for i in range(KILL_KEYS):
            decided[f"kill/{i}"] = client.propose(f"kill/{i}", f"k{i}").value
    started = time.monotonic()
    kubectl("patch", "gcc", demo, "-n", NS, "--type=merge", "-p", '{"spec":{"replicas":3}}')

    def carrying() -> dict | None:
        rec = (kubectl.json("get", "gcc", demo, "-n", NS).get("status") or {}).get(
            "reconfiguration"
        ) or {}
        mid = rec.get("step") == "carry" and 0 < rec.get("keysCarried", 0) < rec.get("keysTotal", 0)
        return rec if mid and rec.get("toEpoch") == epoch + 2 else None

    before_kill = wait_for(carrying, 600, "the carry step under way", interval=0.2)
    killed = _kill_operators(kubectl)
    kill_at = time.monotonic()
    seen = [before_kill]
    failed: list[str] = []
    with Client([node], credentials=creds, timeout=10) as client:

        def finished() -> bool:
            st = kubectl.json("get", "gcc", demo, "-n", NS).get("status") or {}
            if st.get("reconfiguration"):
                seen.append(st["reconfiguration"])
            key = f"during-kill/{len(decided)}"
            try:  # decided while no operator runs, then while the new one finishes
                decided[key] = client.propose(key, "d").value
            except ClientError as exc:  # counted: the service may pause while members restart
                failed.append(str(exc))
            return _settled(kubectl, demo, epoch + 2, 3)

        wait_for(finished, 600, "back to 3 members after the operator was killed", interval=1)
    done_at = time.monotonic()
    restarts = {
        p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
        for p in operator_pods(kubectl, "graven-system")
    }
    assert all(restarts[pod] > before for pod, before in killed.items()), (killed, restarts)
    # progress never went back: the record kept the count across the restart
    carry = [r for r in seen if r.get("step") == "carry" and r.get("toEpoch") == epoch + 2]
    assert {r.get("keysTotal") for r in carry} == {before_kill["keysTotal"]}, carry
    counts = [r["keysCarried"] for r in carry]
    assert counts == sorted(counts), counts
    reasons = [e["reason"] for e in events(kubectl, demo)]
    assert reasons.count("Reconfigured") >= 2, reasons
    for key, value in decided.items():
        assert read_direct(access, member_url(demo, 0), key) == value, key
    for key, value in list(decided.items())[:20]:
        assert propose(access, node, key, "a later value") == value, key  # write-once
    print(
        f"operator SIGKILLed at carry {before_kill['keysCarried']}/{before_kill['keysTotal']}; "
        f"5 -> 3 took {done_at - started:.0f} s ({done_at - kill_at:.0f} s after the kill); "
        f"{len(decided)} decisions read back unchanged; {len(failed)} proposals failed"
    )


KILL_KEYS = 120  # written before the 5 -> 3 transition, so its carry step lasts a while


def read_direct(access: Access, member: str, key: str) -> str | None:
    """A linearizable read through one member, in-process (hundreds of keys: no CLI each)."""
    creds = Credentials(ca=str(access.ca), token=access.tokens[READ])
    with Client([member], credentials=creds, timeout=10, route=False) as client:
        return client.get(key)


def _kill_operators(kubectl: Kubectl) -> dict[str, int]:
    """SIGKILL the operator process of every operator pod (on this node: the kubelet then
    restarts the container). Returns each pod's restart count before the kill."""
    before = {}
    for pod in operator_pods(kubectl, "graven-system"):
        uid = pod["metadata"]["uid"]
        marks = (uid, uid.replace("-", "_"))
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cgroup = (proc / "cgroup").read_text()
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(m in cgroup for m in marks) and b"operator" in argv:
                pids.append(int(proc.name))
        assert pids, f"no operator process found for pod {pod['metadata']['name']}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        before[pod["metadata"]["name"]] = pod["status"]["containerStatuses"][0]["restartCount"]
    return before


def test_kubectl_apply_grows_one_member_to_three_and_changes_the_layout(
    kubectl: Kubectl, operator: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    """1 -> 3 members together with paxos -> fast by `kubectl apply` of an edited spec, then
    fast -> flexible (q1 3, q2 1): the operator moves the live cluster; what the single member
    decided reads back from every member afterwards and stays decided."""
    name = "grow"
    kubectl.apply(small(name))
    ca = wait_for(
        lambda: kubectl.get("secret", names.ca_secret(name), "-n", NS), 120, "the CA Secret"
    )
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(ca["data"]["ca.crt"]))
    access = Access(tmp_path / "ca.crt", tokens, tmp_path)
    wait_for(lambda: _settled(kubectl, name, 0, 1), READY_TIMEOUT, "the single member Ready")
    node = service_url(name)
    decided = {f"grow/{i}": propose(access, node, f"grow/{i}", f"v{i}") for i in range(5)}
    steps = [
        (1, {"replicas": 3, "quorums": {"preset": "fast"}}),
        (2, {"replicas": 3, "quorums": {"preset": "flexible", "q1": 3, "q2": 1}}),
    ]
    for epoch, spec in steps:
        kubectl.apply(small(name, **spec))
        wait_for(
            lambda epoch=epoch: _settled(kubectl, name, epoch, 3),
            600,
            f"3 members serving epoch {epoch}",
            interval=2,
        )
        for i in range(3):
            for key, value in decided.items():
                assert read_direct(access, member_url(name, i), key) == value, (epoch, i, key)
    assert propose(access, node, "grow/0", "a later value") == "v0"  # write-once
    reasons = [e["reason"] for e in events(kubectl, name)]
    assert reasons.count("Reconfigured") == 2, reasons
    kubectl("delete", "gcc", name, "-n", NS, "--wait=true", "--timeout=120s", timeout=150)


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
