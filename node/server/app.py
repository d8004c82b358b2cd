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
from ..security import access
from ..storage import RegisterStore
from . import info
from .metrics import NodeMetrics


def create_app(
    cfg: ClusterConfig,
    node_name: str,
    store: RegisterStore,
    extensions: Iterable[Extension] = (),
    policy: access.Policy | None = None,
) -> web.Application:
    """The node's app; the caller owns ``store`` (opens it before, closes it after serving).

    ``policy``: who may call what (see ``security.access``); None serves everyone (TLS off)."""
    metrics = NodeMetrics(cfg, node_name, store)
    store.on_commit = metrics.observe_commit
    # timing outermost so it sees the status the others produced; the access check before any
    # handler reads a body, so a refused request changes nothing
    middlewares = [metrics.middleware()]
    if policy is not None:
        middlewares.append(access.middleware(policy))
    middlewares.append(error_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=cfg.limits.max_body_bytes)
    if policy is not None:
        app[access.POLICY] = policy
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
