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
import time
from collections import deque
from typing import TYPE_CHECKING

import aiohttp

from ..cluster.config import ClusterConfig
from ..proposer.channel import AcceptorChannel, Channel
from ..proposer.drive import Driver
from ..proposer.fastpath import CONFLICT, FastOutcome, fast_first, fast_possible, try_fast
from ..proposer.local import LocalChannel
from ..proposer.metrics import ProposerMetrics
from ..proposer.options import DeadlineExceeded, GatewayOptions, NoProposerSlot, QuorumUnreachable
from ..proposer.peek import peek
from ..proposer.reachability import Reachability
from ..proposer.transport import remote_transport
from ..protocol.config import key_hash
from ..protocol.proposer import Proposer
from ..storage import RegisterStore
from .decided import DecidedCache
from .forward import Forwarder

if TYPE_CHECKING:  # the node's metrics: only their registry and counters are used here
    from ..server.metrics import NodeMetrics

POLL_FIRST, POLL_MAX = 0.05, 0.5  # long-poll re-check delays (doubling) between peeks


class KeyLocks:
    """One lock per key, in a dict entry that exists only while someone holds the key.

    Why not an asyncio.Lock per key behind a timeout: the common case is a key nobody else
    holds, and that path now costs a dict lookup instead of a lock, a context manager and a
    timer. Waiters queue in order and are handed the lock directly.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}  # held keys only

    async def acquire(self, key: str, deadline: float) -> None:
        """Hold the key; DeadlineExceeded when it is not free by ``deadline``."""
        waiters = self._waiters.get(key)
        if waiters is None:
            self._waiters[key] = deque()  # held, nobody waiting
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(turn)
        try:
            async with asyncio.timeout_at(deadline):
                await turn
        except TimeoutError:
            if turn.done() and not turn.cancelled():
                self.release(key)  # handed over just as the deadline hit: pass it on
            raise DeadlineExceeded(
                "another proposal for this key on this node did not finish in time"
            ) from None
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release(key)
            raise

    def release(self, key: str) -> None:
        waiters = self._waiters[key]
        while waiters:
            turn = waiters.popleft()
            if not turn.done():  # skip waiters that gave up
                turn.set_result(None)  # the lock passes to it directly
                return
        del self._waiters[key]


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
        # read by the graven_proposals_in_flight gauge at scrape time (a plain int here: the
        # gauge's locked inc/dec on every proposal showed in profiles)
        self.proposals_in_flight = 0
        self.metrics.in_flight.set_function(lambda: float(self.proposals_in_flight))
        self.cache = DecidedCache(options.cache_bytes)
        self._fast_first = fast_first(self.layout)
        self._locks = KeyLocks()
        self._session: aiohttp.ClientSession | None = None
        self.forwarder = Forwarder(
            [m.url for m in cfg.members], node_name, session=self._aiohttp_session
        )
        self.channels: list[AcceptorChannel] = []
        self.closing = False

    async def start(self) -> None:
        batch_bytes = max(1, self.cfg.limits.max_body_bytes // 8)  # JSON escaping headroom
        for i, member in enumerate(self.cfg.members):
            if i == self.index:
                channel: AcceptorChannel = LocalChannel(
                    i, member.name, self._store, self._node_metrics, self.reach, self.metrics
                )
            else:
                transport = remote_transport(
                    member.url, self.options.rpc_timeout, self._aiohttp_session
                )
                channel = Channel(
                    i,
                    member.name,
                    transport,
                    self.reach,
                    self.metrics,
                    max_in_flight=self.options.max_in_flight_per_member,
                    max_batch_bytes=batch_bytes,
                )
            self.channels.append(channel)

    def _aiohttp_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            per_member = self.options.max_in_flight_per_member + 1  # + a probe
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=per_member, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def shutdown(self) -> None:
        """Stop long polls (they answer "not decided" now) so a graceful stop is quick."""
        self.closing = True
        self.cache.release_waiters()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()  # and its transport
        self.forwarder.close()
        if self._session is not None:
            await self._session.close()

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.options.request_deadline

    # -- proposals ------------------------------------------------------------------------------

    async def propose(self, key: str, value: str, deadline: float, forward: bool = False) -> str:
        """The value decided for ``key`` (``value`` or another proposer's).

        ``forward`` (client requests): when the key's leader is another member, hand the
        proposal to it and propose here only if it cannot answer (see ``forward``). On a fast
        layout the leader is the member that recovers the key, and this node first tries the
        fast set itself: uncontended that decides in one round trip, and only keys that lost
        the fast set go to the leader, where they queue instead of duelling.
        """
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        leader = self._forward_target(key) if forward else None
        tried: Proposer | None = None  # a fast attempt made here, to go on with locally
        if leader is not None:
            fast = self._fast_first and fast_possible(self.layout, self.reach.up_mask)
            if fast and self.slot is not None:
                tried = Proposer(self.layout, self.slot, key, self._store.used_floor(key))
                outcome = await self._try_fast(tried, key, value)
                if outcome.value is not None:
                    return outcome.value
            # After a conflict the leader completes the key. A member that failed or stayed
            # silent is better handled here at once than after another wait at the leader.
            if tried is None or outcome.status == CONFLICT:
                left = deadline - asyncio.get_running_loop().time()
                wait = min(self.options.attempt_timeout, left / 2)
                decided = await self.forwarder.propose(leader, key, value, wait)
                if decided is not None:
                    self.metrics.forwarded["ok"].inc()
                    self.cache.put(key, decided)
                    return decided
                self.metrics.forwarded["failed"].inc()
        if self.slot is None:
            raise NoProposerSlot(
                f"member {self.index} has no proposer slot: the layout has "
                f"{self.layout.proposers} proposer slot(s); send proposals to another member"
            )
        await self._locks.acquire(key, deadline)
        try:
            cached = self.cache.get(key)  # decided while we waited for the lock?
            if cached is not None:
                return cached
            return await self._run(key, value, deadline, tried)
        finally:
            self._locks.release(key)

    def _forward_target(self, key: str) -> int | None:
        """The key's leader (home, or recovery member on a fast layout) when it is another
        member this node believes is up."""
        leader = self.layout.leader_slot(key_hash(key))
        if leader is None or leader == self.index or leader >= len(self.cfg.members):
            return None
        return leader if self.reach.is_up(leader) else None

    async def _try_fast(self, proposer: Proposer, key: str, value: str) -> FastOutcome:
        started = time.perf_counter()
        self.proposals_in_flight += 1
        try:
            outcome = await try_fast(proposer, value, self.channels, self.options.attempt_timeout)
        finally:
            self.proposals_in_flight -= 1
        if outcome.value is not None:
            self.metrics.decided_by_path["fast"].inc()
            self.metrics.duration.observe(time.perf_counter() - started)
            self.metrics.round_trips.observe(1)
            self.metrics.register_sets.observe(1)
            self.cache.put(key, outcome.value)
        return outcome

    async def _run(
        self, key: str, value: str, deadline: float, tried: Proposer | None = None
    ) -> str:
        """Propose here; ``tried``: go on with the proposer of a fast attempt made before."""
        assert self.slot is not None  # checked by propose()
        started = time.perf_counter()
        floor = self._store.used_floor(key)
        if tried is None:
            proposer = Proposer(self.layout, self.slot, key, floor)
        else:
            proposer = tried
            # Another proposal for this key may have used sets while we did not hold the key's
            # lock: never pick one of those again.
            proposer.used_floor = max(proposer.used_floor, floor)
        driver = Driver(proposer, self.channels, self._store, self.reach, self.options, deadline)
        self.proposals_in_flight += 1
        try:
            decision = await driver.run(value)
        finally:
            self.proposals_in_flight -= 1
            if proposer.attempt > 1:
                self.metrics.retries.inc(proposer.attempt - 1)
            if proposer.conflicts:
                self.metrics.conflicts.inc(proposer.conflicts)
        self.metrics.decided_by_path[decision.path].inc()
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
            self.metrics.decided_by_path["read"].inc()
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
