"""Reconcile one ConsensusCluster: check, refuse or apply, and report status.

kopf-free on purpose except for ``kopf.adopt``: the handlers (handlers.py) decide *when* this
runs (create/update/resume, the drift timer, the health timer) and post the events; this module
decides *what* happens. Order matters and never changes: the layout is checked and the running
topology compared BEFORE any child is touched, so a refused spec leaves the cluster as it was.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from graven.node.cluster.spec import ClusterSpec, SpecError, check_name, parse

from . import drift, health, identity, names, pki, render, status, topology
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

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault(f"{namespace}/{name}", asyncio.Lock())

    async def close(self) -> None:
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
        caps = render.Capabilities(
            service_monitor="servicemonitors" in served,
            prometheus_rule="prometheusrules" in served,
        )
        self._caps = (now, caps)
        return caps

    async def children(
        self, namespace: str, name: str, caps: render.Capabilities
    ) -> dict[tuple[str, str], dict | None]:
        wanted = [
            ("ConfigMap", names.config_map(name)),
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
            if held is not None:
                reason, message = held
                return status.Outcome(
                    generation, layout_valid, status.Cond(False, reason, message)
                ), [Event("Warning", reason, _short(message), sticky=True)]
            refusal = _refusal(running, spec)
            if refusal:
                return status.Outcome(
                    generation, layout_valid, status.Cond(False, status.REFUSED, refusal)
                ), [Event("Warning", status.REFUSED, _short(refusal), sticky=True)]

            epoch = running.epoch if running else 0
            tolerates = verdict.tolerates or 0
            desired = render.render_all(name, namespace, spec, tolerates, caps, epoch, incarnation)
            kopf.adopt(desired, owner=dict(body))
            pki_events = await self.certificates(body, spec) if spec.security.tls else []
            report = await self.apply(desired, live, uid)
            await self._prune(spec, caps, live, uid, report)
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
        return outcome, pki_events + events

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
        obs = status.Observed(
            spec_replicas=replicas if isinstance(replicas, int) else 0,
            spec_layout=summary(spec.get("quorums") if isinstance(spec, Mapping) else None),
            running=running,
            statefulset=sts,
        )
        if running is None:
            return obs
        pods = await self.kube.list(path("Pod", namespace), names.selector(name))
        members = health.members(name, running.members, pods)
        if self.options.probe_members:
            sec = spec.get("security") if isinstance(spec, Mapping) else None
            tls = not isinstance(sec, Mapping) or sec.get("tls", True) is not False
            probes = await self.probe(name, namespace, members, tls)
            members = health.members(name, running.members, pods, probes)
        verdict = running_verdict(running)
        return status.Observed(obs.spec_replicas, obs.spec_layout, running, verdict, members, sts)

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


def _refusal(running: topology.Topology | None, spec: ClusterSpec) -> str | None:
    if running is None:
        return None
    changes = []
    if running.members != spec.replicas:
        changes.append(f"spec.replicas {running.members} -> {spec.replicas}")
    if running.quorums_key != spec.quorums_key:
        changes.append(f"spec.quorums {running.quorums_key} -> {spec.quorums_key}")
    if not changes:
        return None
    return (
        f"{'; '.join(changes)}: changing the members or the quorum layout of a running cluster "
        "needs a reconfiguration, which the operator does not implement yet. The running "
        "members are left untouched; revert the change to clear this condition."
    )
