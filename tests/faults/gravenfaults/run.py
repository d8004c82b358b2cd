"""Command line of the fault harness (needs root, ``ip``, ``iptables``, ``nsenter``, ``cc``).

    PYTHONPATH=tests/faults .venv/bin/python -m gravenfaults.run --mode short --preset paxos
    PYTHONPATH=tests/faults .venv/bin/python -m gravenfaults.run --mode soak --seconds 3600 \\
        --preset paxos --preset flexible --preset fast --preset colocated --preset fixed-majority

Prints the seed, one line per fault injected, and per preset the figures (operations, faults by
kind, violations with the operations around them, lost acknowledged, longest unavailability
during a tolerated partition); ``--json FILE`` writes them as JSON. Exit status 1 when any
violation, lost acknowledgement or failed expectation was found. Everything it creates
(namespaces, iptables rules inside them, tmpfs mounts, processes) is removed on exit, also on
failure, and a run starts by removing what a crashed earlier run left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import disk, nemeses, topology
from .cluster import NetCluster
from .runner import run_preset

PRESETS = ("paxos", "flexible", "fast", "colocated", "fixed-majority")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gravenfaults.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", choices=PRESETS, help="repeatable; default: all")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--mode", choices=("short", "soak"), default="short")
    p.add_argument(
        "--seconds", type=float, default=60.0, help="soak: total seconds over all presets"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--nemesis",
        action="append",
        choices=nemeses.ALL,
        help="short: repeatable; default: every network and process nemesis, one disk fault "
        "and one store damage (rotating over the presets)",
    )
    p.add_argument("--hold", type=float, default=1.5, help="short: seconds each fault lasts")
    p.add_argument("--gap", type=float, default=0.5, help="short: seconds between faults")
    p.add_argument("--concurrency", type=int, default=None, help="clients (default 2 per member)")
    p.add_argument("--work", type=Path, default=None, help="logs, histories (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


class Cleanup:
    """Idempotent teardown, run from ``finally``, ``atexit`` and the signal handlers."""

    def __init__(self, topo: topology.Topology, clusters: list[NetCluster]) -> None:
        self.topo, self.clusters = topo, clusters
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        for c in list(self.clusters):
            c.close()
        self.topo.destroy()


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("gravenfaults: needs root (network namespaces, iptables, mounts)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    presets = args.preset or list(PRESETS)
    work = args.work or Path(tempfile.mkdtemp(prefix="graven-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"gravenfaults: seed {seed} mode {args.mode} presets {','.join(presets)} work {work}",
        flush=True,
    )
    swept = topology.sweep_stale() + disk.sweep_stale_mounts()
    if swept:
        print(f"gravenfaults: removed leftovers of dead runs: {', '.join(swept)}", flush=True)
    shim = disk.build_shim(work / "shim")
    topo = topology.Topology(members=args.members)
    clusters: list[NetCluster] = []
    cleanup = Cleanup(topo, clusters)
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _raise_exit)
    reports: list[dict[str, Any]] = []
    try:
        topo.create()
        topology.enter_netns(topo.client)  # this process is the clients' (and probes') host
        per = args.seconds / len(presets)
        for preset in presets:
            print(f"gravenfaults: preset {preset} ({args.members} members)", flush=True)
            kinds = args.nemesis or nemeses.short_kinds(PRESETS.index(preset))
            rep = asyncio.run(
                run_preset(
                    preset,
                    args.members,
                    topo,
                    work,
                    shim,
                    seed,
                    args.mode,
                    per,
                    kinds,
                    args.hold,
                    args.gap,
                    args.concurrency or 2 * args.members,
                    clusters,
                )
            )
            reports.append(rep)
            print(summary(rep), flush=True)
    finally:
        cleanup()
    bad = sum(
        r["violations"] + r["lost_acknowledged"] + len(r["expectations_failed"]) for r in reports
    )
    doc = {
        "seed": seed,
        "mode": args.mode,
        "members": args.members,
        "work": str(work),
        "command": " ".join(sys.argv),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "presets": reports,
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(reports), flush=True)
    print(
        f"gravenfaults: seed {seed}: {'FAILED' if bad else 'passed'} ({len(reports)} preset(s))",
        flush=True,
    )
    return 1 if bad else 0


def table(reports: list[dict[str, Any]]) -> str:
    """One row per preset: the figures a soak is judged by."""
    head = ("preset", "seconds", "ops", "ok", "faults", "violations", "lost acked",
            "unverified", "max unavail (partition)", "failed expectations")  # fmt: skip
    rows = [
        (
            r["preset"],
            f"{r['seconds']:.0f}",
            str(r["operations"]),
            str(sum(v for k, v in r["outcomes"].items() if k.endswith(":ok"))),
            str(sum(r["faults"].values())),
            str(r["violations"]),
            str(r["lost_acknowledged"]),
            str(r["unverified"]),
            f"{r['longest_unavailability_tolerated_partition_s']} s",
            str(len(r["expectations_failed"])),
        )
        for r in reports
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


def summary(r: dict[str, Any]) -> str:
    faults = ", ".join(f"{k} {v}" for k, v in r["faults"].items())
    lines = [
        f"== {r['preset']}: {r['operations']} operations in {r['seconds']} s ({r['outcomes']}), "
        f"{r['keys']} keys, {r['final_reads']} final reads",
        f"   faults: {sum(r['faults'].values())} ({faults})",
        f"   violations {r['violations']} {r['violations_by_kind'] or ''}, lost acknowledged "
        f"{r['lost_acknowledged']}, unverified {r['unverified']}",
        "   longest unavailability: "
        f"{r['longest_unavailability_tolerated_partition_s']} s during a tolerated partition "
        f"({r['during']}); {r['longest_unavailability_tolerated_fault_s']} s during any "
        f"tolerated fault ({r['during_fault']})",
        f"   expectations: {r['expectations']} checked, {len(r['expectations_failed'])} failed",
    ]
    lines += [
        f"   FAILED {e['nemesis']}: {e['what']}: {e['detail']}" for e in r["expectations_failed"]
    ]
    if r["violations"]:
        lines.append(r["report"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
