"""Typed keys under which the app keeps what every route needs.

Other route modules (the proposer gateway) read the same keys: ``app[CLUSTER]``, ``app[STORE]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # types only: the modules that fill these keys import this one
    from ..cluster.config import ClusterConfig
    from ..proposer.reachability import Reachability
    from ..server.metrics import NodeMetrics
    from ..storage import RegisterStore

CLUSTER: web.AppKey[ClusterConfig] = web.AppKey("cluster")
NODE: web.AppKey[str] = web.AppKey("node")
STORE: web.AppKey[RegisterStore] = web.AppKey("store")
METRICS: web.AppKey[NodeMetrics] = web.AppKey("metrics")
# Set by the proposer gateway: which members this node reaches (for /v1/cluster).
REACHABILITY: web.AppKey[Reachability] = web.AppKey("reachability")

# A plug-in of the node's app (the proposer gateway): adds its routes before the app starts.
Extension = Callable[[web.Application], None]
