"""``AsyncClient``: the asyncio (aiohttp) twin of ``graven.node.client.Client``.

    async with AsyncClient(endpoints) as c:
        d = await c.propose("k", "v")

One ``aiohttp.ClientSession`` with a keep-alive pool serves every endpoint; the session is made
on first use so the client can be built outside a running loop. Same failover and routing rules
as the blocking client, and the same following of a newer epoch (they live in ``core``).
"""

from __future__ import annotations

import asyncio
import ssl
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from .core import (
    CLUSTER_REQUEST,
    DEFAULT_TIMEOUT,
    EPOCH_HEADER,
    ClientError,
    Decision,
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

_JSON = {"Content-Type": "application/json"}


class AsyncClient:
    def __init__(
        self,
        endpoints: list[str],
        timeout: float = DEFAULT_TIMEOUT,
        route: bool = True,
        pool: int = 0,
        credentials: Credentials | None = None,
        seeds: Seeds | None = None,
    ) -> None:
        """``pool``: connections per endpoint (0: unlimited, one per concurrent request);
        ``credentials``: CA, client certificate and/or bearer token; ``seeds``: where to find
        the cluster again when every endpoint failed (default: ``endpoints``; see ``core``)."""
        self.router = Router(endpoints, seeds=seeds)
        self.timeout = timeout
        self.route = route
        self.credentials = credentials or Credentials()
        self.tls = self.credentials.tls()  # context source for https endpoints (None: system)
        self._auth = self.credentials.headers()
        self._pool = pool
        self._session: aiohttp.ClientSession | None = None
        self._learning: asyncio.Lock | None = None
        self._following: asyncio.Lock | None = None

    async def propose(self, key: str, value: str, *, via: str | None = None) -> Decision:
        return await self._call(propose_request(key, value, via))

    async def get(
        self, key: str, wait: float | None = None, *, via: str | None = None
    ) -> str | None:
        return await self._call(get_request(key, wait, via))

    async def cluster(self) -> dict[str, Any]:
        doc = await self._call(CLUSTER_REQUEST)
        self.router.learn(doc)
        return doc

    @property
    def endpoints(self) -> list[str]:
        """The URLs this client sends to now (they follow reconfigurations)."""
        return [e.url for e in self.router.endpoints]

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
            except ClientError as exc:
                learning_failed(self.router, exc)

    async def _call(self, request: Request) -> Any:
        if needs_learning(self.router, request, self.route):
            await self._learn()
        try:
            result = await self._run(request)
        except UnavailableError:
            if not await self._follow() and not await self._reseed():
                raise
            return await self._run(request)  # once more, with the members of the newer epoch
        if self.router.announced is not None:
            await self._follow()
        return result

    async def _follow(self) -> bool:
        """Fetch /v1/cluster from a member that announced a newer epoch (True: followed, here
        or by a concurrent request)."""
        if self._following is None:
            self._following = asyncio.Lock()
        generation = self.router.generation
        async with self._following:  # many requests see the new epoch, one fetch follows it
            request = follow_request(self.router)
            if request is None:
                return self.router.generation != generation
            try:
                self.router.learn(await self._run(request))
            except ClientError:
                self.router.announced = None  # gone meanwhile: the next newer reply retries
                return False
        return self.router.generation != generation

    async def _reseed(self) -> bool:
        """Every endpoint failed: back to the seeds, and their /v1/cluster (True: retry)."""
        if self._following is None:
            self._following = asyncio.Lock()
        generation = self.router.generation
        async with self._following:
            if self.router.generation != generation:
                return True  # a concurrent request did it
            if not self.router.reseed():
                return False
            try:
                self.router.learn(await self._run(CLUSTER_REQUEST))
            except ClientError as exc:
                learning_failed(self.router, exc)
        return True

    async def _run(self, request: Request) -> Any:
        session = self.session()
        plan = RequestPlan(self.router, request, self.route, self.timeout)
        timeout = aiohttp.ClientTimeout(total=plan.timeout)
        for index, endpoint in plan.attempts():
            # encoded=True: keep the quoted key exactly as sent (%2F must stay %2F)
            url = URL(endpoint.url + request.path, encoded=True)
            try:
                status, data, epoch = await self._exchange(
                    session, request.method, url, request.body, timeout, self._ssl(url)
                )
            except aiohttp.ClientConnectorError as exc:
                plan.failed(index, _reason(exc))
                continue
            except TimeoutError:
                raise plan.timed_out(index) from None
            except aiohttp.ClientError as exc:
                plan.failed(index, str(exc) or type(exc).__name__)
                continue
            done, result = plan.answered(index, status, data, epoch)
            if done:
                return result
        raise plan.exhausted()

    def _ssl(self, url: URL) -> ssl.SSLContext | bool:
        if url.scheme != "https" or self.tls is None:
            return True  # aiohttp's default: verify with the system's trust store
        return self.tls()

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        body: bytes | None,
        timeout: aiohttp.ClientTimeout,
        ssl_context: ssl.SSLContext | bool,
    ) -> tuple[int, bytes, int | None]:
        headers = {**_JSON, **self._auth} if body is not None else self._auth
        for attempt in range(2):
            try:
                async with session.request(
                    method, url, data=body, headers=headers, timeout=timeout, ssl=ssl_context
                ) as resp:
                    epoch = parse_epoch(resp.headers.get(EPOCH_HEADER))
                    return resp.status, await resp.read(), epoch
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
