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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from graven.node.client.core import ClientError
from graven.node.client.smart import SmartClient

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
    smart: int = 2  # more clients that use graven's SmartClient (all members, its failover)
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

    async def run(self, session: aiohttp.ClientSession) -> None:
        clients = [self._client(session, c) for c in range(self.concurrency)]
        smart = [SmartClient(list(self.urls), timeout=TIMEOUT) for _ in range(self.smart)]
        try:
            base = self.concurrency
            clients += [self._smart_client(sc, base + i) for i, sc in enumerate(smart)]
            await asyncio.gather(*clients)
        finally:
            for sc in smart:
                await sc.close()

    def stop(self) -> None:
        self._stop.set()

    async def _smart_client(self, sc: SmartClient, c: int) -> None:
        """Decides in the client on fast layouts (one round trip to the acceptors), else
        through the gateway with endpoint failover: graven's own client, under the faults."""
        rng = random.Random(f"{self.seed}-client-{c}")
        for n in range(1 << 40):
            if self._stop.is_set():
                return
            k = self.key(rng)
            put = rng.random() < self.put_share
            v = f"c{c}-{n}"
            t0 = time.monotonic()
            base = {"client": c, "kind": "put" if put else "get", "key": k, "invoke": t0,
                    "member": "smart"}  # fmt: skip
            try:
                if put:
                    d = await sc.propose(k, v)
                    self._record(**base, complete=time.monotonic(), outcome="ok", proposed=v,
                                 value=d.value, won=d.won)  # fmt: skip
                else:
                    got = await sc.get(k)
                    self._record(**base, complete=time.monotonic(), outcome="ok", value=got)
            except ClientError as exc:
                definite = exc.status in FAIL_STATUSES and exc.code != "not_decided"
                self._record(**base, complete=time.monotonic(), proposed=v if put else None,
                             outcome="fail" if definite else "info",
                             error=f"{exc.status} {exc.code}")  # fmt: skip
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._record(**base, complete=time.monotonic(), proposed=v if put else None,
                             outcome="info", error=type(exc).__name__)  # fmt: skip
            if n % 8 == 7:
                await asyncio.sleep(rng.uniform(0, 0.02))

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
        base: dict[str, Any] = {"client": c, "kind": "put", "key": k, "member": self.names[m]}
        base.update(proposed=v, invoke=time.monotonic())
        try:
            async with session.put(
                url, json={"value": v}, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as r:
                body = await r.json(content_type=None)
                base["complete"] = time.monotonic()
                if r.status == 200:
                    won = body.get("won")
                    return self._record(**base, outcome="ok", value=body["value"], won=won)
                return self._record(**base, **_refused(r.status, body))
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            base["complete"] = time.monotonic()
            return self._record(**base, outcome="info", error=type(exc).__name__)

    async def get(
        self, session: aiohttp.ClientSession, c: int, m: int, k: str, final: bool = False
    ) -> Op:
        url = f"{self.urls[m]}/v1/decisions/{k}"
        base: dict[str, Any] = {"client": c, "kind": "get", "key": k, "member": self.names[m]}
        base.update(final=final, invoke=time.monotonic())
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as r:
                body = await r.json(content_type=None)
                base["complete"] = time.monotonic()
                if r.status == 200:
                    return self._record(**base, outcome="ok", value=body["value"])
                if r.status == 404 and _code(body) == "not_decided":
                    return self._record(**base, outcome="ok", value=None)
                return self._record(**base, **_refused(r.status, body))
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            base["complete"] = time.monotonic()
            return self._record(**base, outcome="info", error=type(exc).__name__)

    async def final_reads(
        self, session: aiohttp.ClientSession, tries: int = 5, batch: int = 100
    ) -> None:
        """Read every key any PUT touched (``:batchGet``, spread over the members) until each
        has a definite answer, at most ``tries`` rounds; every key's result is one operation."""
        todo = self.put_keys()
        for t in range(tries):
            chunks = [todo[i : i + batch] for i in range(0, len(todo), batch)]
            sem = asyncio.Semaphore(4)

            async def one(m: int, keys: list[str], sem: asyncio.Semaphore = sem) -> list[str]:
                async with sem:
                    return await self._batch_get(session, m, keys)

            n = len(self.urls)
            results = await asyncio.gather(*(one((i + t) % n, c) for i, c in enumerate(chunks)))
            todo = [k for undecided in results for k in undecided]
            if not todo:
                return
            await asyncio.sleep(0.5 * (t + 1))

    async def _batch_get(
        self, session: aiohttp.ClientSession, m: int, keys: list[str]
    ) -> list[str]:
        """Record one final read per key; returns the keys without a definite answer."""
        t0 = time.monotonic()
        results: dict[str, Any] = {}
        err = ""
        try:
            async with session.post(
                f"{self.urls[m]}/v1/decisions:batchGet",
                json={"keys": keys},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            ) as r:
                body = await r.json(content_type=None)
                if r.status == 200:
                    results = {item["key"]: item for item in body["results"]}
                else:
                    err = f"{r.status} {_code(body)}"
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            err = type(exc).__name__
        t1 = time.monotonic()
        again = []
        for k in keys:
            item = results.get(k)
            base = {
                "client": 1000 + m,
                "kind": "get",
                "key": k,
                "invoke": t0,
                "complete": t1,
                "member": self.names[m],
                "final": True,
            }
            if item is not None and "value" in item:
                self._record(**base, outcome="ok", value=item["value"])
            elif item is not None and item["error"]["code"] == "not_decided":
                self._record(**base, outcome="ok", value=None)
            else:
                self._record(**base, outcome="info", error=item["error"]["code"] if item else err)
                again.append(k)
        return again


def _refused(status: int, body: Any) -> dict[str, str]:
    """A non-success answer: ``fail`` when the status says nothing happened, else ``info``."""
    outcome = "fail" if status in FAIL_STATUSES else "info"
    return {"outcome": outcome, "error": f"{status} {_code(body)}"}


def _code(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    return ""
