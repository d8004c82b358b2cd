"""The peer (register) API: what proposers call on every acceptor.

Each handler validates the whole request, hands it to the register service (``service``) and
replies only once the changes it made are durable.
"""

from __future__ import annotations

from aiohttp import web

from ..http.appkeys import LIVE, METRICS, STORE
from ..http.jsonio import json_response, read_json
from ..http.validate import parse_fence, parse_keys_query, parse_read, parse_write
from ..security.access import check_register_writes
from .service import read_many, write_many
from .wire import reply_to_json

PREFIX = "/v1/registers"


async def read_registers(request: web.Request) -> web.Response:
    app = request.app
    items = parse_read(await read_json(request), app[LIVE].cfg.limits)
    replies, durable = read_many(app[STORE], app[METRICS], items)
    await durable
    return json_response(
        {"replies": [reply_to_json(k, r) for (k, _), r in zip(items, replies, strict=True)]}
    )


async def write_registers(request: web.Request) -> web.Response:
    app = request.app
    cfg = app[LIVE].cfg
    items = parse_write(await read_json(request), cfg.limits)
    check_register_writes(request, cfg.layout, (item.rs for item in items))  # before any write
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
        request.query, [k for k, _ in request.query.items()], app[LIVE].cfg.limits
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
