"""The client API (contract): propose and read decisions, one key or a batch.

``PUT /v1/decisions/{key}`` ``{"value": V}`` -> ``{"key", "value": <decided>, "won"}``;
``GET /v1/decisions/{key}[?wait=S]`` -> ``{"key", "value"}`` or 404 ``not_decided``;
``POST /v1/decisions:batch`` ``{"decisions": [{"key", "value"}]}`` and
``POST /v1/decisions:batchGet`` ``{"keys": [...]}`` -> ``{"results": [...]}`` in request order,
each a result or ``{"key", "error"}``. The node's conventions hold: 400 malformed JSON, 422 a body
or key that does not fit the schema, 413 too large; 503 ``quorum_unreachable`` names the members
this node cannot reach, 504 ``timeout`` when the request deadline passed (outcome unknown).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..cluster.config import ClusterConfig, Limits
from ..http.appkeys import LIVE, METRICS, NODE, STORE, Extension
from ..http.errors import ApiError, invalid
from ..http.jsonio import json_response, read_json
from ..http.validate import array, fields, key, value_text
from ..proposer.options import (
    DeadlineExceeded,
    GatewayOptions,
    NoProposerSlot,
    QuorumUnreachable,
    StaleConfiguration,
)
from ..storage import StoreError
from .current import CurrentGateway
from .forward import FORWARDED_HEADER
from .gateway import Gateway

GATEWAY = web.AppKey("gateway", CurrentGateway)
PREFIX = "/v1/decisions"
MAX_BATCH = 1000
MAX_WAIT = 60.0


FAILURES = (QuorumUnreachable, DeadlineExceeded, NoProposerSlot, StaleConfiguration, StoreError)


def to_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QuorumUnreachable):
        return ApiError(503, "quorum_unreachable", str(exc))
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, "timeout", f"no answer within the request deadline: {exc}")
    if isinstance(exc, NoProposerSlot):
        return ApiError(503, "no_proposer_slot", str(exc))
    if isinstance(exc, StaleConfiguration):
        return ApiError(503, "stale_configuration", str(exc))
    if isinstance(exc, StoreError):
        return ApiError(503, "store_unavailable", str(exc))
    raise exc


async def _answer(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except FAILURES as exc:
        raise to_api_error(exc) from None


def _path_key(request: web.Request) -> str:
    return key(request.match_info["key"], "key", request.app[LIVE].cfg.limits)


def _not_decided(k: str) -> ApiError:
    return ApiError(404, "not_decided", f"nothing is decided for key {k!r}")


def _parse_wait(request: web.Request) -> float | None:
    names = [k for k, _ in request.query.items()]  # items(): repeated names too
    for name in names:
        if name != "wait":
            raise invalid("query", f"unknown parameter {name!r}")
    if names.count("wait") > 1:
        raise invalid("query", "parameter 'wait' given more than once")
    text = request.query.get("wait")
    if text is None:
        return None
    try:
        wait = float(text)
    except ValueError:
        raise invalid("wait", f"expected seconds as a number, got {text!r}") from None
    if not math.isfinite(wait) or not 0 < wait <= MAX_WAIT:
        raise invalid("wait", f"must be more than 0 and at most {MAX_WAIT:g} seconds, got {text}")
    return wait


async def put_decision(request: web.Request) -> web.Response:
    app = request.app
    limits = app[LIVE].cfg.limits
    k = _path_key(request)
    body = fields(await read_json(request), "body", {"value"})
    value = value_text(body["value"], "value", limits)
    forward = FORWARDED_HEADER not in request.headers  # a forwarded request stays here
    async with app[GATEWAY].use() as gw:
        decided = await _answer(gw.propose(k, value, gw.deadline(), forward))
    return json_response({"key": k, "value": decided, "won": decided == value})


async def get_decision(request: web.Request) -> web.Response:
    k = _path_key(request)
    wait = _parse_wait(request)
    async with request.app[GATEWAY].use() as gw:
        if wait is None:
            value = await _answer(gw.read(k, gw.deadline()))
        else:
            value = await _answer(gw.wait_decided(k, wait))
    if value is None:
        raise _not_decided(k)
    return json_response({"key": k, "value": value})


async def _each(
    items: list[Any], run: Callable[[Any], Awaitable[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Run every item concurrently (their messages share batched requests to the acceptors)."""
    return list(await asyncio.gather(*(run(item) for item in items)))


def _error_item(k: str, exc: Exception) -> dict[str, Any]:
    err = to_api_error(exc)
    return {"key": k, "error": {"code": err.code, "message": err.message}}


def _key_values(doc: Any, field: str, limits: Limits) -> list[tuple[str, str]]:
    """``{field: [{"key", "value"}, ...]}`` checked against the limits (at most ``MAX_BATCH``
    items): the body of ``:batch`` (``decisions``) and of the carry-over (``items``)."""
    raw = array(fields(doc, "body", {field})[field], field)
    if len(raw) > MAX_BATCH:
        raise invalid(field, f"at most {MAX_BATCH} items per request, got {len(raw)}")
    items = []
    for i, entry in enumerate(raw):
        where = f"{field}[{i}]"
        item = fields(entry, where, {"key", "value"})
        k = key(item["key"], f"{where}.key", limits)
        items.append((k, value_text(item["value"], f"{where}.value", limits)))
    return items


async def batch_propose(request: web.Request) -> web.Response:
    app = request.app
    limits = app[LIVE].cfg.limits
    items = _key_values(await read_json(request), "decisions", limits)
    async with app[GATEWAY].use() as gw:
        return await _batch_propose(gw, items)


async def _batch_propose(gw: Gateway, items: list[tuple[str, str]]) -> web.Response:
    deadline = gw.deadline()

    async def one(item: tuple[str, str]) -> dict[str, Any]:
        k, value = item
        try:
            # not forwarded: one request per item would be many connections; here the items
            # share batched acceptor requests instead
            decided = await gw.propose(k, value, deadline)
        except FAILURES as exc:
            return _error_item(k, exc)
        return {"key": k, "value": decided, "won": decided == value}

    return json_response({"results": await _each(items, one)})


async def batch_get(request: web.Request) -> web.Response:
    app = request.app
    limits = app[LIVE].cfg.limits
    body = fields(await read_json(request), "body", {"keys"})
    raw = array(body["keys"], "keys")
    if len(raw) > MAX_BATCH:
        raise invalid("keys", f"at most {MAX_BATCH} items per request, got {len(raw)}")
    keys = [key(k, f"keys[{i}]", limits) for i, k in enumerate(raw)]
    async with app[GATEWAY].use() as gw:
        return await _batch_get(gw, keys)


async def _batch_get(gw: Gateway, keys: list[str]) -> web.Response:
    deadline = gw.deadline()

    async def one(k: str) -> dict[str, Any]:
        try:
            value = await gw.read(k, deadline)
        except FAILURES as exc:
            return _error_item(k, exc)
        if value is None:
            return _error_item(k, _not_decided(k))
        return {"key": k, "value": value}

    return json_response({"results": await _each(keys, one)})


async def carry(request: web.Request) -> web.Response:
    """``POST /v1/admin/carry {"items": [{"key", "value"}]}``: the reconfiguration
    orchestrator's carry-over step, run by this node's proposer in the newest epoch."""
    app = request.app
    limits = app[LIVE].cfg.limits
    items = _key_values(await read_json(request), "items", limits)
    async with app[GATEWAY].use() as gw:
        deadline = gw.deadline()

        async def one(item: tuple[str, str]) -> dict[str, Any]:
            k, value = item
            try:
                decided = await gw.carry(k, value, deadline)
            except FAILURES as exc:
                return _error_item(k, exc)
            return {"key": k, "value": decided}

        results = await _each(items, one)
        epoch = gw.cfg.epoch
    app[METRICS].carried_keys.inc(sum("error" not in r for r in results))
    return json_response({"epoch": epoch, "results": results})


def extension(options: GatewayOptions | None = None) -> Extension:
    """The app extension that runs the proposer gateway in a node (see ``app.create_app``)."""
    opts = options or GatewayOptions()

    def extend(app: web.Application) -> None:
        live = app[LIVE]
        current = CurrentGateway(Gateway(live.cfg, app[NODE], app[STORE], app[METRICS], opts))
        app[GATEWAY] = current
        live.reach = current.gateway.reach

        async def start(_: web.Application) -> None:
            await current.gateway.start()

        async def end_polls(_: web.Application) -> None:
            current.gateway.shutdown()

        async def stop(_: web.Application) -> None:
            await current.gateway.close()

        async def reconfigure(cfg: ClusterConfig) -> None:
            """A configuration installed live: a gateway for its view takes over."""
            old = current.gateway
            new = Gateway(cfg, app[NODE], app[STORE], app[METRICS], opts, old.metrics)
            await current.swap(new)
            live.reach = new.reach
            await old.close()

        live.hooks.append(reconfigure)
        app.on_startup.append(start)
        app.on_shutdown.append(end_polls)  # before aiohttp waits for in-flight requests
        app.on_cleanup.append(stop)
        app.router.add_put(PREFIX + "/{key:.+}", put_decision)
        app.router.add_get(PREFIX + "/{key:.+}", get_decision)
        app.router.add_post(PREFIX + ":batch", batch_propose)
        app.router.add_post(PREFIX + ":batchGet", batch_get)
        app.router.add_post("/v1/admin/carry", carry)

    return extend
