"""A ConsensusCluster whose certificates come from the real cert-manager (spec.security.
certManager), on the real Kubernetes of `make kube`.

cert-manager's own controllers (module v1.21.2, built by `make kube` into graven-cert-manager,
tools/kube/certmanager/main.go) run on the node, outside the cluster like the control plane,
against the apiserver; its CRDs come from the same module. A CA Issuer is bootstrapped from a
SelfSigned one, as a user would. What is shown: a cluster asking for cert-manager before it is
installed is refused and nothing runs; once it is installed the members serve certificates
cert-manager issued, decide over mTLS, refuse strangers, and pick up a renewal (cert-manager's
"renew now", as `cmctl renew` asks for it) with no failed request, and go through a CA
rotation by a change of issuer with no failed request.
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubeenv import ENV, NS, Kubectl, wait_for
from test_e2e import (
    READY_TIMEOUT,
    Access,
    _context,
    _served,
    call,
    check_only_members_write,
    condition,
    example,
    member_url,
    propose,
    serves_under_load,
    service_url,
    token_secret,
)

from graven.node.client import Client
from graven.node.client.credentials import Credentials
from graven.node.security import pki
from graven.node.security.identity import WRITE
from graven.operator import names, status
from graven.operator import pki as opki

NAME = "cm"  # the cluster
ISSUER = "e2e-ca"  # the CA Issuer (not "cm-ca": the cluster's own bundle Secret is NAME-ca)
TOKENS = "cm-tokens"
CRDS = Path(ENV["KUBE_BIN"]) / "cert-manager-crds"
BINARY = Path(ENV["KUBE_BIN"]) / "graven-cert-manager"


def cluster() -> dict:
    """examples/cluster.yaml (three members, paxos) with certificates from cert-manager."""
    doc = example()
    doc["metadata"] = {"name": NAME}
    doc["spec"]["storage"] = {"size": "1Gi", "retention": {"whenDeleted": "Delete"}}
    doc["spec"]["security"] = {
        "clientTokensSecret": TOKENS,
        "certManager": {"issuerRef": {"name": ISSUER, "kind": "Issuer"}},
    }
    return doc


def served_api(kubectl: Kubectl) -> bool:
    done = kubectl("get", "--raw", "/apis/cert-manager.io/v1", check=False)
    return done.returncode == 0 and '"certificates"' in done.stdout


@pytest.fixture(scope="module")
def tokens(kubectl: Kubectl, operator: str) -> dict[str, str]:
    return token_secret(kubectl, TOKENS, "cm")


@pytest.fixture(scope="module")
def refused_first(kubectl: Kubectl, operator: str, tokens: dict[str, str]) -> dict:
    """The cluster applied while cert-manager is not installed: the operator's verdict."""
    assert not served_api(kubectl), "cert-manager is already installed on this cluster"
    kubectl.apply(cluster())

    def refused() -> dict | None:
        cond = condition(kubectl.json("get", "gcc", NAME, "-n", NS), "Progressing")
        return cond if cond.get("reason") == status.CERT_MANAGER_MISSING else None

    return wait_for(refused, 60, "the CertManagerMissing refusal")


@pytest.fixture(scope="module")
def cert_manager(
    kubectl: Kubectl, refused_first: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen]:
    """cert-manager's CRDs installed and its controllers running on the node."""
    assert BINARY.exists(), f"{BINARY} missing: `make kube` builds it (tools/kube/build.sh)"
    for crd in sorted(CRDS.glob("*.yaml")):
        kubectl("apply", "--server-side", "-f", str(crd))
    for crd in ("certificates", "certificaterequests", "issuers", "clusterissuers"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.cert-manager.io")
    log = tmp_path_factory.mktemp("cert-manager") / "cert-manager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BINARY), "--kubeconfig", ENV["KUBECONFIG_ADMIN"], "--v=2"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        kubectl("delete", "gcc", NAME, "-n", NS, "--wait=true", "--timeout=120s", check=False)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.returncode not in (0, -15):
            print(log.read_text()[-3000:])


@pytest.fixture(scope="module")
def ca_issuer(kubectl: Kubectl, cert_manager: subprocess.Popen) -> pki.Issued:
    """A CA Issuer bootstrapped from a SelfSigned one (cert-manager's documented recipe);
    returns its CA (only the test, as an admin, reads the key)."""
    docs = [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": "bootstrap"},
            "spec": {"selfSigned": {}},
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": ISSUER},
            "spec": {
                "isCA": True,
                "commonName": "graven e2e cert-manager CA",
                "secretName": ISSUER,
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": "bootstrap", "kind": "Issuer", "group": "cert-manager.io"},
            },
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": ISSUER},
            "spec": {"ca": {"secretName": ISSUER}},
        },
    ]
    for doc in docs:
        kubectl.apply(doc)

    def ready() -> bool:
        assert cert_manager.poll() is None, "graven-cert-manager exited"
        issuer = kubectl.get("issuer", ISSUER, "-n", NS) or {}
        conds = (issuer.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait_for(ready, 120, f"Issuer {ISSUER} Ready")
    data = kubectl.json("get", "secret", ISSUER, "-n", NS)["data"]
    return pki.Issued(base64.b64decode(data["tls.key"]), base64.b64decode(data["tls.crt"]))


@pytest.fixture(scope="module")
def access(
    kubectl: Kubectl,
    ca_issuer: pki.Issued,
    tokens: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Access:
    done = kubectl(
        *("wait", "-n", NS, "--for=condition=Ready", f"gcc/{NAME}"),
        # + the operator's capability cache (60 s): it learns cert-manager is there now
        f"--timeout={READY_TIMEOUT + 60}s",
        check=False,
        timeout=READY_TIMEOUT + 90,
    )
    assert done.returncode == 0, done.stdout + done.stderr + _debug(kubectl)
    root = tmp_path_factory.mktemp("cm-access")
    bundle = kubectl.json("get", "secret", names.ca_secret(NAME), "-n", NS)["data"]["ca.crt"]
    (root / "ca.crt").write_bytes(base64.b64decode(bundle))
    return Access(root / "ca.crt", tokens, root)


def _debug(kubectl: Kubectl) -> str:
    out = kubectl("get", "certificates,secrets,pods,gcc", "-n", NS, "-o", "wide", check=False)
    return "\n" + out.stdout + out.stderr


def _leaf(kubectl: Kubectl, secret: str) -> x509.Certificate:
    data = kubectl.json("get", "secret", secret, "-n", NS)["data"]
    return x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))


def test_without_cert_manager_the_cluster_is_refused_and_nothing_runs(
    kubectl: Kubectl, refused_first: dict
) -> None:
    assert "cert-manager" in refused_first["message"]
    assert kubectl.get("statefulset", NAME, "-n", NS) is None
    assert kubectl.get("secret", names.ca_secret(NAME), "-n", NS) is None
    reasons = {
        e["reason"]
        for e in kubectl.json(
            "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={NAME}"
        )["items"]
    }
    assert status.CERT_MANAGER_MISSING in reasons


def test_members_serve_certificates_cert_manager_issued(
    kubectl: Kubectl, ca_issuer: pki.Issued, access: Access
) -> None:
    certs = kubectl.json(
        "get", "certificates", "-n", NS, "-l", f"app.kubernetes.io/instance={NAME}"
    )
    by_name = {c["metadata"]["name"]: c for c in certs["items"]}
    assert set(by_name) == {f"{NAME}-{i}-cert" for i in range(3)} | {
        f"{NAME}-operator-cert",
        f"{NAME}-metrics-cert",
    }
    for cert in by_name.values():
        (owner,) = cert["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("ConsensusCluster", NAME)
        assert any(
            c["type"] == "Ready" and c["status"] == "True" for c in cert["status"]["conditions"]
        )
    # the operator keeps no CA of its own: the bundle holds cert-manager's CA and nothing else
    assert kubectl.get("secret", names.tls_secret(NAME), "-n", NS) is None
    bundle = kubectl.json("get", "secret", names.ca_secret(NAME), "-n", NS)["data"]
    assert set(bundle) == {"ca.crt"}
    assert x509.load_pem_x509_certificates(base64.b64decode(bundle["ca.crt"])) == [ca_issuer.cert]
    for i in range(3):
        served = x509.load_der_x509_certificate(_served(member_url(NAME, i), access.context()))
        assert served == _leaf(kubectl, names.member_cert(NAME, i))
        assert served.issuer == ca_issuer.cert.subject
        uris = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"graven://{NAME}/member/{NAME}-{i}"
        ]


def test_decisions_over_mtls_and_strangers_are_refused(
    kubectl: Kubectl, ca_issuer: pki.Issued, access: Access, tmp_path: Path
) -> None:
    # members reach a decision: they call each other with their cert-manager certificates
    assert propose(access, service_url(NAME), "cm/first", "v1") == "v1"
    assert propose(access, member_url(NAME, 2), "cm/first", "other") == "v1"
    check_only_members_write(NAME, ca_issuer, access, tmp_path, "cm-peer")


def test_a_renewal_by_cert_manager_is_picked_up_with_no_failed_request(
    kubectl: Kubectl, access: Access
) -> None:
    secret = names.member_cert(NAME, 0)
    before = _leaf(kubectl, secret)
    # "renew now", as `cmctl renew` asks for it: the Issuing condition on the status
    cert = kubectl.json("get", "certificate", secret, "-n", NS)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conds = [c for c in cert["status"].get("conditions", []) if c["type"] != "Issuing"]
    conds.append(
        {
            "type": "Issuing",
            "status": "True",
            "reason": "ManuallyTriggered",
            "message": "Certificate re-issuance manually triggered",
            "lastTransitionTime": now,
            "observedGeneration": cert["metadata"]["generation"],
        }
    )
    kubectl(
        *("patch", "certificate", secret, "-n", NS, "--subresource=status", "--type=merge"),
        *("-p", json.dumps({"status": {"conditions": conds}})),
    )

    def renewed() -> x509.Certificate | None:
        leaf = _leaf(kubectl, secret)
        return leaf if leaf.serial_number != before.serial_number else None

    fresh = wait_for(renewed, 60, "cert-manager to reissue the certificate")
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    # rotationPolicy: Always, a new key
    assert fresh.public_key().public_bytes(*der) != before.public_key().public_bytes(*der)
    fresh_der = fresh.public_bytes(serialization.Encoding.DER)
    assert serves_under_load(access, NAME, fresh_der, "cm-renewal") >= 2


def _ca_issuer(kubectl: Kubectl, name: str) -> pki.Issued:
    """Another CA Issuer from the SelfSigned bootstrap one (a new CA to rotate to)."""
    kubectl.apply(
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": name},
            "spec": {
                "isCA": True,
                "commonName": f"graven e2e {name}",
                "secretName": name,
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": "bootstrap", "kind": "Issuer", "group": "cert-manager.io"},
            },
        }
    )
    kubectl.apply(
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": name},
            "spec": {"ca": {"secretName": name}},
        }
    )

    def ready() -> bool:
        issuer = kubectl.get("issuer", name, "-n", NS) or {}
        conds = (issuer.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait_for(ready, 120, f"Issuer {name} Ready")
    data = kubectl.json("get", "secret", name, "-n", NS)["data"]
    return pki.Issued(base64.b64decode(data["tls.key"]), base64.b64decode(data["tls.crt"]))


def test_changing_the_issuer_rotates_the_ca_with_no_failed_request(
    kubectl: Kubectl, ca_issuer: pki.Issued, access: Access, tmp_path: Path
) -> None:
    """CA rotation the cert-manager way: a new CA Issuer, named in issuerRef. The operator
    trusts the new CA first, then has cert-manager reissue the members, then drops the old CA
    (steps --ca-rotation-settle = 40 s apart, see conftest). A client reads the bundle from the
    Secret each round, as a pod's mounted ca.crt follows it; no request may fail meanwhile."""
    new = _ca_issuer(kubectl, "e2e-ca-2")
    patch = {"spec": {"security": {"certManager": {"issuerRef": {"name": "e2e-ca-2"}}}}}
    kubectl("patch", "gcc", NAME, "-n", NS, "--type=merge", "-p", json.dumps(patch))
    bundle_file = tmp_path / "ca.crt"
    failures: list[str] = []
    steps: set[str] = set()
    n = 0

    def rotated() -> bool:
        nonlocal n
        n += 1
        secret = kubectl.json("get", "secret", names.ca_secret(NAME), "-n", NS)
        steps.add(secret["metadata"].get("annotations", {}).get(opki.STEP, "-"))
        pem = base64.b64decode(secret["data"]["ca.crt"])
        bundle_file.write_bytes(pem)
        creds = Credentials(ca=str(bundle_file), token=access.tokens[WRITE])
        try:
            with Client([service_url(NAME)], credentials=creds, timeout=5) as c:
                c.propose(f"cm-rotation/{n}", "v")
            with Client([member_url(NAME, n % 3)], credentials=creds, timeout=5, route=False) as c:
                c.propose(f"cm-rotation/{n}/direct", "v")
        except Exception as exc:  # any failure is what this test counts
            failures.append(f"{type(exc).__name__}: {exc}")
        if x509.load_pem_x509_certificates(pem) != [new.cert]:
            return False
        ctx = ssl.create_default_context(cafile=str(bundle_file))
        served = [
            x509.load_der_x509_certificate(_served(member_url(NAME, i), ctx)) for i in range(3)
        ]
        return all(leaf.issuer == new.cert.subject for leaf in served)

    wait_for(rotated, 600, "members on the new CA and only the new CA trusted", 3)
    assert failures == [], f"{len(failures)} of {n} rounds failed: {failures[:3]}"
    assert {"trust", "reissue"} <= steps, steps
    reasons = [
        e["message"]
        for e in kubectl.json(
            "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={NAME}"
        )["items"]
        if e["reason"] == "Certificates"
    ]
    assert any("CA rotation finished" in m for m in reasons), reasons
    # the old CA is no longer trusted: a member certificate from it is refused (once the
    # kubelet has synced the bundle into the pods: a few seconds)
    old_member = pki.issue_member(ca_issuer, NAME, f"{NAME}-1", opki.member_hosts(NAME, NS, 0))
    ctx = _context(Access(bundle_file, access.tokens, tmp_path), tmp_path, "old", old_member)
    tries = 0

    def old_ca_refused() -> str | None:
        nonlocal tries
        tries += 1
        write = {"writes": [{"key": f"cm-peer/old-ca/{tries}", "rs": 5, "value": "intruder"}]}
        outcome = call(member_url(NAME, 0), "POST", "/v1/registers/write", ctx, write)
        return outcome if isinstance(outcome, str) and outcome.startswith("refused") else None

    wait_for(old_ca_refused, 60, "a member certificate of the old CA refused", 2)
