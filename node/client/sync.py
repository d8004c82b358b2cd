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

``graven.node.client.smart.SmartClient`` (async) decides fast-layout keys in the client process.
A reconfiguration is followed without user action: a reply from a newer epoch makes the client
fetch ``/v1/cluster`` and move to the new members (``core``).
"""

from __future__ import annotations

import http.client
import socket
import ssl
from types import TracebackType
from typing import Any

from .core import (
    CLUSTER_REQUEST,
    DEFAULT_TIMEOUT,
    EPOCH_HEADER,
    ClientError,
    Decision,
    Endpoint,
    Request,
    RequestPlan,
    Router,
    Seeds,
    UnavailableError,
    follow_request,
    get_request,
    learning_failed,
    needs_learning,
    parse_epoch,
    propose_request,
)
from .credentials import Credentials

# A reused keep-alive connection the server has meanwhile closed fails like this (over TLS
# also as an EOF, e.g. after the member restarted); one fresh connection to the same endpoint
# is worth a try before calling the endpoint down.
_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class Client:
    def __init__(
        self,
        endpoints: list[str],
        timeout: float = DEFAULT_TIMEOUT,
        route: bool = True,
        credentials: Credentials | None = None,
        seeds: Seeds | None = None,
    ) -> None:
        """``credentials``: CA, client certificate and/or bearer token (see ``credentials``);
        ``seeds``: where to find the cluster again when every endpoint failed (default:
        ``endpoints``; see ``core``)."""
        self.router = Router(endpoints, seeds=seeds)
        self.timeout = timeout
        self.route = route
        creds = credentials or Credentials()
        self._tls = creds.tls()
        self._auth = creds.headers()
        self._conns: dict[int, http.client.HTTPConnection] = {}

    # -- public API -------------------------------------------------------------------------

    def propose(self, key: str, value: str, *, via: str | None = None) -> Decision:
        """Propose ``value`` for ``key``; returns what was decided (possibly another value)."""
        return self._call(propose_request(key, value, via))

    def get(self, key: str, wait: float | None = None, *, via: str | None = None) -> str | None:
        """The decided value, or None when nothing is decided (after ``wait`` seconds)."""
        return self._call(get_request(key, wait, via))

    def cluster(self) -> dict[str, Any]:
        """``GET /v1/cluster``: cluster, epoch, members, layout, limits, node."""
        doc = self._call(CLUSTER_REQUEST)
        self._learn(doc)
        return doc

    @property
    def endpoints(self) -> list[str]:
        """The URLs this client sends to now (they follow reconfigurations)."""
        return [e.url for e in self.router.endpoints]

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

    def _call(self, request: Request) -> Any:
        if needs_learning(self.router, request, self.route):
            try:
                self.cluster()
            except ClientError as exc:
                learning_failed(self.router, exc)
        try:
            result = self._run(request)
        except UnavailableError:
            if not self._follow() and not self._reseed():
                raise
            return self._run(request)  # once more, with the members of the newer epoch
        self._follow()
        return result

    def _reseed(self) -> bool:
        """Every endpoint failed: back to the seeds, and their /v1/cluster (True: retry)."""
        if not self.router.reseed():
            return False
        self.close()  # connections are kept by endpoint index, which changed
        try:
            self._learn(self._run(CLUSTER_REQUEST))
        except ClientError as exc:
            learning_failed(self.router, exc)
        return True

    def _follow(self) -> bool:
        """Fetch /v1/cluster from a member that announced a newer epoch (True: followed)."""
        request = follow_request(self.router)
        if request is None:
            return False
        generation = self.router.generation
        try:
            self._learn(self._run(request))
        except ClientError:
            self.router.announced = None  # gone meanwhile: the next newer reply tries again
            return False
        return self.router.generation != generation

    def _learn(self, doc: Any) -> None:
        generation = self.router.generation
        self.router.learn(doc)
        if self.router.generation != generation:
            self.close()  # connections are kept by endpoint index, which changed

    def _run(self, request: Request) -> Any:
        plan = RequestPlan(self.router, request, self.route, self.timeout)
        for index, _endpoint in plan.attempts():
            try:
                status, data, epoch = self._exchange(index, request, plan.timeout)
            except _Unreachable as exc:
                plan.failed(index, str(exc))
                continue
            except TimeoutError:
                raise plan.timed_out(index) from None
            except (OSError, http.client.HTTPException) as exc:
                plan.failed(index, _reason(exc))
                continue
            done, result = plan.answered(index, status, data, epoch)
            if done:
                return result
        raise plan.exhausted()

    def _exchange(
        self, index: int, request: Request, timeout: float
    ) -> tuple[int, bytes, int | None]:
        method, path, body = request.method, request.path, request.body
        for attempt in range(2):
            conn = self._conns.get(index)
            reused = conn is not None and conn.sock is not None
            if not reused:
                conn = self._connect(self.router.endpoints[index], timeout)
                self._conns[index] = conn
            assert conn is not None and conn.sock is not None
            conn.sock.settimeout(timeout)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            headers.update(self._auth)
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
            return resp.status, data, parse_epoch(resp.getheader(EPOCH_HEADER))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _drop(self, index: int) -> None:
        conn = self._conns.pop(index, None)
        if conn is not None:
            conn.close()

    def _connect(self, endpoint: Endpoint, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if endpoint.scheme == "https":
            ctx = self._tls() if self._tls is not None else None
            conn = http.client.HTTPSConnection(
                endpoint.host, endpoint.port, timeout=timeout, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
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
