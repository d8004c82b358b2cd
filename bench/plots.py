"""PNG plots of a comparison run: throughput vs concurrency and latency CDFs (matplotlib)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def ensure_matplotlib() -> bool:
    """Import matplotlib, installing the pinned version first if needed; False if impossible."""
    try:
        import matplotlib
    except ImportError:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]
        if subprocess.run(cmd, timeout=600).returncode != 0:
            return False
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return False
    return True


def throughput_plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """ops/s against concurrency for the unique-key rows, one line per system."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in _labels(rows):
        points = sorted(
            (r["concurrency"], r["ops_per_s"])
            for r in rows
            if r["label"] == label and r["mode"] == "unique"
        )
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients (unique keys, 64 B values)")
    ax.set_ylabel("decisions per second")
    ax.set_title("Create-if-absent throughput, 3 members on one machine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_cdf_plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Latency CDF per unique-key concurrency level (one panel each), one line per system."""
    import matplotlib.pyplot as plt

    levels = sorted({r["concurrency"] for r in rows if r["mode"] == "unique"})
    if not levels:
        return
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 4), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        for r in rows:
            if r["mode"] == "unique" and r["concurrency"] == level and r["cdf"]:
                xs, ys = zip(*r["cdf"], strict=True)
                ax.plot(xs, ys, label=r["label"])
        ax.set_xscale("log")
        ax.set_title(f"concurrency {level}")
        ax.set_xlabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("fraction of operations")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["label"] for r in rows))
