"""Transports of a remote acceptor channel: the peer register API over HTTP.

Members go through ``PeerHttpClient`` (keep-alive, orjson, no per-request objects), over TLS
when the URL is https and the caller gives a ``tls`` context source (a member's certificates, a
client's); https without one goes through aiohttp's client (system trust store).
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import orjson

from ..acceptor.wire import reply_from_json
from ..protocol.acceptor import Reply
from .channel import READ, Item, PeerError, Transport
from .httpclient import PeerHttpClient

_STALE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE})  # a pooled connection gone stale


def remote_transport(
    url: str,
    timeout: float,
    session: Callable[[], aiohttp.ClientSession],
    tls: Callable[[], ssl.SSLContext] | None = None,
    headers: bytes = b"",
) -> Transport:
    """http, or https with ``tls``, through ``PeerHttpClient``; other https through aiohttp's
    client (``session`` is asked for only then, and stays the caller's). ``headers``: extra
    header lines (CRLF-terminated) for every request, e.g. a bearer token."""
    scheme = urlsplit(url).scheme
    if scheme == "http":
        return HttpTransport(url, timeout, headers=headers)
    if tls is not None:
        return HttpTransport(url, timeout, tls, headers)
    return AiohttpTransport(session(), url, timeout)


def _request_body(kind: str, items: list[Item]) -> bytes:
    if kind == READ:
        return orjson.dumps({"reads": [{"key": i.key, "rs": i.rs} for i in items]})
    return orjson.dumps({"writes": [{"key": i.key, "rs": i.rs, "value": i.value} for i in items]})


def _parse_replies(status: int, raw: bytes, count: int) -> list[Reply]:
    if status != 200:
        raise PeerError(f"HTTP {status} from the peer API", down=status >= 500)
    try:
        replies = orjson.loads(raw)["replies"]
        out = [reply_from_json(r)[1] for r in replies]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PeerError(f"unreadable reply: {exc}", down=True) from None
    if len(out) != count:
        raise PeerError(f"{len(out)} replies for {count} items", down=True)
    return out


class HttpTransport:
    """A peer through ``PeerHttpClient`` (keep-alive, no per-request objects)."""

    def __init__(
        self,
        url: str,
        timeout: float,
        tls: Callable[[], ssl.SSLContext] | None = None,
        headers: bytes = b"",
    ) -> None:
        self._client = PeerHttpClient(url, tls, headers)
        self._timeout = timeout
        self._probe_timeout = min(timeout, 1.0)

    async def call(self, kind: str, items: list[Item]) -> list[Reply]:
        status, raw = await self._client.request(
            "POST", f"/v1/registers/{kind}", _request_body(kind, items), self._timeout
        )
        return _parse_replies(status, raw, len(items))

    async def probe(self) -> bool:
        try:
            status, _ = await self._client.request("GET", "/readyz", None, self._probe_timeout)
        except (TimeoutError, OSError):
            return False
        return status == 200

    def close(self) -> None:
        self._client.close()


class AiohttpTransport:
    """A peer over HTTPS (or anything but plain http), through an aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self._session = session
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._probe_timeout = aiohttp.ClientTimeout(total=min(timeout, 1.0))

    async def call(self, kind: str, items: list[Item]) -> list[Reply]:
        data = _request_body(kind, items)
        try:
            return await self._post(kind, data, len(items))
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError) or (
                isinstance(exc, aiohttp.ClientOSError) and exc.errno not in _STALE_ERRNOS
            ):
                raise
            # Most likely a pooled keep-alive connection the peer closed (it restarted): one
            # more try, on a fresh connection. Reads and writes are idempotent.
            return await self._post(kind, data, len(items))

    async def _post(self, kind: str, data: bytes, count: int) -> list[Reply]:
        async with self._session.post(
            f"{self._url}/v1/registers/{kind}",
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=self._timeout,
        ) as resp:
            raw = await resp.read()
            status = resp.status
        return _parse_replies(status, raw, count)

    async def probe(self) -> bool:
        try:
            async with self._session.get(
                f"{self._url}/readyz", timeout=self._probe_timeout
            ) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def close(self) -> None:
        pass  # the session is its owner's to close
