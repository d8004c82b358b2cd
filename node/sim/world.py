"""A seeded, deterministic simulation of proposers and acceptors running the real core.

Everything happens in one process on a virtual clock: an event heap ordered by (time, sequence).
The network loses, delays (and so reorders), duplicates and partitions messages; acceptors crash
(keeping only durable state) and restart; proposers crash (keeping only their durable record of
used register sets) and restart, then keep proposing their input. Every reply an acceptor sends
and every output a proposer makes is checked as it happens (see ``checks.py``); at the end a
fault-free period must let every live proposer decide.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol import acceptor as acc
from ..protocol.config import Configuration
from ..protocol.proposer import Backoff, Decide, Persist, Proposer, Read, Send, Write
from .checks import Checker, Violation
from .plants import AcceptorPlant, plant_behaviour


@dataclass
class Faults:
    loss: float = 0.05
    duplicate: float = 0.03
    min_delay: int = 1
    max_delay: int = 20
    acceptor_crash: float = 0.01  # per step
    proposer_crash: float = 0.01
    partition: float = 0.005
    crash_mid_send: float = 0.01  # per message a proposer sends
    down_time: int = 300

    @classmethod
    def none(cls) -> Faults:
        return cls(0.0, 0.0, 1, 20, 0.0, 0.0, 0.0, 0.0)


@dataclass
class Stats:
    steps: int = 0
    delivered: int = 0
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    crashes: int = 0
    partitions: int = 0
    decisions: int = 0


@dataclass
class SimAcceptor:
    index: int
    behaviour: AcceptorPlant
    durable: dict[str, acc.KeyState] = field(default_factory=dict)
    memory: dict[str, acc.KeyState] = field(default_factory=dict)
    up: bool = True
    pending: list[tuple[str, acc.Change]] = field(default_factory=list)  # not yet durable

    def state(self, key: str) -> acc.KeyState:
        st = self.memory.get(key)
        if st is None:
            st = self.memory[key] = acc.KeyState()
        return st


@dataclass
class SimProposer:
    slot: int
    inputs: dict[str, str]
    used: dict[str, int] = field(default_factory=dict)  # durable: highest set used per key
    live: dict[str, Proposer] = field(default_factory=dict)
    up: bool = True
    restarts: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    timed: dict[str, int] = field(default_factory=dict)  # key -> attempt with a timer set


class World:
    ATTEMPT_TIMEOUT = 120

    def __init__(
        self,
        config: Configuration,
        seed: int,
        proposers: int = 2,
        keys: int = 1,
        faults: Faults | None = None,
        plant: str | None = None,
        trace_size: int = 300,
    ) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.seed = seed
        self.faults = faults or Faults()
        self.now = 0
        self._seq = 0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self.stats = Stats()
        self.trace: deque[str] = deque(maxlen=trace_size)
        self.plant = plant
        self.key_names = [f"k{i}" for i in range(keys)]
        acceptor_plant = plant_behaviour(plant)
        self.acceptors = [SimAcceptor(i, acceptor_plant) for i in range(config.n)]
        count = min(proposers, config.proposers)
        self.proposers = [
            SimProposer(slot, {k: f"v{slot}.{k}" for k in self.key_names}) for slot in range(count)
        ]
        self.checker = Checker(
            config, {k: {p.inputs[k] for p in self.proposers} for k in self.key_names}
        )
        self.blocked: set[tuple[int, int]] = set()  # (proposer slot, acceptor) pairs cut off
        self.violation: Violation | None = None

    # -- scheduling -------------------------------------------------------------------------------

    def at(self, delay: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, fn))

    def log(self, text: str) -> None:
        self.trace.append(f"t={self.now:>6} {text}")

    # -- running ----------------------------------------------------------------------------------

    def run(self, steps: int, quiet_steps: int | None = None) -> Violation | None:
        """Run ``steps`` events with faults, then a fault-free period checking progress."""
        try:
            # Spread proposals over the faulty period so faults hit proposals in flight.
            horizon = max(100, steps // 3)
            for key in self.key_names:
                start = self.rng.randint(0, horizon)
                for p in self.proposers:
                    jitter = self.rng.randint(0, 30)
                    self.at(start + jitter, lambda p=p, key=key: self._propose(p, key))
            self._loop(steps, faulty=True)
            self._heal()
            self._loop(quiet_steps if quiet_steps is not None else steps * 4, faulty=False)
            self._check_progress()
        except Violation as v:
            self.violation = v
        return self.violation

    def _loop(self, steps: int, faulty: bool) -> None:
        for _ in range(steps):
            if not self._heap:
                return
            self.now, _, fn = heapq.heappop(self._heap)
            self.stats.steps += 1
            fn()
            if faulty:
                self._maybe_fault()
            if not faulty and self._all_decided():
                return

    def _all_decided(self) -> bool:
        return all(len(p.outputs) == len(self.key_names) for p in self.proposers if p.up)

    def _check_progress(self) -> None:
        for p in self.proposers:
            missing = [k for k in self.key_names if k not in p.outputs]
            if missing:
                raise Violation(
                    "progress",
                    f"proposer {p.slot} did not decide {missing} after the fault-free period",
                )

    # -- faults -----------------------------------------------------------------------------------

    def _maybe_fault(self) -> None:
        f, rng = self.faults, self.rng
        r = rng.random()
        if r < f.acceptor_crash:
            a = rng.choice(self.acceptors)
            if a.up:
                self._crash_acceptor(a)
        elif r < f.acceptor_crash + f.proposer_crash:
            p = rng.choice(self.proposers)
            if p.up:
                self._crash_proposer(p)
        elif r < f.acceptor_crash + f.proposer_crash + f.partition:
            self._partition()

    def _crash_acceptor(self, a: SimAcceptor) -> None:
        self.stats.crashes += 1
        a.up = False
        a.pending.clear()  # volatile, never made durable
        a.memory = {k: s.copy() for k, s in a.durable.items()}
        self.log(f"CRASH acceptor {a.index}")
        self.at(self.rng.randint(1, self.faults.down_time), lambda: self._restart_acceptor(a))

    def _restart_acceptor(self, a: SimAcceptor) -> None:
        a.up = True
        self.log(f"RESTART acceptor {a.index}")

    def _crash_proposer(self, p: SimProposer) -> None:
        self.stats.crashes += 1
        p.up = False
        p.live.clear()
        p.timed.clear()
        if self.plant == "reuse-register-set":
            p.used.clear()  # planted bug: forgets which register sets it used
        self.log(f"CRASH proposer {p.slot}")
        # Processes restart quickly: requests sent before the crash may still be in flight.
        self.at(self.rng.randint(1, self.faults.down_time // 4), lambda: self._restart_proposer(p))

    def _restart_proposer(self, p: SimProposer) -> None:
        p.up = True
        p.restarts += 1
        self.log(f"RESTART proposer {p.slot}")
        for key in self.key_names:
            if key not in p.outputs:
                # A restarted node serves new client requests: a different input for the key.
                p.inputs[key] = f"v{p.slot}.{key}.r{p.restarts}"
                self.checker.inputs[key].add(p.inputs[key])
                self._propose(p, key)

    def _partition(self) -> None:
        self.stats.partitions += 1
        side = {a.index for a in self.acceptors if self.rng.random() < 0.5}
        cut = {(p.slot, a) for p in self.proposers for a in side if self.rng.random() < 0.7}
        self.blocked = cut
        self.log(f"PARTITION {sorted(cut)}")
        self.at(self.rng.randint(50, self.faults.down_time), self._heal_partition)

    def _heal_partition(self) -> None:
        if self.blocked:
            self.log("HEAL partition")
        self.blocked = set()

    def _heal(self) -> None:
        self.faults = Faults.none()
        self.blocked = set()
        for a in self.acceptors:
            if not a.up:
                self._restart_acceptor(a)
        for p in self.proposers:
            if not p.up:
                self._restart_proposer(p)
            else:
                # Nudge stuck attempts so the fault-free period starts from a clean slate.
                for prop in list(p.live.values()):
                    self._act(p, prop, prop.on_timeout(prop.attempt))

    # -- proposers --------------------------------------------------------------------------------

    def _propose(self, p: SimProposer, key: str) -> None:
        if not p.up or key in p.live or key in p.outputs:
            return
        prop = Proposer(self.config, p.slot, key, used_floor=p.used.get(key, -1))
        p.live[key] = prop
        self.log(f"P{p.slot} propose {key}={p.inputs[key]} (used<= {p.used.get(key, -1)})")
        self._act(p, prop, prop.start(p.inputs[key]))

    def _act(self, p: SimProposer, prop: Proposer, actions: list) -> None:
        attempt = prop.attempt
        for action in actions:
            if isinstance(action, Send):
                if self.rng.random() < self.faults.crash_mid_send:
                    self._crash_proposer(p)  # dies half way through a broadcast
                    return
                self._send(p, action.server, action.message)
            elif isinstance(action, Persist):
                self.at(self.rng.randint(0, 3), lambda a=action: self._persisted(p, prop, a))
            elif isinstance(action, Backoff):
                delay = self.rng.randint(5, 40 * min(action.attempt, 8))
                self.at(delay, lambda n=action.attempt: self._timeout(p, prop, n))
            elif isinstance(action, Decide):
                self._decided(p, prop, action)
        if prop.phase not in ("done", "idle") and p.timed.get(prop.key) != attempt:
            p.timed[prop.key] = attempt
            self.at(self.ATTEMPT_TIMEOUT, lambda: self._timeout(p, prop, attempt))

    def _persisted(self, p: SimProposer, prop: Proposer, action: Persist) -> None:
        if not p.up or p.live.get(action.key) is not prop:
            return  # crashed before the record was durable: the set was never used
        p.used[action.key] = max(p.used.get(action.key, -1), action.rs)
        self._act(p, prop, prop.on_persisted(action.rs))

    def _timeout(self, p: SimProposer, prop: Proposer, attempt: int) -> None:
        if p.up and p.live.get(prop.key) is prop:
            self._act(p, prop, prop.on_timeout(attempt))

    def _decided(self, p: SimProposer, prop: Proposer, d: Decide) -> None:
        self.stats.decisions += 1
        self.log(f"P{p.slot} DECIDED {d.key}={d.value} via {d.path}")
        self.checker.on_output(p.slot, d.key, d.value)
        p.outputs[d.key] = d.value
        p.live.pop(d.key, None)

    # -- network ----------------------------------------------------------------------------------

    def _send(self, p: SimProposer, server: int, msg: Read | Write) -> None:
        f, rng = self.faults, self.rng
        self.stats.sent += 1
        if rng.random() < f.loss:
            self.stats.lost += 1
            return
        copies = 2 if rng.random() < f.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            delay = rng.randint(f.min_delay, f.max_delay)
            self.at(delay, lambda: self._deliver_request(p, server, msg))

    def _deliver_request(self, p: SimProposer, server: int, msg: Read | Write) -> None:
        a = self.acceptors[server]
        if not a.up or (p.slot, server) in self.blocked:
            self.stats.lost += 1
            return
        self.stats.delivered += 1
        state = a.state(msg.key)
        if isinstance(msg, Read):
            change, reply = acc.read(state, msg.rs)
            self.log(f"A{server} <- P{p.slot} read {msg.key}@{msg.rs}")
        else:
            change, reply = acc.write(state, msg.rs, msg.value)
            self.log(f"A{server} <- P{p.slot} write {msg.key}@{msg.rs}={msg.value} ok={reply.ok}")
        reply = a.behaviour.handle(self, a, msg.key, state, change, reply)
        if reply is None:
            return
        self.checker.on_reply(server, msg.key, reply)
        if self.rng.random() < self.faults.loss:
            self.stats.lost += 1
            return
        delay = self.rng.randint(self.faults.min_delay, self.faults.max_delay)
        self.at(delay, lambda: self._deliver_reply(p, server, msg.key, reply))

    def _deliver_reply(self, p: SimProposer, server: int, key: str, reply: acc.Reply) -> None:
        if not p.up or (p.slot, server) in self.blocked:
            self.stats.lost += 1
            return
        self.stats.delivered += 1
        prop = p.live.get(key)
        if prop is not None:
            self._act(p, prop, prop.on_reply(server, reply))
