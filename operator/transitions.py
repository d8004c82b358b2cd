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
- ``publish(doc)``: apply the ConfigMap and the StatefulSet rendered from the record (new pods
  for new members, a rolling restart through the pod template's config hash), then return only
  once every member of a live epoch answers ``GET /v1/cluster`` with those live epochs;
  until then it raises, and the Driver retries;
- member calls: over TLS with an ``admin`` client certificate the operator issues itself from
  the cluster's CA (kept in memory and in a private temporary file for the SSL context only),
  or, with cert-manager, the one cert-manager wrote into the Secret NAME-operator-cert.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from graven.node.cluster.spec import SpecError, parse
from graven.node.cluster.transition import Driver, MemberCalls
from graven.node.protocol import reconfig as rc
from graven.node.security import pki as node_pki
from graven.node.security.identity import ADMIN

from . import names, reconfigure
from .kube import ApiError, path

if TYPE_CHECKING:
    from .reconcile import Operator

log = logging.getLogger("graven.operator")
API_TIMEOUT = 60.0  # an API call from the worker thread
PUBLISH_POLL = 1.0  # pause before the Driver retries a publish that members do not serve yet
OPERATOR_CLIENT = "graven-operator"
MAX_TRANSITIONS = 1000  # a bound on the transitions one worker runs back to back


class Stopped(BaseException):
    """The operator is stopping, or the cluster is gone: leave the rest to the next one.

    A BaseException on purpose: it must pass through the Driver's ``except Exception``
    around ``publish`` (which would retry) and end the worker at once."""


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
        try:
            return self.inner(method, url, body)
        except (OSError, ValueError) as exc:
            what = parts.path.rsplit("/", 1)[-1]
            self.note(f"{member}: {what}: {reason(exc)}")
            raise


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
                    Driver.resume, store, publish, call=calls, batch=self.op.options.carry_batch
                )
                if driver is None:
                    return
                await asyncio.to_thread(driver.run)
                self.errors.pop(key, None)
                await self.op.finish_transition(namespace, name)
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
            text = reconfigure.document_text(doc)
            if not applied or applied[-1][0] != text or time.monotonic() > applied[-1][1] + 15:
                bridge(self.op.publish_document(namespace, name, doc))
                applied.append((text, time.monotonic()))
            waiting = []
            want = reconfigure.served_live_epochs(doc)
            for member, url in reconfigure.members_of(doc):
                try:
                    got = calls("GET", f"{url}/v1/cluster")
                except (OSError, ValueError) as exc:
                    waiting.append(f"{member} ({getattr(exc, 'reason', exc)})")
                    continue
                if got.get("liveEpochs") != want:
                    waiting.append(f"{member} (serves epochs {got.get('liveEpochs')})")
            if waiting:
                text = f"waiting for members to serve epochs {want}: {', '.join(waiting)}"
                self.note(namespace, name, text)
                if self.stop.wait(PUBLISH_POLL):
                    raise Stopped("the operator is stopping")
                raise RuntimeError(text)

        return publish


def _decoded(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    import base64

    out = {}
    for k, v in ((secret or {}).get("data") or {}).items():
        with contextlib.suppress(ValueError):
            out[k] = base64.b64decode(v)
    return out
