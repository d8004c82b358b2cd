"""Limits on connections, so slow or numerous clients cannot hold a member's resources.

- At most ``MAX_CONNECTIONS`` open connections per member; one more is answered ``503``
  (``too_many_connections``) and closed at once.
- A request head must arrive within ``HEAD_TIMEOUT`` seconds of the connection opening or of
  the previous response (slowloris: a client trickling header bytes, or a silent connection,
  is closed). A request being handled is never cut (long polls may take a minute).
- Bodies must arrive within ``BODY_TIMEOUT`` (``http.jsonio``: 408 otherwise).
- Heads are bounded by aiohttp's parser: lines and fields ``MAX_FIELD`` bytes, ``MAX_HEADERS``
  fields (400 beyond); bodies by the cluster's ``maxBodyBytes`` (413).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

MAX_CONNECTIONS = 1024
HEAD_TIMEOUT = 30.0
MAX_FIELD = 8190
MAX_HEADERS = 64
HANDLER_LIMITS = {
    "max_line_size": MAX_FIELD,
    "max_field_size": MAX_FIELD,
    "max_headers": MAX_HEADERS,
}

_BUSY = orjson.dumps(
    {"error": {"code": "too_many_connections", "message": "this member has too many connections"}}
)
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY), _BUSY)
)


class ConnectionGuard:
    """Wraps the server's protocol factory (``runner.server``) and the app (a middleware)."""

    def __init__(
        self, max_connections: int | None = None, head_timeout: float | None = None
    ) -> None:
        self._factory: Any = None
        self.max_connections = max_connections or MAX_CONNECTIONS
        self.head_timeout = head_timeout or HEAD_TIMEOUT
        self.open = 0
        self.refused = 0
        self._timers: dict[Any, asyncio.TimerHandle] = {}  # transport -> head deadline

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> None:
        """Guard the connections ``factory`` (aiohttp's ``web.Server``) makes protocols for."""
        self._factory = factory

    def __getattr__(self, name: str) -> Any:
        # everything else (shutdown, connections...) is the wrapped server's
        return getattr(self._factory, name)

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._factory())

    def opened(self, transport: Any) -> bool:
        """Count a new connection; False (after answering 503) when over the cap."""
        if self.open >= self.max_connections:
            self.refused += 1
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return False
        self.open += 1
        self._arm(transport)
        return True

    def closed(self, transport: Any) -> None:
        self.open -= 1
        timer = self._timers.pop(transport, None)
        if timer is not None:
            timer.cancel()

    def _arm(self, transport: Any) -> None:
        old = self._timers.pop(transport, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[transport] = loop.call_later(self.head_timeout, _expire, transport)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        timer = self._timers.pop(transport, None)
        if timer is not None:
            timer.cancel()  # the head arrived in time; the handler may take as long as it needs
        try:
            return await handler(request)
        finally:
            if transport is not None and not transport.is_closing():
                self._arm(transport)  # the next head, within the deadline again


def _expire(transport: Any) -> None:
    transport.close()


class _Guarded(asyncio.Protocol):
    """aiohttp's handler behind the guard (its attributes are slots: it cannot be patched)."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: Any = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self._counted = self._guard.opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._guard.closed(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
