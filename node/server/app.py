"""Assembly of a node's aiohttp application.

Routes owned here: ``/v1/registers/*`` (peer API), ``/v1/cluster``, ``/v1/admin/config`` (a
newer configuration, installed live: ``live``), ``/healthz``, ``/readyz``, ``/metrics``. The
proposer gateway (client API under ``/v1/decisions``) plugs in through ``extensions``:
callables that receive the app before it starts and add their routes, reading ``app[LIVE]``
(the configuration served now, and hooks run when it changes), ``app[NODE]``, ``app[STORE]``
and ``app[METRICS]`` (see ``appkeys``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from ..acceptor import routes as registers
from ..cluster.config import ClusterConfig
from ..http.appkeys import LIVE, METRICS, NODE, STORE, Extension
from ..http.errors import error_middleware
from ..security import access
from ..storage import RegisterStore
from . import info, live
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
    ref = access.PolicyRef(policy) if policy is not None else None
    if ref is not None:
        middlewares.append(access.middleware(ref))
    middlewares.append(error_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=cfg.limits.max_body_bytes)
    if ref is not None:
        app[access.POLICY] = ref
    state = live.Live(cfg, node_name, store, metrics, ref)
    app[LIVE] = state
    app[NODE] = node_name
    app[STORE] = store
    app[METRICS] = metrics
    registers.add_routes(app)
    info.add_routes(app)
    live.add_routes(app)
    app.router.add_get("/metrics", metrics.handle)
    app.on_response_prepare.append(_epoch_header(state))
    for extend in extensions:
        extend(app)
    return app


EPOCH_HEADER = "Graven-Epoch"


def _epoch_header(
    state: live.Live,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Every client-API, peer-API and ``/v1/cluster`` reply (errors and refusals too) names
    the live epochs of the configuration this member serves now, oldest first (``0, 1`` during
    a transition, ``1`` once epoch 0 is retired): a client or a smart client that holds an
    older cluster document refetches ``/v1/cluster`` and follows the new members
    (``client.core``)."""

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith(STAMPED):
            response.headers[EPOCH_HEADER] = state.epoch_header

    return stamp


STAMPED = ("/v1/cluster", "/v1/decisions", "/v1/admin/", "/v1/registers/")
