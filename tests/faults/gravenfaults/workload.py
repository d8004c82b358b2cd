"""The clients: concurrent PUT/GET of the decisions API, each operation recorded with its
invoke and completion times (monotonic) and outcome, as the checker needs them.

Each client talks to one member (client ``c`` to member ``c mod n``), as an application
connected to its local node would: a member that hangs stalls its own clients only, so the gaps
between successful operations measure the cluster, not the clients' timeouts. Keys come from
a moving window shared by all clients, so that they contend on the same keys; every PUT proposes a
value no other PUT proposes (``c<client>-<n>``), which makes validity and ``won`` checkable.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .history import Op

TIMEOUT = 8.0  # seconds per request (the node's own deadline is 5 s: a 504 comes first)
FAIL_STATUSES = {400, 404, 405, 413, 422}  # certainly refused: nothing happened


@dataclass
class Workload:
    urls: Sequence[str]
    names: Sequence[str]
    seed: int
    concurrency: int = 6
    put_share: float = 0.6
    window: int = 12
    ops: list[Op] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=itertools.count)
    _next_key: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def key(self, rng: random.Random) -> str:
        if rng.random() < 0.25:
            self._next_key += 1
        lo = max(0, self._next_key - self.window)
        return f"k{rng.randint(lo, self._next_key)}"

    def put_keys(self) -> list[str]:
        return sorted({o.key for o in self.ops if o.kind == "put"})

    async def run(self, session: aiohttp.ClientSession, until: Callable[[], bool] | None = None) -> None:
        await asyncio.gather(*(self._client(session, c) for c in range(self.concurrency)))

    def stop(self) -> None:
        self._stop.set()

    async def _client(self, session: aiohttp.ClientSession, c: int) -> None:
        rng = random.Random(f"{self.seed}-client-{c}")
        for n in itertools.count():
            if self._stop.is_set():
                return
            k = self.key(rng)
            m = c % len(self.urls)  # sticky, like a client connected to one node
            if rng.random() < self.put_share:
                await self.put(session, c, m, k, f"c{c}-{n}")
            else:
                await self.get(session, c, m, k)
            await asyncio.sleep(0)  # let the others in even when everything fails fast
            if n % 8 == 7:
                await asyncio.sleep(rng.uniform(0, 0.02))

    def _record(self, **kw: Any) -> Op:
        op = Op(id=next(self._ids), **kw)
        self.ops.append(op)
        return op

    async def put(self, session: aiohttp.ClientSession, c: int, m: int, k: str, v: str) -> Op:
        url = f"{self.urls[m]}/v1/decisions/{k}"
        t0 = time.monotonic()
        try:
            async with session.put(url, json={"value": v}, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as r:
                body = await r.json(content_type=None)
                t1 = time.monotonic()
                if r.status == 200:
                    return self._record(client=c, kind="put", key=k, invoke=t0, complete=t1, outcome="ok",
                                        proposed=v, value=body["value"], won=body.get("won"), member=self.names[m])  # fmt: skip
                outcome = "fail" if r.status in FAIL_STATUSES else "info"
                err = f"{r.status} {_code(body)}"
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            t1 = time.monotonic()
            outcome, err = "info", type(exc).__name__
        return self._record(client=c, kind="put", key=k, invoke=t0, complete=t1, outcome=outcome,
                            proposed=v, member=self.names[m], error=err)  # fmt: skip

    async def get(self, session: aiohttp.ClientSession, c: int, m: int, k: str, final: bool = False) -> Op:
        url = f"{self.urls[m]}/v1/decisions/{k}"
        t0 = time.monotonic()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as r:
                body = await r.json(content_type=None)
                t1 = time.monotonic()
                if r.status == 200:
                    return self._record(client=c, kind="get", key=k, invoke=t0, complete=t1, outcome="ok",
                                        value=body["value"], member=self.names[m], final=final)  # fmt: skip
                if r.status == 404 and _code(body) == "not_decided":
                    return self._record(client=c, kind="get", key=k, invoke=t0, complete=t1, outcome="ok",
                                        value=None, member=self.names[m], final=final)  # fmt: skip
                outcome = "fail" if r.status in FAIL_STATUSES else "info"
                err = f"{r.status} {_code(body)}"
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            t1 = time.monotonic()
            outcome, err = "info", type(exc).__name__
        return self._record(client=c, kind="get", key=k, invoke=t0, complete=t1, outcome=outcome,
                            member=self.names[m], error=err, final=final)  # fmt: skip

    async def final_reads(self, session: aiohttp.ClientSession, tries: int = 5) -> None:
        """Read every key any PUT touched, until a definite answer (at most ``tries`` each)."""
        keys = self.put_keys()
        sem = asyncio.Semaphore(16)
        rng = random.Random(f"{self.seed}-final")

        async def one(i: int, k: str) -> None:
            async with sem:
                for t in range(tries):
                    op = await self.get(session, 1000 + i % 16, (i + t) % len(self.urls), k, final=True)
                    if op.outcome == "ok":
                        return
                    await asyncio.sleep(0.2 * (t + 1) * rng.random())

        await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))


def _code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    return ""
