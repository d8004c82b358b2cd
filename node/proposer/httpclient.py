"""A minimal keep-alive HTTP/1.1 client for the peer API (``http://`` or ``https://`` members).

Why not aiohttp's client here: each peer request through ``ClientSession`` builds a request and
response object, header multidicts, URL objects, tracing hooks and several futures and timers;
profiles showed that at 2-3x the CPU of the whole exchange on a raw connection. The peer API
is ours and small: a POST with a JSON body and a JSON answer (or a GET for the probe). This
client writes the request bytes itself and reads one response at a time per connection
(Content-Length, chunked, or until close), keeping idle connections for reuse.

Failures are ``OSError`` subclasses (what the channel already treats as "member unreachable"):
``ConnectionRefusedError`` and other connect errors as ``PeerConnectError``, ``PeerDisconnected``
when the peer closed the connection before a full response, ``TimeoutError`` past the deadline.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # bytes of status line + headers before we call the response malformed
MAX_IDLE = 16  # idle connections kept per peer (the channel keeps only a few requests in flight)


class PeerConnectError(ConnectionError):
    """Could not open a connection to the peer (other than a plain refusal)."""


class PeerDisconnected(ConnectionError):
    """The peer closed the connection before the response was complete."""


class PeerProtocolError(ConnectionError):
    """The peer's answer is not an HTTP/1.x response we can read."""


class _Conn(asyncio.Protocol):
    """One connection; one request at a time, the response parsed as bytes arrive."""

    def __init__(self) -> None:
        # typed loosely: uvloop's transports are not asyncio.Transport subclasses
        self.transport: Any = None
        self.closed = False
        self.received = False  # any byte of the current response arrived
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._head: tuple[int, int | None, bool, bool] | None = None  # status, length, chunked, ka
        self._keep_alive = True

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._abort()  # bytes nobody asked for: the connection is out of step
            return
        self.received = True
        self._buf += data
        try:
            self._parse()
        except PeerProtocolError as exc:
            self._fail(exc)
            self._abort()

    def eof_received(self) -> bool:
        if self._head is not None and self._head[1] is None and not self._head[2]:
            self._finish(bytes(self._buf))  # body delimited by the end of the connection
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f": {exc}" if exc is not None else ""
        self._fail(PeerDisconnected(f"connection closed by the peer{reason}"))

    # -- requests ------------------------------------------------------------------------------

    def start(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._buf.clear()
        self._head = None
        self.received = False
        self.transport.write(request)
        return waiter

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive and self._waiter is None

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def _abort(self) -> None:
        self._keep_alive = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self._keep_alive = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _finish(self, body: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        assert self._head is not None
        status, _, _, keep_alive = self._head
        self._keep_alive = self._keep_alive and keep_alive
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def _parse(self) -> None:
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise PeerProtocolError("response head too large")
                return
            self._head = _parse_head(bytes(buf[:end]))
            del buf[: end + 4]
        _, length, chunked, _ = self._head
        if chunked:
            body = _dechunk(buf)
            if body is not None:
                self._finish(body)
        elif length is not None and len(buf) >= length:
            self._finish(bytes(buf[:length]))


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, content length or None, chunked, keep-alive) from a response head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise PeerProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    keep_alive = parts[0] == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            if not value.isdigit():
                raise PeerProtocolError(f"bad Content-Length {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.lower()
            if b"close" in token:
                keep_alive = False
            elif b"keep-alive" in token:
                keep_alive = True
    if status in (204, 304) or 100 <= status < 200:
        length, chunked = 0, False
    if length is None and not chunked:
        keep_alive = False  # the body runs until the peer closes the connection
    return status, length, chunked, keep_alive


def _dechunk(buf: bytearray) -> bytes | None:
    """The whole body once every chunk (and the final empty one) arrived, else None."""
    out = bytearray()
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise PeerProtocolError(f"bad chunk size {size_text[:20]!r}") from None
        start = eol + 2
        if size == 0:
            # trailers (normally none) end with an empty line
            return bytes(out) if buf.find(b"\r\n\r\n", eol) >= 0 else None
        if len(buf) < start + size + 2:
            return None
        out += buf[start : start + size]
        pos = start + size + 2


class PeerHttpClient:
    """Requests to one peer over a small pool of keep-alive connections.

    ``https://`` peers need ``tls``: called for each new connection, it returns the context to
    connect with (the newest certificates, see ``security.tls.ClientTls``). ``headers`` are
    extra header lines (each ending in CRLF) sent with every request, e.g. credentials."""

    def __init__(
        self,
        url: str,
        tls: Callable[[], ssl.SSLContext] | None = None,
        headers: bytes = b"",
    ) -> None:
        parts = urlsplit(url)
        if parts.hostname is None or parts.scheme not in ("http", "https"):
            raise ValueError(f"PeerHttpClient speaks http or https, got {url!r}")
        if (parts.scheme == "https") != (tls is not None):
            raise ValueError(f"{url!r}: a TLS context is needed for https and only for https")
        self._tls = tls
        self._host = parts.hostname
        self._port = parts.port or (443 if tls is not None else 80)
        self._headers = headers
        netloc = parts.netloc
        self._netloc = netloc.encode() if netloc.isascii() else netloc.encode("idna")
        self._idle: list[_Conn] = []
        self._closed = False

    async def request(
        self, method: str, path: str, body: bytes | None, timeout: float, headers: bytes = b""
    ) -> tuple[int, bytes]:
        """(status, body) of one request; OSError subclasses or TimeoutError on failure.

        ``headers``: extra header lines, each ending in CRLF."""
        head = (
            f"{method} {path} HTTP/1.1\r\n".encode()
            + self._headers
            + headers
            + b"Host: "
            + self._netloc
        )
        if body is None:
            request = head + b"\r\n\r\n"
        else:
            request = b"%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                head,
                len(body),
                body,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn, reused = await self._acquire(deadline)
        try:
            return await self._exchange(conn, request, deadline)
        except (PeerDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused or conn.received:
                raise
        # Most likely a pooled keep-alive connection the peer closed (it restarted or timed the
        # connection out) before reading our request: one more try on a fresh connection. Reads
        # and writes are idempotent.
        conn, _ = await self._acquire(deadline, fresh=True)
        return await self._exchange(conn, request, deadline)

    async def _exchange(self, conn: _Conn, request: bytes, deadline: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        waiter = conn.start(request)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            result = await waiter
        except BaseException:
            conn.close()  # a half-read response leaves the connection unusable
            raise
        finally:
            timer.cancel()
        if conn.reusable and not self._closed and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
        return result

    async def _acquire(self, deadline: float, fresh: bool = False) -> tuple[_Conn, bool]:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if conn.reusable:
                return conn, True
            conn.close()
        if self._closed:
            raise PeerDisconnected("the client is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                if self._tls is None:
                    _, conn = await loop.create_connection(_Conn, self._host, self._port)
                else:
                    _, conn = await loop.create_connection(
                        _Conn, self._host, self._port, ssl=self._tls(), server_hostname=self._host
                    )
        except ConnectionRefusedError:
            raise
        except TimeoutError:
            raise
        except ssl.SSLError as exc:  # refused certificate (either side): not a plain outage
            raise PeerConnectError(0, f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise PeerConnectError(exc.errno, exc.strerror or str(exc)) from None
        return conn, False

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _expire(waiter: asyncio.Future[tuple[int, bytes]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
