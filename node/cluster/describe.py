"""Human text about a cluster: layout summaries, aligned tables, durations (CLI and `graven up`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; None shows as '-'."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def ms(seconds: float | None) -> str | None:
    """A latency for humans: '0.42 ms', '12.3 ms', '1.20 s'."""
    if seconds is None:
        return None
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    millis = seconds * 1000.0
    return f"{millis:.2f} ms" if millis < 10 else f"{millis:.1f} ms"


def describe_layout(spec: Mapping[str, Any] | None) -> str:
    """'paxos', or 'fast (fastQuorum=3, classicQuorum=2)', or 'explicit (2 segments)'."""
    if not spec:
        return "paxos"
    if "segments" in spec:
        segments = spec.get("segments")
        count = len(segments) if isinstance(segments, list) else "?"
        return f"explicit ({count} segments)"
    preset = str(spec.get("preset", "paxos"))
    extras = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "preset")
    return f"{preset} ({extras})" if extras else preset
