"""The client API's proposer in every node: proposals and linearizable reads.

The protocol work is ``protocol.runtime.Runtime`` (fast attempt and hand-over, attempts,
backoff, reachability, held-until-durable, one proposal per key at a time, the read
procedure), carried out by one ``proposer.pump.Pump`` for every request of this node. What is
left here is the node's side: channels to every member (its own acceptor in-process), the
store's used-set floors, forwarding to a key's leader, the cache of decided values (they never
change: repeated PUTs and GETs need no round trip, long-polling readers wake on it), metrics,
and turning outcomes into answers or errors.

This node proposes as slot = its member index; members beyond the layout's proposer slots
cannot propose and hand every key to its leader.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import aiohttp

from ..cluster.config import ClusterConfig
from ..proposer.channel import AcceptorChannel, Channel
from ..proposer.local import LocalChannel
from ..proposer.metrics import ProposerMetrics
from ..proposer.options import (
    DeadlineExceeded,
    GatewayOptions,
    NoProposerSlot,
    QuorumUnreachable,
    StaleConfiguration,
)
from ..proposer.pump import Pump
from ..proposer.reachability import Reachability
from ..proposer.transport import remote_transport
from ..protocol.effects import (
    DEADLINE,
    DECIDED,
    NO_SLOT,
    NOT_DECIDED,
    STALE,
    STORE_FAILED,
    UNREACHABLE,
    Outcome,
    Timing,
)
from ..protocol.runtime import Runtime
from ..storage import RegisterStore
from .decided import DecidedCache
from .forward import Forwarder

if TYPE_CHECKING:  # the node's metrics: only their registry and counters are used here
    from ..server.metrics import NodeMetrics

POLL_FIRST, POLL_MAX = 0.05, 0.5  # long-poll re-check delays (doubling) between peeks


class Gateway:
    def __init__(
        self,
        cfg: ClusterConfig,
        node_name: str,
        store: RegisterStore,
        node_metrics: NodeMetrics,
        options: GatewayOptions,
        metrics: ProposerMetrics | None = None,
    ) -> None:
        """``metrics``: the previous gateway's (a configuration installed live), re-bound to
        this one's members; None: registered in the node's registry."""
        self.cfg = cfg
        # The live view: with an older epoch still live (a reconfiguration under way) its
        # members are in it too, after the newest epoch's, and every proposal reads them all.
        live = cfg.view()
        self.layout = live.layout
        self.members = cfg.live_members()
        self.options = options
        self._store = store
        self._node_metrics = node_metrics
        index = live.index(node_name)
        self.index = index
        # Slots >= proposers own no register set; such a member cannot propose (nor can a
        # member of an older epoch only, which is past the newest epoch's slots).
        self.slot = index if index is not None and index < self.layout.proposers else None
        names = list(live.names)
        self.reach = Reachability(self.layout, names, index)
        if metrics is None:
            metrics = ProposerMetrics(
                node_metrics.registry, names, self.reach.is_up, self.reach.margin
            )
        else:
            metrics.rebind(names, self.reach.is_up, self.reach.margin)
        self.metrics = metrics
        # read by the graven_proposals_in_flight gauge at scrape time (a plain int here: the
        # gauge's locked inc/dec on every proposal showed in profiles)
        self.proposals_in_flight = 0
        self.metrics.in_flight.set_function(lambda: float(self.proposals_in_flight))
        self.cache = DecidedCache(options.cache_bytes)
        self._session: aiohttp.ClientSession | None = None
        self.forwarder = Forwarder(
            [m.url for m in self.members],
            node_name,
            session=self._aiohttp_session,
            tls=self.options.tls,
        )
        self.channels: list[AcceptorChannel] = []
        self._pump: Pump | None = None
        self.closing = False

    async def start(self) -> None:
        batch_bytes = max(1, self.cfg.limits.max_body_bytes // 8)  # JSON escaping headroom
        for i, member in enumerate(self.members):
            if i == self.index:
                channel: AcceptorChannel = LocalChannel(
                    i, member.name, self._store, self._node_metrics, self.reach, self.metrics
                )
            else:
                transport = remote_transport(
                    member.url, self.options.rpc_timeout, self._aiohttp_session, self.options.tls
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
        runtime = Runtime(
            self.layout,
            index=self.index,
            slot=self.slot,
            timing=Timing(
                attempt_timeout=self.options.attempt_timeout,
                backoff_first=self.options.backoff_first,
                backoff_max=self.options.backoff_max,
            ),
            rng=random.Random(),
            floors=self._store.used_floor,
        )
        self._pump = Pump(runtime, self.channels, self.reach, self._store, self._forward)

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
        if self._pump is not None:
            self._pump.close()
        for channel in self.channels:
            await channel.close()  # and its transport
        self.forwarder.close()
        if self._session is not None:
            await self._session.close()

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.options.request_deadline

    # -- proposals ------------------------------------------------------------------------------

    @property
    def pump(self) -> Pump:
        assert self._pump is not None, "start() first"
        return self._pump

    async def propose(self, key: str, value: str, deadline: float, forward: bool = False) -> str:
        """The value decided for ``key`` (``value`` or another proposer's).

        ``forward`` (client requests): the key's leader may complete it (see ``forward``); on
        a fast layout this node first writes the fast set itself.
        """
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        self.proposals_in_flight += 1
        try:
            outcome = await self.pump.propose(key, value, deadline, forward)
        finally:
            self.proposals_in_flight -= 1
        answer = self._answer(key, outcome, started)
        assert answer is not None
        return answer

    async def carry(self, key: str, value: str, deadline: float) -> str:
        """A reconfiguration's carry-over of ``key``: decided in the newest epoch (the decided
        value, or ``value`` — one the key holds — when nothing could have been decided). Never
        answered from the cache: the point is to write the newest epoch's registers."""
        outcome = await self.pump.propose(key, value, deadline, forward=False, carry=True)
        answer = self._answer(key, outcome, time.perf_counter())
        assert answer is not None
        return answer

    async def _forward(self, member: int, key: str, value: str, timeout: float) -> str | None:
        try:
            decided = await self.forwarder.propose(member, key, value, timeout)
        except asyncio.CancelledError:  # the runtime stopped waiting: no answer in time
            self.metrics.forwarded["failed"].inc()
            raise
        self.metrics.forwarded["ok" if decided is not None else "failed"].inc()
        return decided

    def _answer(self, key: str, out: Outcome, started: float) -> str | None:
        """The decided value (None: a read found nothing decided), or the failure raised."""
        metrics = self.metrics
        if out.attempts > 1:
            metrics.retries.inc(out.attempts - 1)
        if out.conflicts and out.path != "fast":
            metrics.conflicts.inc(out.conflicts)
        status = out.status
        if status == DECIDED:
            assert out.value is not None
            if out.path is not None:  # decided by this node's proposer (not learnt)
                metrics.decided_by_path[out.path].inc()
                if out.path != "read":  # a read's peek is not a proposal
                    metrics.duration.observe(time.perf_counter() - started)
                    metrics.round_trips.observe(out.round_trips)
                    metrics.register_sets.observe(out.attempts)
            self.cache.put(key, out.value)
            return out.value
        if status == NOT_DECIDED:
            return None
        if status == UNREACHABLE:
            raise QuorumUnreachable(self.reach.describe(out.missing))
        if status == DEADLINE:
            detail = out.detail
            if out.missing:
                detail += f"; unreachable: {self.reach.describe(out.missing)}"
            raise DeadlineExceeded(detail)
        if status == STALE:
            raise StaleConfiguration(
                f"a member knows a newer configuration than this node's epoch {self.cfg.epoch}; "
                "retry once the node runs it"
            )
        if status == NO_SLOT:
            raise NoProposerSlot(out.detail)
        if status == STORE_FAILED and isinstance(out.error, BaseException):
            raise out.error
        raise AssertionError(f"unexpected outcome {out}")

    # -- reads ----------------------------------------------------------------------------------

    async def read(self, key: str, deadline: float) -> str | None:
        """The decided value, or None when nothing was decided before the read began.

        A value that may have been decided before the read began is completed by a proposal
        of that very value (the runtime does it), which answers whatever is decided."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        return self._answer(key, await self.pump.read(key, deadline), started)

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
