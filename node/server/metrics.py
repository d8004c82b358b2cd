"""Prometheus metrics of one node, in a registry owned by its app.

The metric names and labels are a contract with the dashboard and alert rules: change them only
together. A per-app registry (not the process-global one) keeps tests that run several apps in
one process from mixing their numbers.
"""

from __future__ import annotations

import sqlite3
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..cluster.config import ClusterConfig
from ..proposer.metrics import BATCH_BUCKETS
from ..storage import RegisterStore

COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class NodeMetrics:
    def __init__(self, cfg: ClusterConfig, node: str, store: RegisterStore) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.register_ops = Counter(
            "graven_register_ops",
            "Register operations by kind and result (per key item, not per HTTP request).",
            ["op", "result"],
            registry=r,
        )
        # every child exists from the start (zeros, so rate() works) and is looked up in a
        # plain dict on the hot path instead of through labels()
        initial = (("read", "ok"), ("write", "ok"), ("write", "refused"), ("fence", "ok"))
        self._ops = {(op, res): self.register_ops.labels(op, res) for op, res in initial}
        self.http_duration = Histogram(
            "graven_http_request_duration_seconds",
            "HTTP request handling time.",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.commit_duration = Histogram(
            "graven_commit_duration_seconds",
            "Time of one group commit (transaction + fsync).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_batch = Histogram(
            "graven_commit_batch_size",
            "Changes made durable per group commit.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        Gauge("graven_stored_keys", "Keys with stored state.", registry=r).set_function(
            lambda: store.stored_keys
        )
        Gauge(
            "graven_fence_watermark", "Global fence: every register set below is nil.", registry=r
        ).set_function(lambda: store.global_fence)
        Gauge("graven_storage_bytes", "Size of the register database.", registry=r).set_function(
            lambda: _storage_bytes(store)
        )
        Gauge(
            "graven_store_failed",
            "1 once a commit failed (disk full, write or fsync error): the node then refuses "
            "every register write and is not ready until restarted.",
            registry=r,
        ).set_function(lambda: float(store.failure is not None))
        self.config_epoch = Gauge("graven_config_epoch", "Configuration epoch served.", registry=r)
        self.config_live_epochs = Gauge(
            "graven_config_live_epochs",
            "Epochs live in the configuration served (above 1: a reconfiguration is under way).",
            registry=r,
        )
        self.config_changed(cfg)
        self.carried_keys = Counter(
            "graven_carried_keys",
            "Keys this node's proposer carried into its newest epoch for a reconfiguration "
            "(POST /v1/admin/carry items answered with a decided value).",
            registry=r,
        )
        Gauge("graven_node_info", "Node identity.", ["node", "cluster"], registry=r).labels(
            node, cfg.cluster
        ).set(1)

    def config_changed(self, cfg: ClusterConfig) -> None:
        """The configuration served now (at start, and on each live install)."""
        self.config_epoch.set(cfg.epoch)
        self.config_live_epochs.set(1 + len(cfg.previous))

    def observe_commit(self, seconds: float, changes: int) -> None:
        self.commit_duration.observe(seconds)
        self.commit_batch.observe(changes)

    def count(self, op: str, ok: int, refused: int = 0) -> None:
        if ok:
            self._op_counter(op, "ok").inc(ok)
        if refused:
            self._op_counter(op, "refused").inc(refused)

    def _op_counter(self, op: str, result: str) -> Counter:
        child = self._ops.get((op, result))
        if child is None:
            child = self._ops[op, result] = self.register_ops.labels(op, result)
        return child

    def middleware(self) -> Middleware:
        # Labelled children by (route, method, status): ``labels()`` validates and locks on
        # every call, which showed up per request; the label set is bounded (routes x methods
        # x statuses), so the cache is too.
        children: dict[tuple[str, str, int], Histogram] = {}
        perf_counter = time.perf_counter

        @web.middleware
        async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            finally:
                resource = request.match_info.route.resource
                # unknown paths share one label: clients must not be able to mint series
                route = resource.canonical if resource is not None else "unmatched"
                method = request.method if request.method in _METHODS else "other"
                child = children.get((route, method, status))
                if child is None:
                    child = children[route, method, status] = self.http_duration.labels(
                        route, method, str(status)
                    )
                child.observe(perf_counter() - started)

        return timed

    async def handle(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _storage_bytes(store: RegisterStore) -> float:
    try:
        return store.storage_bytes()
    except sqlite3.Error:  # closed while a scrape was on its way: report nothing, not an error
        return float("nan")
