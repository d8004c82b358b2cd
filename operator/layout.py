"""Prove a cluster's quorum layout safe with the core checker before anything is rolled out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graven.node.protocol.layout import Layout

# Condition reasons (LayoutValid) — also what users grep events for.
SAFE = "LayoutSafe"
UNSAFE = "LayoutUnsafe"
INVALID = "LayoutInvalid"


@dataclass(frozen=True)
class LayoutVerdict:
    ok: bool
    reason: str
    message: str
    summary: str  # short form for the printer column, e.g. "flexible(q1=4,q2=2)"
    config: Layout | None = None
    tolerates: int | None = None
    fast_path_tolerates: int | None = None
    detail: tuple[str, ...] = field(default=())
    violations: tuple[str, ...] = field(default=())


def summary(block: Mapping[str, Any] | None) -> str:
    block = dict(block or {"preset": "paxos"})
    if "segments" in block:
        segments = block["segments"]
        count = len(segments) if isinstance(segments, list) else 0
        return f"explicit({count} segment{'' if count == 1 else 's'})"
    preset = str(block.pop("preset", "paxos"))
    params = ",".join(f"{k}={v}" for k, v in block.items())
    return f"{preset}({params})" if params else preset


def _describe(config: Layout) -> tuple[str, ...]:
    return tuple(
        f"{seg.describe_range()} {seg.kind}: phase 1 {seg.phase1.describe()}, "
        f"phase 2 {seg.phase2.describe()}"
        for seg in config.segments
    )


def check_layout(block: Mapping[str, Any] | None, members: int, epoch: int = 0) -> LayoutVerdict:
    # Imported here: the operator's import should not fail while the core is being reworked,
    # and `graven operator --help` should not pay for it.
    from graven.node.protocol.checker import check
    from graven.node.protocol.layout import LayoutError
    from graven.node.protocol.presets import build

    short = summary(block)
    try:
        config = build(dict(block or {}) or None, members, epoch)
    except LayoutError as exc:
        return LayoutVerdict(False, INVALID, f"spec.quorums cannot be built: {exc}", short)
    report = check(config)
    if not report.safe:
        return LayoutVerdict(
            False,
            UNSAFE,
            report.render(),
            short,
            config,
            report.tolerates,
            report.fast_path_tolerates,
            _describe(config),
            tuple(f"{v.condition}: {v.message}" for v in report.violations),
        )
    return LayoutVerdict(
        True,
        SAFE,
        f"{short} over {members} members satisfies C1-C3; tolerates {report.tolerates} "
        "member failure(s) and still decides",
        short,
        config,
        report.tolerates,
        report.fast_path_tolerates,
        _describe(config),
    )
