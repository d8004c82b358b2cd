"""The proposer gateway a member runs now, swapped for a new one when a configuration is
installed live (``server.live``).

Each gateway's runtime proposes as this member's slot in its view. Two runtimes working on one
key at once could both pick the same register set of that slot with different values, which
the decision table must never see; so a swap is a barrier: new requests wait (``use``) while
the old gateway finishes the ones it runs (its long polls answer at once, as at shutdown),
bounded by the request deadline; then the new gateway starts and takes every request. The
pause lasts as long as the slowest proposal in flight, usually a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from .gateway import Gateway

log = logging.getLogger("graven.gateway")
DRAIN_MARGIN = 1.0  # seconds past the request deadline a swap waits for the old gateway


class CurrentGateway:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Gateway]:
        """The gateway for one request (waits while a swap drains the old one)."""
        if not self._open.is_set():
            await self._open.wait()
        gateway = self.gateway
        self._users += 1
        self._idle.clear()
        try:
            yield gateway
        finally:
            self._users -= 1
            if self._users == 0:
                self._idle.set()

    async def swap(self, new: Gateway) -> Gateway:
        """Drain the old gateway, start ``new``, route every request to it; returns the old
        one (the caller closes it)."""
        self._open.clear()
        old = self.gateway
        try:
            old.shutdown()
            drain = old.options.request_deadline + DRAIN_MARGIN
            try:
                await asyncio.wait_for(self._idle.wait(), drain)
            except TimeoutError:
                log.warning("swap: %d requests still running after %gs", self._users, drain)
            await new.start()
            self.gateway = new
        finally:
            self._open.set()
        return old
