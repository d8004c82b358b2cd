"""Python client for a Graven cluster's client API (thin HTTP client).

    from graven.node.client import Client
    with Client(["http://127.0.0.1:7100", "http://127.0.0.1:7101"]) as c:
        d = c.propose("leader", "node-a")      # Decision(key, value, won)
        c.get("leader")                        # "node-a", or None when nothing is decided

``Client`` is blocking (stdlib ``http.client``, one keep-alive connection per endpoint, not
thread-safe: use one per thread); ``AsyncClient`` (aiohttp) has the same methods as coroutines.
Connection failures and 503/502 move on to the next endpoint; any other error reply raises
``ClientError`` carrying the server's code and message. The client fetches ``/v1/cluster`` once
and sends each key to its home member first when that member is one of its endpoints.

``graven.node.smartclient.SmartClient`` (async) decides fast-layout keys in the client process.
Not here yet: following a configuration change to a newer epoch.
"""

from __future__ import annotations

import http.client
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .clientcore import (
    DEFAULT_TIMEOUT,
    RETRY_ELSEWHERE,
    ClientError,
    Decision,
    Endpoint,
    Router,
    UnavailableError,
    decision_path,
    decode,
    proposal_body,
    to_decision,
    to_value,
    unavailable,
    wait_query,
)

if TYPE_CHECKING:
    from .aclient import AsyncClient

__all__ = ["AsyncClient", "Client", "ClientError", "Decision", "UnavailableError"]

# A reused keep-alive connection the server has meanwhile closed fails like this; one fresh
# connection to the same endpoint is worth a try before calling the endpoint down.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def __getattr__(name: str) -> Any:
    # AsyncClient pulls in aiohttp: import it only for callers that use it.
    if name == "AsyncClient":
        from .aclient import AsyncClient

        return AsyncClient
    raise AttributeError(name)


class Client:
    def __init__(
        self, endpoints: list[str], timeout: float = DEFAULT_TIMEOUT, route: bool = True
    ) -> None:
        self.router = Router(endpoints)
        self.timeout = timeout
        self.route = route
        self._conns: dict[int, http.client.HTTPConnection] = {}

    # -- public API -------------------------------------------------------------------------

    def propose(self, key: str, value: str, *, via: str | None = None) -> Decision:
        """Propose ``value`` for ``key``; returns what was decided (possibly another value)."""
        path, body = decision_path(key), proposal_body(value)
        doc = self._call("PUT", path, body, key=key, via=via)
        return to_decision(doc, key)

    def get(self, key: str, wait: float | None = None, *, via: str | None = None) -> str | None:
        """The decided value, or None when nothing is decided (after ``wait`` seconds)."""
        path = decision_path(key) + wait_query(wait)
        try:
            doc = self._call("GET", path, None, key=key, via=via, extra=wait or 0.0)
        except ClientError as exc:
            if exc.status == 404 and exc.code == "not_decided":
                return None
            raise
        return to_value(doc, key)

    def cluster(self) -> dict[str, Any]:
        """``GET /v1/cluster``: cluster, epoch, members, layout, limits, node."""
        doc = self._call("GET", "/v1/cluster", None)
        if not isinstance(doc, dict):
            raise ClientError("bad_reply", f"unexpected /v1/cluster reply: {doc!r}")
        self.router.learn(doc)
        return doc

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        key: str | None = None,
        via: str | None = None,
        extra: float = 0.0,
    ) -> Any:
        if key is not None and self.route and not self.router.learned:
            self._learn()
        failures: list[str] = []
        # route=False: the endpoints strictly in the given order (plain failover)
        for index in self.router.order(key if self.route else None, via):
            endpoint = self.router.endpoints[index]
            try:
                status, data = self._exchange(index, method, path, body, self.timeout + extra)
            except _Unreachable as exc:
                self.router.mark_down(index)
                failures.append(f"{endpoint.url}: {exc}")
                continue
            except TimeoutError:
                # the request may still be running there: report, do not repeat it elsewhere
                raise ClientError(
                    "timeout", f"{endpoint.url} did not answer within {self.timeout + extra:g} s"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                self.router.mark_down(index)
                failures.append(f"{endpoint.url}: {_reason(exc)}")
                continue
            self.router.mark_up(index)
            if status in RETRY_ELSEWHERE:
                try:
                    decode(status, data, endpoint.url)
                except ClientError as exc:
                    failures.append(f"{endpoint.url}: {exc}")
                continue
            return decode(status, data, endpoint.url)
        raise unavailable(failures)

    def _learn(self) -> None:
        try:
            self.cluster()
        except UnavailableError:
            pass  # nobody answers: the request will say so; learn on the next one
        except ClientError:
            self.router.learned = True  # no usable /v1/cluster: failover without routing

    def _exchange(
        self, index: int, method: str, path: str, body: bytes | None, timeout: float
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            conn = self._conns.get(index)
            reused = conn is not None and conn.sock is not None
            if not reused:
                conn = self._connect(self.router.endpoints[index], timeout)
                self._conns[index] = conn
            assert conn is not None and conn.sock is not None
            conn.sock.settimeout(timeout)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except _STALE:
                self._drop(index)
                if not reused or attempt:
                    raise
                continue
            except BaseException:
                self._drop(index)
                raise
            if resp.will_close:
                self._drop(index)
            return resp.status, data
        raise AssertionError("unreachable")  # the loop returns or raises

    def _drop(self, index: int) -> None:
        conn = self._conns.pop(index, None)
        if conn is not None:
            conn.close()

    @staticmethod
    def _connect(endpoint: Endpoint, timeout: float) -> http.client.HTTPConnection:
        https = endpoint.scheme == "https"
        cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
        conn = cls(endpoint.host, endpoint.port, timeout=timeout)
        try:
            conn.connect()
        except OSError as exc:  # refused, unresolvable, or no answer to the connect
            conn.close()
            raise _Unreachable(_reason(exc)) from None
        return conn


class _Unreachable(Exception):
    """No connection could be opened: nothing was sent, another endpoint can take it."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
