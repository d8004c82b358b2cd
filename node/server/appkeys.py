"""Typed keys under which the app keeps what every route needs.

Other route modules (the proposer gateway) read the same keys: ``app[CLUSTER]``, ``app[STORE]``.
"""

from __future__ import annotations

from aiohttp import web

from ..clusterconfig import ClusterConfig
from ..storage import RegisterStore
from .metrics import NodeMetrics
from .reachability import Reachability

CLUSTER = web.AppKey("cluster", ClusterConfig)
NODE = web.AppKey("node", str)
STORE = web.AppKey("store", RegisterStore)
METRICS = web.AppKey("metrics", NodeMetrics)
# Set by the proposer gateway: which members this node reaches (for /v1/cluster).
REACHABILITY = web.AppKey("reachability", Reachability)
