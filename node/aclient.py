"""``AsyncClient``: the asyncio (aiohttp) twin of ``graven.node.client.Client``.

    async with AsyncClient(endpoints) as c:
        d = await c.propose("k", "v")

One ``aiohttp.ClientSession`` with a keep-alive pool serves every endpoint; the session is made
on first use so the client can be built outside a running loop. Same failover and routing rules
as the blocking client (they live in ``clientcore``).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from .clientcore import (
    DEFAULT_TIMEOUT,
    RETRY_ELSEWHERE,
    ClientError,
    Decision,
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

_JSON = {"Content-Type": "application/json"}


class AsyncClient:
    def __init__(
        self,
        endpoints: list[str],
        timeout: float = DEFAULT_TIMEOUT,
        route: bool = True,
        pool: int = 0,
    ) -> None:
        """``pool``: connections per endpoint (0: unlimited, one per concurrent request)."""
        self.router = Router(endpoints)
        self.timeout = timeout
        self.route = route
        self._pool = pool
        self._session: aiohttp.ClientSession | None = None
        self._learning: asyncio.Lock | None = None

    async def propose(self, key: str, value: str, *, via: str | None = None) -> Decision:
        path, body = decision_path(key), proposal_body(value)
        doc = await self._call("PUT", path, body, key=key, via=via)
        return to_decision(doc, key)

    async def get(
        self, key: str, wait: float | None = None, *, via: str | None = None
    ) -> str | None:
        path = decision_path(key) + wait_query(wait)
        try:
            doc = await self._call("GET", path, None, key=key, via=via, extra=wait or 0.0)
        except ClientError as exc:
            if exc.status == 404 and exc.code == "not_decided":
                return None
            raise
        return to_value(doc, key)

    async def cluster(self) -> dict[str, Any]:
        doc = await self._call("GET", "/v1/cluster", None)
        if not isinstance(doc, dict):
            raise ClientError("bad_reply", f"unexpected /v1/cluster reply: {doc!r}")
        self.router.learn(doc)
        return doc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def session(self) -> aiohttp.ClientSession:
        """The keep-alive session every request uses (made on first use, inside a loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._pool)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _learn(self) -> None:
        if self._learning is None:
            self._learning = asyncio.Lock()
        async with self._learning:  # many concurrent first requests, one /v1/cluster fetch
            if self.router.learned:
                return
            try:
                await self.cluster()
            except UnavailableError:
                pass  # nobody answers: the request will say so; learn on the next one
            except ClientError:
                self.router.learned = True  # no usable /v1/cluster: failover without routing

    async def _call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        key: str | None = None,
        via: str | None = None,
        extra: float = 0.0,
    ) -> Any:
        if key is not None and self.route and not self.router.learned:
            await self._learn()
        session = self.session()
        timeout = aiohttp.ClientTimeout(total=self.timeout + extra)
        failures: list[str] = []
        # route=False: the endpoints strictly in the given order (plain failover)
        for index in self.router.order(key if self.route else None, via):
            endpoint = self.router.endpoints[index]
            # encoded=True: keep the quoted key exactly as sent (%2F must stay %2F)
            url = URL(endpoint.url + path, encoded=True)
            try:
                status, data = await self._exchange(session, method, url, body, timeout)
            except aiohttp.ClientConnectorError as exc:
                self.router.mark_down(index)
                failures.append(f"{endpoint.url}: {_reason(exc)}")
                continue
            except TimeoutError:
                raise ClientError(
                    "timeout", f"{endpoint.url} did not answer within {self.timeout + extra:g} s"
                ) from None
            except aiohttp.ClientError as exc:
                self.router.mark_down(index)
                failures.append(f"{endpoint.url}: {exc or type(exc).__name__}")
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

    @staticmethod
    async def _exchange(
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        body: bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[int, bytes]:
        headers = _JSON if body is not None else None
        for attempt in range(2):
            try:
                async with session.request(
                    method, url, data=body, headers=headers, timeout=timeout
                ) as resp:
                    return resp.status, await resp.read()
            except aiohttp.ServerDisconnectedError:
                # a pooled keep-alive connection closed by the server: one fresh try
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    return os_error.strerror or str(os_error) or type(os_error).__name__
