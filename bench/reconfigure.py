"""Throughput and latency while a live reconfiguration runs, against steady state before and after.

    python bench/reconfigure.py [--from paxos:3] [--to fast:5] [--keys 2000] [--concurrency 16]
                                [--settle 10] [--json FILE]

What it does, with the real `graven up` (plain http, like the other rows of `make bench`):
1. `graven up` the `--from` cluster in a fresh data dir, store `--keys` decisions (they are what
   the transition carries over), then measure `--settle` seconds of steady load: *before*.
2. Stop it, and run `graven up` again on the same data dir with the `--to` spec: the cluster
   comes back as it was and moves to the new members and layout live (publish, fence, carry,
   retire). The load runs from the moment the members are ready until `--settle` seconds after
   the transition is done: *during* is every request started while the transition's record says
   it is not done, *after* is the rest.
The load: `--concurrency` closed-loop workers proposing fresh keys through one
`graven.node.client.AsyncClient` given the members that stay, which fails over between them as
users' clients do (members install each new configuration live: a member holds requests for
the moment its proposer changes over); a request that still fails counts as an error and the
worker goes on.
Prints a row per phase (ops/s, p50, p99, max, errors), the transition's duration and keys
carried, per-step durations and the longest gap without any acknowledged decision.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from ports import free_block

from graven.node.client import AsyncClient
from graven.node.client.core import ClientError
from graven.node.client.loadgen import percentile

CLUSTER = "bench-reconfigure"
STATE_FILE = "reconfiguration.json"
DISCOVERY_FILE = "discovery.json"
START_TIMEOUT_S = 120.0
TRANSITION_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 10.0
POLL_S = 0.1  # how often the transition's record is read


@dataclass
class Sample:
    started: float
    latency_ms: float
    ok: bool


@dataclass
class Trace:
    samples: list[Sample] = field(default_factory=list)
    steps: list[tuple[float, str]] = field(default_factory=list)  # (when, step) as first seen


def spec(shape: str) -> dict[str, Any]:
    """``preset:members`` -> a ConsensusCluster manifest (one cluster name for both)."""
    preset, _, members = shape.partition(":")
    return {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ConsensusCluster",
        "metadata": {"name": CLUSTER},
        "spec": {"replicas": int(members or 3), "quorums": {"preset": preset}},
    }


class Up:
    """One `graven up` process with its output in a file."""

    def __init__(self, data_dir: Path, spec_path: Path, base_port: int) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{spec_path.stem}.log"
        argv = [
            str(Path(sys.executable).with_name("graven")), "up", str(spec_path),
            "--data-dir", str(data_dir), "--base-port", str(base_port), "--no-tls",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def members(self) -> list[str]:
        """The member URLs once `graven up` says they are ready."""
        deadline = time.monotonic() + START_TIMEOUT_S
        path = self.data_dir / DISCOVERY_FILE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"graven up exited: see {self.log}")
            if path.exists():
                return [m["url"] for m in json.loads(path.read_text())["members"]]
            time.sleep(POLL_S)
        raise SystemExit(f"graven up not ready in {START_TIMEOUT_S:g} s: see {self.log}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _store(urls: list[str], keys: int) -> None:
    async with aiohttp.ClientSession() as session:
        for start in range(0, keys, 500):
            chunk = range(start, min(keys, start + 500))
            body = {"decisions": [{"key": f"pre-{i}", "value": "v"} for i in chunk]}
            async with session.post(f"{urls[0]}/v1/decisions:batch", json=body) as r:
                if r.status != 200:
                    raise SystemExit(f"storing keys failed: HTTP {r.status} {await r.text()}")


async def _load(urls: list[str], concurrency: int, stop: asyncio.Event, trace: Trace) -> None:
    """Closed-loop proposals of fresh keys through Graven's async client, which fails over
    between members as a user's client does; a request that still fails counts as an error."""
    counter = iter(range(10**9))

    async def worker(client: AsyncClient) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                await client.propose(f"load-{next(counter)}", "x")
                ok = True
            except ClientError:
                ok = False
            trace.samples.append(Sample(t0, (time.monotonic() - t0) * 1000, ok))

    async with AsyncClient(urls, timeout=REQUEST_TIMEOUT_S) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def _step(data_dir: Path) -> str | None:
    try:
        return json.loads((data_dir / STATE_FILE).read_text())["record"]["step"]
    except (OSError, ValueError, KeyError):
        return None


async def _watch(up: Up, settle: float, stop: asyncio.Event, trace: Trace) -> None:
    """Record each step of the transition as it is first seen; stop the load ``settle``
    seconds after it is done."""
    deadline = time.monotonic() + TRANSITION_TIMEOUT_S
    while time.monotonic() < deadline:
        step = _step(up.data_dir)
        if step is not None and (not trace.steps or trace.steps[-1][1] != step):
            trace.steps.append((time.monotonic(), step))
        if step == "done" or "reconfiguration stopped" in up.output():
            break
        await asyncio.sleep(POLL_S)
    await asyncio.sleep(settle)
    stop.set()


def row(name: str, samples: list[Sample]) -> dict[str, Any]:
    if not samples:
        return {"phase": name, "ops": 0}
    seconds = max(s.started + s.latency_ms / 1000 for s in samples) - samples[0].started
    ok = sorted(s.latency_ms for s in samples if s.ok)
    return {
        "phase": name,
        "seconds": round(seconds, 2),
        "ops": len(ok),
        "ops_per_s": round(len(ok) / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(ok, 50), 2),
        "p99_ms": round(percentile(ok, 99), 2),
        "max_ms": round(ok[-1], 2) if ok else 0.0,
        "errors": sum(1 for s in samples if not s.ok),
    }


def longest_gap(samples: list[Sample], start: float, end: float) -> float:
    """The longest time in [start, end] without any acknowledged decision (seconds)."""
    done = sorted(s.started + s.latency_ms / 1000 for s in samples if s.ok)
    edges = [start, *[t for t in done if start <= t <= end], end]
    return max((b - a for a, b in itertools.pairwise(edges)), default=0.0)


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    data_dir = root / "data"
    specs = {}
    for name, shape in (("from", args.from_), ("to", args.to)):
        specs[name] = root / f"{name}.yaml"
        specs[name].write_text(yaml.safe_dump(spec(shape)))
    members = max(spec(s)["spec"]["replicas"] for s in (args.from_, args.to))
    base = free_block(7900, members, 100)

    before = Trace()
    up = Up(data_dir, specs["from"], base)
    try:
        urls = up.members()
        asyncio.run(_store(urls, args.keys))

        async def steady() -> None:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(args.settle, stop.set)
            await _load(urls, args.concurrency, stop, before)

        asyncio.run(steady())
    finally:
        up.stop()

    live = Trace()
    up = Up(data_dir, specs["to"], base)
    try:
        old = up.members()
        new = spec(args.to)["spec"]["replicas"]
        staying = old[: min(len(old), new)]  # member names are ordinal: the first ones stay

        async def transition() -> None:
            stop = asyncio.Event()
            await asyncio.gather(
                _load(staying, args.concurrency, stop, live), _watch(up, args.settle, stop, live)
            )

        asyncio.run(transition())
        output = up.output()
    finally:
        up.stop()
    if _step(data_dir) != "done":
        raise SystemExit(f"the transition did not finish: see {up.log}")

    started, finished = live.steps[0][0], live.steps[-1][0]
    during = [s for s in live.samples if s.started < finished]
    after = [s for s in live.samples if s.started >= finished]
    record = json.loads((data_dir / STATE_FILE).read_text())["record"]
    steps = [
        {"step": step, "seconds": round(b - a, 2)}
        for (a, step), (b, _) in zip(live.steps, live.steps[1:], strict=False)
    ]
    return {
        "from": args.from_,
        "to": args.to,
        "stored_keys": args.keys,
        "concurrency": args.concurrency,
        "rows": [row("before", before.samples), row("during", during), row("after", after)],
        "transition_s": round(finished - started, 2),
        "steps": steps,
        "keys_carried": record["carried"],
        "longest_gap_s": round(longest_gap(live.samples, started, finished), 2),
        "reconfigured": "reconfigured to" in output,
        "load_avg": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="from_", default="paxos:3", help="preset:members")
    parser.add_argument("--to", default="fast:5", help="preset:members")
    parser.add_argument("--keys", type=int, default=2000, help="decisions stored before")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--settle", type=float, default=10.0, help="steady seconds")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="graven-bench-reconfigure-"))
    try:
        result = measure(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.from_} -> {args.to}, {args.keys} stored keys, c={args.concurrency}")
    heads = ("seconds", "ops/s", "p50 ms", "p99 ms", "max ms")
    print(f"{'phase':8} " + " ".join(f"{h:>8}" for h in heads) + " errors")
    for r in result["rows"]:
        print(
            f"{r['phase']:8} {r.get('seconds', 0):>8} {r.get('ops_per_s', 0):>8} "
            f"{r.get('p50_ms', 0):>8} {r.get('p99_ms', 0):>8} {r.get('max_ms', 0):>8} "
            f"{r.get('errors', 0)}"
        )
    steps = ", ".join(f"{s['step']} {s['seconds']} s" for s in result["steps"])
    print(
        f"transition {result['transition_s']} s ({steps}); {result['keys_carried']} keys "
        f"carried; longest gap without an acknowledged decision {result['longest_gap_s']} s; "
        f"load average {result['load_avg']:.1f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
