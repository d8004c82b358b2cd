"""Liveness, readiness and the cluster description every node serves."""

from __future__ import annotations

from aiohttp import web

from ..cluster.config import dump
from ..http.appkeys import LIVE, NODE, STORE
from ..http.errors import error_response
from ..http.jsonio import json_response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the configuration is loaded and the store takes writes."""
    app = request.app
    if LIVE not in app:
        return error_response(503, "not_ready", "no cluster configuration loaded")
    store = app.get(STORE)
    if store is None or not store.is_open:
        reason = store.failure if store is not None and store.failure else "store not open"
        return error_response(503, "not_ready", f"register store unavailable: {reason}")
    return json_response({"status": "ready", "node": app[NODE]})


async def cluster(request: web.Request) -> web.Response:
    app = request.app
    live = app[LIVE]
    doc = dump(live.cfg)
    out = {
        "cluster": doc["cluster"],
        "epoch": doc["epoch"],
        "members": doc["members"],
        "layout": doc["quorums"],
        "limits": doc["limits"],
        "node": app[NODE],
    }
    reach = live.reach
    if "previous" in doc:  # a reconfiguration is under way: the older epochs still live
        out["previous"] = doc["previous"]
    out["liveEpochs"] = [p["epoch"] for p in doc.get("previous", ())] + [doc["epoch"]]
    if reach is not None:  # the proposer gateway runs here: add this node's view of the members
        for i, member in enumerate(out["members"]):
            member["up"] = reach.is_up(i)
        out["quorumMargin"] = reach.margin()
    return json_response(out)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/cluster", cluster)
