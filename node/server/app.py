"""Assembly of a node's aiohttp application.

Routes owned here: ``/v1/registers/*`` (peer API), ``/v1/cluster``, ``/healthz``, ``/readyz``,
``/metrics``. The proposer gateway (client API under ``/v1/decisions``) plugs in through
``extensions``: callables that receive the app before it starts and add their routes, reading
``app[CLUSTER]``, ``app[NODE]``, ``app[STORE]`` and ``app[METRICS]`` (see ``appkeys``).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from ..acceptor import routes as registers
from ..cluster.config import ClusterConfig
from ..http.appkeys import CLUSTER, METRICS, NODE, STORE, Extension
from ..http.errors import error_middleware
from ..storage import RegisterStore
from . import info
from .metrics import NodeMetrics


def create_app(
    cfg: ClusterConfig,
    node_name: str,
    store: RegisterStore,
    extensions: Iterable[Extension] = (),
) -> web.Application:
    """The node's app; the caller owns ``store`` (opens it before, closes it after serving)."""
    metrics = NodeMetrics(cfg, node_name, store)
    store.on_commit = metrics.observe_commit
    app = web.Application(
        # timing outermost so it sees the status the error middleware produced
        middlewares=[metrics.middleware(), error_middleware],
        client_max_size=cfg.limits.max_body_bytes,
    )
    app[CLUSTER] = cfg
    app[NODE] = node_name
    app[STORE] = store
    app[METRICS] = metrics
    registers.add_routes(app)
    info.add_routes(app)
    app.router.add_get("/metrics", metrics.handle)
    for extend in extensions:
        extend(app)
    return app
