"""Comparison records -> Graven/etcd ratios, a terminal table, JSON + CSV, docs/benchmarks.md."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Record = dict[str, Any]
CSV_FIELDS = [
    "section", "label", "system", "preset", "workload", "mode", "members", "concurrency",
    "value_size", "seconds", "ops", "ops_per_s", "p50_ms", "p99_ms", "max_ms", "errors",
    "disagreements", "won_anomalies", "misses", "rounds", "server_cpu_ms_per_op",
    "client_cpu_ms_per_op", "box_busy_pct", "other_cores", "vs_etcd", "p50_vs_etcd",
    "repeat_ops_per_s", "smart", "fast_share", "stored_keys", "count", "bytes_per_key",
]  # fmt: skip


def medians(runs: Sequence[Record]) -> list[Record]:
    """Per (section, workload, system): the repeat with the median ops/s; counts of errors and
    disagreements are summed over all repeats so none is hidden."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in runs:
        groups.setdefault((r["section"], r["workload"], r["label"]), []).append(r)
    out = []
    for group in groups.values():
        ranked = sorted(group, key=lambda r: r["ops_per_s"])
        pick = dict(ranked[(len(ranked) - 1) // 2])
        pick["repeat_ops_per_s"] = [r["ops_per_s"] for r in group]
        for field in ("errors", "disagreements", "won_anomalies", "misses"):
            pick[field] = sum(r[field] for r in group)
        out.append(pick)
    return out


def _key(r: Record) -> tuple[object, ...]:
    # the workload name spells out everything that makes two rows differ (clients, members,
    # value size, stored keys), so etcd's row of the same name is the one to compare with
    return (r["section"], r["workload"])


def add_ratios(records: Sequence[Record]) -> None:
    """vs_etcd = ops/s over etcd's on the same workload; p50_vs_etcd = p50 over etcd's."""
    etcd = {_key(r): r for r in records if r["system"] == "etcd"}
    for r in records:
        base = etcd.get(_key(r))
        ok = base is not None and base["ops_per_s"] > 0 and base["p50_ms"] > 0
        r["vs_etcd"] = round(r["ops_per_s"] / base["ops_per_s"], 2) if ok else None
        r["p50_vs_etcd"] = round(r["p50_ms"] / base["p50_ms"], 2) if ok else None


def text_table(records: Sequence[Record]) -> str:
    head = f"{'workload':<44} {'system':<20} {'ops/s':>8} {'p50':>8} {'p99':>8} {'max':>8}"
    head += f" {'err':>4} {'dis':>4} {'srv ms/op':>9} {'cli ms/op':>9} {'fast':>5} {'vs etcd':>7}"
    lines = [head, "-" * len(head)]
    for r in records:
        ratio = "" if r["vs_etcd"] is None else f"{r['vs_etcd']:.2f}x"
        lines.append(
            f"{r['workload']:<44} {r['label']:<20} {r['ops_per_s']:>8.1f} {r['p50_ms']:>8.2f}"
            f" {r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} {r['errors']:>4} {r['disagreements']:>4}"
            f" {r['server_cpu_ms_per_op']:>9.3f} {r['client_cpu_ms_per_op']:>9.3f}"
            f" {_fast(r):>5} {ratio:>7}"
        )
    return "\n".join(lines)


def _fast(r: Record) -> str:
    """Share of a smart-client row's decisions taken on the in-process fast path."""
    share = r.get("fast_share")
    return "-" if share is None else f"{100 * share:.0f}%"


def write_files(
    records: Sequence[Record], runs: Sequence[Record], meta: dict[str, Any], stem: Path
) -> list[Path]:
    """stem.json (table rows and every repeat, with CDF points); stem.csv (the table rows)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = stem.with_suffix(".json"), stem.with_suffix(".csv")
    body = {"meta": meta, "rows": list(records), "repeats": list(runs)}
    json_path.write_text(json.dumps(body, indent=1) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    return [json_path, csv_path]


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio_table(records: Sequence[Record], section: str) -> list[str]:
    """Markdown: one line per workload, etcd ops/s, then each Graven preset's ratio."""
    rows = [r for r in records if r["section"] == section]
    graven = list(dict.fromkeys(r["label"] for r in rows if r["system"] != "etcd"))
    out = ["| workload | etcd ops/s | " + " | ".join(f"{g} vs etcd" for g in graven) + " |"]
    out.append("|---|---:|" + "---:|" * len(graven))
    for workload in dict.fromkeys(r["workload"] for r in rows):
        same = {r["label"]: r for r in rows if r["workload"] == workload}
        etcd = same.get("etcd")
        cells = [_fmt_ratio(same[g]["vs_etcd"]) if g in same else "-" for g in graven]
        etcd_cell = f"{etcd['ops_per_s']:.0f}" if etcd else "-"
        out.append(f"| {workload} | {etcd_cell} | " + " | ".join(cells) + " |")
    return out


def detail_table(records: Sequence[Record], section: str) -> list[str]:
    out = [
        "| workload | system | ops/s | ops/s range | p50 ms | p99 ms | max ms | errors"
        " | disagreements | server CPU ms/op | client CPU ms/op | fast path | other cores"
        " | vs etcd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if r["section"] != section:
            continue
        out.append(
            f"| {r['workload']} | {r['label']} | {r['ops_per_s']:.0f} | {_spread(r)}"
            f" | {r['p50_ms']:.2f}"
            f" | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['errors']} | {r['disagreements']}"
            f" | {r['server_cpu_ms_per_op']:.2f} | {r['client_cpu_ms_per_op']:.2f}"
            f" | {_fast(r)} | {r['other_cores']:.2f} | {_fmt_ratio(r['vs_etcd'])} |"
        )
    return out


def _spread(r: Record) -> str:
    """min-max ops/s over the repeats of a row."""
    values = r.get("repeat_ops_per_s") or [r["ops_per_s"]]
    return f"{min(values):.0f}-{max(values):.0f}"


def verdict(records: Sequence[Record]) -> str:
    """One honest sentence on the claim "faster than etcd on the same machine"."""
    graven = [r for r in records if r["system"] != "etcd" and r["vs_etcd"] is not None]
    graven = [r for r in graven if r["section"] == "main"]
    if not graven:
        return "No Graven rows were measured in this run, so the claim is untested here."
    writes = [r for r in graven if r["mode"] != "reads"]
    reads = [r for r in graven if r["mode"] == "reads"]
    text = f"On 3 members Graven was faster than etcd on {sum(r['vs_etcd'] > 1 for r in writes)}"
    text += f" of {len(writes)} write rows"
    if writes:
        best = max(writes, key=lambda r: r["vs_etcd"])
        worst = min(writes, key=lambda r: r["vs_etcd"])
        text += f" (best {best['vs_etcd']:.2f}x: {best['label']}, {best['workload']}; "
        text += f"worst {worst['vs_etcd']:.2f}x: {worst['label']}, {worst['workload']})"
    if reads:
        text += f" and on {sum(r['vs_etcd'] > 1 for r in reads)} of {len(reads)} read rows"
    wrong = sum(r["errors"] + r["disagreements"] + r["won_anomalies"] for r in records)
    if wrong:
        text += f"; {wrong} errors/disagreements were seen, see the table"
    return text + "."


def markdown(records: Sequence[Record], meta: dict[str, Any], plots: Sequence[Path]) -> str:
    m = meta["machine"]
    lines = [
        "# Benchmarks: Graven vs etcd on the same machine",
        "",
        f"Last refreshed {meta['date']} by `{meta['command']}` ({meta['duration_s']:.0f} s).",
        "Generated by `bench/compare.py`; do not edit by hand. Raw data (not kept in git):",
        f"`{meta['json']}`, `{meta['csv']}`.",
        "",
        f"**Verdict:** {verdict(records)}",
        "",
        "## Machine",
        "",
        f"- {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, Linux {m['kernel']}",
        f"- {meta['etcd_version']} (Debian package), Graven {m['graven_revision']}, "
        f"Python {m['python']}, aiohttp {m['aiohttp']}",
        f"- Busy cores before the run started (other work on the box): {m['background_cores']}",
        "",
        "Clients, servers and everything else share these cores: absolute numbers only compare",
        "runs on this machine; the ratio columns are the point.",
        *_noise_note(records, meta),
        "",
        "## Graven throughput relative to etcd",
        "",
        *ratio_table(records, "main"),
        "",
        "## All rows",
        "",
        *detail_table(records, "main"),
        "",
    ]
    if any(r["section"] == "scaling" for r in records):
        lines += ["## Scaling: members, value size, quorum size, stored keys, memory", ""]
        lines += [*ratio_table(records, "scaling"), ""]
        lines += [*flexible_table(records), *stored_table(records, meta)]
        lines += [*memory_table(records), "### All scaling rows", ""]
        lines += [*detail_table(records, "scaling"), ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}](benchmarks/{p.name})" for p in plots]
        lines.append("")
    lines += [*METHOD, f"    {meta['command']}", ""]
    if meta.get("missing"):
        lines += ["## Not measured in this run", "", *[f"- {x}" for x in meta["missing"]], ""]
    return "\n".join(lines)


def _scaling(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r["section"] == "scaling"]


def _by_gateway_preset(rows: Sequence[Record], preset: str) -> Record | None:
    """The row of Graven `preset` through the gateway (not the smart client), if measured."""
    return next((r for r in rows if r.get("preset") == preset and not r.get("smart")), None)


def flexible_table(records: Sequence[Record]) -> list[str]:
    """Flexible q1=4, q2=2 vs majority quorums, 5 members, unique keys (64 B values)."""
    rows = [
        r
        for r in _scaling(records)
        if r["members"] == 5 and r["mode"] == "unique" and r["value_size"] == 64
        and not r.get("group")
    ]  # fmt: skip
    paxos, flexible = _by_gateway_preset(rows, "paxos"), _by_gateway_preset(rows, "flexible")
    if paxos is None or flexible is None:
        return []
    out = [
        f"### Flexible quorums vs majority, 5 members ({paxos['workload']})",
        "",
        "Phase 2 of a flexible layout waits for 2 of 5 acceptors instead of 3; phase 1 then needs"
        " 4. Both clusters run the same workload; the ratio is flexible over majority.",
        "",
        "| layout | quorums | ops/s | p50 ms | p99 ms | server CPU ms/op | ops/s vs majority |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in (paxos, flexible):
        ratio = r["ops_per_s"] / paxos["ops_per_s"] if paxos["ops_per_s"] > 0 else None
        out.append(
            f"| {r['label']} | {r.get('quorums', r['preset'])} | {r['ops_per_s']:.0f}"
            f" | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['server_cpu_ms_per_op']:.2f}"
            f" | {_fmt_ratio(ratio)} |"
        )
    return [*out, ""]


def stored_table(records: Sequence[Record], meta: dict[str, Any]) -> list[str]:
    """Latency with N keys already stored vs an empty store, same system and clients."""
    rows = [r for r in _scaling(records) if r.get("group") == "stored"]
    full = [r for r in rows if r.get("stored_keys")]
    if not full:
        return []
    stored = max(r["stored_keys"] for r in full)
    out = [
        f"### {stored:,} stored keys vs an empty store",
        "",
        f"Each system's 3 members already hold {stored:,} decided keys (64 B values) before"
        " its rows run; a fresh, empty cluster of the same system runs the same rows. Both"
        " create new keys.",
        "",
        "| system | workload | empty ops/s | stored ops/s | empty p50 ms | stored p50 ms"
        " | empty p99 ms | stored p99 ms | p50 stored / empty |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = list(dict.fromkeys(r["label"] for r in full))
    for r in sorted(full, key=lambda r: (labels.index(r["label"]), r["concurrency"])):
        empty = next(
            (
                e
                for e in rows
                if not e.get("stored_keys")
                and e["label"] == r["label"]
                and e["concurrency"] == r["concurrency"]
            ),
            None,
        )
        if empty is None:
            continue
        ratio = r["p50_ms"] / empty["p50_ms"] if empty["p50_ms"] > 0 else None
        out.append(
            f"| {r['label']} | unique c={r['concurrency']} | {empty['ops_per_s']:.0f}"
            f" | {r['ops_per_s']:.0f} | {empty['p50_ms']:.2f} | {r['p50_ms']:.2f}"
            f" | {empty['p99_ms']:.2f} | {r['p99_ms']:.2f} | {_fmt_ratio(ratio)} |"
        )
    loads = meta.get("preloads") or []
    if loads:
        parts = [f"{p['label']} {p['seconds']:.1f} s ({p['how']})" for p in loads]
        out += ["", f"Preloading {stored:,} keys took (not part of any row): " + "; ".join(parts)]
        out.append(
            "A sample of the preloaded keys was read back from every member before measuring."
        )
    return [*out, ""]


def memory_table(records: Sequence[Record]) -> list[str]:
    """Resident memory growth per key written through the API, per member."""
    rows = [r for r in _scaling(records) if r.get("group") == "memory" and r.get("bytes_per_key")]
    if not rows:
        return []
    out = [
        "### Member memory per stored key",
        "",
        "VmRSS of each member process (`/proc/PID/status`) just before and just after a fresh"
        " 3-member cluster stored the row's keys through the API (unique creates, 64 B values,"
        " after a short warm-up); per member: (after - before) / keys written. Graven's store"
        " keeps every key touched since start cached in memory, so this is the cost of a key"
        " written (or read) since start; a key that is only on disk is not cached (the store's"
        " start-up key filter holds 8 bytes for it).",
        "",
        "| system | keys written | RSS before MiB | RSS after MiB | bytes per key, per member |",
        "|---|---:|---|---|---|",
    ]
    for r in rows:
        before = " / ".join(f"{k / 1024:.0f}" for k in r.get("rss_kib_before", []))
        after = " / ".join(f"{k / 1024:.0f}" for k in r.get("rss_kib_after", []))
        per_key = " / ".join(f"{b:.0f}" for b in r["bytes_per_key"])
        out.append(f"| {r['label']} | {r['ops']:,} | {before} | {after} | {per_key} |")
    return [*out, ""]


def _noise_note(records: Sequence[Record], meta: dict[str, Any]) -> list[str]:
    lines = []
    if meta.get("repeat", 1) > 1:
        lines.append(
            f"Every row ran {meta['repeat']} times (systems in alternating order); tables show"
            " the repeat with the median ops/s, errors and disagreements summed over all."
        )
    busy = max([meta["machine"]["background_cores"], *(r["other_cores"] for r in records)])
    if busy > 0.3:
        lines.append(
            f"**The machine was not idle**: up to {busy:.1f} cores were busy with other work"
            " during this run (column *other cores*), so absolute numbers are low and noisy."
        )
    return ["", *lines] if lines else []


METHOD = [
    "## Method",
    "",
    "- One load generator (`graven.node.client.loadgen`, the one `graven bench` runs; asyncio",
    "  on uvloop + aiohttp keep-alive, one process) drives both systems; only the target",
    "  differs (`bench/adapters.py`). `bench/load.py` adds the CPU and memory measurements.",
    "- **etcd**: 3 members on 127.0.0.1 with default settings (WAL fsync on), reached through",
    "  its JSON gateway. Create-if-absent is one transaction: `if create_revision(key) == 0 then",
    "  put else range`. Reads are linearizable ranges.",
    "- **Graven**: `graven up bench/specs/<preset>-<n>.yaml` (one process per member), reached",
    "  through `PUT /v1/decisions/{key}` (create-if-absent) and `GET /v1/decisions/{key}`.",
    "  The 3-member flexible layout (q1 = q2 = 2) has the same quorum sizes as majorities, so",
    "  the gap between those two columns is a fair estimate of the run-to-run noise.",
    "- Clients are spread round-robin over the members, except that a Graven *unique* create",
    "  goes to the key's home member (crc32(key) mod n), as `graven.node.client` does: the home",
    "  owns the key's first register set and decides it in one round trip (etcd forwards to its",
    "  leader itself). *unique*: every operation a new key, 64-byte values. *contention*:",
    "  groups of 4 racers create the same key at once, racer j on member (group + j) mod n;",
    "  a key whose racers got different values, or that reads back",
    "  differently from any member afterwards, is a *disagreement*. *reads*: keys decided",
    "  beforehand, read back and compared. etcd serves each read with a linearizable ReadIndex",
    "  round; Graven answers a decided key from a per-member cache (safe because a decision",
    "  never changes) and otherwise reads a quorum.",
    "- **Graven (smart)**: the same clusters reached through `graven.node.client.SmartClient`",
    "  (`SmartClient`, one per row, inside the load generator). On `fast` it writes the first",
    "  register set of every acceptor itself and decides in one round trip; on `paxos`, and on",
    "  any conflict, it asks the key's home member's proposer gateway. It ignores the member a",
    "  row assigns (contention racers all use it); the re-read check still asks every member.",
    "  Its proposer work is *client CPU*; *fast path* is the share of its decisions taken",
    "  in-process.",
    "- Each row: a short unmeasured warm-up, then a fixed duration. Latency is per request;",
    "  ops/s counts completed requests. CPU: utime+stime of all member processes",
    "  (`/proc/PID/stat`) and of the load generator (`getrusage`) over the timed phase, divided",
    "  by operations. *other cores*: machine-wide busy cores not used by servers or client.",
    "",
    "Reproduce (installs etcd from Debian and matplotlib from PyPI if missing). Flags:",
    "`--quick` a two-minute smoke run; `--presets` the Graven systems, e.g.",
    "`paxos,flexible,fast,paxos-smart,fast-smart` (`<preset>-smart`: through the smart client);",
    "`--scaling` adds 5 and 7 members, 64 KiB values, flexible q2=2 vs majority on 5 members,",
    "`--stored-keys N` preloaded keys vs an empty store (default 1000000) and",
    "`--memory-keys K` keys written for the memory per key (default 100000); `--repeat R` runs",
    "every row R times; `--seconds S` per row. This page came from:",
    "",
]
