"""Acceptor behaviours for the simulator: the correct one and planted bugs.

Planted bugs prove that the simulator has teeth; tests keep them caught:
* ``nil-below-highest``: keeps only its highest register and reports lower ones as nil;
* ``ack-before-persist``: replies before its change is durable, so a crash loses acknowledged state;
* ``reuse-register-set``: a proposer forgets across a restart which register sets it used
  (handled in ``world.py``, where proposer crashes live).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import acceptor as acc

if TYPE_CHECKING:
    from .world import SimAcceptor, World

PLANTS = ("nil-below-highest", "ack-before-persist", "reuse-register-set")


class AcceptorPlant:
    """Correct acceptor runtime: the change is durable before the reply leaves."""

    def handle(
        self,
        world: World,
        a: SimAcceptor,
        key: str,
        state: acc.KeyState,
        change: acc.Change | None,
        reply: acc.Reply,
    ) -> acc.Reply | None:
        if change is not None:
            acc.apply(state, change)
            durable = a.durable.setdefault(key, acc.KeyState())
            acc.apply(durable, change)
        return reply


class NilBelowHighest(AcceptorPlant):
    def handle(self, world, a, key, state, change, reply):  # type: ignore[override]
        super().handle(world, a, key, state, change, reply)
        for st in (state, a.durable.get(key)):
            if st is not None and st.values:
                top = max(st.values)
                st.values = {top: st.values[top]}
        return acc.Reply(reply.ok, state.fence, dict(state.values))


class AckBeforePersist(AcceptorPlant):
    def handle(self, world, a, key, state, change, reply):  # type: ignore[override]
        if change is not None:
            acc.apply(state, change)
            a.pending.append((key, change))
            world.at(world.rng.randint(1, 60), lambda: self._flush(a, key, change))
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


def plant_behaviour(name: str | None) -> AcceptorPlant:
    if name == "nil-below-highest":
        return NilBelowHighest()
    if name == "ack-before-persist":
        return AckBeforePersist()
    return AcceptorPlant()
