"""One load generator for etcd and Graven: create-if-absent on keys, over HTTP keep-alive.

Modes (each a row of the comparison):
  unique      every operation creates a fresh key (no contention);
  contention  groups of R racers create the same key at once, each racer on another member;
              all racers of a key must get back the same value, exactly one must win;
  reads       reads of keys decided beforehand (not timed), checked against the decided value.

A unique row with `count` > 0 stops after that many creates (or at its deadline, whichever comes
first) and samples VmRSS of every server process just before and just after its timed phase:
`bytes_per_key` is the growth per key written, per member. With the smart client
(`--system graven-smart`) `fast_share` is the share of the timed phase's decisions reached on
the in-process fast path (the rest went through a proposer gateway).

Ad hoc use against running servers (prints one JSON object):
    python bench/load.py --system etcd --endpoint http://127.0.0.1:42379 --concurrency 16
    python bench/load.py --system graven-smart --endpoint http://127.0.0.1:27100 \
        --endpoint http://127.0.0.1:27101 --endpoint http://127.0.0.1:27102
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import aiohttp
from adapters import ADAPTERS, Adapter
from procstat import rss_kib, self_cpu_seconds, servers_cpu_seconds
from stats import BoxCpu, percentile

MAX_OPS_PER_WORKER = 2_000_000  # hard bound; the deadline normally ends a phase
REQUEST_TIMEOUT_S = 10.0
VERIFY_SAMPLE = 100  # contention: keys re-read from every member afterwards
ERROR_SAMPLES = 5
T = TypeVar("T")


@dataclass
class Workload:
    mode: str = "unique"  # unique | contention | reads
    concurrency: int = 16
    seconds: float = 10.0
    warmup_s: float = 1.0
    value_size: int = 64
    racers: int = 4
    read_keys: int = 1000  # reads: keys decided before the timed phase
    count: int = 0  # unique: stop the timed phase after this many creates (0: time only)


@dataclass
class RowResult:
    system: str
    mode: str
    concurrency: int
    value_size: int
    members: int
    seconds: float = 0.0
    ops: int = 0
    ops_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    disagreements: int = 0
    won_anomalies: int = 0  # contention: rounds where not exactly one racer won
    misses: int = 0  # reads: a decided key read back as absent (also counted in errors)
    rounds: int = 0
    server_cpu_ms_per_op: float = 0.0
    client_cpu_ms_per_op: float = 0.0
    box_busy_pct: float = 0.0  # whole machine, all processes, during the timed phase
    other_cores: float = 0.0  # cores used by processes that are neither servers nor us
    fast_share: float | None = None  # smart client: timed decisions on the in-process fast path
    paths: dict[str, int] = field(default_factory=dict)  # smart client: decisions by path
    rss_kib_before: list[int] = field(default_factory=list)  # count rows: per member
    rss_kib_after: list[int] = field(default_factory=list)
    bytes_per_key: list[float] = field(default_factory=list)  # (after - before) / ops
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, object]:
        """Everything except the raw latencies."""
        out = asdict(self)
        out.pop("latencies_ms")
        return out


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
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            self.error(exc)
            return False, None
        self.latencies.append(time.perf_counter() - start)
        return True, result


def run_loop(main: Awaitable[T]) -> T:
    """Run ``main`` on the loop the nodes run on (uvloop when installed). Why: the load
    generator is the same for every system, and on two shared cores the less CPU it spends per
    request, the more is left for the servers being measured."""
    from graven.node.server.main import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def make_value(tag: str, size: int) -> str:
    """An ASCII value of exactly `size` characters that starts with `tag`."""
    return (tag + "." * size)[:size]


class Runner:
    """Drives one adapter against one cluster's endpoints."""

    def __init__(self, adapter: Adapter, endpoints: Sequence[str], pids: Sequence[int]) -> None:
        self.adapter = adapter
        self.endpoints = list(endpoints)
        self.pids = list(pids)
        self.run_id = uuid.uuid4().hex[:8]
        self.contended: dict[str, str] = {}  # key -> agreed value, for the re-read check
        self.disagreements = 0
        self.won_anomalies = 0
        self.rounds = 0
        self.misses = 0

    def endpoint(self, index: int) -> str:
        return self.endpoints[index % len(self.endpoints)]

    async def run(self, load: Workload) -> RowResult:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await self.adapter.open(self.endpoints)
            try:
                decided = await self._prepare(session, load)
                drive = self._driver(session, load, decided)
                await self._phase(drive, load, load.warmup_s, record=False)
                self.disagreements = self.won_anomalies = self.rounds = self.misses = 0
                self.contended.clear()
                return await self._measure(session, drive, load)
            finally:
                await self.adapter.close()

    async def _prepare(self, session: aiohttp.ClientSession, load: Workload) -> dict[str, str]:
        """Reads mode: decide `read_keys` keys first (not timed)."""
        if load.mode != "reads":
            return {}
        decided: dict[str, str] = {}
        keys = [f"gb-{self.run_id}-r{i}" for i in range(load.read_keys)]

        async def fill(worker: int) -> None:
            for i in range(worker, len(keys), 16):
                value = make_value(keys[i], load.value_size)
                try:
                    outcome = await self.adapter.create(session, self.endpoint(i), keys[i], value)
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                    continue  # not decided for sure: simply not read later
                decided[keys[i]] = outcome.value

        await asyncio.gather(*(fill(w) for w in range(16)))
        if not decided:
            raise RuntimeError("reads: could not decide any key to read")
        return decided

    def _driver(
        self, session: aiohttp.ClientSession, load: Workload, decided: dict[str, str]
    ) -> Callable[[Phase, int], Awaitable[None]]:
        async def unique(phase: Phase, worker: int) -> None:
            endpoint, done = self.endpoint(worker), 0
            while phase.running(done) and phase.claim():
                key = f"gb-{self.run_id}-{int(phase.record)}-u{worker}-{done}"
                value = make_value(key, load.value_size)
                target = self.adapter.route(key, self.endpoints) or endpoint
                await phase.timed(self.adapter.create(session, target, key, value))
                done += 1

        async def contention(phase: Phase, group: int) -> None:
            done = 0
            while phase.running(done):
                key = f"gb-{self.run_id}-{int(phase.record)}-c{group}-{done}"
                await self._race(session, phase, key, group, load)
                done += load.racers

        async def reads(phase: Phase, worker: int) -> None:
            endpoint, done, keys = self.endpoint(worker), 0, list(decided)
            rng = random.Random(worker)
            while phase.running(done):
                key = rng.choice(keys)
                ok, got = await phase.timed(self.adapter.read(session, endpoint, key))
                done += 1
                if ok:
                    self._check_read(phase, key, got, decided[key])

        return {"unique": unique, "contention": contention, "reads": reads}[load.mode]

    def _check_read(self, phase: Phase, key: str, got: str | None, want: str) -> None:
        if got is None:
            self.misses += 1
            phase.error(LookupError(f"decided key {key} read back as absent"))
        elif got != want:
            self.disagreements += 1

    async def _race(
        self, session: aiohttp.ClientSession, phase: Phase, key: str, group: int, load: Workload
    ) -> None:
        """R racers create `key` at once, racer j on member (group + j) mod n."""
        ops = []
        for j in range(load.racers):
            value = make_value(f"{key}-{j}", load.value_size)
            create = self.adapter.create(session, self.endpoint(group + j), key, value)
            ops.append(phase.timed(create))
        outcomes = [o for ok, o in await asyncio.gather(*ops) if ok and o is not None]
        if len(outcomes) < load.racers:
            return  # a failed racer: the round cannot be judged (errors count it)
        self.rounds += 1
        values = {o.value for o in outcomes}
        if len(values) != 1:
            self.disagreements += 1
        elif sum(o.won for o in outcomes) != 1:
            self.won_anomalies += 1
        elif len(self.contended) < VERIFY_SAMPLE:
            self.contended[key] = values.pop()

    async def _phase(
        self,
        drive: Callable[[Phase, int], Awaitable[None]],
        load: Workload,
        seconds: float,
        record: bool,
    ) -> Phase:
        phase = Phase(seconds, record, load.count if record else 0)
        workers = load.concurrency
        if load.mode == "contention":
            workers = max(1, load.concurrency // load.racers)
        await asyncio.gather(*(drive(phase, w) for w in range(workers)))
        return phase

    async def _measure(
        self,
        session: aiohttp.ClientSession,
        drive: Callable[[Phase, int], Awaitable[None]],
        load: Workload,
    ) -> RowResult:
        rss0 = [rss_kib(pid) for pid in self.pids] if load.count else []
        paths0 = self.adapter.paths()
        box = BoxCpu()
        server0, client0 = servers_cpu_seconds(self.pids), self_cpu_seconds()
        start = time.perf_counter()
        phase = await self._phase(drive, load, load.seconds, record=True)
        wall = time.perf_counter() - start
        server_s = servers_cpu_seconds(self.pids) - server0
        client_s = self_cpu_seconds() - client0
        busy_pct, cores = box.busy()
        rss1 = [rss_kib(pid) for pid in self.pids] if load.count else []
        paths1 = self.adapter.paths()
        paths = {} if paths1 is None else dict(paths1 - (paths0 or Counter()))
        decisions = sum(paths.values())
        used_cores = (server_s + client_s) / wall if wall > 0 else 0.0
        await self._verify_contended(session, phase)
        lat = sorted(1000 * x for x in phase.latencies)
        ops = len(lat)
        per_op = 1000 / ops if ops else 0.0
        return RowResult(
            system=self.adapter.name,
            mode=load.mode,
            concurrency=load.concurrency,
            value_size=load.value_size,
            members=len(self.endpoints),
            seconds=round(wall, 3),
            ops=ops,
            ops_per_s=round(ops / wall, 1) if wall > 0 else 0.0,
            p50_ms=round(percentile(lat, 0.50), 3),
            p99_ms=round(percentile(lat, 0.99), 3),
            max_ms=round(lat[-1], 3) if lat else 0.0,
            errors=phase.errors,
            disagreements=self.disagreements,
            won_anomalies=self.won_anomalies,
            misses=self.misses,
            rounds=self.rounds,
            server_cpu_ms_per_op=round(server_s * per_op, 3),
            client_cpu_ms_per_op=round(client_s * per_op, 3),
            box_busy_pct=round(busy_pct, 1),
            other_cores=round(max(0.0, busy_pct / 100 * cores - used_cores), 2),
            fast_share=round(paths.get("fast", 0) / decisions, 4) if decisions else None,
            paths=paths,
            rss_kib_before=rss0,
            rss_kib_after=rss1,
            bytes_per_key=[
                round(1024 * (b - a) / ops, 1) if ops else 0.0
                for a, b in zip(rss0, rss1, strict=True)
            ],
            error_samples=phase.error_samples,
            latencies_ms=lat,
        )

    async def _verify_contended(self, session: aiohttp.ClientSession, phase: Phase) -> None:
        """Re-read a sample of contended keys from every member; a different value disagrees."""
        reader = self.adapter.member_reader()
        for key, agreed in list(self.contended.items()):
            for endpoint in self.endpoints:
                try:
                    got = await reader.read(session, endpoint, key)
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                    phase.error(exc)
                    continue
                if got and got != agreed:
                    self.disagreements += 1


async def run_row(
    system: str, endpoints: Sequence[str], pids: Sequence[int], load: Workload
) -> RowResult:
    """Run one workload against one running cluster."""
    return await Runner(ADAPTERS[system](), endpoints, pids).run(load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(ADAPTERS), required=True)
    parser.add_argument("--endpoint", action="append", required=True, help="repeat per member")
    parser.add_argument("--pid", type=int, action="append", default=[], help="server PIDs")
    parser.add_argument("--mode", choices=["unique", "contention", "reads"], default="unique")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--value-size", type=int, default=64)
    parser.add_argument("--racers", type=int, default=4)
    parser.add_argument("--count", type=int, default=0, help="unique: stop after N creates")
    args = parser.parse_args(argv)
    load = Workload(
        mode=args.mode,
        concurrency=args.concurrency,
        seconds=args.seconds,
        warmup_s=args.warmup,
        value_size=args.value_size,
        racers=args.racers,
        count=args.count,
    )
    row = run_loop(run_row(args.system, args.endpoint, args.pid, load))
    print(json.dumps(row.summary()))
    return 1 if row.errors or row.disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
