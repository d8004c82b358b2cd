"""bench/compare.py's rows on Graven's one load generator (`graven.node.client.loadgen`), with
the servers' CPU and memory measured around each timed phase.

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
import sys
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from adapters import ADAPTERS
from procstat import rss_kib, self_cpu_seconds, servers_cpu_seconds
from stats import BoxCpu

from graven.node.client.loadgen import LoadResult, Workload, make_value, run_load

T = TypeVar("T")

__all__ = ["RowResult", "Workload", "make_value", "run_loop", "run_row"]


@dataclass
class RowResult(LoadResult):
    server_cpu_ms_per_op: float = 0.0
    client_cpu_ms_per_op: float = 0.0
    box_busy_pct: float = 0.0  # whole machine, all processes, during the timed phase
    other_cores: float = 0.0  # cores used by processes that are neither servers nor us
    fast_share: float | None = None  # smart client: timed decisions on the in-process fast path
    rss_kib_before: list[int] = field(default_factory=list)  # count rows: per member
    rss_kib_after: list[int] = field(default_factory=list)
    bytes_per_key: list[float] = field(default_factory=list)  # (after - before) / ops


def run_loop(main: Awaitable[T]) -> T:
    """Run ``main`` on the loop the nodes run on (uvloop when installed). Why: the load
    generator is the same for every system, and on two shared cores the less CPU it spends per
    request, the more is left for the servers being measured."""
    from graven.node.server.main import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def servers(pids: Sequence[int], memory: bool) -> Any:
    """The measure hook: CPU of the servers and of this process, the machine's load, and (count
    rows) the servers' resident memory, just before and just after the timed phase."""

    @asynccontextmanager
    async def measure() -> AsyncIterator[dict[str, Any]]:
        out: dict[str, Any] = {}
        rss0 = [rss_kib(pid) for pid in pids] if memory else []
        box = BoxCpu()
        server0, client0 = servers_cpu_seconds(pids), self_cpu_seconds()
        yield out
        out["server_s"] = servers_cpu_seconds(pids) - server0
        out["client_s"] = self_cpu_seconds() - client0
        out["busy"] = box.busy()
        out["rss0"], out["rss1"] = rss0, [rss_kib(pid) for pid in pids] if memory else []

    return measure


async def run_row(
    system: str, endpoints: Sequence[str], pids: Sequence[int], load: Workload
) -> RowResult:
    """Run one workload against one running cluster."""
    measured: dict[str, Any] = {}
    hook = servers(pids, bool(load.count))

    @asynccontextmanager
    async def measure() -> AsyncIterator[dict[str, Any]]:
        async with hook() as out:
            yield out
        measured.update(out)

    result = await run_load(ADAPTERS[system](), endpoints, load, measure)
    return with_cost(result, measured)


def with_cost(result: LoadResult, m: dict[str, Any]) -> RowResult:
    wall, ops = m["wall"], result.ops
    per_op = 1000 / ops if ops else 0.0
    busy_pct, cores = m["busy"]
    used_cores = (m["server_s"] + m["client_s"]) / wall if wall > 0 else 0.0
    decisions = sum(result.paths.values())
    return RowResult(
        **asdict(result),
        server_cpu_ms_per_op=round(m["server_s"] * per_op, 3),
        client_cpu_ms_per_op=round(m["client_s"] * per_op, 3),
        box_busy_pct=round(busy_pct, 1),
        other_cores=round(max(0.0, busy_pct / 100 * cores - used_cores), 2),
        fast_share=round(result.paths.get("fast", 0) / decisions, 4) if decisions else None,
        rss_kib_before=m["rss0"],
        rss_kib_after=m["rss1"],
        bytes_per_key=[
            round(1024 * (b - a) / ops, 1) if ops else 0.0
            for a, b in zip(m["rss0"], m["rss1"], strict=True)
        ],
    )


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
        warmup=args.warmup,
        value_size=args.value_size,
        racers=args.racers,
        count=args.count,
    )
    row = run_loop(run_row(args.system, args.endpoint, args.pid, load))
    print(json.dumps(row.summary()))
    return 1 if row.errors or row.disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
