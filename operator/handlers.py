"""kopf handlers: when to reconcile, refresh status and clean up (reconcile.py says how).

Handlers are registered into an explicit registry by ``register()`` rather than at import time,
so the CLI and the tests each build their own operator with their own intervals.

- create / update / resume -> reconcile, post events, refresh status;
- timer "drift" (every ``drift_interval``) -> the same reconcile: repairs hand-edited or
  deleted children, and re-announces a refusal only when it starts;
- timer "health" (every ``health_interval``) -> member readiness and quorum math only;
- delete (behind the ``graven.dev/cleanup`` finalizer) -> explicit cleanup, PVCs per retention.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from . import names, status
from .kube import ApiError
from .reconcile import Event, Operator

log = logging.getLogger("graven.operator")
RESOURCE = {"group": names.GROUP, "version": names.VERSION, "plural": names.PLURAL}
# kopf's own bookkeeping goes to annotations under this prefix, never into .status, which the
# CRD's schema keeps strict (an unknown status field would be pruned by the apiserver).
STORAGE_PREFIX = f"operator.{names.GROUP}"
RETRY_DELAY = 5.0


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = names.FINALIZER
    # kopf would post an event for every handler log line; we post our own, meaningful ones.
    settings.posting.level = logging.WARNING
    # On shutdown, let a timer that is mid-way through a reconcile finish it (they are short)
    # instead of abandoning it while the API session closes under it.
    settings.background.instant_exit_timeout = 5.0


def _post(body: Mapping[str, Any], events: Iterable[Event], repeat_sticky: bool = True) -> None:
    meta = body["metadata"]
    for event in events:
        if event.sticky and not repeat_sticky:
            continue
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        log.log(
            level, "%s/%s: %s: %s", meta["namespace"], meta["name"], event.reason, event.message
        )


def _progressing_reason(body: Mapping[str, Any]) -> str | None:
    conditions = list((body.get("status") or {}).get("conditions") or [])
    found = status.find(conditions, status.PROGRESSING)
    return found.get("reason") if found else None


def _temporary(exc: ApiError) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"Kubernetes API: {exc}", delay=RETRY_DELAY)


def register(registry: kopf.OperatorRegistry, op: Operator) -> None:
    @kopf.on.startup(registry=registry, id="configure")
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)

    @kopf.on.login(registry=registry, id="login")
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        creds = kopf.login_via_client(**kwargs)
        if creds is not None:
            op.kube.use(creds)
        return creds

    @kopf.on.cleanup(registry=registry, id="close")
    async def cleanup(**_: Any) -> None:
        await op.close()

    async def reconcile_and_report(body: Mapping[str, Any], from_timer: bool) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        # One reconcile per cluster at a time, and none while its status is being written:
        # a drift pass must never apply an older spec after a change handler applied a newer.
        async with op.lock(namespace, name):
            try:
                if from_timer:
                    fresh = await op.current(namespace, name)
                    if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                        return
                    observed = (fresh.get("status") or {}).get("observedGeneration")
                    if observed != fresh["metadata"].get("generation"):
                        return  # a change handler has this generation in hand
                    body = fresh
                outcome, events = await op.reconcile(body)
                # A lasting verdict (refusal, rejected layout) is announced when it starts;
                # the drift timer reaching the same verdict again stays quiet.
                same = outcome.progressing is not None and (
                    outcome.progressing.reason == _progressing_reason(body)
                )
                _post(body, events, repeat_sticky=not from_timer or not same)
                await op.write_status(namespace, name, outcome)
            except ApiError as exc:
                raise _temporary(exc) from exc

    @kopf.on.resume(**RESOURCE, registry=registry, id="reconcile")
    @kopf.on.create(**RESOURCE, registry=registry, id="reconcile")
    @kopf.on.update(**RESOURCE, registry=registry, id="reconcile")
    async def on_change(body: kopf.Body, **_: Any) -> None:
        await reconcile_and_report(body, from_timer=False)

    @kopf.timer(
        **RESOURCE,
        registry=registry,
        id="drift",
        interval=op.options.drift_interval,
        initial_delay=op.options.drift_interval,
    )
    async def drift(body: kopf.Body, **_: Any) -> None:
        await reconcile_and_report(body, from_timer=True)

    @kopf.timer(**RESOURCE, registry=registry, id="health", interval=op.options.health_interval)
    async def health(body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        try:
            if ((body.get("spec") or {}).get("security") or {}).get("certManager"):
                await op.trust(meta["namespace"], meta["name"])  # cert-manager renews any time
            await op.refresh(meta["namespace"], meta["name"])
        except ApiError as exc:
            raise _temporary(exc) from exc

    @kopf.on.delete(**RESOURCE, registry=registry, id="cleanup")
    async def on_delete(body: kopf.Body, **_: Any) -> None:
        try:
            events = await op.cleanup(body)
        except ApiError as exc:
            raise _temporary(exc) from exc
        _post(body, events)
