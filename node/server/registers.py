"""The peer (register) API: what proposers call on every acceptor.

Each handler validates the whole request, decides every item with the pure acceptor functions,
submits all resulting changes in one ``store.submit`` (group commit shares the fsync with
concurrent requests) and replies only once that is durable. A request that changed nothing
still waits for a barrier: the state it reports may come from changes not yet durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import web

from ..protocol import acceptor
from ..protocol.acceptor import Reply
from ..storage import RegisterStore
from .appkeys import CLUSTER, METRICS, STORE
from .jsonio import json_response, read_json
from .metrics import NodeMetrics
from .overlay import Overlay
from .validate import WriteItem, parse_fence, parse_keys_query, parse_read, parse_write
from .wire import reply_to_json

PREFIX = "/v1/registers"


def read_many(
    store: RegisterStore, metrics: NodeMetrics, items: Sequence[tuple[str, int]]
) -> tuple[list[Reply], asyncio.Future[None]]:
    """P1a for each (key, rs); the replies may be sent once the future resolves (durable).

    Shared by the HTTP handler and this node's own proposer (which skips HTTP for itself).
    """
    view = Overlay(store)
    replies = []
    for key, rs in items:
        change, reply = acceptor.read(view.state(key), rs, store.global_fence)
        if change is not None:
            view.record(key, change)
        replies.append(reply)
    durable = store.submit(view.changes)
    metrics.count("read", ok=len(items))
    return replies, durable


def write_many(
    store: RegisterStore, metrics: NodeMetrics, items: Sequence[WriteItem]
) -> tuple[list[Reply], asyncio.Future[None]]:
    """P2a for each item, in order; send the replies only once the future resolves."""
    view = Overlay(store)
    replies = []
    refused = 0
    for item in items:
        change, reply = acceptor.write(
            view.state(item.key), item.rs, item.value, store.global_fence
        )
        if change is not None:
            view.record(item.key, change)
        refused += not reply.ok
        replies.append(reply)
    durable = store.submit(view.changes)
    metrics.count("write", ok=len(items) - refused, refused=refused)
    return replies, durable


async def read_registers(request: web.Request) -> web.Response:
    app = request.app
    items = parse_read(await read_json(request), app[CLUSTER].limits)
    replies, durable = read_many(app[STORE], app[METRICS], items)
    await durable
    return json_response(
        {"replies": [reply_to_json(k, r) for (k, _), r in zip(items, replies, strict=True)]}
    )


async def write_registers(request: web.Request) -> web.Response:
    app = request.app
    items = parse_write(await read_json(request), app[CLUSTER].limits)
    replies, durable = write_many(app[STORE], app[METRICS], items)
    await durable
    return json_response(
        {
            "replies": [
                {"rs": item.rs, **reply_to_json(item.key, reply)}
                for item, reply in zip(items, replies, strict=True)
            ]
        }
    )


async def fence_all(request: web.Request) -> web.Response:
    app = request.app
    rs = parse_fence(await read_json(request))
    store = app[STORE]
    waiter = store.raise_global_fence(rs)
    fence = store.global_fence  # read now: a later raise by someone else may not be durable yet
    await waiter
    app[METRICS].count("fence", ok=1)
    return json_response({"fence": fence})


async def list_keys(request: web.Request) -> web.Response:
    app = request.app
    query = parse_keys_query(
        request.query, [k for k, _ in request.query.items()], app[CLUSTER].limits
    )
    store = app[STORE]
    await store.barrier()  # keys submitted before this request are on disk, so listed
    if query.below is None:
        page = store.enumerate_keys(query.after, query.limit)
    else:
        page = store.keys_with_values_below(query.below, query.after, query.limit)
    floor = store.global_fence
    keys = [
        {
            "key": key,
            "fence": max(state.fence, floor),
            "values": {str(rs): value for rs, value in state.values.items()},
        }
        for key, state in page
    ]
    await store.barrier()  # the states above may include changes made since the first barrier
    more = len(page) == query.limit
    return json_response(
        {"keys": keys, "next": page[-1][0] if more else None, "globalFence": floor}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{PREFIX}/read", read_registers)
    app.router.add_post(f"{PREFIX}/write", write_registers)
    app.router.add_post(f"{PREFIX}/fence", fence_all)
    app.router.add_get(f"{PREFIX}/keys", list_keys)
