"""The operator's certificates: created, renewed before expiry, and a CA rotation whose every
step keeps each member able to talk to each other member, whichever of two consecutive steps
each of them has loaded (the kubelet updates Secret volumes at different moments)."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
from typing import Any

from cryptography import x509

from graven.operator import pki

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SETTLE = dt.timedelta(minutes=3)


class Store:
    """The two Secrets as the apiserver would hold them, updated from each plan."""

    def __init__(self) -> None:
        self.ca: dict[str, Any] | None = None
        self.tls: dict[str, Any] | None = None

    def apply(self, plan: pki.Plan) -> None:
        if plan.ca is not None or plan.ca_annotations:
            old = dict((self.ca or {}).get("metadata", {}).get("annotations", {}))
            old.update(plan.ca_annotations)
            notes = {k: v for k, v in old.items() if v is not None}
            data = plan.ca if plan.ca is not None else pki._decode(self.ca)
            self.ca = pki.secret("demo-ca", "ns", "demo", data, notes)
        if plan.tls is not None:
            self.tls = pki.secret("demo-tls", "ns", "demo", plan.tls, {})

    def step(self, now: dt.datetime, request: str | None = None, replicas: int = 3) -> pki.Plan:
        plan = pki.plan("demo", "ns", replicas, self.ca, self.tls, now, request, SETTLE)
        self.apply(plan)
        return plan

    def files(self, name: str) -> bytes:
        assert self.tls is not None
        return base64.b64decode(self.tls["data"][name])

    def bundle(self) -> list[x509.Certificate]:
        assert self.ca is not None
        return x509.load_pem_x509_certificates(base64.b64decode(self.ca["data"]["ca.crt"]))

    def leaves(self) -> dict[str, x509.Certificate]:
        assert self.tls is not None
        return {
            k[:-4]: x509.load_pem_x509_certificate(base64.b64decode(v))
            for k, v in self.tls["data"].items()
            if k.endswith(".crt")
        }


def trusted(leaf: x509.Certificate, bundle: list[x509.Certificate], now: dt.datetime) -> bool:
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return False
    for ca in bundle:
        try:
            leaf.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, Exception):
            continue
    return False


def overlap_problems(states: list[tuple[dict, list]], now: dt.datetime) -> list[str]:
    """Between consecutive states a member may hold either one's files: every leaf of one must
    be trusted by the bundle of the other, both ways."""
    problems = []
    for (leaves_a, bundle_a), (leaves_b, bundle_b) in itertools.pairwise(states):
        for name, leaf in {**leaves_a, **leaves_b}.items():
            for bundle in (bundle_a, bundle_b):
                if not trusted(leaf, bundle, now):
                    problems.append(f"{name}: not trusted across a step")
    return problems


def test_first_pass_creates_a_ca_and_every_certificate() -> None:
    s = Store()
    plan = s.step(T0)
    assert plan.events[0].startswith("created the cluster CA")
    assert set(s.leaves()) == {"demo-0", "demo-1", "demo-2", "metrics"}
    (ca,) = s.bundle()
    assert all(trusted(leaf, [ca], T0) for leaf in s.leaves().values())
    san = s.leaves()["demo-1"].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "graven://demo/member/demo-1" in san.value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert "demo-1.demo-peers.ns.svc" in san.value.get_values_for_type(x509.DNSName)
    assert s.step(T0 + dt.timedelta(minutes=1)).tls is None  # nothing to do: no churn


def test_leaves_are_renewed_before_they_expire() -> None:
    s = Store()
    s.step(T0)
    first = s.leaves()["demo-0"]
    later = first.not_valid_after_utc - pki.LEAF_RENEW + dt.timedelta(hours=1)
    plan = s.step(later)
    renewed = s.leaves()["demo-0"]
    assert plan.tls is not None and renewed.serial_number != first.serial_number
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert trusted(renewed, s.bundle(), later)


def test_scaling_issues_and_removes_member_certificates() -> None:
    s = Store()
    s.step(T0)
    s.step(T0, replicas=5)
    assert {"demo-3", "demo-4"} <= set(s.leaves())
    s.step(T0, replicas=2)
    assert set(s.leaves()) == {"demo-0", "demo-1", "metrics"}


def _rotate(s: Store, start: dt.datetime, request: str | None) -> list[tuple[dict, list]]:
    states = [(s.leaves(), s.bundle())]
    now = start
    for _ in range(10):  # bounded: the rotation takes three steps
        s.step(now, request)
        states.append((s.leaves(), s.bundle()))
        notes = s.ca["metadata"].get("annotations", {}) if s.ca else {}
        if pki.STEP not in notes and len(states) > 2:
            break
        now += SETTLE
    return states


def test_requested_ca_rotation_never_breaks_trust_between_members() -> None:
    s = Store()
    s.step(T0)
    (old,) = s.bundle()
    # a step is not taken before the previous one settled
    s.step(T0, "r1")
    assert s.ca["metadata"]["annotations"][pki.STEP] == "trust"
    s.step(T0 + SETTLE / 2, "r1")
    assert s.ca["metadata"]["annotations"][pki.STEP] == "trust"
    states = _rotate(s, T0 + SETTLE, "r1")
    (new,) = s.bundle()
    assert new.subject != old.subject
    assert all(trusted(leaf, [new], T0) for leaf in s.leaves().values())
    assert not any(trusted(leaf, [old], T0) for leaf in s.leaves().values())
    assert overlap_problems(states, T0 + SETTLE) == []
    assert "next.key" not in s.ca["data"]
    s.step(T0 + 3 * SETTLE, "r1")  # the same request again: nothing more happens
    assert pki.STEP not in s.ca["metadata"].get("annotations", {})


def test_an_expiring_ca_rotates_by_itself() -> None:
    s = Store()
    s.step(T0)
    (old,) = s.bundle()
    soon = old.not_valid_after_utc - pki.CA_RENEW + dt.timedelta(days=1)
    states = _rotate(s, soon, None)
    (new,) = s.bundle()
    assert new.not_valid_after_utc > old.not_valid_after_utc
    assert overlap_problems(states, soon) == []


def test_overlap_check_catches_a_rotation_in_one_step() -> None:
    """Planted: new CA, new leaves and the new bundle all at once (no trust step)."""
    s = Store()
    s.step(T0)
    before = (s.leaves(), s.bundle())
    new_ca = pki.pki.new_ca("demo", now=T0)
    leaves = {
        f"demo-{i}": pki.pki.issue_member(new_ca, "demo", f"demo-{i}", ["x"], now=T0).cert
        for i in range(3)
    }
    after = (leaves, [new_ca.cert])
    assert overlap_problems([before, after], T0)
