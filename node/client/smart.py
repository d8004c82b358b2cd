"""``SmartClient``: proposes from the client's own process, one round trip on a fast layout.

    async with SmartClient(endpoints) as c:
        d = await c.propose("k", "v")      # Decision(key, value, won), like AsyncClient

When the layout's first register set is quorum-intersecting (``fast`` and similar layouts), any
proposer may write it without phase 1, and it needs no proposer slot. The smart client runs the
core's proposer runtime (``protocol.runtime.Runtime`` in its client role, hosted by the same
``proposer.pump.Pump`` a node uses) for exactly that step: it writes the value to the first set
of every acceptor through the register API (the same batched peer channels a node's proposer
uses, so concurrent proposals share requests) and returns as soon as the decision table says a
fast quorum holds one value. That is one round trip from the client, with no gateway hop.

Anything else goes to the proposer gateway through ``AsyncClient``, with the same value:
a conflict on the fast set (racers wrote different values), a member that is down or slow, a
layout without a fast first set, a key or value over the cluster's limits. The gateway's
proposer then completes the key from whatever the fast attempt left (the decision table handles
partly written fast sets), so falling back is always safe and always ends in the decided value.

Reconfiguration: the gateway client follows a newer configuration (``core``); the smart client
then rebuilds its fast path for the new members and layout. While older epochs are live (a
transition under way) it takes no fast path at all: the new epoch's first set has earlier sets,
so writing it without phase 1 would be unsafe; proposals go to the gateway until retirement.

Why it never needs a slot: it stops before the proposer would move on to a client-restricted set
(those are owned by the nodes' proposers and need durable floors, which a client does not keep).

Decisions reached here are not counted in the nodes' ``graven_decisions_total`` (no node takes
part as a proposer); the acceptors count their register writes as usual, and ``stats`` here
counts fast and fallback decisions.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from types import TracebackType
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from ..proposer.channel import Channel
from ..proposer.metrics import ProposerMetrics
from ..proposer.pump import Pump
from ..proposer.reachability import Reachability
from ..proposer.transport import remote_transport
from ..protocol.effects import DECIDED, Timing
from ..protocol.layout import Layout, key_hash
from ..protocol.quorums import Mask
from ..protocol.runtime import Runtime
from .aio import AsyncClient
from .core import DEFAULT_TIMEOUT, ClientError, Decision, decision_path, proposal_body
from .credentials import Credentials

DEFAULT_FAST_TIMEOUT = 1.0  # seconds to wait for a fast quorum before asking the gateway
MAX_IN_FLIGHT = 4  # concurrent batched requests to one acceptor


class SmartClient:
    def __init__(
        self,
        endpoints: list[str],
        timeout: float = DEFAULT_TIMEOUT,
        fast_timeout: float = DEFAULT_FAST_TIMEOUT,
        credentials: Credentials | None = None,
    ) -> None:
        """``credentials``: as ``AsyncClient``'s; the fast path needs the ``write`` role (it
        writes only the quorum-intersecting sets, which the members let such clients write)."""
        if not 0 < fast_timeout <= timeout:
            raise ValueError(f"fast timeout must be in (0, {timeout:g}] seconds: {fast_timeout}")
        self.gateway = AsyncClient(endpoints, timeout=timeout, credentials=credentials)
        self.fast_timeout = fast_timeout
        self.stats: Counter[str] = Counter()  # decisions by path: fast | gateway
        self._layout: Layout | None = None
        self._limits: tuple[int, int] = (0, 0)  # max key bytes, max value bytes
        self._channels: list[Channel] = []
        self._urls: list[str] = []  # member URLs, by member index
        self._reach: Reachability | None = None
        self._pump: Pump | None = None
        self._setup: asyncio.Lock | None = None
        self._ready = False
        self._version: tuple[int, int] | None = None  # of the document the fast path is for
        self._retiring: set[asyncio.Task[None]] = set()  # closing old fast paths after use
        self._old: list[tuple[Pump, list[Channel]]] = []  # those old fast paths

    async def propose(self, key: str, value: str, *, via: str | None = None) -> Decision:
        """Like ``AsyncClient.propose``; ``via`` picks the member a gateway fallback goes to."""
        decision_path(key), proposal_body(value)  # the gateway's checks: ClientError early
        if not self._ready or self._version != self.gateway.router.version:
            await self._prepare()
        silent: Mask = 0  # members that did not answer the fast attempt
        pump = self._pump
        if pump is not None and self._within_limits(key, value):
            deadline = asyncio.get_running_loop().time() + self.gateway.timeout
            outcome = await pump.propose(key, value, deadline, forward=True)
            if outcome.status == DECIDED:
                assert outcome.value is not None
                self.stats["fast"] += 1
                return Decision(key, outcome.value, outcome.value == value)
            silent = outcome.missing  # handed over: go to the gateway, away from these
        self.stats["gateway"] += 1
        return await self.gateway.propose(key, value, via=via or self._away_from(key, silent))

    async def get(self, key: str, wait: float | None = None) -> str | None:
        return await self.gateway.get(key, wait)

    async def cluster(self) -> dict:
        return await self.gateway.cluster()

    # -- the fast path --------------------------------------------------------------------------

    def _within_limits(self, key: str, value: str) -> bool:
        """Over the cluster's limits, the gateway answers with the proper 4xx."""
        max_key, max_value = self._limits
        return len(key.encode()) <= max_key and len(value.encode()) <= max_value

    def _away_from(self, key: str, silent: Mask) -> str | None:
        """A member to send the gateway fallback to when the key's leader seems down or
        silent (it would cost the whole request timeout); None: the usual routing."""
        layout, reach = self._layout, self._reach
        if layout is None or reach is None:
            return None
        suspect = silent | (layout.members & ~reach.up_mask)
        leader = layout.leader_slot(key_hash(key))
        if leader is None or not suspect >> leader & 1:
            return None
        for member in range(layout.n):
            if not suspect >> member & 1:
                return self._urls[member]
        return None

    # -- setup ----------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        if self._setup is None:
            self._setup = asyncio.Lock()
        async with self._setup:  # many concurrent first proposals, one /v1/cluster fetch
            if self._ready and self._version == self.gateway.router.version:
                return
            try:
                cluster = await self.gateway.cluster()
            except ClientError:
                return  # nobody answers yet: the gateway path will say why; retry next time
            self._retire_fast_path()
            self._ready = True
            self._version = self.gateway.router.version
            layout = self.gateway.router.layout
            if layout is None or not layout.fast_first:
                return  # no fast first set: every proposal goes to the key's home member
            if cluster.get("previous"):
                return  # a transition: no fast path until the older epochs are retired
            self._open_channels(layout, cluster)

    def _retire_fast_path(self) -> None:
        """Stop using the fast path of an older configuration; proposals still running on it
        finish (or time out) before its channels close."""
        pump, channels = self._pump, self._channels
        self._pump, self._channels, self._layout, self._reach = None, [], None, None
        if pump is None:
            return
        old = (pump, channels)
        self._old.append(old)

        async def close_later() -> None:
            await asyncio.sleep(self.gateway.timeout)
            if old in self._old:
                self._old.remove(old)
                await _close(*old)

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _open_channels(self, layout: Layout, cluster: dict) -> None:
        members = cluster["members"]
        names = [str(m.get("name", i)) for i, m in enumerate(members)]
        urls = [str(m.get("url", "")) for m in members]
        if any(urlsplit(u).scheme not in ("http", "https") for u in urls):
            return
        limits = cluster.get("limits") or {}
        self._limits = (int(limits.get("maxKeyBytes", 0)), int(limits.get("maxValueBytes", 0)))
        # JSON escaping headroom under the member's request size limit, as a node's proposer
        batch_bytes = max(1, int(limits.get("maxBodyBytes", 8 << 20)) // 8)
        reach = Reachability(layout, names, None)
        # A request this late marks its member down, so later proposals skip the fast path at
        # once instead of each waiting out the fast timeout (a probe brings the member back).
        rpc_timeout = min(2 * self.fast_timeout, self.gateway.timeout)
        metrics = ProposerMetrics(CollectorRegistry(), names, reach.is_up, reach.margin)
        for i, url in enumerate(urls):
            self._channels.append(
                Channel(
                    i,
                    names[i],
                    remote_transport(
                        url,
                        rpc_timeout,
                        self.gateway.session,
                        self.gateway.tls,
                        self.gateway.credentials.header_lines(),
                    ),
                    reach,
                    metrics,
                    max_in_flight=MAX_IN_FLIGHT,
                    max_batch_bytes=batch_bytes,
                )
            )
        self._layout, self._reach, self._urls = layout, reach, urls
        runtime = Runtime(
            layout,
            index=None,  # no acceptor of its own
            slot=None,  # and no proposer slot: only the fast set, the rest goes to a gateway
            timing=Timing(attempt_timeout=self.fast_timeout),
            rng=random.Random(),
            floors=lambda _key: -1,
            client=True,
        )
        self._pump = Pump(runtime, self._channels, reach)

    # -- lifetime -------------------------------------------------------------------------------

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for old in self._old:
            await _close(*old)
        self._old.clear()
        await _close(self._pump, self._channels)
        await self.gateway.close()

    async def __aenter__(self) -> SmartClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _close(pump: Pump | None, channels: list[Channel]) -> None:
    if pump is not None:
        pump.close()
    for channel in channels:
        await channel.close()  # and its transport
