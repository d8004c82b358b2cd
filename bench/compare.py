"""Graven vs etcd on this machine, with one load generator, in one run.

    python bench/compare.py            # full run (~5 min): refreshes docs/benchmarks.md
    python bench/compare.py --quick    # ~1 min smoke: results files only
    python bench/compare.py --scaling  # adds 3/5/7 members and 64 B vs 64 KiB values
    python bench/compare.py --scaling --repeat 3   # what docs/benchmarks.md shows (~30 min)
    python bench/compare.py --render bench/results/<stamp>.json  # redo plots + docs only

Starts a 3-member etcd (Debian package, installed if missing) and, per preset, a 3-member Graven
cluster (`graven up`), drives both with the same workloads, prints a table with Graven/etcd
ratios and writes bench/results/<timestamp>.{json,csv} and PNG plots. Every process started
here is stopped by PID when its rows are done, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gravencluster
import machine
import plots
import report
from etcd import EtcdCluster, EtcdError
from load import RowResult, Workload, run_row
from stats import cdf_points

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DOCS = BENCH.parent / "docs" / "benchmarks.md"
PRESETS = ("paxos", "flexible", "fast")
KIB64 = 64 * 1024


@dataclass(frozen=True)
class Row:
    section: str  # main | scaling
    members: int
    load: Workload

    @property
    def name(self) -> str:
        w = self.load
        text = {
            "unique": f"unique c={w.concurrency}",
            "contention": f"contention c={w.concurrency} ({w.racers} racers/key)",
            "reads": f"reads c={w.concurrency}",
        }[w.mode]
        if self.section == "scaling":
            text += f", {self.members} members"
        if w.value_size != 64:
            size = (
                f"{w.value_size // 1024} KiB" if w.value_size % 1024 == 0 else f"{w.value_size} B"
            )
            text += f", {size} values"
        return text


def plan(quick: bool, scaling: bool, seconds: float | None) -> list[Row]:
    secs = seconds or (2.0 if quick else 10.0)
    base = Workload(seconds=secs, warmup_s=0.5 if quick else 1.0, read_keys=200 if quick else 1000)
    levels = (1, 64) if quick else (1, 16, 64, 256)
    rows = [Row("main", 3, replace(base, mode="unique", concurrency=c)) for c in levels]
    rows.append(Row("main", 3, replace(base, mode="contention", concurrency=16)))
    rows.append(Row("main", 3, replace(base, mode="reads", concurrency=16)))
    if scaling:
        for n in (3, 5, 7):
            rows.append(Row("scaling", n, replace(base, mode="unique", concurrency=64)))
            rows.append(
                Row("scaling", n, replace(base, mode="unique", concurrency=16, value_size=KIB64))
            )
    return rows


def systems(presets: Sequence[str], with_graven: bool) -> list[tuple[str, str]]:
    """(label, preset) pairs; etcd first."""
    out = [("etcd", "")]
    if with_graven:
        out += [(f"graven {p}", p) for p in presets]
    return out


def cluster_for(preset: str, members: int) -> AbstractContextManager[Any]:
    if not preset:
        return EtcdCluster(members=members)
    return gravencluster.GravenCluster(BENCH / "specs" / f"{preset}-{members}.yaml")


def run_system(
    label: str, preset: str, rows: Sequence[Row], missing: list[str]
) -> Iterator[dict[str, Any]]:
    """Run all rows of one system, one cluster per member count."""
    system = "graven" if preset else "etcd"
    for members in sorted({r.members for r in rows}):
        mine = [r for r in rows if r.members == members]
        try:
            with cluster_for(preset, members) as cluster:
                for row in mine:
                    print(f"  {label:<16} {row.name} ...", file=sys.stderr, flush=True)
                    result = asyncio.run(run_row(system, cluster.endpoints, cluster.pids, row.load))
                    yield _record(result, row, label, preset)
        except (RuntimeError, OSError) as exc:  # includes EtcdError and GravenError
            missing.append(f"{label}, {members} members: could not run ({exc})".splitlines()[0])
            print(f"  {label}: {exc}", file=sys.stderr)


def _record(result: RowResult, row: Row, label: str, preset: str) -> dict[str, Any]:
    """The row's summary plus what the report needs: section, labels and CDF points."""
    cdf = [(round(x, 3), round(y, 4)) for x, y in cdf_points(result.latencies_ms)]
    extra = {"section": row.section, "label": label, "preset": preset, "workload": row.name}
    return {**result.summary(), **extra, "cdf": cdf}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    parser.add_argument("--scaling", action="store_true", help="add 3/5/7 members, 64 KiB rows")
    parser.add_argument("--seconds", type=float, help="timed seconds per row (default 10; 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; tables show medians")
    parser.add_argument("--presets", default=",".join(PRESETS), help="Graven presets to run")
    parser.add_argument("--etcd-only", action="store_true", help="skip the Graven half")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refresh docs/benchmarks.md (default: on for full runs, off for --quick)",
    )
    parser.add_argument(
        "--render", type=Path, metavar="RESULT.json", help="only redo plots and docs from a run"
    )
    args = parser.parse_args(argv)
    if args.render:
        return render(args.render)
    # SIGTERM unwinds like Ctrl-C, so every cluster's context manager stops its processes.
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python bench/compare.py", *map(shlex.quote, given)])
    missing: list[str] = []
    with_graven = not args.etcd_only and gravencluster.available()
    if not args.etcd_only and not with_graven:
        missing.append("Graven: the proposer gateway or `graven up` is not in this checkout yet")
    presets = [p for p in args.presets.split(",") if p]
    rows = plan(args.quick, args.scaling, args.seconds)

    info = machine.describe()
    if info["background_cores"] > 0.3:  # type: ignore[operator]
        print(f"warning: {info['background_cores']} cores already busy", file=sys.stderr)
    order = systems(presets, with_graven)
    runs: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        # Alternate the order of systems so slow drift on the box does not favour one.
        for label, preset in order if rep % 2 == 0 else order[::-1]:
            print(f"{label} (repeat {rep + 1}/{args.repeat}):", file=sys.stderr, flush=True)
            runs += [{**r, "repeat": rep} for r in run_system(label, preset, rows, missing)]
    names, labels = [row.name for row in rows], [label for label, _ in order]
    records = report.medians(runs)
    records.sort(key=lambda r: (names.index(r["workload"]), labels.index(r["label"])))
    report.add_ratios(records)
    missing = list(dict.fromkeys(missing))

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = RESULTS / stamp
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "duration_s": time.monotonic() - started,
        "machine": info,
        "repeat": args.repeat,
        "etcd_version": _etcd_version(),
        "missing": missing,
        "json": f"bench/results/{stamp}.json",
        "csv": f"bench/results/{stamp}.csv",
    }
    written = report.write_files(records, runs, meta, stem)
    pngs = _plots(records, stem)
    print(report.text_table(records))
    print("\n" + report.verdict(records))
    for item in missing:
        print(f"not measured: {item}")
    if args.docs if args.docs is not None else not args.quick:
        DOCS.write_text(report.markdown(records, meta, pngs))
        written.append(DOCS)
    print("wrote: " + ", ".join(str(p.relative_to(BENCH.parent)) for p in [*written, *pngs]))
    bad = any(r["errors"] or r["disagreements"] or r["won_anomalies"] for r in runs)
    return 1 if bad or not records else 0


def render(path: Path) -> int:
    """Rebuild the plots and docs/benchmarks.md from a stored result (no measuring)."""
    data = json.loads(path.read_text())
    stem = path.resolve().with_suffix("")
    pngs = _plots(data["rows"], stem)
    DOCS.write_text(report.markdown(data["rows"], data["meta"], pngs))
    print("wrote: " + ", ".join(str(p.relative_to(BENCH.parent)) for p in [DOCS, *pngs]))
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _etcd_version() -> str:
    from etcd import ensure_etcd, etcd_version

    try:
        return etcd_version(ensure_etcd())
    except (EtcdError, OSError):
        return "etcd (not available)"


def _plots(records: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    main_rows = [r for r in records if r["section"] == "main"]
    if not main_rows or not plots.ensure_matplotlib():
        print("plots skipped: matplotlib not available", file=sys.stderr)
        return []
    throughput = stem.with_name(stem.name + "-throughput.png")
    cdf = stem.with_name(stem.name + "-latency-cdf.png")
    plots.throughput_plot(main_rows, throughput)
    plots.latency_cdf_plot(main_rows, cdf)
    return [throughput, cdf]


if __name__ == "__main__":
    sys.exit(main())
