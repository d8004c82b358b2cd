"""The simulated members: an acceptor (volatile and durable state) and a proposer node.

A proposer node wraps one ``Runtime`` (the very class a Graven node's gateway drives) and the
little a process keeps: the used-set floors on its disk, the requests it serves, which
acceptors it believes reachable. A crash drops everything but the disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol import acceptor as acc
from ..protocol.epochs import View
from ..protocol.quorums import Mask
from ..protocol.runtime import Runtime

Later = Callable[[Callable[[], None]], None]  # run a callback a little later (virtual time)


@dataclass
class SimAcceptor:
    name: str
    durable: dict[str, acc.KeyState] = field(default_factory=dict)
    memory: dict[str, acc.KeyState] = field(default_factory=dict)
    up: bool = True
    pending: list[tuple[str, acc.Change]] = field(default_factory=list)  # not yet durable
    global_fence: int = 0  # durable before it is acknowledged
    epoch: int = 0  # newest epoch this member was told of (persisted, never goes back)

    def state(self, key: str) -> acc.KeyState:
        st = self.memory.get(key)
        if st is None:
            st = self.memory[key] = acc.KeyState()
        return st


class AcceptorBehaviour:
    """The correct acceptor runtime: the change is durable before the reply leaves."""

    def handle(
        self,
        a: SimAcceptor,
        key: str,
        state: acc.KeyState,
        change: acc.Change | None,
        reply: acc.Reply,
        later: Later,
    ) -> acc.Reply | None:
        if change is not None:
            acc.apply(state, change)
            durable = a.durable.setdefault(key, acc.KeyState())
            acc.apply(durable, change)
        return reply


@dataclass(frozen=True, slots=True)
class Own:
    """A client's request to this node for one of its inputs."""

    key: str


@dataclass(frozen=True, slots=True)
class Peek:
    key: str
    decided_before: bool  # some client had a decision for the key when the read began


@dataclass(frozen=True, slots=True)
class Carrying:
    """A carry-over the reconfiguration orchestrator asked this node to run."""

    key: str
    incarnation: int  # the orchestrator's


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A request another node handed to this one (its key's leader)."""

    key: str
    origin: SimProposer
    incarnation: int
    tid: int
    gen: int = 0  # the origin's runtime generation


Request = Own | Peek | Forwarded | Carrying


@dataclass(eq=False)
class SimProposer:
    name: str
    inputs: dict[str, str]
    live: View | None = None  # the live epochs this node works with
    slot: int = 0  # its proposer slot (index in the newest epoch) in ``live``
    used: dict[str, int] = field(default_factory=dict)  # durable: highest set used per key
    submitted: dict[str, int] = field(default_factory=dict)  # this incarnation, maybe not durable
    rt: Runtime | None = None
    up: bool = True
    restarts: int = 0
    incarnation: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    requests: dict[int, Request] = field(default_factory=dict)
    asking: set[str] = field(default_factory=set)  # keys with an own request in flight
    retries: dict[str, int] = field(default_factory=dict)  # failed requests per key, in a row
    view: Mask = 0  # acceptors this node believes reachable
    probing: set[int] = field(default_factory=set)
    disk_until: int = 0  # when everything submitted to its disk so far is durable
    wake_at: int | None = None  # when the runtime's next timer is scheduled
    gen: int = 0  # runtime generation: a new view starts a new runtime

    def floor(self, key: str) -> int:
        """What the node's store answers: the highest floor submitted, durable or not."""
        return max(self.used.get(key, -1), self.submitted.get(key, -1))
