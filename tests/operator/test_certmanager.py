"""cert-manager mode (spec.security.certManager): the Certificates the operator asks for, the
trust bundle it keeps, a CA rotation by a change of issuer that never breaks trust between
members, the refusal when cert-manager is missing, and the operator doing it all against the
apiserver emulator (a small stand-in plays cert-manager's issuing; tests/kube runs the real
cert-manager)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.server
import json
import ssl
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography import x509

from graven.node.cluster.spec import IssuerRef, SpecError, parse
from graven.node.security import pki as node_pki
from graven.node.security.identity import from_peercert
from graven.operator import certmanager, names, pki, render
from tests.operator.apiclient import condition, wait_for
from tests.operator.harness import NAMESPACE, Cluster, OperatorRunner, demo, open_crd
from tests.operator.test_pki import overlap_problems, trusted

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SETTLE = dt.timedelta(minutes=3)
OLD = IssuerRef("ca-old")
NEW = IssuerRef("ca-new", "ClusterIssuer")


def certificate_crd() -> dict:
    return open_crd("cert-manager.io", "Certificate", "certificates")


class FakeIssuers:
    """What cert-manager does with the Certificates, reduced to what the plan relies on: a
    Secret per Certificate, signed by the CA of its issuerRef, with ca.crt and the issuer
    annotations; reissued when the issuerRef changes."""

    def __init__(self) -> None:
        self.cas: dict[str, node_pki.Issued] = {}

    def ca(self, key: str) -> node_pki.Issued:
        if key not in self.cas:
            self.cas[key] = node_pki.new_ca(key.replace("/", "-"), now=T0)
        return self.cas[key]

    def secret(self, cert: dict, old: dict | None, now: dt.datetime) -> dict:
        spec = cert["spec"]
        ref = spec["issuerRef"]
        key = f"{ref['kind']}/{ref['name']}/{ref['group']}"
        if old is not None and certmanager.issued_by(old) == key:
            return old
        ca = self.ca(key)
        hosts = [*spec.get("dnsNames", []), *spec.get("ipAddresses", [])]
        leaf = node_pki.issue(ca, spec["commonName"], spec["uris"][0], hosts, now=now)
        data = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}
        notes = dict(
            zip(certmanager.ISSUED_BY, (ref["kind"], ref["name"], ref["group"]), strict=True)
        )
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": spec["secretName"], "namespace": "ns", "annotations": notes},
            "data": pki.encode(data),
        }


class World:
    """The bundle Secret and cert-manager's Secrets, moved on by each plan."""

    def __init__(self, replicas: int = 3) -> None:
        self.replicas = replicas
        self.issuers = FakeIssuers()
        self.secrets: dict[str, dict | None] = {}
        self.bundle: dict | None = None

    def step(self, issuer: IssuerRef, now: dt.datetime, issue: bool = True) -> certmanager.Plan:
        wanted = certmanager.secret_names("demo", self.replicas)
        live = {n: self.secrets.get(n) for n in wanted}
        plan = certmanager.plan("demo", "ns", self.replicas, issuer, live, self.bundle, now, SETTLE)
        notes = dict(((self.bundle or {}).get("metadata") or {}).get("annotations") or {})
        notes.update(plan.annotations)
        notes = {k: v for k, v in notes.items() if v is not None}
        data = _data(self.bundle)
        if plan.bundle is not None:
            data = {"ca.crt": plan.bundle}
        self.bundle = certmanager.bundle_secret("demo", "ns", data.get("ca.crt", b""), notes)
        if issue:
            for cert in plan.certificates:
                name = cert["spec"]["secretName"]
                self.secrets[name] = self.issuers.secret(cert, self.secrets.get(name), now)
        return plan

    def leaves(self) -> dict[str, x509.Certificate]:
        """Members' and Prometheus' certificates (what members must accept from each other)."""
        return {
            n: x509.load_pem_x509_certificate(_data(s)["tls.crt"])
            for n, s in self.secrets.items()
            if s is not None and n != names.operator_cert("demo")
        }

    def trust(self) -> list[x509.Certificate]:
        pem = _data(self.bundle).get("ca.crt", b"")
        return x509.load_pem_x509_certificates(pem) if pem else []

    def notes(self) -> dict[str, str]:
        return (self.bundle or {}).get("metadata", {}).get("annotations", {})


def _data(secret: dict | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}


# ------------------------------------------------------------------------------ the objects


def test_member_certificates_carry_what_the_self_managed_ones_do() -> None:
    w = World()
    plan = w.step(OLD, T0, issue=False)
    by_name = {c["metadata"]["name"]: c for c in plan.certificates}
    assert set(by_name) == {
        "demo-0-cert", "demo-1-cert", "demo-2-cert", "demo-operator-cert", "demo-metrics-cert"
    }  # fmt: skip
    member = by_name["demo-1-cert"]["spec"]
    hosts = pki.member_hosts("demo", "ns", 1)
    assert member["secretName"] == "demo-1-cert"
    assert member["uris"] == ["graven://demo/member/demo-1"]
    assert member["dnsNames"] == [h for h in hosts if h != "127.0.0.1"]
    assert member["ipAddresses"] == ["127.0.0.1"]
    assert member["usages"] == ["digital signature", "server auth", "client auth"]
    assert member["issuerRef"] == {"name": "ca-old", "kind": "Issuer", "group": "cert-manager.io"}
    assert member["privateKey"]["rotationPolicy"] == "Always"
    operator = by_name["demo-operator-cert"]["spec"]
    assert operator["uris"] == ["graven://demo/client/admin/graven-operator"]
    assert "server auth" not in operator["usages"] and "dnsNames" not in operator
    assert by_name["demo-metrics-cert"]["spec"]["uris"] == ["graven://demo/client/read/prometheus"]
    for cert in plan.certificates:  # the cluster's Secrets are found by its labels
        assert cert["spec"]["secretTemplate"]["labels"] == cert["metadata"]["labels"]
        assert cert["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
    assert plan.waiting == list(certmanager.secret_names("demo", 3))


def test_issued_certificates_name_the_identities_the_peer_api_checks() -> None:
    w = World()
    w.step(OLD, T0)
    w.step(OLD, T0)
    leaf = x509.load_pem_x509_certificate(_data(w.secrets["demo-2-cert"])["tls.crt"])
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    peercert = {"subjectAltName": [("URI", u) for u in uris.get_values_for_type(
        x509.UniformResourceIdentifier)]}  # fmt: skip
    who = from_peercert(peercert)
    assert who is not None and (who.cluster, who.kind, who.name) == ("demo", "member", "demo-2")
    # the bundle the members mount trusts every certificate issued
    (ca,) = w.trust()
    assert all(trusted(leaf, [ca], T0) for leaf in w.leaves().values())
    assert w.notes()[certmanager.MODE] == "cert-manager"


def test_spec_validation() -> None:
    ref = parse({"security": {"certManager": {"issuerRef": {"name": "ca"}}}}).security
    assert ref.cert_manager == IssuerRef("ca", "Issuer", "cert-manager.io")
    for bad in (
        {"certManager": {"issuerRef": {"name": "ca"}}, "tls": False},
        {"certManager": {"issuerRef": {"name": "ca", "kind": "Secret"}}},
        {"certManager": {"issuerRef": {"name": "Not A Name"}}},
        {"certManager": {"issuerRef": {}}},
        {"certManager": {}},
        {"certManager": "ca"},
    ):
        with pytest.raises(SpecError, match="certManager"):
            parse({"security": bad})


def test_pods_mount_each_members_cert_manager_secret() -> None:
    spec = parse({"security": {"certManager": {"issuerRef": {"name": "ca"}}},
                  "monitoring": {"serviceMonitor": True}})  # fmt: skip
    objs = {o["kind"]: o for o in render.render_all(
        "demo", "ns", spec, 1, render.Capabilities(service_monitor=True))}  # fmt: skip
    sts = objs["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sources = volumes["tls"]["projected"]["sources"]
    assert [s["secret"]["name"] for s in sources] == ["demo-0-cert", "demo-1-cert", "demo-2-cert"]
    assert sources[1]["secret"]["items"] == [
        {"key": "tls.crt", "path": "demo-1.crt"},
        {"key": "tls.key", "path": "demo-1.key"},
    ]
    # the same trust bundle Secret and the same paths as self-managed certificates
    assert volumes["ca"]["secret"]["secretName"] == "demo-ca"
    assert volumes["ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    (container,) = pod["containers"]
    assert "/etc/graven-tls/$(POD_NAME).crt" in container["command"] or any(
        c.endswith("/$(POD_NAME).crt") for c in container["command"]
    )
    kubernetes_validate.validate(sts, "1.33.0", strict=True)
    tls = objs["ServiceMonitor"]["spec"]["endpoints"][0]["tlsConfig"]
    assert tls["cert"] == {"secret": {"name": "demo-metrics-cert", "key": "tls.crt"}}
    assert tls["keySecret"] == {"name": "demo-metrics-cert", "key": "tls.key"}


def test_scaling_adds_and_drops_member_certificates() -> None:
    w = World(replicas=5)
    names_ = {c["metadata"]["name"] for c in w.step(OLD, T0).certificates}
    assert {"demo-3-cert", "demo-4-cert"} <= names_
    w.replicas = 2
    names_ = {c["metadata"]["name"] for c in w.step(OLD, T0).certificates}
    assert "demo-2-cert" not in names_ and "demo-1-cert" in names_


# ------------------------------------------------------------------------------ rotation


def _rotate(w: World, issuer: IssuerRef, start: dt.datetime) -> list[tuple[dict, list]]:
    states = [(w.leaves(), w.trust())]
    now = start
    for _ in range(12):  # bounded: three steps, each waiting for its settle time
        w.step(issuer, now)
        states.append((w.leaves(), w.trust()))
        if certmanager.STEP not in w.notes() and len(states) > 3:
            break
        now += SETTLE
    return states


def test_changing_the_issuer_rotates_the_ca_without_breaking_trust() -> None:
    w = World()
    w.step(OLD, T0)
    w.step(OLD, T0)
    (old_ca,) = w.trust()
    w.step(NEW, T0)
    assert w.notes()[certmanager.STEP] == "trust"
    # the members stay on the old issuer until the new CA is trusted and settled
    plan = w.step(NEW, T0 + SETTLE / 2)
    refs = {c["metadata"]["name"]: c["spec"]["issuerRef"]["name"] for c in plan.certificates}
    assert refs["demo-0-cert"] == "ca-old" and refs["demo-operator-cert"] == "ca-new"
    assert len(w.trust()) == 2
    states = _rotate(w, NEW, T0 + SETTLE)
    (new_ca,) = w.trust()
    assert new_ca.subject != old_ca.subject
    later = T0 + 20 * SETTLE  # every certificate issued so far is valid then
    assert all(trusted(leaf, [new_ca], later) for leaf in w.leaves().values())
    assert overlap_problems(states, later) == []
    assert w.notes()[certmanager.ISSUER] == certmanager.issuer_key(NEW)


def test_overlap_check_catches_an_issuer_change_without_the_trust_step() -> None:
    """Planted: the operator loses track of the rotation (as if it compared nothing) and moves
    every Certificate to the new issuer at once: the check must see broken trust."""
    w = World()
    w.step(OLD, T0)
    w.step(OLD, T0)
    states = [(w.leaves(), w.trust())]
    assert w.bundle is not None
    w.bundle["metadata"]["annotations"][certmanager.ISSUER] = certmanager.issuer_key(NEW)
    for i in range(3):
        w.step(NEW, T0 + i * SETTLE)
        states.append((w.leaves(), w.trust()))
    assert overlap_problems(states, T0 + 20 * SETTLE)


def test_an_issuer_without_ca_crt_is_reported() -> None:
    w = World()
    w.step(OLD, T0)
    for name, secret in w.secrets.items():
        data = _data(secret)
        data.pop("ca.crt")
        assert secret is not None
        w.secrets[name] = {**secret, "data": pki.encode(data)}
    plan = w.step(OLD, T0, issue=False)
    assert any("no ca.crt" in e for e in plan.events)


# ------------------------------------------------------------------------------ the operator


def _play_cert_manager(apiserver: Cluster, issuers: FakeIssuers) -> int:
    """One pass of issuing: write the Secret of every Certificate (as cert-manager would)."""
    api, written = apiserver.api, 0
    for cert in api.list("Certificate", NAMESPACE):
        name = cert["spec"]["secretName"]
        old = api.get("Secret", NAMESPACE, name)
        new = issuers.secret(cert, old, dt.datetime.now(dt.UTC))
        if new is old:
            continue
        new["metadata"]["namespace"] = NAMESPACE
        if old is None:
            api.create(new)
        else:
            api.patch("Secret", NAMESPACE, name, {"data": new["data"],
                      "metadata": {"annotations": new["metadata"]["annotations"]}})  # fmt: skip
        written += 1
    return written


CM = {"certManager": {"issuerRef": {"name": "ca-old"}}}


def refusal(api: Any, reason: str) -> dict:
    """The Progressing condition of demo, once its reason is ``reason``."""
    return wait_for(
        lambda: (
            (c := condition(api.get("ConsensusCluster", NAMESPACE, "demo"), "Progressing"))
            and c.get("reason") == reason
            and c
        ),
        what=f"the refusal {reason}",
    )


def test_missing_cert_manager_is_refused_and_nothing_is_created(
    apiserver: Cluster, crd: dict
) -> None:
    api = apiserver.api
    runner = OperatorRunner().start()
    try:
        api.create(demo(security=CM))
        got = refusal(api, "CertManagerMissing")
        assert "certificates.cert-manager.io" in got["message"]
        events = api.events(NAMESPACE, "demo")
        assert any(e["reason"] == "CertManagerMissing" for e in events)
        # no half-state: no pods, no Secrets, no configuration
        assert api.get("StatefulSet", NAMESPACE, "demo") is None
        assert api.list("Secret", NAMESPACE) == []
        assert api.get("ConfigMap", NAMESPACE, "demo-config") is None
        # installing cert-manager lets it go on by itself
        api.create(certificate_crd())
        wait_for(lambda: api.get("StatefulSet", NAMESPACE, "demo"), what="StatefulSet")
        assert len(api.list("Certificate", NAMESPACE)) == 5
    finally:
        runner.stop()


def test_operator_asks_cert_manager_and_keeps_the_trust_bundle(
    apiserver: Cluster, crd: dict
) -> None:
    api = apiserver.api
    api.create(certificate_crd())
    issuers = FakeIssuers()
    runner = OperatorRunner().start()
    try:
        cluster = api.create(demo(security=CM))
        certs = wait_for(
            lambda: len(c := api.list("Certificate", NAMESPACE)) == 5 and c, what="Certificates"
        )
        for cert in certs:
            (ref,) = cert["metadata"]["ownerReferences"]
            assert ref["uid"] == cluster["metadata"]["uid"] and ref["controller"] is True
        # the self-managed CA is not made: the operator holds no CA key
        assert api.get("Secret", NAMESPACE, "demo-tls") is None
        assert _play_cert_manager(apiserver, issuers) == 5
        ca = issuers.ca("Issuer/ca-old/cert-manager.io").cert_pem
        bundle = wait_for(
            lambda: (
                (s := api.get("Secret", NAMESPACE, "demo-ca"))
                and base64.b64decode((s.get("data") or {}).get("ca.crt", "")) == ca
                and s
            ),
            what="the trust bundle",
        )
        assert set(bundle["data"]) == {"ca.crt"}
        # cert-manager's Secrets (keys included) are owned by the cluster: deleted with it
        for secret in certmanager.secret_names("demo", 3):
            wait_for(
                lambda s=secret: any(
                    r["uid"] == cluster["metadata"]["uid"]
                    for r in api.get("Secret", NAMESPACE, s)["metadata"].get("ownerReferences", [])
                ),
                what=f"{secret} adopted",
            )
        assert bundle["metadata"]["ownerReferences"][0]["uid"] == cluster["metadata"]["uid"]
        # a hand edit of a Certificate is repaired like any child
        api.patch("Certificate", NAMESPACE, "demo-0-cert",
                  {"spec": {"issuerRef": {"name": "someone-elses"}}})  # fmt: skip
        wait_for(
            lambda: (
                api.get("Certificate", NAMESPACE, "demo-0-cert")["spec"]["issuerRef"]["name"]
                == "ca-old"
            ),
            what="drift repaired",
        )
        # switching a running cluster to the operator's own CA is refused, nothing changes
        api.patch(
            "ConsensusCluster", NAMESPACE, "demo", {"spec": {"security": {"certManager": None}}}
        )
        wait_for(
            lambda: (
                condition(api.get("ConsensusCluster", NAMESPACE, "demo"), "Progressing").get(
                    "reason"
                )
                == "CertificateSourceChanged"
            ),
            what="the switch refused",
        )
        assert api.get("Secret", NAMESPACE, "demo-tls") is None
        sts = api.get("StatefulSet", NAMESPACE, "demo")
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        assert "projected" in volumes["tls"]
    finally:
        runner.stop()


def test_scaled_away_members_lose_their_certificates(apiserver: Cluster, crd: dict) -> None:
    """The operator deletes the Certificates of members that are gone (not just stops
    renewing them): a removed member's key must not stay valid and trusted."""
    api = apiserver.api
    api.create(certificate_crd())
    runner = OperatorRunner().start()
    try:
        api.create(demo(security=CM))
        wait_for(lambda: len(api.list("Certificate", NAMESPACE)) == 5, what="Certificates")
        # a Certificate of a former member (as a scale-down leaves it), owned by the cluster
        stray = dict(api.get("Certificate", NAMESPACE, "demo-2-cert"))
        stray["metadata"] = {
            "name": "demo-7-cert",
            "namespace": NAMESPACE,
            "labels": stray["metadata"]["labels"],
            "ownerReferences": stray["metadata"]["ownerReferences"],
        }
        api.create(stray)
        wait_for(lambda: api.get("Certificate", NAMESPACE, "demo-7-cert") is None, what="pruned")
    finally:
        runner.stop()


class _Kube:
    """Just enough of Kube for the reconfiguration worker's credentials: stored objects."""

    def __init__(self, objects: dict[str, dict]) -> None:
        self.objects = objects

    async def get(self, url: str) -> dict | None:
        return self.objects.get(url)

    async def close(self) -> None:
        return None


def _tls_server(ca: node_pki.Issued, leaf: node_pki.Issued, tmp: Path) -> tuple[int, list, Any]:
    """A member stand-in on 127.0.0.1 that asks for a client certificate from ``ca`` and
    answers with the identity it saw."""
    (tmp / "ca.crt").write_bytes(ca.cert_pem)
    (tmp / "m.crt").write_bytes(leaf.cert_pem)
    (tmp / "m.key").write_bytes(leaf.key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp / "ca.crt"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(tmp / "m.crt", tmp / "m.key")
    seen: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            who = from_peercert(self.connection.getpeercert())  # type: ignore[attr-defined]
            seen.append(who)
            body = json.dumps({"ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], seen, server


async def test_the_operator_calls_members_as_its_cert_manager_identity(tmp_path: Path) -> None:
    """No CA key anywhere: the reconfiguration worker shows the admin certificate cert-manager
    wrote into NAME-operator-cert and trusts the bundle in NAME-ca."""
    from graven.operator.kube import path
    from graven.operator.reconcile import Operator

    w = World()
    w.step(OLD, T0)
    w.step(OLD, T0)
    cr = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u"},
        "spec": {"security": CM},
    }
    objects = {
        path(names.KIND, "ns", "demo"): cr,
        path("Secret", "ns", "demo-ca"): w.bundle,
        path("Secret", "ns", "demo-operator-cert"): w.secrets["demo-operator-cert"],
    }
    assert "tls.key" not in (w.bundle or {}).get("data", {})
    ca = w.issuers.ca("Issuer/ca-old/cert-manager.io")
    member = node_pki.issue_member(ca, "demo", "demo-0", ["127.0.0.1"])
    port, seen, server = _tls_server(ca, member, tmp_path)
    op = Operator(kube=_Kube(objects))  # type: ignore[arg-type]
    try:
        calls = await op.transitions._calls("ns", "demo")
        url = f"https://127.0.0.1:{port}/v1/cluster"
        assert await asyncio.to_thread(calls, "GET", url) == {"ok": True}
        (who,) = seen
        assert (who.cluster, who.kind, who.role, who.name) == (
            "demo", "client", "admin", "graven-operator"
        )  # fmt: skip
        # no operator certificate yet: the worker waits, it does not invent one
        del objects[path("Secret", "ns", "demo-operator-cert")]
        op.transitions._creds.clear()
        with pytest.raises(BaseException, match="demo-operator-cert"):
            await op.transitions._calls("ns", "demo")
    finally:
        server.shutdown()
        op.transitions.stop.set()


def test_a_foreign_secret_in_the_bundles_place_is_refused(apiserver: Cluster, crd: dict) -> None:
    """Someone else's Secret named NAME-ca (as an Issuer's CA Secret could be): a clear refusal,
    nothing created, and the Secret left as it was."""
    api = apiserver.api
    api.create(certificate_crd())
    theirs = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "demo-ca", "namespace": NAMESPACE},
        "data": pki.encode({"tls.crt": b"theirs"}),
    }
    api.create(theirs)
    runner = OperatorRunner().start()
    try:
        api.create(demo(security=CM))
        got = refusal(api, "ApplyFailed")
        assert "demo-ca" in got["message"]
        assert api.get("StatefulSet", NAMESPACE, "demo") is None
        assert api.list("Certificate", NAMESPACE) == []
        assert api.get("Secret", NAMESPACE, "demo-ca")["data"] == theirs["data"]
    finally:
        runner.stop()
