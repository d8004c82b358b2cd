"""The load generator behind `graven bench`: decisions (or reads) per second and latency.

C workers share one ``AsyncClient`` (keep-alive pool) until the deadline. Workloads:
  unique   every operation proposes a fresh key (run prefix + counter);
  keys N   operations pick keys from a fixed space of N keys (most find them decided);
  racers R each operation sends R different values for one key at once, each via another
           member; every racer must get back the same decided value (else a *disagreement*);
  reads    GETs of keys decided before the timed phase, checked against the decided value.
Every value the bench sees for a key is remembered: seeing another one later is a disagreement.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from .aio import AsyncClient
from .core import ClientError, Decision
from .smart import SmartClient

MAX_OPS_PER_WORKER = 5_000_000  # hard bound; the deadline normally ends the run
PRELOAD_TIMEOUT = 60.0  # seconds to decide the keys a read benchmark reads
DEFAULT_READ_KEYS = 1000
ERROR_SAMPLES = 5


@dataclass(frozen=True)
class Workload:
    concurrency: int = 16
    seconds: float = 10.0
    keys: int | None = None  # None: a fresh key per operation
    racers: int = 1
    value_size: int = 64
    reads: bool = False
    timeout: float = 10.0
    smart: bool = False  # propose through the in-process smart client

    @property
    def mode(self) -> str:
        if self.reads:
            return "reads"
        if self.racers > 1:
            return "racers"
        return "keys" if self.keys else "unique"


@dataclass
class BenchResult:
    mode: str
    concurrency: int
    seconds: float
    racers: int
    keys: int | None
    value_size: int
    ops: int = 0
    ops_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    errors: int = 0
    disagreements: int = 0
    won_anomalies: int = 0  # racers on fresh keys: rounds where not exactly one racer won
    error_samples: list[str] = field(default_factory=list)
    cluster: str | None = None
    layout: Any = None
    members: int = 0
    client: str = "gateway"  # or "smart"
    fast_in_client: int = 0  # smart client: decisions reached in this process (fast path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_ms:
        return 0.0
    rank = max(1, min(len(sorted_ms), math.ceil(q / 100.0 * len(sorted_ms))))
    return sorted_ms[rank - 1]


class _Run:
    def __init__(
        self, client: AsyncClient | SmartClient, work: Workload, endpoints: list[str]
    ) -> None:
        self.client = client
        self.work = work
        self.endpoints = endpoints
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.counter = itertools.count()  # fresh keys
        self.op_ids = itertools.count()  # distinct values per operation
        self.seen: dict[str, str] = {}  # key -> the decided value the bench saw first
        self.read_keys: list[str] = []
        self.latencies: list[float] = []
        self.result = BenchResult(
            work.mode, work.concurrency, 0.0, work.racers, work.keys, work.value_size
        )
        self.rng = random.Random()

    def key(self) -> str:
        if self.work.keys:
            return f"{self.prefix}-{self.rng.randrange(self.work.keys)}"
        return f"{self.prefix}-{next(self.counter)}"

    def value(self, tag: str) -> str:
        # distinct per proposal (so racers' values differ), padded to the requested size
        return tag.ljust(self.work.value_size, ".")[: max(self.work.value_size, len(tag))]

    def error(self, exc: BaseException) -> None:
        self.result.errors += 1
        if len(self.result.error_samples) < ERROR_SAMPLES:
            self.result.error_samples.append(str(exc) or type(exc).__name__)

    def agree(self, key: str, value: str) -> bool:
        first = self.seen.setdefault(key, value)
        return first == value

    # -- one operation per workload ---------------------------------------------------------

    async def propose_one(self, op: int) -> None:
        key = self.key()
        decision = await self.client.propose(key, self.value(f"v{op}"))
        if self.work.keys and not self.agree(key, decision.value):
            self.result.disagreements += 1

    async def race_one(self, op: int) -> None:
        key = self.key()
        n = len(self.endpoints)
        calls = [
            self.client.propose(key, self.value(f"r{r}-{op}"), via=self.endpoints[(op + r) % n])
            for r in range(self.work.racers)
        ]
        replies = await asyncio.gather(*calls, return_exceptions=True)
        decisions = [r for r in replies if isinstance(r, Decision)]
        for failure in (r for r in replies if not isinstance(r, Decision)):
            self.error(failure)
        values = {d.value for d in decisions}
        if len(values) > 1 or (values and not self.agree(key, values.pop())):
            self.result.disagreements += 1
        fresh = not self.work.keys and len(decisions) == self.work.racers
        if fresh and sum(d.won for d in decisions) != 1:
            self.result.won_anomalies += 1
        if len(decisions) < self.work.racers:
            raise _AlreadyCounted()

    async def read_one(self, op: int) -> None:
        key = self.rng.choice(self.read_keys)
        value = await self.client.get(key)
        if value is None:
            raise ClientError("miss", f"decided key {key} read back as not decided")
        if value != self.seen[key]:
            self.result.disagreements += 1

    # -- driving ----------------------------------------------------------------------------

    async def preload(self) -> None:
        """Decide the keys a read benchmark reads (not timed)."""
        count = self.work.keys or DEFAULT_READ_KEYS
        keys = [f"{self.prefix}-{i}" for i in range(count)]
        queue = iter(keys)
        deadline = time.monotonic() + PRELOAD_TIMEOUT

        async def worker() -> None:
            for key in queue:
                if time.monotonic() > deadline:
                    raise ClientError("timeout", "deciding the keys to read took too long")
                decision = await self.client.propose(key, self.value(f"p-{key}"))
                self.seen[key] = decision.value

        await asyncio.gather(*(worker() for _ in range(min(self.work.concurrency, count))))
        self.read_keys = keys

    async def worker(self, op_fn: Any, deadline: float) -> None:
        for _ in range(MAX_OPS_PER_WORKER):
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter()
            try:
                await op_fn(next(self.op_ids))
            except _AlreadyCounted:
                continue
            except (ClientError, OSError) as exc:
                self.error(exc)
                continue
            self.latencies.append((time.perf_counter() - started) * 1000.0)

    async def run(self) -> BenchResult:
        if self.work.reads:
            await self.preload()
            op_fn = self.read_one
        elif self.work.racers > 1:
            op_fn = self.race_one
        else:
            op_fn = self.propose_one
        started = time.monotonic()
        deadline = started + self.work.seconds
        await asyncio.gather(*(self.worker(op_fn, deadline) for _ in range(self.work.concurrency)))
        return self.summarise(time.monotonic() - started)

    def summarise(self, elapsed: float) -> BenchResult:
        res = self.result
        lat = sorted(self.latencies)
        res.seconds = round(elapsed, 3)
        res.ops = len(lat)
        res.ops_per_s = round(res.ops / elapsed, 1) if elapsed > 0 else 0.0
        res.p50_ms = round(percentile(lat, 50), 3)
        res.p99_ms = round(percentile(lat, 99), 3)
        res.max_ms = round(lat[-1], 3) if lat else 0.0
        res.mean_ms = round(sum(lat) / len(lat), 3) if lat else 0.0
        return res


class _AlreadyCounted(Exception):
    """A racer round with failed racers: its errors are counted, its latency is not."""


async def run_bench(endpoints: list[str], work: Workload) -> BenchResult:
    """Run one benchmark; ClientError when the cluster cannot be reached at all."""
    client: AsyncClient | SmartClient
    if work.smart:
        client = SmartClient(endpoints, timeout=work.timeout)
    else:
        client = AsyncClient(endpoints, timeout=work.timeout)
    async with client:
        info = await client.cluster()  # fails fast when nothing answers; learns the routing
        run = _Run(client, work, endpoints)
        result = await run.run()
    if isinstance(client, SmartClient):
        result.client, result.fast_in_client = "smart", client.stats["fast"]
    result.cluster = info.get("cluster")
    result.layout = info.get("layout")
    result.members = len(info.get("members") or [])
    return result
