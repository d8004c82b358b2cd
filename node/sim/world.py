"""A seeded, deterministic simulation of Graven nodes running the real proposer runtime.

Everything happens in one process on a virtual clock: an event heap ordered by (time, sequence).
Each proposer node drives one ``protocol.runtime.Runtime`` (the class a node's gateway drives)
as a thin host: it carries out the runtime's effects over the simulated network and disk and
feeds back replies, failures, durable floors, forwarded answers and timer ticks.

The network loses, delays (and so reorders), duplicates and partitions messages; a message to
a member that is down or cut off may come back as a failure, which the node's reachability view
records (probes bring the member back). Acceptors crash (keeping only durable state) and
restart; proposer nodes crash (keeping only the used-set floors on their disk, which become
durable a little after they are submitted) and restart, then serve a new request for each key
they have not decided. Clients ask their node, which may forward to the key's leader; failed
requests are retried; reads run the linearizable read procedure. Every reply an acceptor sends,
every answer a client gets is checked as it happens (``checks.py``); at the end a fault-free
period must let every live node decide every key.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import acceptor as acc
from ..protocol.effects import DECIDED, STALE, Done, Forward, Outcome, PersistFloor, Send, Timing
from ..protocol.epochs import Epoch, View
from ..protocol.layout import Layout, epoch_of
from ..protocol.proposer import Read
from ..protocol.quorums import mask_of
from .checks import Checker, Violation
from .nodes import Carrying, Forwarded, Own, Peek, SimAcceptor, SimProposer
from .plants import plant as make_plant
from .reconfigure import Master, Step

# Virtual time units (a network hop takes 1..20).
TIMING = Timing(attempt_timeout=120, backoff_first=10, backoff_max=160, candidate_grace=5)
REQUEST_DEADLINE = 1500
RETRY_FIRST, RETRY_MAX = 25, 400  # a client retries a failed request after this long (doubling)
PERSIST_LATENCY = (0, 10)  # submitting a floor until it is durable
PROBE_FIRST, PROBE_MAX = 20, 160
READS_PER_KEY = 2


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
    refused: float = 0.5  # a message to a member that is down or cut off comes back failed

    @classmethod
    def none(cls) -> Faults:
        return cls(0.0, 0.0, 1, 20, 0.0, 0.0, 0.0, 0.0, 300, 0.5)


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
    reconfigurations: int = 0
    carried: int = 0


def member_name(i: int) -> str:
    return f"m{i}"


class World:
    def __init__(
        self,
        layout: Layout,
        seed: int,
        proposers: int = 2,
        keys: int = 1,
        faults: Faults | None = None,
        plant: str | None = None,
        trace_size: int = 300,
        reconfigs: tuple[Step, ...] = (),
    ) -> None:
        self.layout = layout
        self.rng = random.Random(seed)
        self.seed = seed
        self.faults = faults or Faults()
        self.now = 0
        self._seq = 0
        self._tid = 0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self.stats = Stats()
        self.trace: deque[str] = deque(maxlen=trace_size)
        self.plant = make_plant(plant)
        self.key_names = [f"k{i}" for i in range(keys)]
        first = Epoch(layout.epoch, tuple(member_name(i) for i in range(layout.n)), layout)
        self.epochs: dict[int, Epoch] = {first.number: first}  # every epoch ever published
        self.acceptors = {name: SimAcceptor(name) for name in first.members}
        count = min(proposers, layout.proposers, *(s.members for s in reconfigs))
        self.proposers = [
            SimProposer(member_name(i), {k: f"v{i}.{k}" for k in self.key_names})
            for i in range(count)
        ]
        self.master = Master(self, (first,), reconfigs)
        for p in self.proposers:
            self._boot(p)
        self.checker = Checker(
            layout, {k: {p.inputs[k] for p in self.proposers} for k in self.key_names}
        )
        self.blocked: set[tuple[str, str]] = set()  # (proposer, acceptor) pairs cut off
        self.violation: Violation | None = None

    # -- scheduling -------------------------------------------------------------------------------

    def at(self, delay: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, fn))

    def log(self, text: str) -> None:
        self.trace.append(f"t={self.now:>6} {text}")

    def _delay(self) -> int:
        return self.rng.randint(self.faults.min_delay, self.faults.max_delay)

    # -- running ----------------------------------------------------------------------------------

    def run(self, steps: int, quiet_steps: int | None = None) -> Violation | None:
        """Run ``steps`` events with faults, then a fault-free period checking progress."""
        try:
            # Spread requests over the faulty period so faults hit requests in flight.
            horizon = max(100, steps // 3)
            for key in self.key_names:
                start = self.rng.randint(0, horizon)
                for p in self.proposers:
                    jitter = self.rng.randint(0, 30)
                    self.at(start + jitter, lambda p=p, key=key: self._request(p, key))
                for _ in range(READS_PER_KEY):
                    p = self.rng.choice(self.proposers)
                    when = self.rng.randint(start, start + 2 * horizon)
                    self.at(when, lambda p=p, key=key: self._read(p, key))
            if self.master.steps:
                self._late_requests(horizon)
                self.master.schedule(self.rng.randint(horizon // 3, horizon))
            self._loop(steps, faulty=True)
            self._heal()
            self._loop(quiet_steps if quiet_steps is not None else steps * 4, faulty=False)
            self._check_progress()
            self._check_registers()
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

    def _late_requests(self, horizon: int) -> None:
        """With reconfigurations: more clients ask for keys (and read them) while epochs
        change, so decisions of an older epoch meet proposals and reads in a newer one."""
        for key in self.key_names:
            p = self.rng.choice(self.proposers)
            when = self.rng.randint(horizon // 2, 3 * horizon)
            self.at(when, lambda p=p, key=key: self._late(p, key))
            p = self.rng.choice(self.proposers)
            when = self.rng.randint(horizon // 2, 3 * horizon)
            self.at(when, lambda p=p, key=key: self._read(p, key))

    def _late(self, p: SimProposer, key: str) -> None:
        if not p.up or key in p.asking:
            return
        value = f"v{p.slot}.{key}.late"
        p.inputs[key] = value
        self.checker.inputs[key].add(value)
        p.outputs.pop(key, None)  # it asks again: it must get the decided value back
        self._request(p, key)

    def _all_decided(self) -> bool:
        if not self.master.finished:
            return False
        return all(len(p.outputs) == len(self.key_names) for p in self.proposers if p.up)

    def _check_registers(self) -> None:
        """Agreement in the registers themselves, across epochs: per key, at most one value
        held by some phase-2 quorum of some set (each set judged by its own epoch)."""
        holders: dict[tuple[str, int, str], list[str]] = {}
        for a in self.acceptors.values():
            for key, state in a.durable.items():
                for rs, value in state.values.items():
                    holders.setdefault((key, rs, value), []).append(a.name)
        chosen: dict[str, set[str]] = {}
        for (key, rs, value), who in holders.items():
            epoch = self.epochs[epoch_of(rs)]
            mask = mask_of(epoch.members.index(n) for n in who if n in epoch.members)
            if epoch.layout.segment_of(rs).phase2.is_quorum(mask):
                chosen.setdefault(key, set()).add(value)
        for key, values in chosen.items():
            if len(values) > 1:
                raise Violation("agreement", f"{key}: the registers decided {sorted(values)}")
            decided = self.checker.outputs.get(key)
            if decided is not None and decided not in values:
                raise Violation("agreement", f"{key}: output {decided!r}, registers {values}")

    def _check_progress(self) -> None:
        if not self.master.finished:
            raise Violation("progress", f"the reconfiguration is stuck: {self.master.describe()}")
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
            a = self.acceptors[rng.choice(sorted(self.acceptors))]
            if a.up:
                self._crash_acceptor(a)
        elif r < f.acceptor_crash + f.proposer_crash:
            p = rng.choice(self.proposers)
            if p.up:
                self._crash_proposer(p)
        elif r < f.acceptor_crash + f.proposer_crash + f.partition:
            self._partition()
        elif self.master.steps and r < f.acceptor_crash + f.proposer_crash + 2 * f.partition:
            self.master.crash()

    def _crash_acceptor(self, a: SimAcceptor) -> None:
        self.stats.crashes += 1
        a.up = False
        a.pending.clear()  # volatile, never made durable
        a.memory = {k: s.copy() for k, s in a.durable.items()}
        self.log(f"CRASH acceptor {a.name}")
        self.at(self.rng.randint(1, self.faults.down_time), lambda: self._restart_acceptor(a))

    def _restart_acceptor(self, a: SimAcceptor) -> None:
        a.up = True
        a.epoch = max(a.epoch, self.master.epoch)  # it reads the cluster document at start
        self.log(f"RESTART acceptor {a.name}")

    def _crash_proposer(self, p: SimProposer) -> None:
        self.stats.crashes += 1
        p.up = False
        p.rt = None  # everything in memory is gone: requests, timers, held messages
        p.incarnation += 1
        p.requests.clear()
        p.asking.clear()
        p.submitted.clear()  # floors not yet durable are lost (p.used keeps the durable ones)
        p.probing.clear()
        p.wake_at = None
        self.plant.on_proposer_crash(p)
        self.log(f"CRASH proposer {p.name}")
        # Processes restart quickly: requests sent before the crash may still be in flight.
        inc = p.incarnation
        self.at(
            self.rng.randint(1, self.faults.down_time // 4), lambda: self._restart_proposer(p, inc)
        )

    def _boot(self, p: SimProposer) -> None:
        self._adopt(p, self.master.view())
        p.disk_until = self.now

    def _adopt(self, p: SimProposer, live: View) -> None:
        """Run a fresh runtime on ``live`` (at start, or on learning newer epochs). Requests of
        the previous runtime end as stale: their clients retry on the new one."""
        if p.live is not None and p.rt is not None:
            if [e.number for e in live.epochs] == [e.number for e in p.live.epochs]:
                return
            if live.epoch < p.live.epoch:
                return  # never back to an older configuration
        old = dict(p.requests) if p.rt is not None else {}
        p.requests.clear()
        live = self.plant.live_view(live)
        layout = live.layout
        index = live.index(p.name)
        p.live = live
        p.slot = index if index is not None and index < layout.proposers else 0
        p.rt = self.plant.runtime(
            layout,
            index=index,
            slot=p.slot if index is not None and index < layout.proposers else None,
            timing=TIMING,
            rng=random.Random(self.rng.getrandbits(64)),
            floors=p.floor,
        )
        p.view = layout.members
        p.wake_at = None
        p.gen += 1
        if old:
            self.log(f"P{p.name} adopts epochs {[e.number for e in live.epochs]}")
        for tid, request in old.items():
            self._done(p, Done(tid, Outcome(STALE)), request)

    def _restart_proposer(self, p: SimProposer, inc: int) -> None:
        if p.up or p.incarnation != inc:
            return  # restarted already (the fault-free period starts every node at once)
        p.up = True
        p.restarts += 1
        self._boot(p)
        self.log(f"RESTART proposer {p.name}")
        for key in self.key_names:
            if key not in p.outputs:
                # A restarted node serves new client requests: a different input for the key.
                p.inputs[key] = f"v{p.slot}.{key}.r{p.restarts}"
                self.checker.inputs[key].add(p.inputs[key])
                self._request(p, key)

    def _partition(self) -> None:
        self.stats.partitions += 1
        side = [a for a in sorted(self.acceptors) if self.rng.random() < 0.5]
        cut = {(p.name, a) for p in self.proposers for a in side if self.rng.random() < 0.7}
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
        for a in self.acceptors.values():
            if not a.up:
                self._restart_acceptor(a)
        for p in self.proposers:
            if not p.up:
                self._restart_proposer(p, p.incarnation)
        self.master.heal()

    # -- clients ----------------------------------------------------------------------------------

    def _next_tid(self) -> int:
        self._tid += 1
        return self._tid

    def _request(self, p: SimProposer, key: str) -> None:
        """A client asks node ``p`` to decide its input for ``key``."""
        if not p.up or key in p.asking or key in p.outputs:
            return
        assert p.rt is not None
        tid = self._next_tid()
        p.requests[tid] = Own(key)
        p.asking.add(key)
        forward = self.rng.random() < 0.5  # half the clients' requests may go to the leader
        self.log(
            f"P{p.name} propose {key}={p.inputs[key]} (used<= {p.floor(key)}"
            f"{', may forward' if forward else ''})"
        )
        p.rt.propose(tid, key, p.inputs[key], self.now, self.now + REQUEST_DEADLINE, forward)
        self._pump(p)

    def _read(self, p: SimProposer, key: str) -> None:
        if not p.up:
            return
        assert p.rt is not None
        tid = self._next_tid()
        p.requests[tid] = Peek(key, key in self.checker.outputs)
        self.log(f"P{p.name} read {key}")
        p.rt.read(tid, key, self.now, self.now + REQUEST_DEADLINE)
        self._pump(p)

    def carry(self, p: SimProposer, key: str, value: str, incarnation: int) -> bool:
        """The orchestrator asks node ``p`` to carry ``key`` over (False: it cannot now)."""
        if not p.up or p.rt is None or p.live is None or p.live.epoch != self.master.target:
            return False
        tid = self._next_tid()
        p.requests[tid] = Carrying(key, incarnation)
        self.log(f"P{p.name} carry {key} ({value})")
        p.rt.propose(tid, key, value, self.now, self.now + REQUEST_DEADLINE, carry=True)
        self._pump(p)
        return True

    def _done(self, p: SimProposer, done: Done, request=None) -> None:
        if request is None:
            request = p.requests.pop(done.tid, None)
        out = done.outcome
        if request is None:
            return
        key = request.key
        self.log(f"P{p.name} {type(request).__name__} {key}: {out.status} {out.value or ''}")
        if out.status == STALE:
            self._refresh(p)
        if isinstance(request, Peek):
            if out.status == DECIDED:
                self.checker.on_read(p.slot, key, out.value, request.decided_before)
            elif out.status == "not-decided":
                self.checker.on_read(p.slot, key, None, request.decided_before)
            return
        if isinstance(request, Carrying):
            if out.status == DECIDED:
                assert out.value is not None
                self.checker.on_output(p.slot, key, out.value)
            self.master.carried(key, out.value if out.status == DECIDED else None, request)
            return
        if isinstance(request, Forwarded):
            if out.status == DECIDED:
                assert out.value is not None
                self.checker.on_output(p.slot, key, out.value)
            self._answer_forward(request, out.value if out.status == DECIDED else None)
            return
        p.asking.discard(key)
        if out.status == DECIDED:
            assert out.value is not None
            self.stats.decisions += 1
            self.checker.on_output(p.slot, key, out.value)
            p.outputs[key] = out.value
        else:  # the client retries, backing off
            tries = p.retries[key] = p.retries.get(key, 0) + 1
            delay = min(RETRY_FIRST << min(tries - 1, 8), RETRY_MAX)
            self.at(self.rng.randint(delay // 2, delay), lambda: self._request(p, key))

    # -- configurations ---------------------------------------------------------------------------

    def _refresh(self, p: SimProposer) -> None:
        """The node saw a newer epoch: it fetches the cluster document (a little later)."""
        inc = p.incarnation

        def fetch() -> None:
            if p.incarnation == inc and p.up:
                self._adopt(p, self.master.view())
                self._pump(p)

        self.at(self.rng.randint(1, 20), fetch)

    def published(self, live: View) -> None:
        """The master published ``live``: members learn it at once (those up; the others when
        they start), nodes a little later each (some serve on the old view for a while)."""
        for epoch in live.epochs:
            self.epochs[epoch.number] = epoch
            for name in epoch.members:
                if name not in self.acceptors:
                    self.acceptors[name] = SimAcceptor(name, epoch=live.epoch)
        for a in self.acceptors.values():
            if a.up:
                a.epoch = max(a.epoch, live.epoch)
        for p in self.proposers:
            self._refresh(p)

    # -- the host: effects out, events in ---------------------------------------------------------

    def _pump(self, p: SimProposer) -> None:
        rt = p.rt
        if rt is None:
            return
        for effect in rt.take():
            if p.rt is not rt:
                return  # crashed half way
            if isinstance(effect, Send):
                if self.rng.random() < self.faults.crash_mid_send:
                    self._crash_proposer(p)  # dies half way through a broadcast
                    return
                self._send(p, effect)
            elif isinstance(effect, PersistFloor):
                self._persist(p, effect)
            elif isinstance(effect, Forward):
                self._forward(p, effect)
            elif isinstance(effect, Done):
                self._done(p, effect)
        if p.rt is rt:
            self._arm(p)

    def _arm(self, p: SimProposer) -> None:
        """Schedule a tick for the runtime's next timer (only an earlier one than planned)."""
        assert p.rt is not None
        wake = p.rt.next_wake()
        if wake is None:
            return
        when = max(self.now, math.ceil(wake))
        if p.wake_at is None or when < p.wake_at:
            p.wake_at = when
            inc, gen = p.incarnation, p.gen
            self.at(when - self.now, lambda: self._tick(p, inc, gen))

    def _tick(self, p: SimProposer, inc: int, gen: int) -> None:
        if p.incarnation != inc or p.gen != gen or p.rt is None:
            return
        if p.wake_at is not None and p.wake_at <= self.now:
            p.wake_at = None
        p.rt.tick(self.now)
        self._pump(p)

    def _persist(self, p: SimProposer, effect: PersistFloor) -> None:
        """The node's disk commits in submission order, a little later."""
        key, rs = effect.key, effect.rs
        p.submitted[key] = max(p.submitted.get(key, -1), rs)
        p.disk_until = max(p.disk_until, self.now + self.rng.randint(*PERSIST_LATENCY))
        inc, gen = p.incarnation, p.gen

        def durable() -> None:
            if p.incarnation != inc or p.rt is None:
                return  # crashed before the commit: the floor was never durable
            p.used[key] = max(p.used.get(key, -1), rs)
            if p.gen != gen:
                return  # the runtime that asked for it was replaced (a new view)
            p.rt.on_floor_durable(effect.tid, rs, self.now)
            self._pump(p)

        self.at(max(0, p.disk_until - self.now), durable)

    def _member(self, p: SimProposer, index: int) -> str:
        assert p.live is not None
        return p.live.names[index]

    def _send(self, p: SimProposer, effect: Send) -> None:
        f, rng = self.faults, self.rng
        self.stats.sent += 1
        inc, gen = p.incarnation, p.gen
        if self._member(p, effect.member) == p.name:
            # This node's own acceptor, in-process: its change joins the commit of what the
            # node submitted before it (the floor above all), and is lost with it in a crash.
            wait = max(0, p.disk_until - self.now)
            self.at(wait, lambda: self._deliver_local(p, inc, gen, effect))
            return
        if rng.random() < f.loss:
            self.stats.lost += 1
            return
        copies = 2 if rng.random() < f.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            self.at(self._delay(), lambda: self._deliver_request(p, inc, gen, effect))

    def _deliver_local(self, p: SimProposer, inc: int, gen: int, effect: Send) -> None:
        if p.incarnation != inc or p.gen != gen:
            self.stats.lost += 1
            return
        if not self.acceptors[p.name].up:
            self._failed(p, inc, gen, effect, 0)  # its store is unusable: the call fails at once
            return
        reply = self._accept(p, effect)
        if reply is not None:
            self.at(0, lambda: self._deliver_reply(p, inc, gen, effect, reply))

    def _deliver_request(self, p: SimProposer, inc: int, gen: int, effect: Send) -> None:
        server = self._member_at(p, gen, effect.member)
        if server is None:
            return
        if (p.name, server) in self.blocked or not self.acceptors[server].up:
            self.stats.lost += 1
            if self.rng.random() < self.faults.refused:
                self._failed(p, inc, gen, effect, self._delay())
            return
        reply = self._accept(p, effect)
        if reply is None:
            return
        if self.rng.random() < self.faults.loss:
            self.stats.lost += 1
            return
        self.at(self._delay(), lambda: self._deliver_reply(p, inc, gen, effect, reply))

    def _member_at(self, p: SimProposer, gen: int, index: int) -> str | None:
        """The member a message was sent to (its sender may have a newer view since)."""
        if p.gen != gen:
            return None  # the sender's runtime is gone; the message is dropped with it
        return self._member(p, index)

    def _accept(self, p: SimProposer, effect: Send) -> acc.Reply | None:
        """The (up) acceptor's side of one message; None when it stays silent."""
        server, msg = self._member(p, effect.member), effect.message
        a = self.acceptors[server]
        self.stats.delivered += 1
        state = a.state(msg.key)
        if isinstance(msg, Read):
            change, reply = acc.read(state, msg.rs, a.global_fence)
            self.log(f"A{server} <- P{p.name} read {msg.key}@{msg.rs}")
        else:
            change, reply = acc.write(state, msg.rs, msg.value, a.global_fence)
            self.log(f"A{server} <- P{p.name} write {msg.key}@{msg.rs}={msg.value} ok={reply.ok}")
        answer = self.plant.acceptor.handle(a, msg.key, state, change, reply, self._later)
        if answer is not None:
            self.checker.on_reply(server, msg.key, answer)
        return answer

    def _later(self, fn: Callable[[], None]) -> None:
        self.at(self.rng.randint(1, 60), fn)

    def _deliver_reply(
        self, p: SimProposer, inc: int, gen: int, effect: Send, reply: acc.Reply
    ) -> None:
        if p.incarnation != inc or p.gen != gen or p.rt is None:
            self.stats.lost += 1
            return
        server = self._member(p, effect.member)
        if (p.name, server) in self.blocked:
            self.stats.lost += 1
            return
        self.stats.delivered += 1
        self._reachable(p, effect.member)
        assert p.live is not None
        if self.acceptors[server].epoch > p.live.epoch:
            # The member knows a newer epoch: this view is stale. Fetch the new one; the
            # reply is still a true fact, so it is fed first.
            self._refresh(p)
        p.rt.on_reply(effect.tid, effect.member, reply, self.now)
        self._pump(p)

    def _failed(self, p: SimProposer, inc: int, gen: int, effect: Send, delay: int) -> None:
        """The node learns that a message got no reply (refused, reset, timed out)."""

        def notice() -> None:
            if p.incarnation != inc or p.gen != gen or p.rt is None:
                return
            member = effect.member
            if self._member(p, member) != p.name and p.view >> member & 1:
                p.view &= ~(1 << member)
                p.rt.up = p.view
                self._probe(p, inc, gen, member, PROBE_FIRST)
            p.rt.on_send_failed(effect.tid, member, self.now)
            self._pump(p)

        self.at(delay, notice)

    def _reachable(self, p: SimProposer, member: int) -> None:
        if not p.view >> member & 1:
            p.view |= 1 << member
            assert p.rt is not None
            p.rt.up = p.view

    def _probe(self, p: SimProposer, inc: int, gen: int, member: int, delay: int) -> None:
        if member in p.probing:
            return
        p.probing.add(member)

        def probe() -> None:
            if p.incarnation != inc or p.gen != gen:
                p.probing.discard(member)
                return
            p.probing.discard(member)
            if p.view >> member & 1:
                return
            name = self._member(p, member)
            if self.acceptors[name].up and (p.name, name) not in self.blocked:
                self._reachable(p, member)
            else:
                self._probe(p, inc, gen, member, min(2 * delay, PROBE_MAX))

        self.at(self.rng.randint(delay // 2, delay), probe)

    # -- forwarding between nodes -----------------------------------------------------------------

    def _forward(self, p: SimProposer, effect: Forward) -> None:
        inc, gen = p.incarnation, p.gen
        name = self._member(p, effect.member)
        target = next((q for q in self.proposers if q.name == name), None)
        if target is None:
            # No node runs there in this simulation: the request is refused at once.
            self.at(1, lambda: self._forward_answer(p, inc, gen, effect.tid, None))
            return
        if self.rng.random() < self.faults.loss:
            self.stats.lost += 1
            return  # the origin's forward timer ends the wait
        self.at(self._delay(), lambda: self._forward_arrives(target, p, inc, gen, effect))

    def _forward_arrives(
        self, target: SimProposer, origin: SimProposer, inc: int, gen: int, effect: Forward
    ) -> None:
        if not target.up or target.rt is None:
            self.at(self._delay(), lambda: self._forward_answer(origin, inc, gen, effect.tid, None))
            return
        tid = self._next_tid()
        target.requests[tid] = Forwarded(effect.key, origin, inc, effect.tid, gen)
        self.log(f"P{target.name} forwarded {effect.key}={effect.value} from P{origin.name}")
        target.rt.propose(tid, effect.key, effect.value, self.now, self.now + REQUEST_DEADLINE)
        self._pump(target)

    def _answer_forward(self, request: Forwarded, value: str | None) -> None:
        if self.rng.random() < self.faults.loss:
            self.stats.lost += 1
            return
        origin, inc, gen, tid = request.origin, request.incarnation, request.gen, request.tid
        self.at(self._delay(), lambda: self._forward_answer(origin, inc, gen, tid, value))

    def _forward_answer(
        self, p: SimProposer, inc: int, gen: int, tid: int, value: str | None
    ) -> None:
        if p.incarnation != inc or p.gen != gen or p.rt is None:
            return
        p.rt.on_forwarded(tid, value, self.now)
        self._pump(p)
