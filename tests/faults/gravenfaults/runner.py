"""One harness run for one preset: cluster up, clients running, nemeses injected, checked.

``Harness`` is what nemeses call back into (the cluster, the random source, the probes behind
the expectations); ``run_preset`` drives a short schedule (every nemesis once, in turn) or a
soak (two lanes, network and process/disk faults, mixed at random until a deadline).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from graven.node.protocol.checker import check as check_layout

from . import checker, disk, nemeses
from .cluster import NetCluster, render_config
from .history import dump_history
from .topology import CLIENT_ADDR, CONTROL_ADDR, Topology
from .workload import Workload

READY_TIMEOUT = 60.0  # generous: the machine may be shared and loaded
PROBE_BUDGET = 3000  # register writes a disk-fault probe may send before giving up
PROBE_SECONDS = 30.0
REFUSE_TIMEOUT = 20.0  # seconds a member with a damaged store has to refuse to start


@dataclass
class Window:
    kind: str
    detail: str
    affected: list[int] | None
    partition: bool
    start: float
    stop: float = 0.0


@dataclass
class Expectation:
    nemesis: str
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Harness:
    preset: str
    cluster: NetCluster
    topo: Topology
    rng: random.Random
    tolerates: int
    control: aiohttp.ClientSession
    expectations: list[Expectation] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    probe_seq: int = 0
    lost_probes: int = 0
    ops_ref: list[Any] = field(default_factory=list)  # the workload's history, for progress lines

    def expect(self, nemesis: str, what: str, ok: bool, detail: str = "") -> bool:
        self.expectations.append(Expectation(nemesis, what, ok, detail))
        if not ok:
            print(f"  EXPECTATION FAILED [{self.preset}] {nemesis}: {what}: {detail}", flush=True)
        return ok

    async def http(
        self, method: str, url: str, body: Any = None, timeout: float = 3.0
    ) -> tuple[int, Any, str]:
        """(status, JSON body or None, text); status 0 when nothing answered."""
        try:
            async with self.control.request(
                method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r:
                text = await r.text()
                try:
                    doc = await r.json(content_type=None)
                except ValueError:
                    doc = None
                return r.status, doc, text
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return 0, None, type(exc).__name__

    async def wait_ready(self, m: Any, why: str, timeout: float = READY_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not m.running:
                return self.expect(
                    why,
                    f"{m.name} comes back",
                    False,
                    f"exited {m.proc.returncode if m.proc else '?'}: "
                    + self.cluster.log_tail(m, 600)[-300:],
                )
            status, _, _ = await self.http("GET", m.url + "/readyz", timeout=1.0)
            if status == 200:
                return True
            await asyncio.sleep(0.1)
        return self.expect(why, f"{m.name} ready within {timeout:g} s", False)

    # -- disk-fault expectations -------------------------------------------------------------

    async def expect_store_failure(self, m: Any, kind: str) -> list[str]:
        """Write probe registers to ``m`` until it refuses one; returns the acknowledged keys.

        Then /readyz, /metrics and the log must all say the store failed."""
        acked: list[str] = []
        refused = ""
        deadline = time.monotonic() + PROBE_SECONDS
        for _ in range(PROBE_BUDGET):
            if time.monotonic() > deadline:
                break
            self.probe_seq += 1
            key = f"probe-{m.name}-{self.probe_seq}"
            body = {"writes": [{"key": key, "rs": 1, "value": f"probe-{self.probe_seq}"}]}
            status, doc, text = await self.http("POST", m.url + "/v1/registers/write", body)
            if status == 200 and doc and doc["replies"][0]["ok"]:
                acked.append(key)
                continue
            refused = f"{status} {text[:200]}"
            break
        self.expect(
            kind,
            f"{m.name} refuses a register write it cannot persist (503)",
            refused.startswith("503") and "store_unavailable" in refused,
            refused or f"{len(acked)} writes acknowledged, none refused",
        )
        status, _, text = await self.http("GET", m.url + "/readyz")
        self.expect(
            kind,
            f"{m.name} /readyz says not ready",
            status == 503 and "register store unavailable" in text,
            f"{status} {text[:200]}",
        )
        status, _, text = await self.http("GET", m.url + "/metrics")
        self.expect(
            kind,
            f"{m.name} /metrics graven_store_failed 1",
            "\ngraven_store_failed 1.0" in text,
            _metric_line(text, "graven_store_failed"),
        )
        log = self.cluster.log_tail(m)
        self.expect(
            kind,
            f"{m.name} logs the failed commit",
            "CRITICAL commit of" in log,
            log.strip().splitlines()[-1] if log.strip() else "(empty log)",
        )
        return acked

    async def expect_probes_durable(self, m: Any, keys: list[str], kind: str) -> int:
        """Every probe write ``m`` acknowledged before its disk failed is still there."""
        lost = 0
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            status, doc, text = await self.http(
                "POST", m.url + "/v1/registers/read", {"rs": 0, "keys": chunk}
            )
            if status != 200 or doc is None:
                self.expect(
                    kind,
                    f"{m.name} answers reads of its probe registers",
                    False,
                    f"{status} {text[:200]}",
                )
                return 0
            lost += sum(1 for r in doc["replies"] if r["values"].get("1") is None)
        self.expect(
            kind,
            f"{m.name} kept all {len(keys)} acknowledged probe writes",
            lost == 0,
            f"{lost} lost",
        )
        self.lost_probes += lost
        return lost

    async def expect_refused_start(self, m: Any, kind: str) -> None:
        deadline = time.monotonic() + REFUSE_TIMEOUT
        while m.running and time.monotonic() < deadline:
            status, _, _ = await self.http("GET", m.url + "/readyz", timeout=0.5)
            if status == 200:
                break  # served a damaged store: fails below
            await asyncio.sleep(0.1)
        code = m.proc.poll() if m.proc else None
        tail = self.cluster.log_tail(m, 2000).strip().splitlines()
        last = tail[-1] if tail else ""
        clear = last.startswith("graven node: error:") and disk.DB_NAME in last
        self.expect(
            kind,
            f"{m.name} refuses to start on a damaged store (exit 2, clear message)",
            code == 2 and clear,
            f"exit {code}: {last}",
        )


def _metric_line(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name):
            return line
    return f"{name} missing"


# -- schedules ---------------------------------------------------------------------------------


async def inject(h: Harness, nem: nemeses.Nemesis, hold: float, faults: Counter[str]) -> None:
    """Start ``nem``, keep it ``hold`` seconds, stop it. A nemesis that breaks (an iptables or
    mount error) is a failed expectation, not the end of the run: the others go on."""
    affected = sorted(nem.affected) if nem.affected is not None else None
    w = Window(nem.kind, "", affected, False, time.monotonic())
    h.windows.append(w)
    faults[nem.kind] += 1
    try:
        await nem.start(h)
        w.partition = nem.partition
        w.affected = sorted(nem.affected) if nem.affected is not None else None
        w.detail = nem.describe()
        stamp = time.strftime("%H:%M:%S")
        print(f"  {stamp} [{h.preset}] {nem.describe()} for {hold:.1f} s", flush=True)
        await asyncio.sleep(hold)
    except Exception as exc:  # reported; the fault is still healed below
        h.expect(nem.kind, "the nemesis starts", False, f"{type(exc).__name__}: {exc}")
    finally:
        w.stop = time.monotonic()
        try:
            await nem.stop(h)
        except Exception as exc:
            h.expect(nem.kind, "the nemesis heals", False, f"{type(exc).__name__}: {exc}")


async def short_schedule(
    h: Harness, kinds: list[str], hold: float, gap: float, faults: Counter[str]
) -> None:
    n = len(h.cluster.members)
    for kind in kinds:
        await inject(h, nemeses.make(kind, n, h.tolerates, h.rng), hold, faults)
        await asyncio.sleep(gap)


async def soak_schedule(h: Harness, seconds: float, faults: Counter[str]) -> None:
    n = len(h.cluster.members)
    deadline = time.monotonic() + seconds
    network_targets: set[int] = set()

    async def lane(kinds: tuple[str, ...], weights: list[float], network: bool) -> None:
        rng = random.Random(h.rng.random())
        while time.monotonic() < deadline - 12:
            kind = rng.choices(kinds, weights)[0]
            avoid = set() if network else set(network_targets)
            nem = nemeses.make(kind, n, h.tolerates, rng, avoid=avoid)
            if network:
                network_targets.clear()
                network_targets.update(nem.affected or set())
            await inject(h, nem, rng.uniform(2.0, 10.0), faults)
            if network:
                network_targets.clear()
            await asyncio.sleep(rng.uniform(0.5, 4.0))

    async def progress() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(60)
            print(
                f"  {time.strftime('%H:%M:%S')} [{h.preset}] {sum(faults.values())} faults so "
                f"far ({len(h.ops_ref)} operations)",
                flush=True,
            )

    net_w = [1.0] * len(nemeses.NETWORK)
    proc_w = [{"restart-all": 0.3}.get(k, 1.0) for k in nemeses.PROCESS]
    ticker = asyncio.create_task(progress())
    try:
        await asyncio.gather(
            lane(nemeses.NETWORK, net_w, True), lane(nemeses.PROCESS, proc_w, False)
        )
    finally:
        ticker.cancel()


# -- figures -----------------------------------------------------------------------------------


def longest_unavailability(
    windows: list[Window], oks: list[float], tolerates: int, partitions_only: bool
) -> tuple[float, str]:
    """Longest stretch with no successful operation while only tolerated faults were active
    (and, with ``partitions_only``, at least one of them a partition)."""
    edges = sorted({t for w in windows for t in (w.start, w.stop)})
    spans: list[tuple[float, float, str]] = []
    for a, b in itertools.pairwise(edges):
        active = [w for w in windows if w.start <= a and w.stop >= b]
        if not active or any(w.affected is None for w in active):
            continue
        if len({i for w in active for i in (w.affected or [])}) > tolerates:
            continue
        if partitions_only and not any(w.partition for w in active):
            continue
        label = "+".join(sorted({w.detail or w.kind for w in active}))
        if spans and abs(spans[-1][1] - a) < 1e-9:
            spans[-1] = (
                spans[-1][0],
                b,
                spans[-1][2] if label in spans[-1][2] else spans[-1][2] + "; " + label,
            )
        else:
            spans.append((a, b, label))
    best, where = 0.0, ""
    oks = sorted(oks)
    for a, b, label in spans:
        lo, hi = bisect.bisect_left(oks, a), bisect.bisect_right(oks, b)
        points = [a, *oks[lo:hi], b]
        gap = max(y - x for x, y in itertools.pairwise(points))
        if gap > best:
            best, where = gap, label
    return best, where


async def run_preset(
    preset: str,
    members: int,
    topo: Topology,
    work: Path,
    shim: Path,
    seed: int,
    mode: str,
    seconds: float,
    kinds: list[str],
    hold: float,
    gap: float,
    concurrency: int,
    clusters: list[NetCluster],
) -> dict[str, Any]:
    cfg = render_config(preset, members, topo)
    tolerates = check_layout(cfg.layout).tolerates
    pwork = work / preset
    pwork.mkdir(parents=True, exist_ok=True)
    cluster = NetCluster(topo, cfg, pwork, shim)
    clusters.append(cluster)
    rng = random.Random(f"{seed}-{preset}")
    faults: Counter[str] = Counter()
    started = time.monotonic()
    control = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(CONTROL_ADDR, 0), limit=0)
    )
    clients = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(CLIENT_ADDR, 0), limit=0)
    )
    try:
        cluster.prepare()
        for m in cluster.members:
            cluster.start(m)
        h = Harness(preset, cluster, topo, rng, tolerates, control)
        for m in cluster.members:
            if not await h.wait_ready(m, why="start"):
                raise RuntimeError(f"{m.name} did not start: {cluster.log_tail(m, 1000)}")
        wl = Workload(
            [m.url for m in cluster.members], [m.name for m in cluster.members], seed, concurrency
        )
        h.ops_ref = wl.ops
        load = asyncio.create_task(wl.run(clients))
        try:
            await asyncio.sleep(1.0)
            if mode == "soak":
                await soak_schedule(h, seconds, faults)
            else:
                await short_schedule(h, kinds, hold, gap, faults)
            await asyncio.sleep(1.0)  # a last stretch without faults
        finally:
            wl.stop()
            await load
        for m in cluster.members:  # every nemesis healed: everyone must be back
            if not m.running:
                h.expect("end", f"{m.name} runs at the end", False, "not running")
            await h.wait_ready(m, why="end")
        await wl.final_reads(clients)
        dump_history(wl.ops, pwork / "history.jsonl")
        result = checker.check(wl.ops)
        oks = [o.complete for o in wl.ops if o.outcome == "ok" and not o.final]
        unav_part, where_part = longest_unavailability(h.windows, oks, tolerates, True)
        unav_any, where_any = longest_unavailability(h.windows, oks, tolerates, False)
        outcomes = Counter(f"{o.kind}:{o.outcome}" for o in wl.ops if not o.final)
        failed = [asdict(e) for e in h.expectations if not e.ok]
        return {
            "preset": preset,
            "members": members,
            "tolerates": tolerates,
            "seconds": round(time.monotonic() - started, 1),
            "operations": sum(outcomes.values()),
            "outcomes": dict(sorted(outcomes.items())),
            "final_reads": sum(1 for o in wl.ops if o.final),
            "keys": result.keys,
            "faults": dict(sorted(faults.items())),
            "violations": len(result.violations),
            "violations_by_kind": result.by_kind(),
            "lost_acknowledged": result.lost_acknowledged + h.lost_probes,
            "unverified": result.unverified,
            "longest_unavailability_tolerated_partition_s": round(unav_part, 2),
            "during": where_part,
            "longest_unavailability_tolerated_fault_s": round(unav_any, 2),
            "during_fault": where_any,
            "expectations": len(h.expectations),
            "expectations_failed": failed,
            "report": checker.report(result),
            "history": str(pwork / "history.jsonl"),
        }
    finally:
        await control.close()
        await clients.close()
        cluster.close()
        clusters.remove(cluster)
