"""Register writes per second through HTTP against one real `graven node`, durability on.

    .venv/bin/python bench/registers.py [--seconds 5] [--concurrency 1,64] [--value-bytes 100]

Each request writes one fresh register (a new key, so nothing is refused). Reported per client
concurrency: writes/s, latency p50/p99, mean group-commit batch size (from the node's /metrics)
and the node's CPU seconds per write (utime + stime from /proc/PID/stat). The client runs on the
same machine and competes for the same cores; numbers are for comparison on one box only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

CONFIG = """\
apiVersion: graven.dev/v1alpha1
kind: ClusterConfig
cluster: bench
members:
  - name: bench-0
    url: http://127.0.0.1:7101
"""
LISTENING = re.compile(r"graven node bench-0 listening on (http://\S+)")
MAX_WRITES_PER_WORKER = 1_000_000  # bound; the time limit normally ends a run


@dataclass
class Result:
    concurrency: int
    seconds: float
    writes: int
    writes_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    commits: int
    server_cpu_ms_per_write: float


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat, in clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def batch_totals(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    return float(values["graven_commit_batch_size_sum"]), float(
        values["graven_commit_batch_size_count"]
    )


async def run_level(url: str, pid: int, concurrency: int, seconds: float, value: str) -> Result:
    connector = aiohttp.TCPConnector(limit=concurrency)  # keep-alive pool, one per worker
    async with aiohttp.ClientSession(connector=connector) as session:
        latencies: list[float] = []
        deadline = 0.0

        async def worker(wid: int) -> None:
            for n in range(MAX_WRITES_PER_WORKER):
                if time.perf_counter() >= deadline:
                    return
                body = {"writes": [{"key": f"c{concurrency}-w{wid}-{n}", "rs": 0, "value": value}]}
                started = time.perf_counter()
                async with session.post(f"{url}/v1/registers/write", json=body) as resp:
                    reply = await resp.json()
                if resp.status != 200 or not reply["replies"][0]["ok"]:
                    raise RuntimeError(f"write failed: {resp.status} {reply}")
                latencies.append(time.perf_counter() - started)

        deadline = time.perf_counter() + min(1.0, seconds / 5)  # warm-up: connections, caches
        await asyncio.gather(*(worker(-1 - i) for i in range(concurrency)))
        latencies.clear()

        sum0, count0 = await batch_totals(session, url)
        cpu0 = cpu_seconds(pid)
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu0
        sum1, count1 = await batch_totals(session, url)

    latencies.sort()
    writes = len(latencies)
    commits = int(count1 - count0)
    return Result(
        concurrency=concurrency,
        seconds=round(elapsed, 2),
        writes=writes,
        writes_per_s=round(writes / elapsed, 1),
        p50_ms=round(latencies[writes // 2] * 1000, 2),
        p99_ms=round(latencies[min(writes - 1, int(writes * 0.99))] * 1000, 2),
        mean_batch=round((sum1 - sum0) / commits, 2) if commits else 0.0,
        commits=commits,
        server_cpu_ms_per_write=round(cpu / writes * 1000, 3),
    )


async def start_node(workdir: Path) -> tuple[asyncio.subprocess.Process, str]:
    config = workdir / "cluster.yaml"
    config.write_text(CONFIG)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "graven.node.cli", "node", "--id", "bench-0"),
        *("--listen", "127.0.0.1:0", "--data-dir", str(workdir / "data")),
        *("--config", str(config)),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
    match = LISTENING.fullmatch(line)
    if match is None:
        proc.kill()
        raise SystemExit(f"node did not start: {line!r}")
    return proc, match.group(1)


async def main(args: argparse.Namespace) -> list[Result]:
    value = "v" * args.value_bytes
    with tempfile.TemporaryDirectory(prefix="graven-bench-") as tmp:
        proc, url = await start_node(Path(tmp))
        try:
            return [
                await run_level(url, proc.pid, c, args.seconds, value) for c in args.concurrency
            ]
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per level")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 64],
        help="comma-separated client concurrency levels",
    )
    parser.add_argument("--value-bytes", type=int, default=100)
    return parser.parse_args(argv)


def report(results: list[Result]) -> None:
    print(
        f"{'conc':>6} {'writes/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'batch':>7} "
        f"{'commits':>8} {'cpu ms/write':>13}"
    )
    for r in results:
        print(
            f"{r.concurrency:6d} {r.writes_per_s:10.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
            f"{r.mean_batch:7.2f} {r.commits:8d} {r.server_cpu_ms_per_write:13.3f}"
        )
    print(json.dumps({"bench": "registers", "results": [asdict(r) for r in results]}))


if __name__ == "__main__":
    report(asyncio.run(main(parse_args())))
