"""Graven vs etcd on this machine, with one load generator, in one run.

    python bench/compare.py            # full run (~7 min): refreshes docs/benchmarks.md
    python bench/compare.py --quick    # ~2 min smoke: results files only
    python bench/compare.py --scaling  # adds the scaling rows (see below)
    python bench/compare.py --scaling --repeat 3   # what docs/benchmarks.md shows (~50 min)
    python bench/compare.py --render bench/results/<stamp>.json  # redo plots + docs only
    python bench/compare.py --quick --seconds 1 --presets fast,fast-smart --no-docs  # smoke

Starts a 3-member etcd (Debian package, installed if missing) and, per preset, a 3-member Graven
cluster (`graven up`), drives both with the same workloads, prints a table with Graven/etcd
ratios and writes bench/results/<timestamp>.{json,csv} and PNG plots. Every process started
here is stopped by PID when its rows are done, also on error or Ctrl-C.

--presets picks the Graven systems, comma-separated (default: all of them):
  paxos, flexible, fast           through the proposer gateway (PUT /v1/decisions/{key}), each
                                  key sent to its home member;
  paxos-smart, fast-smart, ...    `<preset>-smart`: through graven.node.client.smart.SmartClient,
                                  one per row, in the load generator's process. On `fast` it
                                  writes every acceptor's first register set itself (one round
                                  trip); otherwise, and on conflict, it uses the gateway. Its
                                  proposer CPU is client CPU here. Rows show the share of
                                  decisions taken on the in-process fast path (*fast path*).
Smart systems run the main rows only.

--scaling adds, on the gateway systems and etcd:
  3/5/7 members at unique c=64, and 64 KiB values at c=16;
  flexible q1=4, q2=2 vs majority on 5 members: the 5-member unique c=64 row of `flexible`
    (bench/specs/flexible-5.yaml) next to `paxos` (needs both presets);
  stored keys: unique c=1 and c=16 on 3 members whose stores already hold --stored-keys keys
    (default 1,000,000) vs the same cluster empty, for etcd and Graven paxos. Graven's stores
    are bulk-loaded into SQLite before the members start, etcd's through its JSON gateway
    (128 puts per txn); the preload is timed apart from the rows and a sample of the keys is
    read back from every member before measuring (bench/preload.py);
  memory per stored key: a fresh 3-member cluster (etcd, Graven paxos) gets --memory-keys keys
    (default 100,000) through the API at c=64; VmRSS of every member just before and after
    gives (after - before) / keys per member.
Use small counts for smoke runs: --stored-keys 20000 --memory-keys 2000. 0 skips those rows.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
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
import preload
import report
from etcd import EtcdCluster, EtcdError
from load import RowResult, Workload, run_loop, run_row
from stats import cdf_points

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
KEPT_MARKER = "<!-- sections below are written by hand from other benchmarks: kept on refresh -->"
DOCS = BENCH.parent / "docs" / "benchmarks.md"
# The plots docs/benchmarks.md shows: the only results kept in git (bench/results/ is ignored).
DOCS_PLOTS = DOCS.with_suffix("")
PRESETS = ("paxos", "flexible", "fast")
DEFAULT_SYSTEMS = (*PRESETS, "paxos-smart", "fast-smart")
SMART = "-smart"
KIB64 = 64 * 1024
STORED_KEYS = 1_000_000
MEMORY_KEYS = 100_000
MEMORY_CONCURRENCY = 64
MEMORY_MIN_RATE = 100  # creates/s: the memory row's time cap is its key count at this rate
MAJORITY_ONLY = frozenset({"etcd", "paxos"})  # stored-keys and memory rows


@dataclass(frozen=True)
class System:
    key: str  # etcd | <preset> | <preset>-smart
    preset: str  # "" for etcd

    @property
    def smart(self) -> bool:
        return self.key.endswith(SMART)

    @property
    def label(self) -> str:
        if not self.preset:
            return "etcd"
        return f"graven {self.preset}" + (" (smart)" if self.smart else "")

    @property
    def adapter(self) -> str:
        """The load generator's adapter (bench/adapters.py)."""
        if not self.preset:
            return "etcd"
        return "graven-smart" if self.smart else "graven"


@dataclass(frozen=True)
class Row:
    section: str  # main | scaling
    members: int
    load: Workload
    stored: int = 0  # keys in every member's store before the cluster's first row
    group: str = ""  # rows share one cluster per (members, stored, group)

    @property
    def cluster(self) -> tuple[int, int, str]:
        return (self.members, self.stored, self.group)

    def runs_on(self, system: System) -> bool:
        """Main rows run on every system; smart systems run only those; the stored-keys and
        memory rows only on etcd and the majority (paxos) Graven layout."""
        if self.section == "main":
            return True
        if system.smart:
            return False
        return not self.group or system.key in MAJORITY_ONLY

    @property
    def name(self) -> str:
        w = self.load
        text = {
            "unique": f"unique c={w.concurrency}",
            "contention": f"contention c={w.concurrency} ({w.racers} racers/key)",
            "reads": f"reads c={w.concurrency}",
        }[w.mode]
        if w.count:
            text = f"write {w.count} keys, c={w.concurrency}"
        if self.section == "scaling":
            text += f", {self.members} members"
        if self.group == "stored":
            text += f", {self.stored} stored keys" if self.stored else ", empty store"
        if w.value_size != 64:
            size = (
                f"{w.value_size // 1024} KiB" if w.value_size % 1024 == 0 else f"{w.value_size} B"
            )
            text += f", {size} values"
        return text


def plan(
    quick: bool,
    scaling: bool,
    seconds: float | None,
    stored_keys: int = STORED_KEYS,
    memory_keys: int = MEMORY_KEYS,
) -> list[Row]:
    secs = seconds or (2.0 if quick else 10.0)
    base = Workload(seconds=secs, warmup=0.5 if quick else 1.0, read_keys=200 if quick else 1000)
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
        if stored_keys > 0:
            for stored in (0, stored_keys):
                for c in (1, 16):
                    load = replace(base, mode="unique", concurrency=c)
                    rows.append(Row("scaling", 3, load, stored=stored, group="stored"))
        if memory_keys > 0:
            load = replace(
                base,
                mode="unique",
                concurrency=MEMORY_CONCURRENCY,
                count=memory_keys,
                seconds=max(30.0, memory_keys / MEMORY_MIN_RATE),
            )
            rows.append(Row("scaling", 3, load, group="memory"))
    return rows


def parse_systems(text: str) -> list[str]:
    """The --presets list, checked: presets and <preset>-smart."""
    keys = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    known = [*PRESETS, *(p + SMART for p in PRESETS)]
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return keys


def systems(presets: Sequence[str], with_graven: bool) -> list[System]:
    """etcd first, then the Graven systems in the order given."""
    out = [System("etcd", "")]
    if with_graven:
        out += [System(k, k.removesuffix(SMART)) for k in presets]
    return out


def spec_path(preset: str, members: int) -> Path:
    return BENCH / "specs" / f"{preset}-{members}.yaml"


def cluster_for(
    system: System, members: int, stored: int, timing: dict[str, float]
) -> AbstractContextManager[Any]:
    """A fresh cluster; with `stored`, Graven's stores are filled before the members start
    (etcd's are filled by the caller once it runs). The preload's seconds go to `timing`."""
    if not system.preset:
        return EtcdCluster(members=members)
    spec = spec_path(system.preset, members)
    if not stored:
        return gravencluster.GravenCluster(spec)

    def fill(data_dir: Path) -> None:
        started = time.monotonic()
        preload.graven_stores(data_dir, spec, stored)
        timing["seconds"] = time.monotonic() - started

    # a node opening a big store checks it and indexes its keys before it is ready
    ready = gravencluster.READY_TIMEOUT_S + stored / 10_000
    return gravencluster.GravenCluster(spec, prepare=fill, ready_timeout=ready)


def run_system(
    system: System,
    rows: Sequence[Row],
    missing: list[str],
    preloads: list[dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run all rows of one system, one cluster per (member count, stored keys, group)."""
    label = system.label
    mine = [r for r in rows if r.runs_on(system)]
    for members, stored, group in sorted({r.cluster for r in mine}):
        batch = [r for r in mine if r.cluster == (members, stored, group)]
        timing: dict[str, float] = {}
        try:
            with cluster_for(system, members, stored, timing) as cluster:
                if stored:
                    _preload(system, cluster.endpoints, stored, timing)
                    if preloads is not None:
                        preloads.append(_preload_note(system, members, stored, timing))
                for row in batch:
                    print(f"  {label:<20} {row.name} ...", file=sys.stderr, flush=True)
                    result = run_loop(
                        run_row(system.adapter, cluster.endpoints, cluster.pids, row.load)
                    )
                    yield _record(result, row, system)
        except (RuntimeError, OSError) as exc:  # includes EtcdError, GravenError, not ready
            what = f"{members} members" + (f", {stored} stored keys" if stored else "")
            missing.append(f"{label}, {what}: could not run ({exc})".splitlines()[0])
            print(f"  {label}: {exc}", file=sys.stderr)


def _preload(system: System, endpoints: Sequence[str], stored: int, timing: dict) -> None:
    """etcd: fill the running cluster (timed); both: read a sample back from every member."""
    if not system.preset:
        print(f"  {system.label:<20} preloading {stored} keys ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        run_loop(preload.etcd_keys(endpoints, stored))
        timing["seconds"] = time.monotonic() - started
    run_loop(preload.verify(system.adapter, endpoints, stored))


def _preload_note(system: System, members: int, stored: int, timing: dict) -> dict[str, Any]:
    how = (
        f"JSON gateway, {preload.ETCD_TXN_OPS} puts per txn"
        if not system.preset
        else f"SQLite bulk insert into {members} stores before start"
    )
    seconds = round(timing.get("seconds", 0.0), 1)
    return {"label": system.label, "members": members, "keys": stored, "seconds": seconds,
            "how": how}  # fmt: skip


def _quorums(system: System, members: int) -> str:
    """The layout block of the system's spec, as one short text (etcd: "raft majority")."""
    if not system.preset:
        return "raft majority"
    import yaml

    try:
        block = yaml.safe_load(spec_path(system.preset, members).read_text())["spec"]["quorums"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return system.preset
    return ", ".join(f"{k}={v}" for k, v in block.items())


def _record(result: RowResult, row: Row, system: System) -> dict[str, Any]:
    """The row's summary plus what the report needs: section, labels and CDF points."""
    cdf = [(round(x, 3), round(y, 4)) for x, y in cdf_points(result.latencies_ms)]
    extra = {
        "section": row.section,
        "label": system.label,
        "preset": system.preset,
        "system_key": system.key,
        "smart": system.smart,
        "quorums": _quorums(system, row.members),
        "workload": row.name,
        "stored_keys": row.stored,
        "group": row.group,
        "count": row.load.count,
    }
    return {**result.summary(), **extra, "cdf": cdf}


def _scaling_gaps(order: Sequence[System], rows: Sequence[Row]) -> list[str]:
    """What the scaling extras cannot show with the systems picked by --presets."""
    keys = {s.key for s in order}
    notes = []
    if any(r.section == "scaling" for r in rows) and not {"paxos", "flexible"} <= keys:
        notes.append("flexible q2=2 vs majority on 5 members: needs --presets paxos and flexible")
    if any(r.group for r in rows) and "paxos" not in keys:
        notes.append("stored-keys and memory rows for Graven: need --presets paxos")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    parser.add_argument("--scaling", action="store_true", help="add 3/5/7 members, 64 KiB rows")
    parser.add_argument("--seconds", type=float, help="timed seconds per row (default 10; 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; tables show medians")
    parser.add_argument(
        "--presets",
        type=parse_systems,
        default=",".join(DEFAULT_SYSTEMS),
        help="Graven systems to run, comma-separated: presets (gateway) and <preset>-smart "
        f"(SmartClient); default {','.join(DEFAULT_SYSTEMS)}",
    )
    parser.add_argument(
        "--stored-keys",
        type=int,
        default=STORED_KEYS,
        metavar="N",
        help=f"--scaling: keys preloaded for the stored-keys rows (default {STORED_KEYS}; 0: skip)",
    )
    parser.add_argument(
        "--memory-keys",
        type=int,
        default=MEMORY_KEYS,
        metavar="K",
        help=f"--scaling: keys written for the memory-per-key row (default {MEMORY_KEYS}; 0: skip)",
    )
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
    with_graven = not args.etcd_only
    presets = args.presets
    if args.stored_keys < 0 or args.memory_keys < 0:
        parser.error("--stored-keys and --memory-keys must be >= 0")
    rows = plan(args.quick, args.scaling, args.seconds, args.stored_keys, args.memory_keys)

    info = machine.describe()
    if info["background_cores"] > 0.3:  # type: ignore[operator]
        print(f"warning: {info['background_cores']} cores already busy", file=sys.stderr)
    order = systems(presets, with_graven)
    if with_graven:
        missing += _scaling_gaps(order, rows)
    runs: list[dict[str, Any]] = []
    preloads: list[dict[str, Any]] = []
    for rep in range(args.repeat):
        # Alternate the order of systems so slow drift on the box does not favour one.
        for system in order if rep % 2 == 0 else order[::-1]:
            print(f"{system.label} (repeat {rep + 1}/{args.repeat}):", file=sys.stderr, flush=True)
            done = run_system(system, rows, missing, preloads)
            runs += [{**r, "repeat": rep} for r in done]
    names, labels = [row.name for row in rows], [system.label for system in order]
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
        "preloads": preloads,
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
        written += _write_docs(records, meta, pngs)
    print("wrote: " + ", ".join(str(p.relative_to(BENCH.parent)) for p in [*written, *pngs]))
    bad = any(r["errors"] or r["disagreements"] or r["won_anomalies"] for r in runs)
    return 1 if bad or not records else 0


def render(path: Path) -> int:
    """Rebuild the plots and docs/benchmarks.md from a stored result (no measuring)."""
    data = json.loads(path.read_text())
    stem = path.resolve().with_suffix("")
    pngs = _plots(data["rows"], stem)
    written = _write_docs(data["rows"], data["meta"], pngs)
    print("wrote: " + ", ".join(str(p.relative_to(BENCH.parent)) for p in [*written, *pngs]))
    return 0


def _write_docs(
    records: list[dict[str, Any]], meta: dict[str, Any], pngs: list[Path]
) -> list[Path]:
    """docs/benchmarks.md and a copy of the plots it shows (replacing the previous ones)."""
    DOCS_PLOTS.mkdir(exist_ok=True)
    for old in DOCS_PLOTS.glob("*.png"):
        old.unlink()
    shown = [Path(shutil.copy2(p, DOCS_PLOTS / p.name)) for p in pngs]
    # sections from other benchmarks (bench/tls.py, bench/reconfigure.py) follow a marker
    kept = DOCS.read_text().partition(KEPT_MARKER) if DOCS.exists() else ("", "", "")
    DOCS.write_text(report.markdown(records, meta, shown) + "".join(kept[1:]))
    return [DOCS, *shown]


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
