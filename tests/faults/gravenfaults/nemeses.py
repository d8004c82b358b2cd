"""Nemeses: small objects with ``start``/``stop`` that inject one fault and heal it.

Each names the members it takes away (``affected``; None when it takes away more than any
layout tolerates, e.g. a whole-cluster restart), so the harness knows which fault windows the
layout should ride through. Network faults are iptables rules added in the namespaces and
removed one by one (``Rules``), so several nemeses compose. The harness object ``h`` (runner.py)
gives the cluster, topology, random source and the probes used for expectations.
"""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import disk
from .topology import CLIENT_ADDR, PROXY_PORT, SUBNET, Topology

if TYPE_CHECKING:
    from .runner import Harness


class Rules:
    """iptables rules this nemesis added; ``clear`` deletes exactly those."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.added: list[tuple[str, tuple[str, ...]]] = []

    def add(self, ns: str, *spec: str) -> None:
        self.topo.iptables(ns, "-A", *spec)
        self.added.append((ns, spec))

    def clear(self) -> None:
        """Delete every rule added, even when one deletion fails (reported after the rest)."""
        errors = []
        while self.added:
            ns, spec = self.added.pop()
            try:
                self.topo.iptables(ns, "-D", *spec)
            except Exception as exc:  # the others must still go
                errors.append(exc)
        if errors:
            raise errors[0]


@dataclass
class Nemesis:
    kind: str = "nemesis"
    affected: set[int] | None = field(default_factory=set)
    detail: str = ""
    partition: bool = False  # a network partition (for the availability figure)

    async def start(self, h: Harness) -> None:
        raise NotImplementedError

    async def stop(self, h: Harness) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        who = "all" if self.affected is None else ",".join(f"m{i}" for i in sorted(self.affected))
        return f"{self.kind}[{who}]{' ' + self.detail if self.detail else ''}"


# -- network ---------------------------------------------------------------------------------

Rule = tuple[str, ...]  # (namespace, chain, match..., "-j", target)


@dataclass
class Firewall(Nemesis):
    """A network fault made of iptables rules: ``rules(h)`` names them; ``stop`` removes
    exactly those."""

    added: Rules | None = None

    def rules(self, h: Harness) -> list[Rule]:
        raise NotImplementedError

    async def start(self, h: Harness) -> None:
        self.added = Rules(h.topo)
        for ns, *spec in self.rules(h):
            self.added.add(ns, *spec)

    async def stop(self, h: Harness) -> None:
        if self.added:
            self.added.clear()


@dataclass
class Partition(Firewall):
    """Members in different groups cannot exchange packets (both directions); clients reach all.
    A member in no group sees every group: with two groups, that makes a bridge."""

    groups: list[set[int]] = field(default_factory=list)
    partition: bool = True

    def rules(self, h: Harness) -> list[Rule]:
        t = h.topo
        return [
            (t.member_ns(i), "INPUT", "-s", t.member_addr(j), "-j", "DROP")
            for a, ga in enumerate(self.groups)
            for b, gb in enumerate(self.groups)
            if a != b
            for i in ga
            for j in gb
        ]


@dataclass
class OneWay(Firewall):
    """Member ``src`` cannot send requests to the others; they still reach it (TCP needs both
    directions, so the cut is on connections to the others' service port, not on packets)."""

    src: int = 0
    partition: bool = True

    def rules(self, h: Harness) -> list[Rule]:
        t, port = h.topo, str(PROXY_PORT)
        source = t.member_addr(self.src)
        return [
            (t.member_ns(j), "INPUT", "-s", source, "-p", "tcp", "--dport", port, "-j", "DROP")
            for j in range(t.members)
            if j != self.src
        ]


@dataclass
class Isolate(Firewall):
    """One member loses every packet from anyone (members and clients)."""

    member: int = 0
    partition: bool = True

    def rules(self, h: Harness) -> list[Rule]:
        return [(h.topo.member_ns(self.member), "INPUT", "-s", f"{SUBNET}.0/24", "-j", "DROP")]


@dataclass
class ClientCut(Firewall):
    """The workload's clients cannot reach these members (the members reach each other)."""

    members: set[int] = field(default_factory=set)

    def rules(self, h: Harness) -> list[Rule]:
        t = h.topo
        return [
            (t.client, "OUTPUT", "-s", CLIENT_ADDR, "-d", t.member_addr(i), "-j", "DROP")
            for i in self.members
        ]


@dataclass
class Loss(Firewall):
    """Every member drops this share of the packets it receives from the subnet."""

    probability: float = 0.2

    def rules(self, h: Harness) -> list[Rule]:
        share = f"{self.probability:.3f}"
        random_match = ("-m", "statistic", "--mode", "random", "--probability", share)
        return [
            (h.topo.member_ns(i), "INPUT", "-s", f"{SUBNET}.0/24", *random_match, "-j", "DROP")
            for i in range(h.topo.members)
        ]


@dataclass
class Delay(Nemesis):
    """Every member's proxy delays inbound bytes by U(lo, hi) ms: latency plus reordering."""

    lo_ms: float = 5.0
    hi_ms: float = 60.0

    async def start(self, h: Harness) -> None:
        for m in h.cluster.members:
            h.cluster.set_delay(m, self.lo_ms, self.hi_ms)

    async def stop(self, h: Harness) -> None:
        for m in h.cluster.members:
            h.cluster.set_delay(m, 0, 0)


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Kill(Nemesis):
    """SIGKILL members; ``stop`` starts them again on their data directories."""

    members: set[int] = field(default_factory=set)

    async def start(self, h: Harness) -> None:
        for i in self.members:
            h.cluster.kill(h.cluster.members[i])

    async def stop(self, h: Harness) -> None:
        for i in self.members:
            m = h.cluster.members[i]
            if not m.running:
                h.cluster.start(m)
        for i in self.members:
            await h.wait_ready(h.cluster.members[i], why=self.kind)


@dataclass
class Pause(Nemesis):
    """SIGSTOP members; ``stop`` sends SIGCONT."""

    members: set[int] = field(default_factory=set)

    async def start(self, h: Harness) -> None:
        for i in self.members:
            h.cluster.signal(h.cluster.members[i], signal.SIGSTOP)

    async def stop(self, h: Harness) -> None:
        for i in self.members:
            h.cluster.signal(h.cluster.members[i], signal.SIGCONT)


@dataclass
class RestartAll(Nemesis):
    """SIGKILL every member at once; ``stop`` starts them all again."""

    async def start(self, h: Harness) -> None:
        self.affected = None
        for m in h.cluster.members:
            h.cluster.kill(m)

    async def stop(self, h: Harness) -> None:
        for m in h.cluster.members:
            if not m.running:
                h.cluster.start(m)
        for m in h.cluster.members:
            await h.wait_ready(m, why=self.kind)


# -- disks -------------------------------------------------------------------------------------


@dataclass
class DiskFault(Nemesis):
    """fsync fails (``mode='f'``), writes fail (``'w'``) or the disk is full (``'full'``) on one
    member. Expected: it refuses register writes it cannot persist (503), says so in /readyz,
    /metrics and its log, and every write it did acknowledge is still there after a restart."""

    member: int = 0
    mode: str = "f"
    acked: list[str] = field(default_factory=list)

    async def start(self, h: Harness) -> None:
        m = h.cluster.members[self.member]
        if self.mode == "full":
            await asyncio.to_thread(disk.fill, m.data_dir)
        else:
            disk.set_mode(m.ctl, self.mode)
        self.acked = await h.expect_store_failure(m, self.kind)

    async def stop(self, h: Harness) -> None:
        m = h.cluster.members[self.member]
        # whatever start got to: the filler goes (by its fixed path), the shim is reset
        disk.filler_path(m.data_dir).unlink(missing_ok=True)
        disk.set_mode(m.ctl, "0")
        # the store refuses all work once a commit failed: a restart brings the member back
        h.cluster.kill(m)
        h.cluster.start(m)
        await h.wait_ready(m, why=self.kind)
        await h.expect_probes_durable(m, self.acked, self.kind)


@dataclass
class CorruptStore(Nemesis):
    """Stop a member, damage its store file (``how``: torn or garbage), start it: it must refuse
    to start with a clear message. ``stop`` puts the intact file back and starts it."""

    member: int = 0
    how: str = "torn"
    saved: Path | None = None

    async def start(self, h: Harness) -> None:
        m = h.cluster.members[self.member]
        await asyncio.to_thread(h.cluster.terminate, m)
        saved = m.data_dir.parent / "store-backup"
        await asyncio.to_thread(disk.backup, m.data_dir, saved)
        self.saved = saved  # only a complete copy is ever put back
        self.detail = disk.corrupt(m.data_dir / disk.DB_NAME, self.how, h.rng)
        h.cluster.start(m)
        await h.expect_refused_start(m, self.kind)

    async def stop(self, h: Harness) -> None:
        m = h.cluster.members[self.member]
        h.cluster.kill(m)
        if self.saved is not None:
            await asyncio.to_thread(disk.restore, m.data_dir, self.saved)
            self.saved = None
        h.cluster.start(m)
        await h.wait_ready(m, why=self.kind)


# -- choosing ----------------------------------------------------------------------------------

NETWORK = (
    "partition-minority",
    "partition-bridge",
    "partition-oneway",
    "isolate",
    "client-cut",
    "loss",
    "delay",
)
BASIC = ("kill", "pause", "restart-all")
DISK = ("disk-fsync", "disk-write", "disk-full")
CORRUPT = tuple(f"corrupt-{how}" for how in disk.CORRUPTIONS)
PROCESS = BASIC + DISK + CORRUPT
ALL = NETWORK + PROCESS


def short_kinds(rotation: int) -> list[str]:
    """The short run of one preset: every network and process nemesis, and one disk fault and
    one kind of store damage, rotating with ``rotation`` (the preset's number) so that the
    presets together run every kind. The storage layer is the same under every layout."""
    return [*NETWORK, *BASIC, DISK[rotation % len(DISK)], CORRUPT[rotation % len(CORRUPT)]]


def make(
    kind: str, n: int, tolerates: int, rng: random.Random, avoid: set[int] | None = None
) -> Nemesis:
    """A nemesis of ``kind`` for an ``n``-member cluster, its targets chosen by ``rng``
    (preferring members outside ``avoid``)."""
    avoid = avoid or set()
    pool = [i for i in range(n) if i not in avoid] or list(range(n))
    one = rng.choice(pool)
    minority = set(rng.sample(range(n), max(1, min(tolerates, (n - 1) // 2))))
    args: dict[str, Any] = {"kind": kind}
    if kind == "partition-minority":
        rest = set(range(n)) - minority
        return Partition(
            **args,
            affected=minority,
            groups=[minority, rest],
            detail=f"{sorted(minority)}|{sorted(rest)}",
        )
    if kind == "partition-bridge":
        order = list(range(n))
        rng.shuffle(order)
        mid = order[0]
        left, right = set(order[1 : 1 + (n - 1) // 2]), set(order[1 + (n - 1) // 2 :])
        return Partition(
            **args,
            affected=None,
            groups=[left, right],
            detail=f"{sorted(left)}|m{mid}|{sorted(right)}",
        )
    if kind == "partition-oneway":
        return OneWay(**args, affected={one}, src=one)
    if kind == "isolate":
        return Isolate(**args, affected={one}, member=one)
    if kind == "client-cut":
        return ClientCut(
            **args, affected=set(), members=minority, detail=f"clients-x->{sorted(minority)}"
        )
    if kind == "loss":
        p = rng.choice((0.05, 0.1, 0.2))
        return Loss(**args, affected=set(), probability=p, detail=f"p={p}")
    if kind == "delay":
        lo, hi = rng.choice(((1, 20), (5, 60), (20, 120)))
        return Delay(**args, affected=set(), lo_ms=lo, hi_ms=hi, detail=f"{lo}-{hi}ms")
    if kind == "kill":
        return Kill(**args, affected={one}, members={one})
    if kind == "pause":
        return Pause(**args, affected={one}, members={one})
    if kind == "restart-all":
        return RestartAll(**args, affected=None)
    if kind in ("disk-fsync", "disk-write", "disk-full"):
        mode = {"disk-fsync": "f", "disk-write": "w", "disk-full": "full"}[kind]
        return DiskFault(**args, affected={one}, member=one, mode=mode)
    if kind in CORRUPT:
        return CorruptStore(**args, affected={one}, member=one, how=kind.split("-")[1])
    raise ValueError(f"unknown nemesis {kind!r} (known: {', '.join(ALL)})")
