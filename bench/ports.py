"""Free loopback port blocks for benchmark clusters, below the kernel's ephemeral range.

Client connections take their local ports from the ephemeral range; a cluster listening in it
can find its ports taken by some unrelated connection, so we stay below it.
"""

from __future__ import annotations

import socket
from pathlib import Path

HOST = "127.0.0.1"


def ephemeral_low() -> int:
    """First port of the ephemeral range (32768 if it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_block(start: int, span: int, step: int) -> int:
    """First base >= start, in steps of `step`, whose ports base..base+span-1 are all free."""
    limit = ephemeral_low() if start < ephemeral_low() else 65536
    for base in range(start, limit - span, step):
        if all(port_free(base + i) for i in range(span)):
            return base
    raise OSError(f"no free block of {span} ports between {start} and {limit}")
