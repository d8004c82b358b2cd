"""Assembly of a node's aiohttp application.

Routes owned here: ``/v1/registers/*`` (peer API), ``/v1/cluster``, ``/healthz``, ``/readyz``,
``/metrics``. The proposer gateway (client API under ``/v1/decisions``) plugs in through
``extensions``: callables that receive the app before it starts and add their routes, reading
``app[CLUSTER]``, ``app[NODE]``, ``app[STORE]`` and ``app[METRICS]`` (see ``appkeys``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

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
    app.on_response_prepare.append(_epoch_header(cfg))
    for extend in extensions:
        extend(app)
    return app


EPOCH_HEADER = "Graven-Epoch"


def _epoch_header(
    cfg: ClusterConfig,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Every client-API and ``/v1/cluster`` reply (errors and refusals too) names the live
    epochs of the configuration this member serves, oldest first (``0, 1`` during a transition,
    ``1`` once epoch 0 is retired): a client that holds an older cluster document refetches
    ``/v1/cluster`` and follows the new members (``client.core``)."""
    value = ", ".join(str(e) for e in sorted({p.epoch for p in cfg.previous} | {cfg.epoch}))

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        path = request.path
        if path == "/v1/cluster" or path.startswith(("/v1/decisions", "/v1/admin/")):
            response.headers[EPOCH_HEADER] = value

    return stamp
