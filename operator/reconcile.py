"""Reconcile one ConsensusCluster: check, refuse or apply, and report status.

kopf-free on purpose except for ``kopf.adopt``: the handlers (handlers.py) decide *when* this
runs (create/update/resume, the drift timer, the health timer) and post the events; this module
decides *what* happens. Order matters and never changes: the layout is checked and the running
topology compared BEFORE any child is touched, so a refused spec leaves the cluster as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from graven.node.cluster.config import ConfigError
from graven.node.cluster.spec import ClusterSpec, SpecError, check_name, parse
from graven.node.protocol import reconfig as rc

from . import (
    abandon,
    certmanager,
    drift,
    health,
    identity,
    names,
    pki,
    reconfigure,
    render,
    status,
    topology,
)
from . import transitions as tr
from .kube import ApiError, Kube, object_path, path
from .layout import LayoutVerdict, check_layout, summary
from .metrics import ClusterMetrics

log = logging.getLogger("graven.operator")

MAX_EVENT_MESSAGE = 1000  # the apiserver caps event messages at 1 KiB


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    # About a lasting state (a refusal): post it when the state begins, not on every pass.
    sticky: bool = False


@dataclass
class Options:
    health_interval: float = 5.0
    drift_interval: float = 30.0
    probe_members: bool = False
    probe_timeout: float = 1.0
    # (cluster name, namespace, member) -> /readyz URL; default: the pod IP on the member port.
    probe_url: Callable[[str, str, health.MemberHealth], str | None] | None = None
    capabilities_ttl: float = 60.0
    # time between the steps of a CA rotation (kubelet Secret sync and member reload)
    ca_settle: datetime.timedelta = pki.DEFAULT_SETTLE
    # (cluster, namespace, member name) -> the base URL the operator calls a member at for a
    # reconfiguration, and the URL members find each other at in the documents it pushes;
    # default: the in-cluster URLs. Tests map members to 127.0.0.1 ports.
    member_address: Callable[[str, str, str], str] | None = None
    carry_batch: int = rc.DEFAULT_BATCH  # keys carried over per member request
    abandon_watch: float = abandon.WATCH  # seconds old members are watched after an abandon
    # the namespace the operator's pods run in: each cluster's NetworkPolicy admits them
    # (None: the operator runs outside the cluster, and no rule is rendered for it)
    operator_namespace: str | None = None


def default_probe_url(name: str, namespace: str, member: health.MemberHealth) -> str | None:
    if not member.pod_ip:
        return None
    host = f"[{member.pod_ip}]" if ":" in member.pod_ip else member.pod_ip
    return f"http://{host}:{names.PORT}/readyz"


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    patched: dict[str, list[str]] = field(default_factory=dict)
    immutable: dict[str, list[str]] = field(default_factory=dict)
    foreign: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # by the apiserver


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(text: str) -> str:
    return text if len(text) <= MAX_EVENT_MESSAGE else text[: MAX_EVENT_MESSAGE - 3] + "..."


def _label(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _replace(live: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, str | None]:
    """A merge patch that makes a Secret's data exactly ``data`` in one step (the kubelet
    never sees it half-replaced): keys no longer wanted are set to null."""
    return {**{k: None for k in live.get("data") or {} if k not in data}, **data}


def _owner_ref(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", names.API_VERSION),
        "kind": body.get("kind", names.KIND),
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": True,
    }


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


@functools.lru_cache(maxsize=256)
def _cached_verdict(quorums_key: str, members: int, epoch: int) -> LayoutVerdict:
    import json

    return check_layout(json.loads(quorums_key), members, epoch)


def running_verdict(running: topology.Topology) -> LayoutVerdict:
    return _cached_verdict(running.quorums_key, running.members, running.epoch)


class Operator:
    """State shared by all handlers of one operator process."""

    def __init__(
        self,
        options: Options | None = None,
        kube: Kube | None = None,
        metrics: ClusterMetrics | None = None,
    ) -> None:
        self.options = options or Options()
        self.kube = kube or Kube()
        # Always kept up to date (cheap); served only with `graven operator --metrics-port`.
        self.metrics = metrics or ClusterMetrics()
        self._locks: dict[str, asyncio.Lock] = {}
        self._caps: tuple[float, render.Capabilities] | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        # object URL -> paths the apiserver drops from it (see _learn_dropped)
        self._dropped: dict[str, frozenset[str]] = {}
        self.transitions = tr.Transitions(self)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault(f"{namespace}/{name}", asyncio.Lock())

    async def close(self) -> None:
        await self.transitions.close()
        await self.kube.close()
        if self._probe_session is not None:
            await self._probe_session.close()
            self._probe_session = None

    # ------------------------------------------------------------------ reading the cluster

    async def capabilities(self) -> render.Capabilities:
        """Which prometheus-operator kinds exist (re-checked every capabilities_ttl)."""
        now = time.monotonic()
        if self._caps and now - self._caps[0] < self.options.capabilities_ttl:
            return self._caps[1]
        served = await self.kube.resources("monitoring.coreos.com/v1") or set()
        issuing = await self.kube.resources(certmanager.API_VERSION) or set()
        caps = render.Capabilities(
            service_monitor="servicemonitors" in served,
            prometheus_rule="prometheusrules" in served,
            certificates=certmanager.PLURAL in issuing,
        )
        self._caps = (now, caps)
        return caps

    async def children(
        self, namespace: str, name: str, caps: render.Capabilities
    ) -> dict[tuple[str, str], dict | None]:
        wanted = [
            ("ConfigMap", names.config_map(name)),
            ("ConfigMap", names.record_config_map(name)),
            ("Service", names.peers_service(name)),
            ("Service", name),
            ("StatefulSet", name),
            ("PodDisruptionBudget", name),
            ("NetworkPolicy", name),
        ]
        if caps.service_monitor:
            wanted.append(("ServiceMonitor", name))
        if caps.prometheus_rule:
            wanted.append(("PrometheusRule", name))
        found = await asyncio.gather(
            *(self.kube.get(path(kind, namespace, obj)) for kind, obj in wanted)
        )
        return dict(zip(wanted, found, strict=True))

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, body: Mapping[str, Any]) -> tuple[status.Outcome, list[Event]]:
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        generation = int(meta.get("generation") or 0)
        try:
            check_name(name)
            spec = parse(body.get("spec"))
            incarnation = identity.incarnation(meta)
        except (SpecError, identity.AdoptionError) as exc:
            return status.Outcome(
                generation,
                status.Cond(None, "NotChecked", "the spec could not be read"),
                status.Cond(False, status.INVALID_SPEC, str(exc)),
            ), [Event("Warning", status.INVALID_SPEC, _short(str(exc)), sticky=True)]

        verdict = check_layout(spec.quorums, spec.replicas)
        layout_valid = status.Cond(verdict.ok, verdict.reason, verdict.message)
        if spec.paused:
            return status.Outcome(
                generation,
                layout_valid,
                status.Cond(False, status.PAUSED, "spec.paused is true: no child is changed"),
            ), []
        if not verdict.ok:
            message = (
                f"spec.quorums ({verdict.summary} over {spec.replicas} members) is "
                f"{'unsafe' if verdict.reason != 'LayoutInvalid' else 'invalid'}; nothing "
                "was changed. " + verdict.message
            )
            return status.Outcome(
                generation, layout_valid, status.Cond(False, status.LAYOUT_REJECTED, message)
            ), [Event("Warning", verdict.reason, _short(message), sticky=True)]

        try:
            caps = await self.capabilities()
            live = await self.children(namespace, name, caps)
            running = topology.running(
                live[("ConfigMap", names.config_map(name))], live[("StatefulSet", name)]
            )
            held = await self._identity_refusal(name, namespace, meta, incarnation, running, spec)
            if held is None:
                held = await self._pki_refusal(name, namespace, meta["uid"], spec, caps, running)
            if held is not None:
                reason, message = held
                return status.Outcome(
                    generation, layout_valid, status.Cond(False, reason, message)
                ), [Event("Warning", reason, _short(message), sticky=True)]
            plan = await self._transition(body, spec, live, running, incarnation)
            if plan.held is not None:
                return status.Outcome(generation, layout_valid, plan.held), plan.events

            epoch = running.epoch if running else 0
            tolerates = plan.tolerates if plan.tolerates is not None else verdict.tolerates or 0
            desired = render.render_all(
                name,
                namespace,
                plan.spec,
                tolerates,
                caps,
                epoch,
                incarnation,
                plan.served,
                self.options.operator_namespace,
            )
            kopf.adopt(desired, owner=dict(body))
            pods = plan.served.replicas if plan.served else plan.spec.replicas
            if running is not None:  # members still running beyond the spec keep their certs
                pods = max(pods, int((live[("StatefulSet", name)] or {}).get("spec", {}).get(
                    "replicas", 0) or 0))  # fmt: skip
            sized = dataclasses.replace(spec, replicas=pods)
            pki_events = []
            if spec.security.cert_manager is not None:
                pki_events = await self.cert_manager(body, sized)
            elif spec.security.tls:
                pki_events = await self.certificates(body, sized)
            report = await self.apply(desired, live, uid)
            await self._prune(spec, caps, live, uid, report)
            if plan.start:
                self.transitions.ensure(namespace, name)
        except ApiError as exc:
            if exc.retryable or exc.status == 0:
                raise  # the caller retries later
            # The apiserver refused a child (422, 403...): the same render would be refused
            # again, so say so and leave the retry to the drift timer.
            message = f"the Kubernetes API refused a change: {exc}"
            return status.Outcome(
                generation, layout_valid, status.Cond(False, status.APPLY_FAILED, message)
            ), [Event("Warning", status.APPLY_FAILED, _short(message), sticky=True)]
        outcome, events = self._outcome(generation, layout_valid, report, running is None)
        if plan.refused is not None and outcome.progressing is None:
            outcome = status.Outcome(generation, layout_valid, plan.refused)
        return outcome, plan.events + pki_events + events

    async def _transition(
        self,
        body: Mapping[str, Any],
        spec: ClusterSpec,
        live: Mapping[tuple[str, str], dict | None],
        running: topology.Topology | None,
        incarnation: str,
    ) -> TransitionPlan:
        """What a reconfiguration means for this reconcile: go on with one, start one, refuse
        one (and render the rest of the spec over the running members), or nothing."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        record_cm = live[("ConfigMap", names.record_config_map(name))]
        try:
            active = reconfigure.load(record_cm)
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            message = (
                f"the reconfiguration record {names.record_config_map(name)} cannot be read "
                f"({exc}); nothing was changed. Restore it (it is written by the operator only)"
            )
            cond = status.Cond(False, status.RECORD_INVALID, message)
            return TransitionPlan(spec, held=cond, events=[
                Event("Warning", status.RECORD_INVALID, _short(message), sticky=True)])  # fmt: skip
        if active is not None and active.abandoned and running is not None:
            # being abandoned (operator/abandon.py): the old epoch's own render, exactly as
            # before the transition (same pod template: the old members are not restarted)
            shaped = dataclasses.replace(
                spec, replicas=running.members, quorums=dict(running.quorums)
            )
            return TransitionPlan(shaped, start=True, tolerates=running_verdict(running).tolerates)
        if active is not None:
            return TransitionPlan(
                spec, reconfigure.served(active), start=True, tolerates=_tolerates(active)
            )
        if running is None:
            return TransitionPlan(spec)
        old = reconfigure.running_config(name, namespace, spec, running, incarnation)
        target = reconfigure.config_for(name, namespace, spec, running.epoch + 1, incarnation)
        if reconfigure.same_shape(old, target):
            return TransitionPlan(spec)
        shaped = dataclasses.replace(spec, replicas=running.members, quorums=dict(running.quorums))
        why = reconfigure.refusal(old, target)
        live_doc = topology.document(live[("ConfigMap", names.config_map(name))])
        if why is None and live_doc is not None and live_doc.get("previous"):
            why = (
                "the members serve several live epochs but the reconfiguration record "
                f"{names.record_config_map(name)} is missing; the operator will not guess "
                "which keys were carried over"
            )
        if why is not None:
            message = (
                f"{_change(old, target)}: refused, the running members are left as they are "
                f"(other changes are applied): {why}"
            )
            cond = status.Cond(False, status.REFUSED, message)
            return TransitionPlan(
                shaped,
                refused=cond,
                tolerates=running_verdict(running).tolerates,
                events=[Event("Warning", status.REFUSED, _short(message), sticky=True)],
            )
        started = reconfigure.Transition(rc.Record(old.epoch, target.epoch), old, target, _now())
        await tr.save_record(self, body, reconfigure.initial_state(old, target), _now())
        message = f"{_change(old, target)}: epoch {old.epoch} -> {target.epoch}"
        return TransitionPlan(
            spec,
            reconfigure.served(started),
            start=True,
            tolerates=_tolerates(started),
            events=[Event("Normal", "ReconfigurationStarted", _short(message))],
        )

    async def publish_document(self, namespace: str, name: str, doc: Mapping[str, Any]) -> None:
        """The Driver's publish, API half: render the children from the record (which holds
        ``doc``) and apply the ConfigMap and StatefulSet. Idempotent."""
        async with self.lock(namespace, name):
            body = await self.current(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                raise tr.Stopped("the cluster is being deleted")
            outcome, events = await self.reconcile(body)
            for event in events:
                if not event.sticky:
                    await self.post_event(body, event.type, event.reason, event.message)
            cm = await self.kube.get(path("ConfigMap", namespace, names.config_map(name)))
            served = topology.document(cm)
            if served is None or reconfigure.served_live_epochs(
                served
            ) != reconfigure.served_live_epochs(doc):
                raise RuntimeError(
                    "the cluster ConfigMap does not hold the published epochs yet "
                    f"({outcome.progressing.message if outcome.progressing else 'no reason'})"
                )

    async def mark_abandoned(
        self, namespace: str, name: str, since: str | None, event: tuple[str, str, str]
    ) -> None:
        """Set (``since``) or clear (None) the abandon mark of the record, then apply what it
        means for the children (the old epoch's render, or the transition's again)."""
        async with self.lock(namespace, name):
            body = await self.current(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                raise tr.Stopped("the cluster is being deleted")
            url = path("ConfigMap", namespace, names.record_config_map(name))
            await self.kube.patch(url, {"data": {reconfigure.ABANDONED_KEY: since}})
            await self.post_event(body, *event)
            outcome, events = await self.reconcile(body)
            for ev in events:
                if not ev.sticky:
                    await self.post_event(body, ev.type, ev.reason, ev.message)
            await self.write_status(namespace, name, outcome)

    async def drop_abandoned(self, namespace: str, name: str, message: str) -> None:
        """The abandon is over: the record goes, the cluster is back to its old epoch alone."""
        async with self.lock(namespace, name):
            body = await self.current(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                raise tr.Stopped("the cluster is being deleted")
            await self.kube.delete(path("ConfigMap", namespace, names.record_config_map(name)))
            await self.post_event(body, "Normal", "ReconfigurationAbandoned", message)
            outcome, events = await self.reconcile(body)
            for ev in events:
                await self.post_event(body, ev.type, ev.reason, ev.message)
            await self.write_status(namespace, name, outcome)

    async def finish_transition(self, namespace: str, name: str, record: rc.Record) -> None:
        """After retirement: the steady render (scale down, topology of the new epoch), the
        claims' record of what wrote them, the status; a queued spec change starts next.
        ``record`` is the finished one, from its Driver: a spec edit that landed meanwhile
        may already have replaced it in the ConfigMap with the next transition's."""
        async with self.lock(namespace, name):
            body = await self.current(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            await self.post_event(body, "Normal", "Reconfigured", reconfigure.step_message(record))
            outcome, events = await self.reconcile(body)
            for event in events:
                await self.post_event(body, event.type, event.reason, event.message)
            sts = await self.kube.get(path("StatefulSet", namespace, name))
            running = topology.from_statefulset(sts)
            if running is not None:
                await self._mark_claims(namespace, name, running)
            await self.write_status(namespace, name, outcome)

    async def _mark_claims(self, namespace: str, name: str, running: topology.Topology) -> None:
        """Claims say which members and layout wrote them (identity.py's adoption check)."""
        marks = topology.annotations(running.members, running.quorums, running.epoch)
        found = await self.kube.list(path("PersistentVolumeClaim", namespace), names.selector(name))
        for claim in identity.member_claims(name, found):
            if claim.ordinal >= running.members:
                continue  # a removed member's claim keeps what it was written with
            live = next(c for c in found if c["metadata"]["name"] == claim.name)
            have = (live.get("metadata") or {}).get("annotations") or {}
            if any(have.get(k) != v for k, v in marks.items()):
                url = path("PersistentVolumeClaim", namespace, claim.name)
                await self.kube.patch(url, {"metadata": {"annotations": marks}})

    async def post_event(
        self, body: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        """An event about the cluster, written directly (workers run outside kopf handlers)."""
        meta = body["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", names.API_VERSION),
                "kind": body.get("kind", names.KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": _short(message),
            "type": type_,
            "source": {"component": names.MANAGER},
            "reportingComponent": names.MANAGER,
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
        }
        level = logging.WARNING if type_ == "Warning" else logging.INFO
        log.log(level, "%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)
        try:
            await self.kube.create(path("Event", meta["namespace"]), event)
        except ApiError as exc:  # an event is worth a log line, never a failed step
            log.warning("could not post event %s: %s", reason, exc)

    async def certificates(self, body: Mapping[str, Any], spec: ClusterSpec) -> list[Event]:
        """Create, renew or rotate the cluster's CA and certificate Secrets (see ``pki``);
        before the pods, which mount them."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        ca_path = path("Secret", namespace, names.ca_secret(name))
        tls_path = path("Secret", namespace, names.tls_secret(name))
        ca_live = await self.kube.get(ca_path)
        tls_live = await self.kube.get(tls_path)
        for live in (ca_live, tls_live):
            if live is not None and not _owned_by(live, meta["uid"]):
                raise ApiError(409, "Conflict", f"Secret {live['metadata']['name']} is not ours")
        request = (meta.get("annotations") or {}).get(pki.ROTATE_REQUEST)
        now = datetime.datetime.now(datetime.UTC)
        todo = pki.plan(
            name, namespace, spec.replicas, ca_live, tls_live, now, request,
            self.options.ca_settle,
        )  # fmt: skip
        if todo.ca is not None or todo.ca_annotations:
            current = pki._decode(ca_live)
            data = todo.ca if todo.ca is not None else current
            await self._put_secret(body, ca_path, ca_live, names.ca_secret(name), data, todo)
        if todo.tls is not None:
            secret = pki.secret(names.tls_secret(name), namespace, name, todo.tls, {})
            kopf.adopt(secret, owner=dict(body))
            if tls_live is None:
                await self.kube.create(tls_path.rsplit("/", 1)[0], secret)
            else:
                await self.kube.patch(tls_path, {"data": _replace(tls_live, secret["data"])})
        return [Event("Normal", "Certificates", _short(e)) for e in todo.events]

    async def _pki_refusal(
        self,
        name: str,
        namespace: str,
        uid: str,
        spec: ClusterSpec,
        caps: render.Capabilities,
        running: topology.Topology | None,
    ) -> tuple[str, str] | None:
        """(reason, message) when the certificates asked for cannot be had: cert-manager asked
        for but not installed, the bundle Secret's name taken by someone else's Secret, or a
        running cluster switched between the operator's CA and cert-manager (its members would
        stop trusting each other mid-way)."""
        if not spec.security.tls:
            return None
        wants = certmanager.CERT_MANAGER if spec.security.cert_manager else "self"
        if wants == certmanager.CERT_MANAGER and not caps.certificates:
            return status.CERT_MANAGER_MISSING, (
                "spec.security.certManager asks for cert-manager Certificates but the API "
                f"{certmanager.PLURAL}.{certmanager.GROUP}/{certmanager.VERSION} is not served "
                "(install cert-manager, or remove spec.security.certManager); nothing was changed"
            )
        ca = await self.kube.get(path("Secret", namespace, names.ca_secret(name)))
        if ca is not None and not _owned_by(ca, uid):
            return status.APPLY_FAILED, (
                f"Secret {names.ca_secret(name)} already exists and is not owned by this "
                "cluster; rename or delete it (the operator never takes over objects it did not "
                "create); nothing was changed"
            )
        has = certmanager.mode(ca)
        if running is not None and has is not None and has != wants:
            where = {"self": "the operator's own CA", certmanager.CERT_MANAGER: "cert-manager"}
            return status.CERT_MANAGER_SWITCH, (
                f"the running members use certificates from {where[has]}; switching a running "
                f"cluster to {where[wants]} is not supported (members would stop trusting each "
                "other); nothing was changed. Restore spec.security.certManager, or recreate the "
                "cluster"
            )
        return None

    async def cert_manager(self, body: Mapping[str, Any], spec: ClusterSpec) -> list[Event]:
        """cert-manager mode (see ``certmanager``): the Certificates, the trust bundle and the
        steps of a CA rotation; before the pods, which mount the Secrets."""
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        assert spec.security.cert_manager is not None
        certs_path = path(certmanager.KIND, namespace, api_version=certmanager.API_VERSION)
        live_certs = {
            (c["kind"], c["metadata"]["name"]): c
            for c in await self.kube.list(certs_path, names.selector(name))
        }
        ca_path = path("Secret", namespace, names.ca_secret(name))
        ca_live = await self.kube.get(ca_path)
        if ca_live is not None and not _owned_by(ca_live, uid):
            raise ApiError(409, "Conflict", f"Secret {names.ca_secret(name)} is not ours")
        wanted = certmanager.secret_names(name, spec.replicas)
        found = await asyncio.gather(*(self.kube.get(path("Secret", namespace, n)) for n in wanted))
        todo = certmanager.plan(
            name, namespace, spec.replicas, spec.security.cert_manager,
            dict(zip(wanted, found, strict=True)), ca_live,
            datetime.datetime.now(datetime.UTC), self.options.ca_settle,
        )  # fmt: skip
        kopf.adopt(todo.certificates, owner=dict(body))
        report = await self.apply(todo.certificates, live_certs, uid)
        for secret in found:  # cert-manager's Secrets go with the cluster, as NAME-tls does
            if secret is not None and not _owned_by(secret, uid):
                refs = list((secret.get("metadata") or {}).get("ownerReferences") or [])
                refs.append({**_owner_ref(body), "controller": False})
                meta_patch = {"metadata": {"ownerReferences": refs}}
                await self.kube.patch(object_path({**secret, "kind": "Secret"}), meta_patch)
        keep = {c["metadata"]["name"] for c in todo.certificates}
        gone = [
            c for (_, n), c in live_certs.items() if n not in keep and _owned_by(c, uid)
        ]  # members scaled away
        for cert in gone:
            await self.kube.delete(object_path(cert))
        if todo.bundle is not None or todo.annotations or ca_live is None:
            data = {"ca.crt": todo.bundle} if todo.bundle is not None else None
            if ca_live is None:
                secret = certmanager.bundle_secret(
                    name, namespace, todo.bundle or b"", todo.annotations
                )
                if todo.bundle is None:
                    secret["data"] = {}
                kopf.adopt(secret, owner=dict(body))
                await self.kube.create(ca_path.rsplit("/", 1)[0], secret)
            else:
                patch: dict[str, Any] = {"metadata": {"annotations": dict(todo.annotations)}}
                if data is not None:
                    patch["data"] = _replace(ca_live, pki.encode(data))
                await self.kube.patch(ca_path, patch)
        events = [Event("Normal", "Certificates", _short(e)) for e in todo.events]
        if report.created and not live_certs:
            events.append(Event("Normal", "Certificates", _short(
                f"asked cert-manager for {len(report.created)} certificates from "
                f"{certmanager.issuer_key(spec.security.cert_manager)}")))  # fmt: skip
        return events

    async def trust(self, namespace: str, name: str) -> None:
        """The health timer's part in cert-manager mode: keep the trust bundle and a CA
        rotation moving between reconciles (cert-manager writes Secrets at any time)."""
        async with self.lock(namespace, name):
            body = await self.current(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            try:
                spec = parse(body.get("spec"))
            except SpecError:
                return
            if spec.security.cert_manager is None or not spec.security.tls or spec.paused:
                return
            sts = await self.kube.get(path("StatefulSet", namespace, name))
            replicas = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
            if sts is None or not (await self.capabilities()).certificates:
                return  # the reconcile creates or refuses
            events = await self.cert_manager(body, dataclasses.replace(spec, replicas=replicas))
            for event in events:
                await self.post_event(body, event.type, event.reason, event.message)

    async def _put_secret(
        self,
        body: Mapping[str, Any],
        url: str,
        live: Mapping[str, Any] | None,
        secret_name: str,
        data: Mapping[str, bytes],
        todo: pki.Plan,
    ) -> None:
        meta = body["metadata"]
        secret = pki.secret(secret_name, meta["namespace"], meta["name"], data, {})
        if live is None:
            secret["metadata"]["annotations"] = {
                k: v for k, v in todo.ca_annotations.items() if v is not None
            }
            kopf.adopt(secret, owner=dict(body))
            await self.kube.create(url.rsplit("/", 1)[0], secret)
            return
        patch: dict[str, Any] = {"metadata": {"annotations": dict(todo.ca_annotations)}}
        if todo.ca is not None:
            patch["data"] = _replace(live, secret["data"])  # next.* goes when a rotation ends
        await self.kube.patch(url, patch)

    async def _identity_refusal(
        self,
        name: str,
        namespace: str,
        meta: Mapping[str, Any],
        incarnation: str,
        running: topology.Topology | None,
        spec: ClusterSpec,
    ) -> tuple[str, str] | None:
        """(reason, message) when the members' data is not this incarnation's to run."""
        if running is not None:
            if running.incarnation is not None and running.incarnation != incarnation:
                return status.INCARNATION_MISMATCH, identity.mismatch_refusal(
                    running.incarnation, incarnation
                )
            return None  # running members of this incarnation (or from before incarnations)
        # Nothing runs: claims left by a deleted cluster of the same name must not be reused.
        found = await self.kube.list(path("PersistentVolumeClaim", namespace), names.selector(name))
        claims = identity.member_claims(name, found)
        adopting = identity.adopted(meta) is not None
        message = identity.retained_refusal(
            name, incarnation, adopting, claims, spec.replicas, spec.quorums_key
        )
        return None if message is None else (status.RETAINED_VOLUMES, message)

    async def apply(
        self,
        desired: list[dict],
        live: Mapping[tuple[str, str], dict | None],
        uid: str,
    ) -> ApplyReport:
        report = ApplyReport()
        for obj in desired:
            current = live.get((obj["kind"], obj["metadata"]["name"]))
            url = object_path(obj)
            if current is None:
                try:
                    stored = await self.kube.create(url.rsplit("/", 1)[0], obj)
                    report.created.append(_label(obj))
                    self._learn_dropped(url, obj, stored, report)
                    continue
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                    current = await self.kube.get(url)  # lost a race: compare
                    if current is None:
                        raise
            if not _owned_by(current, uid):
                report.foreign.append(_label(obj))
                continue
            plan = drift.plan(obj, current, self._dropped.get(url, frozenset()))
            if plan.patch:
                stored = await self.kube.patch(url, plan.patch)
                report.patched[_label(obj)] = plan.drifted
                self._learn_dropped(url, obj, stored, report)
            if plan.immutable:
                report.immutable[_label(obj)] = plan.immutable
        return report

    def _learn_dropped(
        self, url: str, desired: Mapping[str, Any], stored: Any, report: ApplyReport
    ) -> None:
        """Remember the fields the apiserver dropped from what we just wrote (it warns about
        unknown fields rather than refusing them): they would otherwise look like drift on
        every pass, and be patched in vain every drift interval forever."""
        if not isinstance(stored, Mapping):
            return
        gone = drift.dropped(desired, stored) - self._dropped.get(url, frozenset())
        if gone:
            self._dropped[url] = self._dropped.get(url, frozenset()) | gone
            report.dropped[_label(desired)] = sorted(gone)

    async def _prune(
        self,
        spec: ClusterSpec,
        caps: render.Capabilities,
        live: Mapping[tuple[str, str], dict | None],
        uid: str,
        report: ApplyReport,
    ) -> None:
        """Delete the optional objects we made (monitoring, NetworkPolicy) once they are no
        longer asked for."""
        unwanted = [] if spec.security.network_policy else ["NetworkPolicy"]
        if caps.service_monitor and not spec.monitoring.service_monitor:
            unwanted.append("ServiceMonitor")
        if caps.prometheus_rule and not spec.monitoring.prometheus_rule:
            unwanted.append("PrometheusRule")
        for (kind, _), obj in live.items():
            if kind not in unwanted or obj is None or not _owned_by(obj, uid):
                continue
            if await self.kube.delete(object_path(obj)):
                report.deleted.append(_label(obj))

    @staticmethod
    def _outcome(
        generation: int, layout_valid: status.Cond, report: ApplyReport, fresh: bool
    ) -> tuple[status.Outcome, list[Event]]:
        events = []
        if report.created:
            verb = "Created" if fresh else "Recreated"
            events.append(Event("Normal", verb, _short(f"{verb}: {', '.join(report.created)}")))
        if report.patched:
            what = "; ".join(f"{k} ({', '.join(v[:5])})" for k, v in report.patched.items())
            events.append(Event("Normal", "Updated", _short(f"patched {what}")))
        if report.deleted:
            events.append(Event("Normal", "Deleted", f"deleted {', '.join(report.deleted)}"))
        if report.dropped:
            what = "; ".join(f"{k} ({', '.join(v[:5])})" for k, v in report.dropped.items())
            message = (
                f"the Kubernetes API dropped fields it does not know from {what}; check the "
                "spec for misspelt or too new fields (they are not repaired as drift)"
            )
            events.append(Event("Warning", "FieldsDropped", _short(message)))
        progressing = None
        if report.foreign:
            message = (
                f"{', '.join(report.foreign)} already exist and are not owned by this cluster; "
                "rename or delete them (the operator never takes over objects it did not create)"
            )
            progressing = status.Cond(False, status.APPLY_FAILED, message)
            events.append(Event("Warning", status.APPLY_FAILED, _short(message), sticky=True))
        elif report.immutable:
            what = "; ".join(f"{k}: {', '.join(v)}" for k, v in report.immutable.items())
            message = (
                f"fields that cannot change after creation differ ({what}); other changes were "
                "applied. Storage size or class changes need a manual migration."
            )
            progressing = status.Cond(False, status.IMMUTABLE_CHANGED, message)
            events.append(Event("Warning", status.IMMUTABLE_CHANGED, _short(message), sticky=True))
        return status.Outcome(generation, layout_valid, progressing), events

    # ------------------------------------------------------------------ status

    async def probe(
        self, name: str, namespace: str, members: list[health.MemberHealth], tls: bool = True
    ) -> dict:
        """GET each member's /readyz directly: sees a dead member before the kubelet does."""
        if self._probe_session is None or self._probe_session.closed:
            # A separate session: the API token must never be sent to a member.
            self._probe_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.options.probe_timeout)
            )
        url_of = self.options.probe_url or default_probe_url
        session = self._probe_session

        async def one(member: health.MemberHealth) -> tuple[str, bool]:
            url = url_of(name, namespace, member)
            if not url:
                return member.name, False
            if tls and url_of is default_probe_url:
                url = "https://" + url.removeprefix("http://")
            try:
                # /readyz is open and reveals nothing; the pod IP is in no certificate, so
                # the TLS of an https member is not verified for this one probe
                async with session.get(url, ssl=False) as rsp:
                    return member.name, rsp.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                return member.name, False

        return dict(await asyncio.gather(*(one(m) for m in members)))

    async def observe(self, name: str, namespace: str, spec: Mapping[str, Any]) -> status.Observed:
        replicas = spec.get("replicas", 3) if isinstance(spec, Mapping) else 3
        cm = await self.kube.get(path("ConfigMap", namespace, names.config_map(name)))
        sts = await self.kube.get(path("StatefulSet", namespace, name))
        running = topology.running(cm, sts)
        selector = ",".join(f"{k}={v}" for k, v in sorted(names.selector(name).items()))
        obs = status.Observed(
            spec_replicas=replicas if isinstance(replicas, int) else 0,
            spec_layout=summary(spec.get("quorums") if isinstance(spec, Mapping) else None),
            running=running,
            statefulset=sts,
            selector=selector,
        )
        if running is None:
            return obs
        rec_cm = await self.kube.get(path("ConfigMap", namespace, names.record_config_map(name)))
        try:
            active = reconfigure.load(rec_cm)
        except (ValueError, KeyError, TypeError, ConfigError):
            active = None  # the reconcile reports it
        reconfiguration = None
        count = running.members
        if active is not None:
            error = self.transitions.errors.get(f"{namespace}/{name}")
            reconfiguration = reconfigure.status_of(active, error)
            count = max(count, active.replicas)  # new members show while they join
        pods = await self.kube.list(path("Pod", namespace), names.selector(name))
        members = health.members(name, count, pods)
        if self.options.probe_members:
            sec = spec.get("security") if isinstance(spec, Mapping) else None
            tls = not isinstance(sec, Mapping) or sec.get("tls", True) is not False
            probes = await self.probe(name, namespace, members, tls)
            members = health.members(name, count, pods, probes)
        verdict = running_verdict(running)
        return status.Observed(
            obs.spec_replicas,
            obs.spec_layout,
            running,
            verdict,
            members,
            sts,
            reconfiguration,
            selector,
        )

    async def refresh(
        self, namespace: str, name: str, outcome: status.Outcome | None = None
    ) -> dict | None:
        """Recompute and write the status (only if it changed). Serialised per cluster."""
        async with self.lock(namespace, name):
            return await self.write_status(namespace, name, outcome)

    async def write_status(
        self, namespace: str, name: str, outcome: status.Outcome | None = None
    ) -> dict | None:
        """``refresh`` for a caller that already holds ``lock(namespace, name)``."""
        url = path(names.KIND, namespace, name)
        cr = await self.kube.get(url)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            self.metrics.forget(namespace, name)
            return None
        observed = await self.observe(name, namespace, cr.get("spec") or {})
        old = cr.get("status") or {}
        new = status.build(old, observed, outcome, _now())
        if new != old:
            patch = {"status": {**dict.fromkeys(old), **new}}  # null drops stale keys
            if isinstance(old.get("reconfiguration"), dict) and "reconfiguration" in new:
                # a merge patch merges nested objects too: drop a lastError that is over
                patch["status"]["reconfiguration"] = {
                    **dict.fromkeys(old["reconfiguration"]),
                    **new["reconfiguration"],
                }
            await self.kube.patch(f"{url}/status", patch)
        self.metrics.record(namespace, name, new)
        return new

    async def current(self, namespace: str, name: str) -> dict | None:
        """The cluster object as stored now (timers get a body that may be outdated)."""
        return await self.kube.get(path(names.KIND, namespace, name))

    # ------------------------------------------------------------------ deletion

    async def cleanup(self, body: Mapping[str, Any]) -> list[Event]:
        """Delete children explicitly (also where no garbage collector runs) and, if asked,
        the members' volumes. Runs even when paused: deletion is an explicit request."""
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        try:
            spec = parse(body.get("spec"))
        except SpecError:
            spec = ClusterSpec()  # unreadable spec: keep the data (Retain is the default)
        caps = await self.capabilities()
        live = await self.children(namespace, name, caps)
        deleted = []
        if caps.certificates:
            certs = await self.kube.list(
                path(certmanager.KIND, namespace, api_version=certmanager.API_VERSION),
                names.selector(name),
            )
            live = {**live, **{(c["kind"], c["metadata"]["name"]): c for c in certs}}
        for obj in live.values():
            if obj is not None:
                self._dropped.pop(object_path(obj), None)
            if obj is not None and _owned_by(obj, uid) and await self.kube.delete(object_path(obj)):
                deleted.append(_label(obj))
        events = []
        if spec.storage.retention.when_deleted == "Delete":
            prefix = f"{names.DATA_VOLUME}-{name}-"
            claims = await self.kube.list(
                path("PersistentVolumeClaim", namespace), names.selector(name)
            )
            for claim in claims:
                claim_name = claim["metadata"]["name"]
                # Only the members' claims (data-NAME-<ordinal>), even if others share labels.
                if not (
                    claim_name.startswith(prefix) and claim_name.removeprefix(prefix).isdigit()
                ):
                    continue
                if await self.kube.delete(path("PersistentVolumeClaim", namespace, claim_name)):
                    deleted.append(f"PersistentVolumeClaim/{claim_name}")
        else:
            events.append(
                Event("Normal", "VolumesRetained", "member volumes kept (retention: Retain)")
            )
        if deleted:
            events.insert(0, Event("Normal", "Deleted", _short(f"deleted {', '.join(deleted)}")))
        # Under the status lock: a status write already past its read of the (not yet
        # deleting) cluster finishes first, and every later one sees deletionTimestamp.
        async with self.lock(namespace, name):
            self.metrics.forget(namespace, name)
        return events


@dataclass
class TransitionPlan:
    spec: ClusterSpec  # what to render (the running members and layout when refused)
    served: render.Served | None = None  # the record's document and pods, mid-transition
    start: bool = False  # make sure the cluster's worker runs
    tolerates: int | None = None
    refused: status.Cond | None = None  # a lasting refusal; the rest of the spec applies
    held: status.Cond | None = None  # nothing may be applied
    events: list[Event] = field(default_factory=list)


def _tolerates(t: reconfigure.Transition) -> int:
    """Evictions allowed mid-transition: what both epochs tolerate."""
    counts = []
    for cfg in (t.old, t.target):
        verdict = _cached_verdict(
            topology.canonical(cfg.layout.to_spec()), len(cfg.members), cfg.epoch
        )
        counts.append(verdict.tolerates or 0)
    return min(counts)


def _change(old: Any, target: Any) -> str:
    parts = []
    if len(old.members) != len(target.members):
        parts.append(f"spec.replicas {len(old.members)} -> {len(target.members)}")
    a = topology.canonical(old.layout.to_spec())
    b = topology.canonical(target.layout.to_spec())
    if a != b:
        parts.append(f"spec.quorums {a} -> {b}")
    return "; ".join(parts) or "members"
