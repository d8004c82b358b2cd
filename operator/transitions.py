"""Running a reconfiguration from the operator: the shared Driver, hosted on kopf's loop.

``graven up`` and the operator run the same ``node.cluster.transition.Driver`` (so the two
cannot drift); here it runs in a worker thread (its member calls block), one per cluster.
The worker resumes from the record in the API (ConfigMap ``NAME-reconfiguration``), so a
worker that fails, an operator that restarts and one that is killed all go on the same way.
kopf handlers never wait for it: the reconcile starts the worker and returns; the drift timer
starts it again if it ended early.

What the Driver asks for, and how it is done here:
- ``store``: ``ApiRecordStore`` writes the record ConfigMap and, per save, the cluster's status
  and an event when the step changes (before the Driver's next action);
- ``publish(doc)``: apply the ConfigMap (so a pod that starts or restarts reads ``doc``) and
  the StatefulSet rendered from the record (new pods for new members; the pod template does not
  change, so no member restarts), then return only once every member of a live epoch answers
  ``GET /v1/cluster``; until then it raises, and the Driver retries. The Driver then pushes
  ``doc`` to each of them (``POST /v1/admin/config``, as admin), which installs it live;
- member calls: over TLS with an ``admin`` client certificate the operator issues itself from
  the cluster's CA (kept in memory and in a private temporary file for the SSL context only),
  or, with cert-manager, the one cert-manager wrote into the Secret NAME-operator-cert.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from graven.node.cluster.config import ConfigError
from graven.node.cluster.spec import SpecError, parse
from graven.node.cluster.transition import Driver, MemberCalls
from graven.node.protocol import reconfig as rc
from graven.node.security import pki as node_pki
from graven.node.security.identity import ADMIN

from . import abandon, names, reconfigure
from .kube import ApiError, path

if TYPE_CHECKING:
    from .reconcile import Operator

log = logging.getLogger("graven.operator")
API_TIMEOUT = 60.0  # an API call from the worker thread
PUBLISH_POLL = 1.0  # pause before the Driver retries a publish that members do not serve yet
OPERATOR_CLIENT = "graven-operator"
MAX_TRANSITIONS = 1000  # a bound on the transitions one worker runs back to back
ABANDON_POLL = 2.0  # seconds between looks at the old members while abandoning
ABANDON_MAX_POLLS = 10_000  # far above any watch period


class Stopped(BaseException):
    """The operator is stopping, or the cluster is gone: leave the rest to the next one.

    A BaseException on purpose: it must pass through the Driver's ``except Exception``
    around ``publish`` (which would retry) and end the worker at once."""


class Abandoned(Stopped):
    """The transition was abandoned (operator/abandon.py): its Driver ends, the worker goes on
    with whatever the record holds next."""


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Bridge:
    """Run the operator's coroutines from the worker thread, on the operator's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        self.loop = loop
        self.stop = stop

    def __call__(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self.stop.is_set():
            coro.close()
            raise Stopped("the operator is stopping")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(API_TIMEOUT)


class ApiRecordStore:
    """The Driver's ``RecordStore``: the record ConfigMap, written before the next action."""

    def __init__(self, owner: Transitions, bridge: Bridge, namespace: str, name: str) -> None:
        self.owner, self.op, self.bridge = owner, owner.op, bridge
        self.namespace, self.name = namespace, name

    def load(self) -> Mapping[str, Any] | None:
        cm = self.bridge(self.op.kube.get(self._url()))
        return reconfigure.state_of(cm)

    def save(self, state: Mapping[str, Any]) -> None:
        self.bridge(self._save(state))

    def _url(self) -> str:
        return path("ConfigMap", self.namespace, names.record_config_map(self.name))

    async def _save(self, state: Mapping[str, Any]) -> None:
        before = reconfigure.state_of(await self.op.kube.get(self._url()))
        cr = await self.op.current(self.namespace, self.name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            raise Stopped("the cluster is being deleted")
        await save_record(self.op, cr, state)
        record = rc.Record.from_dict(state["record"])
        old_step = rc.Record.from_dict(before["record"]).step if before else None
        if record.step != old_step:
            message = reconfigure.step_message(record)
            await self.op.post_event(cr, "Normal", "Reconfiguring", message)
        # progress: what the worker last waited for is over
        self.owner.errors.pop(f"{self.namespace}/{self.name}", None)
        await self.op.refresh(self.namespace, self.name)


async def save_record(
    op: Operator, cr: Mapping[str, Any], state: Mapping[str, Any], start: str | None = None
) -> None:
    """Create or update the record ConfigMap (owned by the cluster)."""
    meta = cr["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    url = path("ConfigMap", namespace, names.record_config_map(name))
    obj = reconfigure.record_config_map(name, namespace, state, start)
    live = await op.kube.get(url)
    if live is None:
        obj["metadata"]["ownerReferences"] = [
            {
                "apiVersion": cr["apiVersion"],
                "kind": cr["kind"],
                "name": name,
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        await op.kube.create(url.rsplit("/", 1)[0], obj)
    else:
        await op.kube.patch(url, {"data": obj["data"]})


def _ssl_context(leaf: node_pki.Issued, bundle: bytes) -> ssl.SSLContext:
    """Trust the cluster's bundle; show the operator's admin client certificate ``leaf``."""
    ctx = ssl.create_default_context(cadata=bundle.decode())
    # load_cert_chain reads files only: a private file, removed as soon as it is loaded
    fd, tmp = tempfile.mkstemp(prefix="graven-op-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(leaf.cert_pem + leaf.key_pem)
        ctx.load_cert_chain(tmp)
    finally:
        os.unlink(tmp)
    return ctx


class WorkerCalls:
    """The Driver's member calls from a worker: each member's base URL mapped when the
    operator reaches members elsewhere than at their in-cluster URL (tests: 127.0.0.1 ports);
    failures noted for status (the Driver retries them: an unreachable fence quorum waits and
    reports); and a stopping operator ends the Driver at its next call."""

    def __init__(
        self,
        inner: MemberCalls,
        address: Callable[[str], str] | None,
        note: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        self.inner = inner
        self.address = address  # member name -> base URL
        self.note = note
        self.stop = stop

    def __call__(self, method: str, url: str, body: Any = None) -> Any:
        if self.stop.is_set():
            raise Stopped("the operator is stopping")
        parts = urlsplit(url)
        member = (parts.hostname or "").split(".", 1)[0]  # NAME-i.NAME-peers.NS.svc
        if self.address is not None:
            url = self.address(member) + url[len(f"{parts.scheme}://{parts.netloc}") :]
            if parts.path == "/v1/admin/config":
                body = self._mapped(body)
        try:
            return self.inner(method, url, body)
        except (OSError, ValueError) as exc:
            what = parts.path.rsplit("/", 1)[-1]
            self.note(f"{member}: {what}: {reason(exc)}")
            raise

    def _mapped(self, doc: Mapping[str, Any]) -> dict:
        """A pushed document with every member at its mapped address, as the pods' config
        files have them where members are reached elsewhere (tests: 127.0.0.1 ports)."""
        assert self.address is not None
        out = copy.deepcopy(dict(doc))
        for group in [out, *out.get("previous", [])]:
            for m in group["members"]:
                m["url"] = self.address(m["name"])
        return out


def reason(exc: BaseException) -> str:
    from graven.node.cluster.transition import _reason

    return _reason(exc)


class Transitions:
    """The running reconfiguration workers of one operator process, one per cluster."""

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.stop = threading.Event()
        self.tasks: dict[str, asyncio.Task] = {}
        self.errors: dict[str, str] = {}  # why a worker waits now, for status
        self.reverts: dict[str, str] = {}  # a revert that cannot abandon: why (for status)
        self.stuck_seen: set[tuple] = set()  # ReconfigurationStuck events already posted
        self._creds: dict[str, tuple[str, ssl.SSLContext]] = {}  # CA cert -> context

    def running(self, namespace: str, name: str) -> bool:
        task = self.tasks.get(f"{namespace}/{name}")
        return task is not None and not task.done()

    def ensure(self, namespace: str, name: str) -> None:
        """Start the cluster's worker unless it runs (the record says what to do)."""
        key = f"{namespace}/{name}"
        if self.stop.is_set() or self.running(namespace, name):
            return
        self.tasks[key] = asyncio.get_running_loop().create_task(
            self._work(namespace, name), name=f"reconfigure {key}"
        )

    async def close(self) -> None:
        self.stop.set()
        tasks = [t for t in self.tasks.values() if not t.done()]
        if tasks:
            # a Driver ends at its next member call, save or publish once stopping
            await asyncio.wait(tasks, timeout=API_TIMEOUT)

    # -- the worker ---------------------------------------------------------------------------

    async def _work(self, namespace: str, name: str) -> None:
        """Resume the recorded transition and drive it to the end (the Driver bounds its own
        loop); a failure ends the worker, and the next reconcile starts a new one."""
        key = f"{namespace}/{name}"
        bridge = Bridge(asyncio.get_running_loop(), self.stop)
        store = ApiRecordStore(self, bridge, namespace, name)
        try:
            # one transition after the other: finishing one may start the next (a spec edit
            # made meanwhile), which this worker then runs too
            for _ in range(MAX_TRANSITIONS):
                calls = await self._calls(namespace, name)
                publish = self._publisher(bridge, namespace, name, calls)
                driver = await asyncio.to_thread(
                    Driver.resume,
                    store,
                    publish,
                    call=calls,
                    batch=self.op.options.carry_batch,
                    note=lambda text: self.note(namespace, name, text),
                )
                if driver is None:
                    return
                try:
                    await asyncio.to_thread(driver.run)
                except Abandoned as exc:
                    log.info("%s: %s", key, exc)
                    self.errors.pop(key, None)
                    continue
                self.errors.pop(key, None)
                await self.op.finish_transition(namespace, name, driver.orch.record)
        except Stopped as exc:
            log.info("%s: reconfiguration paused: %s", key, exc)
        except ApiError as exc:
            log.warning("%s: reconfiguration paused by the Kubernetes API: %s", key, exc)
        except Exception as exc:  # logged; the drift timer starts a new worker
            self.errors[key] = f"the operator's worker stopped: {exc}"
            log.exception("%s: reconfiguration worker failed", key)

    def note(self, namespace: str, name: str, text: str) -> None:
        """The latest reason a step waits (shown as status.reconfiguration.lastError)."""
        self.errors[f"{namespace}/{name}"] = text

    async def _calls(self, namespace: str, name: str) -> Any:
        cr = await self.op.current(namespace, name)
        if cr is None:
            raise Stopped("the cluster is gone")
        try:
            spec = parse(cr.get("spec"))
        except SpecError as exc:
            raise Stopped(f"unreadable spec: {exc}") from None
        inner = MemberCalls()
        if spec.security.tls:
            secret = await self.op.kube.get(path("Secret", namespace, names.ca_secret(name)))
            data = {k: v for k, v in _decoded(secret).items()}
            # cert-manager mode: the operator's identity is a Certificate of its own (no CA key)
            mine = spec.security.cert_manager is not None
            if mine:
                own = _decoded(
                    await self.op.kube.get(path("Secret", namespace, names.operator_cert(name)))
                )
                data = {**own, "ca.crt": data.get("ca.crt", b"")}
            if not {"tls.crt", "tls.key", "ca.crt"} <= set(data) or not data["ca.crt"]:
                what = names.operator_cert(name) if mine else names.ca_secret(name)
                raise Stopped(f"the Secret {what} is not there yet")
            cached = self._creds.get(f"{namespace}/{name}")
            stamp = (data["tls.crt"] + data["ca.crt"]).hex()[-64:]
            if cached is None or cached[0] != stamp:
                if mine:
                    leaf = node_pki.Issued(data["tls.key"], data["tls.crt"])
                else:  # freshly issued from the cluster's CA
                    ca = node_pki.Issued(data["tls.key"], data["tls.crt"])
                    leaf = node_pki.issue_client(ca, name, ADMIN, OPERATOR_CLIENT, days=2)
                cached = (stamp, _ssl_context(leaf, data["ca.crt"]))
                self._creds[f"{namespace}/{name}"] = cached
            inner = MemberCalls(ssl_context=cached[1])
        address = self.op.options.member_address
        return WorkerCalls(
            inner,
            None if address is None else (lambda member: address(name, namespace, member)),
            lambda text: self.note(namespace, name, text),
            self.stop,
        )

    def _publisher(
        self, bridge: Bridge, namespace: str, name: str, calls: Any
    ) -> Callable[[dict], None]:
        applied: list[tuple[str, float]] = []  # (document, when): re-applied now and then only

        def publish(doc: dict) -> None:
            blocked: dict[str, str] = {}
            if len(reconfigure.served_live_epochs(doc)) > 1:  # step publish, not retire
                blocked = self._abandon_or_report(bridge, namespace, name, calls)
            text = reconfigure.document_text(doc)
            if not applied or applied[-1][0] != text or time.monotonic() > applied[-1][1] + 15:
                bridge(self.op.publish_document(namespace, name, doc))
                applied.append((text, time.monotonic()))
            waiting = []
            want = reconfigure.served_live_epochs(doc)
            for member, url in reconfigure.members_of(doc):
                try:
                    calls("GET", f"{url}/v1/cluster")  # it runs: the Driver pushes doc next
                except (OSError, ValueError) as exc:
                    why = blocked.get(member) or getattr(exc, "reason", exc)
                    waiting.append(f"{member} ({why})")
            if waiting:
                text = f"waiting for members to serve epochs {want}: {', '.join(waiting)}"
                revert = self.reverts.get(f"{namespace}/{name}")
                self.note(namespace, name, f"{revert}; {text}" if revert else text)
                if self.stop.wait(PUBLISH_POLL):
                    raise Stopped("the operator is stopping")
                raise RuntimeError(text)

        return publish

    # -- abandoning a reverted transition (operator/abandon.py) --------------------------------

    def _abandon_or_report(
        self, bridge: Bridge, namespace: str, name: str, calls: Any
    ) -> dict[str, str]:
        """At step publish: abandon the transition if the spec was reverted and nothing of
        the new epoch reached a member (raises Abandoned once done); otherwise say why the
        members' pods cannot start (returned by member, and a Warning event once each)."""
        key = f"{namespace}/{name}"
        cr, cm, pods = bridge(self._abandon_inputs(namespace, name))
        t = reconfigure.load(cm)
        if cr is None or t is None or t.record.step != rc.PUBLISH:
            return {}
        by_name = {p["metadata"]["name"]: p for p in pods}
        blocked = {}
        for member in {m.name for m in (*t.old.members, *t.target.members)}:
            why = abandon.blocker(by_name.get(member))
            if why is not None:
                blocked[member] = why
        if t.abandoned is None:
            self.reverts.pop(key, None)
            if not _reverted(cr, t):
                self._stuck_events(bridge, cr, t, blocked)
                return blocked
            answers = {m.name: _live_epochs(calls, m.url) for m in t.old.members}
            verdict = abandon.verdict(t, True, by_name, answers)
            if not verdict.abandon:
                self.reverts[key] = (
                    f"spec.replicas and spec.quorums are back to epoch {t.old.epoch}'s, but "
                    f"epoch {t.target.epoch} cannot be abandoned ({verdict.why_not}): the "
                    "change back runs as the next transition once this one completes"
                )
                return blocked
            since = now_text()
            message = (
                f"spec reverted before epoch {t.target.epoch} reached any member: abandoning "
                f"it; epoch {t.old.epoch} runs alone, its members are watched for "
                f"{self.op.options.abandon_watch:.0f}s"
            )
            bridge(
                self.op.mark_abandoned(
                    namespace, name, since, ("Normal", "ReconfigurationAbandoning", message)
                )
            )
            t = dataclasses.replace(t, abandoned=since)
        self._watch_abandoned(bridge, namespace, name, calls, t)
        return blocked

    async def _abandon_inputs(self, namespace: str, name: str) -> tuple[Any, Any, list[dict]]:
        cr = await self.op.current(namespace, name)
        cm = await self.op.kube.get(path("ConfigMap", namespace, names.record_config_map(name)))
        pods = await self.op.kube.list(path("Pod", namespace), names.selector(name))
        return cr, cm, pods

    def _stuck_events(
        self, bridge: Bridge, cr: Mapping[str, Any], t: reconfigure.Transition, blocked: dict
    ) -> None:
        """A Warning event per pod that cannot start by itself (once per transition)."""
        for member, why in sorted(blocked.items()):
            mark = (cr["metadata"]["uid"], t.record.to_epoch, member, why.split(":", 1)[0])
            if mark in self.stuck_seen:
                continue
            self.stuck_seen.add(mark)
            message = (
                f"epoch {t.record.to_epoch} waits for {member}, whose pod cannot start: {why}. "
                "Fix the cause, or set spec.replicas and spec.quorums back to epoch "
                f"{t.record.from_epoch}'s to abandon the change"
            )
            bridge(self.op.post_event(cr, "Warning", "ReconfigurationStuck", message))

    def _watch_abandoned(
        self, bridge: Bridge, namespace: str, name: str, calls: Any, t: reconfigure.Transition
    ) -> None:
        """Watch the old members until the abandon is over; a member that shows the new epoch
        (started from a stale copy of its document) makes the transition go forward instead."""
        began = datetime.datetime.strptime(str(t.abandoned), "%Y-%m-%dT%H:%M:%SZ")
        end = began.replace(tzinfo=datetime.UTC) + datetime.timedelta(
            seconds=self.op.options.abandon_watch
        )
        for _ in range(ABANDON_MAX_POLLS):
            for m in t.old.members:
                epochs = _live_epochs(calls, m.url)
                if epochs is not None and t.target.epoch in epochs:
                    message = (
                        f"{m.name} serves epoch {t.target.epoch} (it started from the document "
                        "of the abandoned change): the change goes on instead of being abandoned"
                    )
                    bridge(
                        self.op.mark_abandoned(
                            namespace, name, None, ("Warning", "ReconfigurationResumed", message)
                        )
                    )
                    return
            if datetime.datetime.now(datetime.UTC) >= end:
                message = (
                    f"epoch {t.target.epoch} abandoned: epoch {t.old.epoch} runs alone, as "
                    "before the change"
                )
                bridge(self.op.drop_abandoned(namespace, name, message))
                raise Abandoned(message)
            if self.stop.wait(ABANDON_POLL):
                raise Stopped("the operator is stopping")
        raise Stopped("the abandon watch did not end")  # the next worker watches on


def _reverted(cr: Mapping[str, Any], t: reconfigure.Transition) -> bool:
    """The spec's members and quorums are the old epoch's again."""
    meta = cr["metadata"]
    try:
        spec = parse(cr.get("spec"))
        back = reconfigure.config_for(
            meta["name"], meta["namespace"], spec, t.target.epoch, t.old.incarnation
        )
    except (SpecError, ConfigError):
        return False
    return reconfigure.same_shape(t.old, back)


def _live_epochs(calls: Any, url: str) -> list[int] | None:
    try:
        got = calls("GET", f"{url}/v1/cluster")
    except (OSError, ValueError):
        return None
    epochs = got.get("liveEpochs") if isinstance(got, dict) else None
    return [int(e) for e in epochs] if isinstance(epochs, list) else None


def _decoded(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    import base64

    out = {}
    for k, v in ((secret or {}).get("data") or {}).items():
        with contextlib.suppress(ValueError):
            out[k] = base64.b64decode(v)
    return out
