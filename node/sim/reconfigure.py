"""The configuration master of a simulated cluster: it drives the real reconfiguration
orchestrator (``protocol.reconfig``) through the simulated network, and crashes now and then.

The master's record and live epochs are durable (the master is the Kubernetes API or the local
data dir in real life). Its orchestrator is not: a crash drops it, and the restarted one resumes
from the saved record. Fences and key listings travel to the acceptors with delays and losses;
carry-overs run as proposals on a node that knows the new epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..protocol import reconfig as rc
from ..protocol.epochs import Epoch, View
from ..protocol.epochs import view as make_view
from ..protocol.presets import build

if TYPE_CHECKING:
    from .nodes import Carrying
    from .world import World

RETRY = (20, 80)  # the orchestrator re-sends what failed after this long
RESUME = (20, 200)  # a crashed orchestrator is back after this long
PAUSE = (50, 400)  # between two reconfigurations
CARRY_TIMEOUT = 2000  # a carry-over call with no answer by then failed


@dataclass(frozen=True)
class Step:
    """One reconfiguration: the target's member count and layout block."""

    members: int
    block: dict[str, Any] = field(default_factory=lambda: {"preset": "paxos"})


def parse_steps(text: str) -> tuple[Step, ...]:
    """``"4,3:fast,3:flexible q1=2 q2=2"`` -> steps (members[:preset [k=v ...]])."""
    steps = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        count, _, rest = part.partition(":")
        if not count.strip().isdigit():
            raise ValueError(f"a reconfiguration step is MEMBERS[:PRESET [k=v ...]], got {part!r}")
        block: dict[str, Any] = {"preset": "paxos"}
        words = rest.split()
        if words:
            block = {"preset": words[0]}
            for word in words[1:]:
                k, sep, v = word.partition("=")
                if not sep:
                    raise ValueError(f"expected key=value in {part!r}, got {word!r}")
                block[k] = int(v) if v.isdigit() else v
        steps.append(Step(int(count), block))
    return tuple(steps)


class Master:
    def __init__(self, world: World, live: Sequence[Epoch], steps: Sequence[Step]) -> None:
        self.world = world
        self.live: tuple[Epoch, ...] = tuple(live)
        self.steps = list(steps)
        self.next_step = 0
        self.target_epoch: Epoch | None = None
        self.record: rc.Record | None = None
        self.orch: rc.Orchestrator | None = None
        self.incarnation = 0
        self.retry_armed = False
        self.refused: list[str] = []
        self.pending: dict[str, int] = {}  # key -> the carry call waiting for an answer
        self.calls = 0

    # -- what nodes and members see --------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return max(e.number for e in self.live)

    @property
    def target(self) -> int:
        return self.target_epoch.number if self.target_epoch is not None else self.epoch

    @property
    def finished(self) -> bool:
        return self.target_epoch is None and self.next_step >= len(self.steps)

    def view(self) -> View:
        return make_view(self.live)

    def describe(self) -> str:
        if self.record is None:
            return f"epoch {self.epoch}, step {self.next_step} of {len(self.steps)} not started"
        r = self.record
        return f"{r.from_epoch}->{r.to_epoch} at {r.step} ({r.last_error or 'no error'})"

    # -- running ---------------------------------------------------------------------------------

    def schedule(self, delay: int) -> None:
        self.world.at(delay, self._begin)

    def _begin(self) -> None:
        if self.target_epoch is not None or self.next_step >= len(self.steps):
            return
        step = self.steps[self.next_step]
        number = self.epoch + 1
        names = tuple(f"m{i}" for i in range(step.members))
        target = Epoch(number, names, build(step.block, step.members, number))
        why = rc.refusal(self.live, target)
        if why is not None:
            self.refused.append(why)
            self.world.log(f"MASTER refuses epoch {number}: {why}")
            self.next_step += 1
            self.schedule(self.world.rng.randint(*PAUSE))
            return
        self.target_epoch = target
        self.record = None
        self.world.log(
            f"MASTER reconfigures to epoch {number}: {step.members} members, {step.block}"
        )
        self._run()

    def _run(self) -> None:
        assert self.target_epoch is not None
        old = tuple(e for e in self.live if e.number < self.target_epoch.number)
        cls = self.world.plant.orchestrator
        self.orch = cls(old, self.target_epoch, self.record, batch=4)
        self._carry_out(self.orch.start())

    def crash(self) -> None:
        if self.orch is None:
            return
        self.orch = None
        self.incarnation += 1
        self.retry_armed = False
        self.world.log("CRASH orchestrator")
        inc = self.incarnation
        self.world.at(self.world.rng.randint(*RESUME), lambda: self._resume(inc))

    def _resume(self, inc: int) -> None:
        if inc != self.incarnation or self.orch is not None or self.target_epoch is None:
            return
        self.world.log(f"RESUME orchestrator at {self.record.step if self.record else 'start'}")
        self._run()

    def heal(self) -> None:
        if self.orch is None and self.target_epoch is not None:
            self.incarnation += 1
            self._run()

    # -- effects ---------------------------------------------------------------------------------

    def _carry_out(self, actions: list[rc.Action]) -> None:
        world, inc = self.world, self.incarnation
        for action in actions:
            if self.orch is None or inc != self.incarnation:
                return
            if isinstance(action, rc.Save):
                self.record = action.record
            elif isinstance(action, rc.Publish):
                self.live = action.epochs
                world.log(f"MASTER publishes epochs {[e.number for e in action.epochs]}")
                world.published(self.view())
                epochs = action.epochs
                world.at(1, lambda e=epochs: self._event(inc, lambda o: o.on_published(e)))
            elif isinstance(action, rc.Fence):
                self._fence(inc, action)
            elif isinstance(action, rc.ListKeys):
                self._list(inc, action)
            elif isinstance(action, rc.Carry):
                self._carry(inc, action)
            elif isinstance(action, rc.Finished):
                world.stats.reconfigurations += 1
                world.log(f"MASTER finished: epoch {self.epoch}")
                self.orch = None
                self.target_epoch = None
                self.next_step += 1
                if self.next_step < len(self.steps):
                    self.schedule(world.rng.randint(*PAUSE))
        if self.orch is not None and inc == self.incarnation:
            self._arm_retry()

    def _event(self, inc: int, call) -> None:
        if self.orch is None or inc != self.incarnation:
            return
        self._carry_out(call(self.orch))

    def _arm_retry(self) -> None:
        orch = self.orch
        if self.retry_armed or orch is None or not orch._failed:
            return
        self.retry_armed = True
        inc = self.incarnation

        def fire() -> None:
            self.retry_armed = False
            self._event(inc, lambda o: o.retry())

        self.world.at(self.world.rng.randint(*RETRY), fire)

    def _reaches(self, member: str) -> bool:
        world = self.world
        a = world.acceptors.get(member)
        return a is not None and a.up and world.rng.random() >= world.faults.loss

    def _fence(self, inc: int, action: rc.Fence) -> None:
        world = self.world
        member = action.member

        def arrive() -> None:
            if not self._reaches(member):
                world.at(
                    world._delay(),
                    lambda: self._event(inc, lambda o: o.on_fence_failed(member, "no answer")),
                )
                return
            a = world.acceptors[member]
            a.global_fence = max(a.global_fence, action.rs)  # durable before the answer
            world.log(f"A{member} fenced below {action.rs}")
            world.at(world._delay(), lambda: self._event(inc, lambda o: o.on_fenced(member)))

        world.at(world._delay(), arrive)

    def _list(self, inc: int, action: rc.ListKeys) -> None:
        world = self.world
        member = action.member

        def arrive() -> None:
            if not self._reaches(member):
                world.at(
                    world._delay(),
                    lambda: self._event(
                        inc, lambda o: o.on_list_failed(member, action.after, "no answer")
                    ),
                )
                return
            a = world.acceptors[member]
            keys = {}
            for key, state in a.memory.items():
                values = {rs: v for rs, v in state.values.items() if rs < action.below}
                if values:
                    keys[key] = values
            world.at(
                world._delay(), lambda: self._event(inc, lambda o: o.on_keys(member, keys, None))
            )

        world.at(world._delay(), arrive)

    def _carry(self, inc: int, action: rc.Carry) -> None:
        world = self.world
        nodes = [p for p in world.proposers if p.up]
        node = world.rng.choice(nodes) if nodes else None
        key = action.key
        if node is None or not world.carry(node, key, action.value, inc):
            why = "no node knows the new epoch yet"
            world.at(
                world._delay(), lambda: self._event(inc, lambda o: o.on_carry_failed(key, why))
            )
            return
        # The call times out like an HTTP request would (the node may crash and forget it).
        self.calls += 1
        call = self.pending[key] = self.calls

        def timeout() -> None:
            if self.pending.get(key) == call:
                del self.pending[key]
                self._event(inc, lambda o: o.on_carry_failed(key, "timed out"))

        world.at(CARRY_TIMEOUT, timeout)

    def carried(self, key: str, value: str | None, request: Carrying) -> None:
        if request.incarnation != self.incarnation:
            return
        self.pending.pop(key, None)
        if value is None:
            self._event(self.incarnation, lambda o: o.on_carry_failed(key, "not decided"))
        else:
            world = self.world
            world.stats.carried += 1
            self._event(self.incarnation, lambda o: o.on_carried(key))
