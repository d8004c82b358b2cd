"""Small statistics helpers: percentiles, CDF points and whole-machine CPU use."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def cdf_points(sorted_values: Sequence[float], points: int = 200) -> list[tuple[float, float]]:
    """(latency, fraction <= latency) at up to `points` evenly spaced quantiles."""
    n = len(sorted_values)
    if n == 0:
        return []
    idx = sorted({min(n - 1, round(i * (n - 1) / (points - 1))) for i in range(points)})
    return [(sorted_values[i], (i + 1) / n) for i in idx]


def _cpu_jiffies() -> tuple[int, int]:
    """(total, idle) jiffies over all cores since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


class BoxCpu:
    """Whole-machine busy share between construction and `busy()`."""

    def __init__(self) -> None:
        self.start = _cpu_jiffies()

    def busy(self) -> tuple[float, int]:
        """(busy percent of all cores, number of cores)."""
        total, idle = _cpu_jiffies()
        d_total, d_idle = total - self.start[0], idle - self.start[1]
        pct = 100.0 * (1 - d_idle / d_total) if d_total > 0 else 0.0
        return pct, os.cpu_count() or 1
