"""Typed keys under which the app keeps what every route needs.

Other route modules (the proposer gateway) read the same keys: ``app[LIVE].cfg`` (the
configuration served now: it changes when a newer one is installed), ``app[STORE]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # types only: the modules that fill these keys import this one
    from ..server.live import Live
    from ..server.metrics import NodeMetrics
    from ..storage import RegisterStore

LIVE: web.AppKey[Live] = web.AppKey("live")
NODE: web.AppKey[str] = web.AppKey("node")
STORE: web.AppKey[RegisterStore] = web.AppKey("store")
METRICS: web.AppKey[NodeMetrics] = web.AppKey("metrics")

# A plug-in of the node's app (the proposer gateway): adds its routes before the app starts.
Extension = Callable[[web.Application], None]
