"""Every error leaves the node as JSON ``{"error": {"code": ..., "message": ...}}``.

Bad input is always a 4xx with a reason; a 5xx means the node itself is in trouble (a broken
store answers 503), never that a client sent something odd.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from ..storage import StoreError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def invalid(where: str, problem: str) -> ApiError:
    """422: well-formed JSON that does not match the request schema."""
    return ApiError(422, "invalid_request", f"{where}: {problem}")


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"no route for {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"method {request.method} not allowed for {request.path} (allowed: {allowed})"
    return exc.text or exc.reason  # e.g. 413: "Maximum request body size N exceeded, ..."


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, _http_message(exc, request), headers)
    except StoreError as exc:
        return error_response(503, "store_unavailable", str(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error (logged on the node)")
