"""A running member's configuration, and installing a newer one without a restart.

``POST /v1/admin/config`` (role ``admin``: the reconfiguration orchestrator, ``graven up`` or
the operator) takes a cluster document. In order, nothing acknowledged before it is durable:

1. validate it: a well-formed document (400), of this cluster and incarnation, strictly newer
   than the one served (``cluster.order``: publishing epoch E+1, then retiring epoch E, are
   each newer) and naming this member in a live epoch (409 otherwise, nothing changed); the
   very same document again is answered 200 at once (idempotent);
2. save it in the data directory (``storage.configdoc``, fsynced), then raise the store's
   recorded epoch (durable): a restart from here on serves it, whatever the file says;
3. apply it: ``/v1/cluster``, the ``Graven-Epoch`` header, the access policy's peers, the
   node's metrics, and every hook (the proposer gateway swaps in a runtime for the new view).

Installs run one at a time. ``Live`` is what every route reads the configuration from.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..cluster import order
from ..cluster.config import ClusterConfig, ConfigError, dump, parse
from ..http.appkeys import LIVE
from ..http.errors import error_response
from ..http.jsonio import json_response, read_json
from ..storage import configdoc, identity
from ..storage.identity import IdentityRefused

if TYPE_CHECKING:
    from ..proposer.reachability import Reachability
    from ..security.access import PolicyRef
    from ..storage import RegisterStore
    from .metrics import NodeMetrics

Hook = Callable[[ClusterConfig], Awaitable[None]]


def live_epochs(cfg: ClusterConfig) -> list[int]:
    return sorted({p.epoch for p in cfg.previous} | {cfg.epoch})


class Live:
    """The configuration this member serves now (replaced by ``install``)."""

    def __init__(
        self,
        cfg: ClusterConfig,
        node: str,
        store: RegisterStore,
        metrics: NodeMetrics,
        policy: PolicyRef | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.metrics = metrics
        self.policy = policy
        self.reach: Reachability | None = None  # the proposer gateway's, for /v1/cluster
        self.hooks: list[Hook] = []
        self._lock = asyncio.Lock()
        self._set(cfg)

    def _set(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        self.epoch_header = ", ".join(str(e) for e in live_epochs(cfg))

    async def install(self, doc: Any) -> tuple[bool, ClusterConfig]:
        """(changed, the configuration served now); raises ConfigError (bad document),
        order.InstallRefused or IdentityRefused (refused: nothing changed)."""
        offered = parse(doc)
        async with self._lock:
            if order.compare(self.cfg, offered) == order.SAME:
                return False, self.cfg
            if offered.view().index(self.node) is None:
                raise order.InstallRefused(
                    "not_a_member",
                    f"{self.node} is in no live epoch of the document "
                    f"({order.describe(order.version(offered))})",
                )
            store = self.store
            # the store's own rule first (a raise never lowers, nor changes an epoch's
            # configuration), so a refusal leaves no saved document behind
            identity.epoch_updates(
                str(store.data_dir), store.recorded, offered.epoch, offered.fingerprint()
            )
            await asyncio.to_thread(configdoc.save, store.data_dir, dump(offered))
            await store.record_epoch(offered.epoch, offered.fingerprint())
            await self._apply(offered)
            return True, offered

    async def _apply(self, cfg: ClusterConfig) -> None:
        self._set(cfg)
        if self.policy is not None:
            members = frozenset(m.name for m in cfg.live_members())
            self.policy.current = dataclasses.replace(self.policy.current, members=members)
        self.metrics.config_changed(cfg)
        for hook in self.hooks:
            await hook(cfg)


async def install_config(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    doc = await read_json(request)
    try:
        changed, cfg = await live.install(doc)
    except ConfigError as exc:
        return error_response(400, "invalid_config", str(exc))
    except order.InstallRefused as exc:
        return error_response(409, exc.code, exc.message)
    except IdentityRefused as exc:
        return error_response(409, "refused", str(exc))
    return json_response(
        {
            "installed": changed,
            "epoch": cfg.epoch,
            "liveEpochs": live_epochs(cfg),
            "node": live.node,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/admin/config", install_config)
