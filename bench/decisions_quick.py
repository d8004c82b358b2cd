"""Quick decision throughput: PUT /v1/decisions on fresh keys against a local cluster.

    .venv/bin/python bench/decisions_quick.py [--presets paxos,fast] [--concurrency 1,64]
        [--seconds 5] [--members 3] [--route home|any] [--value-bytes 32]

Starts real `graven node` processes on 127.0.0.1 (tests/cluster_fixture.py), then per preset and
client concurrency runs closed-loop workers for a fixed time, each PUTting fresh keys. With
``--route home`` every key goes to its home node (what a routing client does: restricted layouts
then skip phase 1); ``any`` spreads requests round robin. Afterwards a sample of keys is read
back through another node and must match (the numbers only count if the node stayed correct).
The client shares the machine's cores with the nodes: compare numbers on one box only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from graven.node.clusterconfig import parse
from graven.node.protocol.config import key_hash
from graven.node.smartclient import SmartClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cluster_fixture import LocalCluster  # the test fixture: real nodes on free ports

MAX_OPS_PER_WORKER = 1_000_000  # a bound; the time limit ends a run
SAMPLE = 200  # keys read back per run


@dataclass
class Result:
    preset: str
    route: str
    concurrency: int
    seconds: float
    ops: int
    errors: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    fast_path_share: float
    node_cpu_ms_per_op: float
    items_per_acceptor_request: float


def cpu_seconds(cluster: LocalCluster) -> float:
    """utime + stime of every member process (from /proc, Linux)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for m in cluster.members:
        assert m.proc is not None
        fields = Path(f"/proc/{m.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def scrape(session: aiohttp.ClientSession, cluster: LocalCluster) -> dict[str, float]:
    """Decisions by path and acceptor batch sizes, summed over the members."""
    totals: dict[str, float] = {}
    for url in cluster.urls:
        async with session.get(url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("graven_decisions_total{"):
                    name = line.split('"')[1]
                elif line.startswith("graven_acceptor_rpc_batch_size_"):
                    name = line.split(" ")[0]
                else:
                    continue
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


async def run_load(
    cluster: LocalCluster, preset: str, concurrency: int, seconds: float, route: str, value: str
) -> Result:
    layout = parse(cluster.doc).layout
    n = len(cluster.members)
    urls = cluster.urls
    latencies: list[float] = []
    decided: dict[str, str] = {}
    errors = 0
    tag = f"{preset}-{route}-c{concurrency}-{time.monotonic_ns()}"
    connector = aiohttp.TCPConnector(limit=0)
    smart = SmartClient(urls) if route == "smart" else None
    async with aiohttp.ClientSession(connector=connector) as session:
        if smart is not None:
            await smart.propose(f"{tag}-warm", value)
        before = await scrape(session, cluster)
        cpu_before = cpu_seconds(cluster)
        end = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            for i in range(MAX_OPS_PER_WORKER):
                if time.perf_counter() >= end:
                    return
                key = f"{tag}-{w}-{i}"
                home = layout.home_slot(key_hash(key))
                node = home if route == "home" and home is not None and home < n else (w + i) % n
                started = time.perf_counter()
                if smart is not None:
                    decided[key] = (await smart.propose(key, value)).value
                    latencies.append(time.perf_counter() - started)
                    continue
                async with session.put(
                    f"{urls[node]}/v1/decisions/{key}", json={"value": value}
                ) as resp:
                    body = await resp.json()
                latencies.append(time.perf_counter() - started)
                if resp.status == 200:
                    decided[key] = body["value"]
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(cluster) - cpu_before
        after = await scrape(session, cluster)
        for i, key in enumerate(list(decided)[:SAMPLE]):  # read back through another node
            async with session.get(f"{urls[(i + 1) % n]}/v1/decisions/{key}") as resp:
                body = await resp.json()
            if resp.status != 200 or body["value"] != decided[key]:
                raise SystemExit(f"WRONG ANSWER for {key}: {resp.status} {body}")
    if smart is not None:
        await smart.close()
    delta = {p: after.get(p, 0.0) - before.get(p, 0.0) for p in after}
    total = sum(delta.get(p, 0.0) for p in ("fast", "classic", "recovered"))
    requests = delta.get("graven_acceptor_rpc_batch_size_count", 0.0)
    items = delta.get("graven_acceptor_rpc_batch_size_sum", 0.0)
    one_rt = delta.get("fast", 0.0)
    if smart is not None:  # its fast decisions happen in this process, not on a node
        one_rt += smart.stats["fast"]
        total += smart.stats["fast"]
    lat = sorted(latencies)
    return Result(
        preset,
        route,
        concurrency,
        round(elapsed, 2),
        len(decided),
        errors,
        round(len(decided) / elapsed, 1),
        round(percentile(lat, 0.50) * 1000, 2),
        round(percentile(lat, 0.99) * 1000, 2),
        round(one_rt / total, 3) if total else 0.0,
        round(cpu * 1000 / max(1, len(decided)), 2),
        round(items / requests, 2) if requests else 0.0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="paxos,fast")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--route", choices=("home", "any", "smart"), default="home")
    parser.add_argument("--value-bytes", type=int, default=32)
    args = parser.parse_args()
    value = "v" * args.value_bytes
    results = []
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory(prefix="graven-bench-") as tmp:
            cluster = LocalCluster(Path(tmp), args.members, {"preset": preset}, cluster="bench")
            with cluster:
                for c in (int(x) for x in args.concurrency.split(",")):
                    result = asyncio.run(
                        run_load(cluster, preset, c, args.seconds, args.route, value)
                    )
                    results.append(result)
                    print(json.dumps(asdict(result)), flush=True)
    print()
    print(
        f"{'preset':<10} {'route':<5} {'conc':>4} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu ms/op':>9} {'batch':>6} err"
    )
    for r in results:
        print(
            f"{r.preset:<10} {r.route:<5} {r.concurrency:>4} {r.ops_per_s:>8} "
            f"{r.p50_ms:>8} {r.p99_ms:>8} {r.node_cpu_ms_per_op:>9} "
            f"{r.items_per_acceptor_request:>6} {r.errors}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
