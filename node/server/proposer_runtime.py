"""The proposer inside every node: proposals and linearizable reads for the client API.

This node proposes as slot = its member index. One proposal per key at a time on this node: the
slot's client-restricted register sets must each carry at most one value, so two local
proposals for one key must not pick the same set; a second request for a key waits for the
first and usually finds the decision in the cache. The used-set floor of a key is loaded from
the store when a proposal starts and raised durably before any write (``Persist``).

Decided values are cached (they never change), which answers repeated PUTs and GETs without a
round trip, and wakes long-polling readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp

from ..clusterconfig import ClusterConfig
from ..protocol.proposer import Proposer
from ..storage import RegisterStore
from .decided import DecidedCache
from .drive import Driver
from .gateway_types import DeadlineExceeded, GatewayOptions, NoProposerSlot, QuorumUnreachable
from .metrics import NodeMetrics, ProposerMetrics
from .peek import peek
from .peers import Channel, HttpTransport, LocalTransport, Transport
from .reachability import Reachability

POLL_FIRST, POLL_MAX = 0.05, 0.5  # long-poll re-check delays (doubling) between peeks


class KeyLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str, deadline: float) -> AsyncIterator[None]:
        """Hold the key's lock; DeadlineExceeded when it is not free by ``deadline``."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await lock.acquire()
            except TimeoutError:
                raise DeadlineExceeded(
                    "another proposal for this key on this node did not finish in time"
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class ProposerRuntime:
    def __init__(
        self,
        cfg: ClusterConfig,
        node_name: str,
        store: RegisterStore,
        node_metrics: NodeMetrics,
        options: GatewayOptions,
    ) -> None:
        self.cfg = cfg
        self.layout = cfg.layout
        self.options = options
        self._store = store
        self._node_metrics = node_metrics
        index = cfg.member_index(node_name)
        self.index = index
        # Slots >= proposers own no register set; such a member cannot propose.
        self.slot = index if index is not None and index < self.layout.proposers else None
        names = [m.name for m in cfg.members]
        self.reach = Reachability(self.layout, names, index)
        self.metrics = ProposerMetrics(
            node_metrics.registry, names, self.reach.is_up, self.reach.margin
        )
        self.cache = DecidedCache(options.cache_bytes)
        self._locks = KeyLocks()
        self._session: aiohttp.ClientSession | None = None
        self.channels: list[Channel] = []
        self.closing = False

    async def start(self) -> None:
        per_member = self.options.max_in_flight_per_member + 1  # + a probe
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=per_member, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector)
        batch_bytes = max(1, self.cfg.limits.max_body_bytes // 8)  # JSON escaping headroom
        for i, member in enumerate(self.cfg.members):
            transport: Transport
            if i == self.index:
                transport = LocalTransport(self._store, self._node_metrics)
            else:
                transport = HttpTransport(self._session, member.url, self.options.rpc_timeout)
            self.channels.append(
                Channel(
                    i,
                    member.name,
                    transport,
                    self.reach,
                    self.metrics,
                    max_in_flight=self.options.max_in_flight_per_member,
                    max_batch_bytes=batch_bytes,
                )
            )

    def shutdown(self) -> None:
        """Stop long polls (they answer "not decided" now) so a graceful stop is quick."""
        self.closing = True
        self.cache.release_waiters()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        if self._session is not None:
            await self._session.close()

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.options.request_deadline

    # -- proposals ------------------------------------------------------------------------------

    async def propose(self, key: str, value: str, deadline: float) -> str:
        """The value decided for ``key`` (``value`` or another proposer's)."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if self.slot is None:
            raise NoProposerSlot(
                f"member {self.index} has no proposer slot: the layout has "
                f"{self.layout.proposers} proposer slot(s); send proposals to another member"
            )
        async with self._locks.hold(key, deadline):
            cached = self.cache.get(key)  # decided while we waited for the lock?
            if cached is not None:
                return cached
            return await self._run(key, value, deadline)

    async def _run(self, key: str, value: str, deadline: float) -> str:
        assert self.slot is not None  # checked by propose()
        started = time.perf_counter()
        proposer = Proposer(self.layout, self.slot, key, self._store.used_floor(key))
        driver = Driver(proposer, self.channels, self._store, self.reach, self.options, deadline)
        self.metrics.in_flight.inc()
        try:
            decision = await driver.run(value)
        finally:
            self.metrics.in_flight.dec()
            if proposer.attempt > 1:
                self.metrics.retries.inc(proposer.attempt - 1)
            if proposer.conflicts:
                self.metrics.conflicts.inc(proposer.conflicts)
        self.metrics.decisions.labels(decision.path).inc()
        self.metrics.duration.observe(time.perf_counter() - started)
        self.metrics.round_trips.observe(proposer.round_trips)
        self.metrics.register_sets.observe(proposer.attempt)
        self.cache.put(key, decision.value)
        return decision.value

    # -- reads ----------------------------------------------------------------------------------

    async def read(self, key: str, deadline: float) -> str | None:
        """The decided value, or None when nothing was decided before the read began."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        seen = await peek(self.layout, self.channels, self.reach, key, deadline)
        if seen.state == "none":
            return None
        assert seen.value is not None
        if seen.state == "decided":
            self.metrics.decisions.labels("read").inc()
            self.cache.put(key, seen.value)
            return seen.value
        # May have been decided before we began: finish it with that very value.
        return await self.propose(key, seen.value, deadline)

    async def wait_decided(self, key: str, wait: float) -> str | None:
        """Long poll: the decided value once there is one within ``wait`` seconds, else None."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        delay = POLL_FIRST
        last_error: Exception | None = None
        for _ in range(int(wait / POLL_FIRST) + 2):  # bound: every round waits >= POLL_FIRST
            try:
                value = await self.read(key, self.deadline())
            except (DeadlineExceeded, QuorumUnreachable) as exc:
                value, last_error = None, exc  # members may come back while we wait
            else:
                last_error = None
            if value is not None:
                return value
            left = until - loop.time()
            if left <= 0 or self.closing:
                break
            value = await self.cache.wait(key, min(left, delay))
            if value is not None or self.closing:
                return value
            delay = min(delay * 2, POLL_MAX)
        if last_error is not None:
            raise last_error
        return None
