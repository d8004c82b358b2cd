"""Every planted bug of the simulator, in one place. They prove the simulator has teeth; tests
keep each one caught (``graven simulate ... --plant NAME`` exits 1).

Acceptor:
* ``nil-below-highest``: keeps only its highest register and reports lower ones as nil;
* ``ack-before-persist``: replies before its change is durable, so a crash loses acknowledged
  state.

Proposer node:
* ``reuse-register-set``: forgets across a restart which register sets it used;
* ``release-before-durable``: the runtime lets messages carrying a register set leave before
  that set's used-set floor is durable, so a crash in between lets the set be used twice;
* ``resume-forgets-fast``: after a fast attempt, the hand-over tells the resumed proposer only
  which members answered, and it takes their answers for "nothing below the set I resume in";
* ``read-trusts-one``: the read procedure judges from the first reply alone.

Reconfiguration (runs with ``--reconfigure``):
* ``ignore-older-epochs``: nodes propose and read in the newest epoch alone, ignoring the older
  epochs that are still live;
* ``early-fast-path``: the fast path and the phase-1 skip are used in the new epoch before the
  older ones are retired;
* ``retire-before-carry``: the orchestrator retires the old epoch right after the fence, without
  carrying the keys over;
* ``fence-missing-quorum``: the orchestrator takes the fence as complete once one old member
  fenced, though that member misses some phase-2 quorum of the old epoch.

Nothing here is imported by the runtime or the node: a plant replaces a part in the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from ..protocol import acceptor as acc
from ..protocol import reconfig as rc
from ..protocol import table
from ..protocol.epochs import View, view
from ..protocol.layout import Layout
from ..protocol.proposer import IDLE, Proposer
from ..protocol.proposer import Send as CoreSend
from ..protocol.quorums import members_of
from ..protocol.runtime import Request, Runtime
from .nodes import AcceptorBehaviour, Later, SimAcceptor, SimProposer

PLANTS = (
    "nil-below-highest",
    "ack-before-persist",
    "reuse-register-set",
    "release-before-durable",
    "resume-forgets-fast",
    "read-trusts-one",
    "ignore-older-epochs",
    "early-fast-path",
    "retire-before-carry",
    "fence-missing-quorum",
)
RECONFIG_PLANTS = PLANTS[-4:]


class NilBelowHighest(AcceptorBehaviour):
    def handle(self, a, key, state, change, reply, later):  # type: ignore[override]
        super().handle(a, key, state, change, reply, later)
        for st in (state, a.durable.get(key)):
            if st is not None and st.values:
                top = max(st.values)
                st.values = {top: st.values[top]}
        return acc.Reply(reply.ok, state.fence, dict(state.values))


class AckBeforePersist(AcceptorBehaviour):
    def handle(self, a, key, state, change, reply, later: Later):  # type: ignore[override]
        if change is not None:
            acc.apply(state, change)
            a.pending.append((key, change))
            later(lambda: self._flush(a, key, change))
        return reply

    @staticmethod
    def _flush(a: SimAcceptor, key: str, change: acc.Change) -> None:
        if (key, change) not in a.pending:
            return  # lost in a crash
        a.pending.remove((key, change))
        durable = a.durable.setdefault(key, acc.KeyState())
        if change.register_set is not None and change.register_set in durable.values:
            return
        acc.apply(durable, change)


class ReleaseBeforeDurable(Runtime):
    def _must_hold(self, req: Request, send: CoreSend) -> bool:
        return False


class ResumeForgetsFast(Runtime):
    def _hand_over(self, req: Request) -> Proposer:
        old = req.proposer
        assert old is not None
        fresh = Proposer(self.layout, old.slot, old.key, old.used_floor)
        fresh.own, fresh.attempt, fresh.rs, fresh.phase = old.own, old.attempt, old.rs, IDLE
        above = max(old.rs, old.used_floor, old.knowledge.max_known())
        resume_at = self.layout.next_owned(old.slot, old.khash, above)
        for member in members_of(old.knowledge.replied):
            fresh.knowledge.learn(member, resume_at, {})
        return fresh


class ReadTrustsOne(Runtime):
    def _judge_read(self, req: Request) -> table.ReadOutcome:
        knowledge = req.knowledge
        assert knowledge is not None
        for held in knowledge.held:
            if held:
                return table.ReadOutcome("decided", next(iter(held.values())))
        if knowledge.replied:
            return table.ReadOutcome("none")
        return table.ReadOutcome("unknown")


@dataclass(frozen=True)
class _NoTransition(Layout):
    """A live view that claims no older epoch is live (fast path and set-0 skip allowed)."""

    @property
    def transition(self) -> bool:
        return False


def _ignore_older(live: View) -> View:
    return view([live.newest])


def _early_fast(live: View) -> View:
    layout = _NoTransition(**{f.name: getattr(live.layout, f.name) for f in fields(Layout)})
    return replace(live, layout=layout)


class RetireBeforeCarry(rc.Orchestrator):
    def _after_fence(self) -> None:
        self._enter(rc.RETIRE)


class FenceMissingQuorum(rc.Orchestrator):
    def _fence_complete(self) -> bool:
        return bool(self._fenced)


def _same(live: View) -> View:
    return live


@dataclass(frozen=True)
class Plant:
    """What a run uses: correct parts unless a bug is planted."""

    acceptor: AcceptorBehaviour
    runtime: type[Runtime]
    forget_floors_on_crash: bool = False
    live_view: Callable[[View], View] = _same
    orchestrator: type[rc.Orchestrator] = rc.Orchestrator

    def on_proposer_crash(self, p: SimProposer) -> None:
        if self.forget_floors_on_crash:
            p.used.clear()  # the planted bug: forgets which register sets it used


def plant(name: str | None) -> Plant:
    if name is not None and name not in PLANTS:
        raise ValueError(f"unknown plant {name!r}; choose one of {', '.join(PLANTS)}")
    acceptor = {
        "nil-below-highest": NilBelowHighest,
        "ack-before-persist": AckBeforePersist,
    }.get(name or "", AcceptorBehaviour)()
    runtime = {
        "release-before-durable": ReleaseBeforeDurable,
        "resume-forgets-fast": ResumeForgetsFast,
        "read-trusts-one": ReadTrustsOne,
    }.get(name or "", Runtime)
    live_view = {"ignore-older-epochs": _ignore_older, "early-fast-path": _early_fast}.get(
        name or "", _same
    )
    orchestrator = {
        "retire-before-carry": RetireBeforeCarry,
        "fence-missing-quorum": FenceMissingQuorum,
    }.get(name or "", rc.Orchestrator)
    return Plant(
        acceptor,
        runtime,
        forget_floors_on_crash=name == "reuse-register-set",
        live_view=live_view,
        orchestrator=orchestrator,
    )
