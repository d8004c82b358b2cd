"""The one load generator: `graven bench` and bench/compare.py (against etcd too) both run it.

Workers share one ``Target`` (a client of the system under test) until the deadline:
  unique      every operation creates a fresh key;
  keys        operations pick keys from a fixed space of ``keys`` keys (most find them decided);
  contention  groups of ``racers`` create one key at once with different values, each racer on
              another member (fresh keys, or keys from the space when ``keys`` is set); every
              racer must get back the same value (else a *disagreement*), and on fresh keys
              exactly one must win (else a *won anomaly*);
  reads       reads of keys decided before the timed phase, checked against the decided value.
``concurrency`` is the number of requests in flight (contention: ``concurrency // racers``
groups). An optional warm-up phase runs first and is not counted; ``count`` > 0 stops the timed
phase after that many operations. Every value seen for a key is remembered: seeing another one
later is a disagreement.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import aiohttp

from .core import ClientError, Decision
from .credentials import Credentials

MAX_OPS_PER_WORKER = 2_000_000  # hard bound; the deadline normally ends a phase
ERROR_SAMPLES = 5
VERIFY_SAMPLE = 100  # contention: keys re-read from every member afterwards
DEFAULT_READ_KEYS = 1000
PRELOAD_WORKERS = 16
PRELOAD_TIMEOUT = 60.0  # seconds to decide the keys a read benchmark reads
MODES = ("unique", "keys", "contention", "reads")
# what a failed operation may raise; anything else is a bug and ends the run
FAILURES = (ClientError, aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError)
T = TypeVar("T")


class Target(Protocol):
    """A client of the system under test. ``endpoint`` is a hint: the member a racer should
    use, or a worker's own member; clients that route by themselves may ignore it."""

    name: ClassVar[str]

    async def open(self, endpoints: Sequence[str]) -> None: ...

    async def close(self) -> None: ...

    async def create(self, endpoint: str, key: str, value: str) -> Decision: ...

    async def read(self, endpoint: str, key: str) -> str | None: ...

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        """The member a client that knows the system sends ``key`` to (None: any member)."""
        ...

    def member_reader(self) -> Target:
        """A target whose ``read`` asks exactly the endpoint it is given (re-read checks)."""
        ...

    def paths(self) -> Counter[str] | None:
        """Decisions so far by path ("fast", "gateway") when the client knows; else None."""
        ...


@dataclass(frozen=True)
class Workload:
    mode: str = "unique"
    concurrency: int = 16
    seconds: float = 10.0
    warmup: float = 0.0
    value_size: int = 64
    racers: int = 4  # contention
    keys: int = 0  # keys, contention: a fixed space of this many keys (0: fresh keys)
    read_keys: int = DEFAULT_READ_KEYS  # reads: keys decided before the timed phase
    count: int = 0  # stop the timed phase after this many operations (0: time only)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


@dataclass
class LoadResult:
    system: str
    mode: str
    concurrency: int
    value_size: int
    members: int
    racers: int = 0
    keys: int = 0
    seconds: float = 0.0
    ops: int = 0
    ops_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    errors: int = 0
    disagreements: int = 0
    won_anomalies: int = 0  # contention on fresh keys: rounds where not exactly one racer won
    misses: int = 0  # reads: a decided key read back as absent (also counted in errors)
    rounds: int = 0  # contention rounds every racer of which answered
    paths: dict[str, int] = field(default_factory=dict)  # timed decisions by path, if known
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """Everything except the raw latencies."""
        out = asdict(self)
        out.pop("latencies_ms")
        return out


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending list (0 for an empty one)."""
    if not sorted_ms:
        return 0.0
    rank = max(1, min(len(sorted_ms), math.ceil(q / 100.0 * len(sorted_ms))))
    return sorted_ms[rank - 1]


def make_value(tag: str, size: int) -> str:
    """An ASCII value of exactly ``size`` characters that starts with ``tag``."""
    return (tag + "." * size)[:size]


class Phase:
    """Shared state of one timed (or warm-up) phase: deadline, latencies, errors."""

    def __init__(self, seconds: float, record: bool, count: int = 0) -> None:
        self.deadline = time.perf_counter() + seconds
        self.record = record
        self.left = count if count > 0 else -1  # operations still to start (-1: no bound)
        self.latencies: list[float] = []
        self.errors = 0
        self.error_samples: list[str] = []

    def running(self, done: int) -> bool:
        return done < MAX_OPS_PER_WORKER and time.perf_counter() < self.deadline

    def claim(self) -> bool:
        """Take one operation of a count-bounded phase (always True without a bound)."""
        if self.left == 0:
            return False
        if self.left > 0:
            self.left -= 1
        return True

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])

    async def timed(self, op: Awaitable[T]) -> tuple[bool, T | None]:
        """Await one operation and record its latency; (False, None) and an error if it failed."""
        start = time.perf_counter()
        try:
            result = await op
        except FAILURES as exc:
            self.error(exc)
            return False, None
        self.latencies.append(time.perf_counter() - start)
        return True, result


# Wraps the timed phase (bench/: CPU and memory of the servers); yields a dict it fills.
Measure = Callable[[], AbstractAsyncContextManager[dict[str, Any]]]


class Runner:
    """Drives one target against one cluster's endpoints."""

    def __init__(self, target: Target, endpoints: Sequence[str]) -> None:
        self.target = target
        self.endpoints = list(endpoints)
        self.run_id = uuid.uuid4().hex[:8]
        self.seen: dict[str, str] = {}  # key -> the decided value seen first (key spaces)
        self.contended: dict[str, str] = {}  # key -> agreed value, for the re-read check
        self.disagreements = 0
        self.won_anomalies = 0
        self.rounds = 0
        self.misses = 0

    def endpoint(self, index: int) -> str:
        return self.endpoints[index % len(self.endpoints)]

    async def run(self, load: Workload, measure: Measure | None = None) -> LoadResult:
        await self.target.open(self.endpoints)
        try:
            decided = await self._prepare(load)
            drive = self._driver(load, decided)
            await self._phase(drive, load, load.warmup, record=False)
            self.disagreements = self.won_anomalies = self.rounds = self.misses = 0
            self.contended.clear()
            return await self._measure(drive, load, measure)
        finally:
            await self.target.close()

    async def _prepare(self, load: Workload) -> dict[str, str]:
        """Reads mode: decide the keys to read first (not timed)."""
        if load.mode != "reads":
            return {}
        keys = [f"gb-{self.run_id}-r{i}" for i in range(load.read_keys)]
        deadline = time.monotonic() + PRELOAD_TIMEOUT

        async def fill(worker: int) -> None:
            for i in range(worker, len(keys), PRELOAD_WORKERS):
                if time.monotonic() > deadline:
                    return
                value = make_value(keys[i], load.value_size)
                try:
                    outcome = await self.target.create(self.endpoint(i), keys[i], value)
                except FAILURES:
                    continue  # not decided for sure: simply not read later
                self.seen[keys[i]] = outcome.value

        await asyncio.gather(*(fill(w) for w in range(PRELOAD_WORKERS)))
        if not self.seen:
            raise ClientError("preload", "reads: could not decide any key to read")
        return dict(self.seen)

    def _key(self, phase: Phase, load: Workload, rng: random.Random, tag: str) -> str:
        if load.keys and load.mode != "unique":
            return f"gb-{self.run_id}-k{rng.randrange(load.keys)}"
        return f"gb-{self.run_id}-{int(phase.record)}-{tag}"

    def _agree(self, key: str, value: str) -> bool:
        return self.seen.setdefault(key, value) == value

    def _driver(self, load: Workload, decided: dict[str, str]) -> Callable[[Phase, int], Any]:
        async def unique(phase: Phase, worker: int) -> None:
            endpoint, done, rng = self.endpoint(worker), 0, random.Random(worker)
            while phase.running(done) and phase.claim():
                key = self._key(phase, load, rng, f"u{worker}-{done}")
                spaced = load.mode == "keys"
                value = make_value(f"{key}-{worker}-{done}" if spaced else key, load.value_size)
                target = self.target.route(key, self.endpoints) or endpoint
                ok, got = await phase.timed(self.target.create(target, key, value))
                done += 1
                if ok and got is not None and spaced and not self._agree(key, got.value):
                    self.disagreements += 1

        async def contention(phase: Phase, group: int) -> None:
            done, rng = 0, random.Random(group)
            while phase.running(done):
                key = self._key(phase, load, rng, f"c{group}-{done}")
                await self._race(phase, key, group, load)
                done += load.racers

        async def reads(phase: Phase, worker: int) -> None:
            endpoint, done, keys = self.endpoint(worker), 0, list(decided)
            rng = random.Random(worker)
            while phase.running(done):
                key = rng.choice(keys)
                ok, got = await phase.timed(self.target.read(endpoint, key))
                done += 1
                if ok:
                    self._check_read(phase, key, got, decided[key])

        return {"unique": unique, "keys": unique, "contention": contention, "reads": reads}[
            load.mode
        ]

    def _check_read(self, phase: Phase, key: str, got: str | None, want: str) -> None:
        if got is None:
            self.misses += 1
            phase.error(LookupError(f"decided key {key} read back as absent"))
        elif got != want:
            self.disagreements += 1

    async def _race(self, phase: Phase, key: str, group: int, load: Workload) -> None:
        """R racers create ``key`` at once, racer j on member (group + j) mod n."""
        ops = []
        for j in range(load.racers):
            value = make_value(f"{key}-{j}", load.value_size)
            create = self.target.create(self.endpoint(group + j), key, value)
            ops.append(phase.timed(create))
        outcomes = [o for ok, o in await asyncio.gather(*ops) if ok and o is not None]
        if len(outcomes) < load.racers:
            return  # a failed racer: the round cannot be judged (errors count it)
        self.rounds += 1
        values = {o.value for o in outcomes}
        if len(values) != 1 or (load.keys and not self._agree(key, next(iter(values)))):
            self.disagreements += 1
        elif not load.keys and sum(o.won for o in outcomes) != 1:
            self.won_anomalies += 1
        elif not load.keys and len(self.contended) < VERIFY_SAMPLE:
            self.contended[key] = values.pop()

    async def _phase(
        self, drive: Callable[[Phase, int], Any], load: Workload, seconds: float, record: bool
    ) -> Phase:
        phase = Phase(seconds, record, load.count if record else 0)
        workers = load.concurrency
        if load.mode == "contention":
            workers = max(1, load.concurrency // load.racers)
        await asyncio.gather(*(drive(phase, w) for w in range(workers)))
        return phase

    async def _measure(
        self, drive: Callable[[Phase, int], Any], load: Workload, measure: Measure | None
    ) -> LoadResult:
        paths0 = self.target.paths()
        async with (measure or _nothing)() as extra:
            start = time.perf_counter()
            phase = await self._phase(drive, load, load.seconds, record=True)
            wall = time.perf_counter() - start
            extra["wall"] = wall
        paths1 = self.target.paths()
        paths = {} if paths1 is None else dict(paths1 - (paths0 or Counter()))
        await self._verify_contended(phase)
        lat = sorted(1000 * x for x in phase.latencies)
        ops = len(lat)
        return LoadResult(
            system=self.target.name,
            mode=load.mode,
            concurrency=load.concurrency,
            value_size=load.value_size,
            members=len(self.endpoints),
            racers=load.racers if load.mode == "contention" else 0,
            keys=load.keys,
            seconds=round(wall, 3),
            ops=ops,
            ops_per_s=round(ops / wall, 1) if wall > 0 else 0.0,
            p50_ms=round(percentile(lat, 50), 3),
            p99_ms=round(percentile(lat, 99), 3),
            max_ms=round(lat[-1], 3) if lat else 0.0,
            mean_ms=round(sum(lat) / ops, 3) if ops else 0.0,
            errors=phase.errors,
            disagreements=self.disagreements,
            won_anomalies=self.won_anomalies,
            misses=self.misses,
            rounds=self.rounds,
            paths=paths,
            error_samples=phase.error_samples,
            latencies_ms=lat,
        )

    async def _verify_contended(self, phase: Phase) -> None:
        """Re-read a sample of contended keys from every member; a different value disagrees."""
        reader = self.target.member_reader()
        for key, agreed in list(self.contended.items()):
            for endpoint in self.endpoints:
                try:
                    got = await reader.read(endpoint, key)
                except FAILURES as exc:
                    phase.error(exc)
                    continue
                if got and got != agreed:
                    self.disagreements += 1


class _Nothing:
    async def __aenter__(self) -> dict[str, Any]:
        return {}

    async def __aexit__(self, *exc: object) -> None:
        return None


def _nothing() -> _Nothing:
    return _Nothing()


# -- Graven's own clients as targets -----------------------------------------------------------


class GatewayTarget:
    """The proposer gateway through ``AsyncClient``: it routes each key to its home member
    itself; ``endpoint`` is used only for racers (each on another member)."""

    name: ClassVar[str] = "graven"

    def __init__(
        self, timeout: float, racing: bool, credentials: Credentials | None = None
    ) -> None:
        self.timeout = timeout
        self.racing = racing
        self.credentials = credentials
        self.client: Any = None
        self.info: dict[str, Any] = {}

    async def open(self, endpoints: Sequence[str]) -> None:
        from .aio import AsyncClient

        self.client = AsyncClient(
            list(endpoints), timeout=self.timeout, credentials=self.credentials
        )
        self.info = await self.client.cluster()  # fails fast when nothing answers

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def create(self, endpoint: str, key: str, value: str) -> Decision:
        return await self.client.propose(key, value, via=endpoint if self.racing else None)

    async def read(self, endpoint: str, key: str) -> str | None:
        return await self.client.get(key)

    def route(self, key: str, endpoints: Sequence[str]) -> str | None:
        return None

    def member_reader(self) -> Target:
        return _MemberReader(self.client)

    def paths(self) -> Counter[str] | None:
        return None


class SmartTarget(GatewayTarget):
    """``SmartClient``: fast layouts decide in this process, the rest through the gateway."""

    name: ClassVar[str] = "graven-smart"

    async def open(self, endpoints: Sequence[str]) -> None:
        from .smart import SmartClient

        self.client = SmartClient(
            list(endpoints), timeout=self.timeout, credentials=self.credentials
        )
        self.info = await self.client.cluster()

    def member_reader(self) -> Target:
        return _MemberReader(self.client.gateway)  # its plain client: reads a given member

    def paths(self) -> Counter[str] | None:
        return Counter(self.client.stats)


class _MemberReader(GatewayTarget):
    """Reads exactly the member it is given (for the contention re-read check)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client.timeout, racing=True)
        self.client = client

    async def read(self, endpoint: str, key: str) -> str | None:
        return await self.client.get(key, via=endpoint)


async def run_load(
    target: Target, endpoints: Sequence[str], load: Workload, measure: Measure | None = None
) -> LoadResult:
    """Run one workload against one running cluster."""
    return await Runner(target, endpoints).run(load, measure)


__all__ = [
    "GatewayTarget",
    "LoadResult",
    "Measure",
    "Phase",
    "Runner",
    "SmartTarget",
    "Target",
    "Workload",
    "make_value",
    "percentile",
    "run_load",
]
