"""CPU and memory of benchmark runs: servers via /proc, the load generator via rusage."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces or ')': split after its last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def servers_cpu_seconds(pids: Iterable[int]) -> float:
    """Summed CPU seconds of the given processes (vanished ones count as 0)."""
    return sum(proc_cpu_seconds(pid) or 0.0 for pid in pids)


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (VmRSS of /proc/PID/status); 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def self_cpu_seconds() -> float:
    """CPU seconds used so far by this process (the load generator)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stop_popen(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM one child we started, wait, then SIGKILL it if it did not exit."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
