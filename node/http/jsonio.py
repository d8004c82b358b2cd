"""JSON in and out of aiohttp with orjson (the hot path encodes every reply)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from .errors import ApiError


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


BODY_TIMEOUT = 30.0  # seconds for a whole request body to arrive (slow senders hold nothing)


async def read_json(request: web.Request) -> Any:
    """The decoded body; 413 (via aiohttp's client_max_size) when too large, 400 when not JSON,
    408 when it does not arrive within BODY_TIMEOUT."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            body = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the request body did not arrive within {BODY_TIMEOUT:g} s"
        ) from None
    if not body:
        raise ApiError(400, "malformed_json", "the request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON: {exc}"
        ) from None
