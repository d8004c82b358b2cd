"""The proposer runtime: every request a proposer serves, as one pure state machine.

``Proposer`` decides one key from replies. This runtime owns everything around it that used to
live in the node's asyncio code, so the simulator exercises it under faults too (raft's RawNode
shape: events in, effects out, time given as input):

* requests: ``propose`` and ``read`` (the linearizable read procedure), many at once, each
  with a request id chosen by the host (``tid``) and an absolute deadline;
* attempts and timers: the attempt timeout per register set, jittered exponential backoff from
  an injected ``random.Random``, the request deadline; ``tick(now)`` fires what is due and
  ``next_wake()`` says when to call it next;
* reachability: the host keeps ``up`` (members it believes reachable) current; a request moves
  on at once when the members still able to answer cannot complete its register set, and
  gives up with ``UNREACHABLE`` when they cannot form the layout's quorums at all;
* the fast attempt on a fast first set and its hand-over: to the key's leader (``Forward``)
  after a conflict, else on here with the same ``Proposer`` (what it learnt is kept); a client
  runtime (no acceptor, no slot) hands over to a gateway instead (``HANDED_OVER``);
* one proposal per key at a time here: this slot's restricted sets must each carry at most one
  value, so later requests for the key queue and take the first one's decision;
* the rule that nothing carrying register set ``rs`` leaves the process before the used-set
  floor for ``rs`` is durable (``_must_hold`` and ``on_floor_durable``: the only place).

The host drains ``take()`` after feeding events (once per loop turn is enough) and carries out
the effects in order (``effects.py``). ``plants.py`` of the simulator overrides ``_must_hold``,
``_hand_over`` and ``_judge_read`` to plant bugs; nothing else should.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable

from . import table
from .acceptor import Reply
from .effects import (
    DEADLINE,
    DECIDED,
    HANDED_OVER,
    NO_SLOT,
    NOT_DECIDED,
    STALE,
    STORE_FAILED,
    UNREACHABLE,
    Cancel,
    Done,
    Effect,
    Forward,
    Outcome,
    PersistFloor,
    Send,
    Timing,
)
from .layout import INTERSECTING, Layout, key_hash
from .proposer import READING, WRITING, Action, Backoff, Decide, Persist, Proposer, Read, Stale
from .proposer import Send as CoreSend
from .quorums import Mask

# Stages of a request.
FAST = "fast"  # writing the fast first set, nothing more
FORWARD = "forward"  # handed to the key's leader, waiting for its answer
QUEUED = "queued"  # another request for the key runs here: wait for it
RUN = "run"  # this node's proposer runs the key to a decision
NEW = "new"  # not started yet
PEEK = "peek"  # a read: plain reads from every member, judged by the read rule
OVER = "over"

# Timer kinds.
T_DEADLINE, T_RETRY, T_FAST_END, T_FORWARD_END, T_GRACE = range(5)

Timer = tuple[float, int, int, int, int]  # when, sequence, tid, kind, attempt


class Request:
    """One request's state inside the runtime."""

    __slots__ = (
        "answered",
        "armed",
        "backoffs",
        "candidate",
        "carry",
        "deadline",
        "failed",
        "held",
        "held_rs",
        "holds",
        "key",
        "knowledge",
        "leader",
        "lost",
        "proposer",
        "stage",
        "tid",
        "value",
        "waiting",
    )

    def __init__(self, tid: int, key: str, value: str | None, deadline: float) -> None:
        self.tid = tid
        self.key = key
        self.value = value  # the value to propose (a read's candidate, once it has one)
        self.deadline = deadline
        self.stage = NEW
        self.proposer: Proposer | None = None
        self.leader: int | None = None  # where a conflict on the fast set hands the key
        self.holds = False  # this request is the key's running proposal here
        self.failed: Mask = 0  # members whose messages failed in this stage
        self.answered: Mask = 0  # fast attempt: members that replied
        self.waiting = 0  # fast attempt / read: messages not yet answered or failed
        self.lost = False  # fast attempt: our value can no longer win the fast set
        self.armed = 0  # attempt whose attempt timer is set
        self.backoffs = 0
        self.held_rs = -1  # register set whose floor is not durable yet
        self.held: list[CoreSend] = []  # messages with that set to other members, held
        self.knowledge: table.Knowledge | None = None  # a read's facts
        self.candidate: str | None = None  # a read: a value that may have been decided
        self.carry = False  # a reconfiguration's carry-over (decided only in the newest epoch)


class Runtime:
    def __init__(
        self,
        layout: Layout,
        *,
        index: int | None,
        slot: int | None,
        timing: Timing,
        rng: random.Random,
        floors: Callable[[str], int],
        client: bool = False,
    ) -> None:
        """``index``: this node's member index (its acceptor is in-process: messages to it
        share the floor's commit); ``slot``: its proposer slot (None: it cannot propose and
        hands keys over); ``floors(key)``: the highest restricted set this slot used for the
        key, including floors submitted but not yet durable; ``client``: a smart client's
        runtime (fast attempts only, the rest goes to a gateway)."""
        self.layout = layout
        self.index = index
        self.slot = slot
        self.timing = timing
        self.client = client
        self.up: Mask = layout.members  # members the host believes reachable; keep it current
        self._rng = rng
        self._floors = floors
        self._requests: dict[int, Request] = {}
        self._keys: dict[str, deque[int]] = {}  # keys proposed here -> requests queued behind
        self._timers: list[Timer] = []
        self._seq = 0
        self._out: list[Effect] = []
        self._fast_first = layout.fast_first
        self._fast_quorums = layout.segment_of(layout.first_set).phase2
        last = layout.segments[-1]
        self._last_phases = (last.phase1, last.phase2)
        self._all = layout.members

    # -- requests -------------------------------------------------------------------------------

    def propose(
        self,
        tid: int,
        key: str,
        value: str,
        now: float,
        deadline: float,
        forward: bool = False,
        carry: bool = False,
    ) -> None:
        """Decide ``key`` (``value`` or whatever is decided). ``forward``: a client's request
        that may go to the key's leader (a forwarded one never goes on again). ``carry``: a
        reconfiguration's carry-over: run here and finish only with a decision in the newest
        epoch (``value`` is one the key holds, proposed only if the table leaves it free)."""
        req = self._new(tid, key, value, deadline)
        if carry:
            req.carry = True
            self._local(req, now)
            return
        if self.client:
            if self._fast_possible():
                self._start_fast(req, now)
            else:
                self._finish(req, Outcome(HANDED_OVER), now)
            return
        req.leader = self._forward_target(key) if forward else None
        if req.leader is None:
            self._local(req, now)
        elif self._fast_first and self.slot is not None and self._fast_possible():
            self._start_fast(req, now)
        else:
            self._forward(req, now)

    def read(self, tid: int, key: str, now: float, deadline: float) -> None:
        """Was a value decided before this read began? Plain reads at the first set fence
        nothing, so a read never disturbs proposals."""
        req = self._new(tid, key, None, deadline)
        req.stage = PEEK
        req.knowledge = table.knowledge_for(self.layout)
        req.waiting = self.layout.n
        msg = Read(key, self.layout.base_set)
        self._out.extend(Send(tid, m, msg) for m in range(self.layout.n))

    def abandon(self, tid: int, now: float) -> None:
        """The requester went away: stop, say nothing more about it."""
        req = self._requests.pop(tid, None)
        if req is not None:
            req.stage = OVER
            self._out.append(Cancel(tid))
            self._release(req, None, now)

    # -- events ---------------------------------------------------------------------------------

    def on_reply(self, tid: int, member: int, reply: Reply, now: float) -> None:
        req = self._requests.get(tid)
        if req is None:
            return
        stage = req.stage
        if stage == RUN:
            p = req.proposer
            assert p is not None
            self._apply(req, p.on_reply(member, reply), now)
            self._check_progress(req, now)
        elif stage == FAST:
            self._fast_reply(req, member, reply, now)
        elif stage == PEEK:
            assert req.knowledge is not None
            req.knowledge.learn(member, reply.fence, reply.values)
            req.waiting -= 1
            self._judge(req, now)

    def on_send_failed(self, tid: int, member: int, now: float) -> None:
        """A message got no usable reply (the member is down, refused or timed out)."""
        req = self._requests.get(tid)
        if req is None:
            return
        req.failed |= 1 << member
        if req.stage == RUN:
            self._check_progress(req, now)
        elif req.stage == FAST:
            req.waiting -= 1
            if req.waiting <= 0:
                self._fast_end(req, now)
        elif req.stage == PEEK:
            req.waiting -= 1
            self._judge(req, now)

    def on_floor_durable(self, tid: int, rs: int, now: float) -> None:
        req = self._requests.get(tid)
        if req is None or req.stage != RUN:
            return
        p = req.proposer
        assert p is not None
        actions = p.on_persisted(rs)  # usually nothing: it was told when the floor went out
        if req.held_rs == rs:
            held, req.held, req.held_rs = req.held, [], -1
            if held and p.rs == rs:  # still on that set (else it moved on: never send them)
                actions = [*held, *actions]
        self._apply(req, actions, now)
        self._check_progress(req, now)

    def on_floor_failed(self, tid: int, rs: int, error: object, now: float) -> None:
        req = self._requests.get(tid)
        if req is not None and req.stage == RUN:
            self._finish(req, self._outcome(req, STORE_FAILED, error=error), now)

    def on_forwarded(self, tid: int, value: str | None, now: float) -> None:
        """The leader's answer to ``Forward``: the decided value, or None (no usable answer)."""
        req = self._requests.get(tid)
        if req is None or req.stage != FORWARD:
            return
        if value is not None:
            self._finish(req, Outcome(DECIDED, value), now)
        else:
            self._local(req, now)

    def tick(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, tid, kind, attempt = heapq.heappop(timers)
            req = self._requests.get(tid)
            if req is not None:
                self._fire(req, kind, attempt, now)

    # -- output ---------------------------------------------------------------------------------

    def take(self) -> list[Effect]:
        """The effects produced since the last call, in order."""
        out, self._out = self._out, []
        return out

    @property
    def timers_set(self) -> int:
        """How many timers were ever set: unchanged since the host last asked ``next_wake``,
        the next wake can only have moved later, so a timer the host armed is still early
        enough (it fires, ticks and re-arms)."""
        return self._seq

    def next_wake(self) -> float | None:
        """When ``tick`` has something to do next (stale timers are dropped first)."""
        timers = self._timers
        while timers:
            _, _, tid, kind, attempt = timers[0]
            req = self._requests.get(tid)
            if req is not None and not self._stale(req, kind, attempt):
                return timers[0][0]
            heapq.heappop(timers)
        return None

    def __len__(self) -> int:
        """Requests in flight."""
        return len(self._requests)

    # -- stages ---------------------------------------------------------------------------------

    def _new(self, tid: int, key: str, value: str | None, deadline: float) -> Request:
        if tid in self._requests:
            raise ValueError(f"request id {tid} is already in flight")
        req = Request(tid, key, value, deadline)
        self._requests[tid] = req
        self._timer(deadline, tid, T_DEADLINE)
        return req

    def _fast_possible(self) -> bool:
        """A fast first set whose phase-2 quorums the members that are up can still meet."""
        return self._fast_first and self._fast_quorums.is_quorum(self.up)

    def _forward_target(self, key: str) -> int | None:
        """The key's leader (home, or recovery member on a fast layout) when it is another
        member believed up."""
        leader = self.layout.leader_slot(key_hash(key))
        if leader is None or leader == self.index or leader >= self.layout.n:
            return None
        return leader if self.up >> leader & 1 else None

    def _start_fast(self, req: Request, now: float) -> None:
        """Write the fast first set and stop there (no slot, no floor needed)."""
        assert req.value is not None
        # Slot 0 when there is none: the attempt never reaches a client-restricted set.
        p = Proposer(self.layout, self.slot or 0, req.key)
        req.proposer = p
        req.stage = FAST
        sends = p.start(req.value)
        req.waiting = len(sends)
        tid = req.tid
        for action in sends:
            assert isinstance(action, CoreSend)
            self._out.append(Send(tid, action.server, action.message))
        self._timer(now + self.timing.attempt_timeout, tid, T_FAST_END)

    def _fast_reply(self, req: Request, member: int, reply: Reply, now: float) -> None:
        p = req.proposer
        assert p is not None
        req.waiting -= 1
        req.answered |= 1 << member
        for action in p.on_reply(member, reply):
            if isinstance(action, Decide):
                self._finish(req, self._outcome(req, DECIDED, action.value, action.path), now)
                return
            if isinstance(action, Stale):
                self._out.append(Cancel(req.tid))
                self._finish(req, Outcome(STALE), now)
                return
            if isinstance(action, Backoff):
                # Our value lost, but replies still on their way may show that a racer's value
                # won the fast set: then the key is decided right here.
                req.lost = True
        if req.waiting <= 0:
            self._fast_end(req, now)

    def _fast_end(self, req: Request, now: float) -> None:
        """Every member answered (or failed), or the attempt timed out, without a decision."""
        self._out.append(Cancel(req.tid))
        if self.client:
            silent = 0 if req.lost else self.layout.members & ~req.answered
            self._finish(req, Outcome(HANDED_OVER, missing=silent), now)
        elif req.lost and req.leader is not None:
            self._forward(req, now)  # the leader completes keys that lost the fast set
        else:
            # A member failed or stayed silent: going on here beats another wait elsewhere.
            self._local(req, now)

    def _forward(self, req: Request, now: float) -> None:
        assert req.leader is not None and req.value is not None
        wait = min(self.timing.attempt_timeout, (req.deadline - now) / 2)
        req.stage = FORWARD
        self._out.append(Forward(req.tid, req.leader, req.key, req.value, wait))
        self._timer(now + wait, req.tid, T_FORWARD_END)

    def _local(self, req: Request, now: float) -> None:
        """Propose here, after any other request for the key running here."""
        if self.slot is None:
            self._finish(
                req,
                Outcome(
                    NO_SLOT,
                    detail=f"member {self.index} has no proposer slot: the layout has "
                    f"{self.layout.proposers} proposer slot(s); send proposals to another member",
                ),
                now,
            )
            return
        queue = self._keys.get(req.key)
        if queue is None:
            self._keys[req.key] = deque()
            req.holds = True
            self._run(req, now)
        else:
            req.stage = QUEUED
            queue.append(req.tid)

    def _run(self, req: Request, now: float) -> None:
        assert self.slot is not None and req.value is not None
        floor = self._floors(req.key)
        if req.proposer is None:
            p = req.proposer = Proposer(self.layout, self.slot, req.key, floor, req.carry)
        else:
            p = req.proposer = self._hand_over(req)
            # Another request for this key may have used sets meanwhile: never pick those.
            p.used_floor = max(p.used_floor, floor)
        req.stage = RUN
        req.failed = 0
        req.armed = 0
        req.backoffs = 0
        if not self._reachable(req):
            self._finish(req, self._unreachable(req), now)
            return
        if p.attempt == 0:
            self._apply(req, p.start(req.value), now)
        else:  # resumed after a fast attempt that did not decide: on to the next set
            self._apply(req, p.on_timeout(p.attempt), now)

    def _hand_over(self, req: Request) -> Proposer:
        """The proposer that goes on after a fast attempt: the very same one."""
        assert req.proposer is not None
        return req.proposer

    # -- running a key --------------------------------------------------------------------------

    def _apply(self, req: Request, actions: list[Action], now: float) -> None:
        p = req.proposer
        assert p is not None
        tid = req.tid
        for action in actions:
            if isinstance(action, CoreSend):
                if self._must_hold(req, action):
                    req.held.append(action)
                else:
                    self._out.append(Send(tid, action.server, action.message))
            elif isinstance(action, Persist):
                self._persist(req, action, now)
            elif isinstance(action, Backoff):
                self._backoff(req, action, now)
            elif isinstance(action, Decide):
                self._finish(req, self._outcome(req, DECIDED, action.value, action.path), now)
                return
            elif isinstance(action, Stale):
                self._finish(req, self._outcome(req, STALE), now)
                return
        if req.stage == RUN and p.attempt != req.armed:
            req.armed = p.attempt
            self._timer(now + self.timing.attempt_timeout, tid, T_RETRY, p.attempt)

    def _must_hold(self, req: Request, send: CoreSend) -> bool:
        """Nothing carrying a register set leaves before its floor is durable, except to this
        node's own acceptor: the host submits that message after the floor, in one commit."""
        return send.message.rs == req.held_rs and send.server != self.index

    def _persist(self, req: Request, action: Persist, now: float) -> None:
        """Raise the used-set floor and go on at once: the next step's messages to other
        members wait in ``held`` until the floor is durable (``on_floor_durable``)."""
        p = req.proposer
        assert p is not None
        self._out.append(PersistFloor(req.tid, action.key, action.rs))
        req.held_rs = action.rs  # messages still held for an earlier set are dropped
        req.held = []
        self._apply(req, p.on_persisted(action.rs), now)

    def _backoff(self, req: Request, action: Backoff, now: float) -> None:
        t = self.timing
        req.backoffs += 1
        delay = min(t.backoff_first * (2 ** (req.backoffs - 1)), t.backoff_max)
        if req.backoffs == 1 and self._recovers_fast_set(req):
            delay = 0.0  # nobody to make way for: the key's losers are sent here
        self._timer(now + delay * self._rng.uniform(0.5, 1.0), req.tid, T_RETRY, action.attempt)

    def _recovers_fast_set(self, req: Request) -> bool:
        """This proposer lost a fast set and owns the key's first restricted set (it is the
        key's recovery member): backing off would only delay the recovery everyone waits on."""
        p = req.proposer
        assert p is not None
        if self.layout.segment_of(p.rs).kind != INTERSECTING:
            return False
        return self.layout.leader_slot(p.khash) == p.slot

    def _possible(self, req: Request) -> Mask:
        """Members that may still answer this request."""
        return self.up & ~req.failed & self.layout.members

    def _reachable(self, req: Request) -> bool:
        """Can the members that may answer complete both phases of the last segment (it is
        infinite, so every retry can reach it)?"""
        possible = self._possible(req)
        phase1, phase2 = self._last_phases
        return phase1.is_quorum(possible) and phase2.is_quorum(possible)

    def _check_progress(self, req: Request, now: float) -> None:
        if req.stage != RUN:
            return
        if req.failed == 0 and self.up == self._all:
            return  # everyone may answer: nothing is stuck (the common case, kept cheap)
        if not self._reachable(req):
            self._finish(req, self._unreachable(req), now)
            return
        p = req.proposer
        assert p is not None
        if p.rs < 0:
            return
        possible = self._possible(req)
        seg = self.layout.segment_of(p.rs)
        if (p.phase == READING and not seg.phase1.is_quorum(possible)) or (
            p.phase == WRITING and not seg.phase2.is_quorum(possible)
        ):
            # The current register set cannot complete without the missing members: do not
            # wait for the attempt timer, move to the next set (the last segment is reachable).
            self._apply(req, p.on_timeout(p.attempt), now)

    # -- reads ----------------------------------------------------------------------------------

    def _judge(self, req: Request, now: float) -> None:
        outcome = self._judge_read(req)
        if outcome.state == "decided":
            self._finish(req, Outcome(DECIDED, outcome.value, "read"), now)
            return
        if outcome.state == "none":
            self._finish(req, Outcome(NOT_DECIDED), now)
            return
        if outcome.state == "stale":
            self._finish(req, Outcome(STALE), now)
            return
        if outcome.value is not None and req.candidate is None:
            # It may have been decided before the read began; other replies may still settle
            # the read without a proposal, so wait a little for them.
            req.candidate = outcome.value
            self._timer(now + self.timing.candidate_grace, req.tid, T_GRACE)
        if req.waiting <= 0:
            self._peek_end(req, now)

    def _judge_read(self, req: Request) -> table.ReadOutcome:
        assert req.knowledge is not None
        return table.read_outcome(self.layout, req.knowledge)

    def _peek_end(self, req: Request, now: float) -> None:
        if req.candidate is not None and now < req.deadline:
            # Finish it with that very value: whatever is decided comes back.
            self._out.append(Cancel(req.tid))
            req.value = req.candidate
            self._local(req, now)
        elif now >= req.deadline or req.candidate is not None:
            self._finish(
                req,
                Outcome(DEADLINE, detail="the members did not answer the read within the deadline"),
                now,
            )
        else:
            assert req.knowledge is not None
            silent = self.layout.members & ~req.knowledge.replied
            self._finish(req, Outcome(UNREACHABLE, missing=silent | req.failed), now)

    # -- timers ---------------------------------------------------------------------------------

    def _timer(self, when: float, tid: int, kind: int, attempt: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, tid, kind, attempt))

    def _stale(self, req: Request, kind: int, attempt: int) -> bool:
        stage = req.stage
        if kind == T_RETRY:
            return stage != RUN or req.proposer is None or req.proposer.attempt != attempt
        if kind == T_FAST_END:
            return stage != FAST
        if kind == T_FORWARD_END:
            return stage != FORWARD
        if kind == T_GRACE:
            return stage != PEEK
        return False

    def _fire(self, req: Request, kind: int, attempt: int, now: float) -> None:
        if self._stale(req, kind, attempt):
            return
        if kind == T_DEADLINE:
            self._finish(req, self._deadline(req), now)
        elif kind == T_RETRY:
            p = req.proposer
            assert p is not None
            self._apply(req, p.on_timeout(attempt), now)
            self._check_progress(req, now)
        elif kind == T_FAST_END:
            self._fast_end(req, now)
        elif kind == T_FORWARD_END:
            self._out.append(Cancel(req.tid))
            self._local(req, now)
        elif kind == T_GRACE:
            self._peek_end(req, now)

    # -- endings --------------------------------------------------------------------------------

    def _deadline(self, req: Request) -> Outcome:
        stage = req.stage
        if stage == QUEUED:
            where = "another proposal for this key on this node did not finish in time"
            return Outcome(DEADLINE, detail=where)
        if stage == PEEK:
            return Outcome(
                DEADLINE, detail="the members did not answer the read within the deadline"
            )
        p = req.proposer
        if stage == RUN and p is not None:
            where = f"attempt {p.attempt} ({p.phase} register set {p.rs})"
            missing = self.layout.members & ~self._possible(req)
        else:
            where = "fast attempt" if stage == FAST else f"forwarded to member {req.leader}"
            missing = 0
        return self._outcome(
            req,
            DEADLINE,
            detail=f"no decision within the request deadline; {where}",
            missing=missing,
        )

    def _unreachable(self, req: Request) -> Outcome:
        missing = self.layout.members & ~self._possible(req)
        return self._outcome(req, UNREACHABLE, missing=missing)

    def _outcome(
        self,
        req: Request,
        status: str,
        value: str | None = None,
        path: str | None = None,
        *,
        missing: Mask = 0,
        detail: str = "",
        error: object = None,
    ) -> Outcome:
        """An outcome with the proposer's counts (for metrics)."""
        p = req.proposer
        if p is None:
            return Outcome(status, value, path, missing, detail, error)
        return Outcome(
            status, value, path, missing, detail, error, p.attempt, p.conflicts, p.round_trips
        )

    def _finish(self, req: Request, outcome: Outcome, now: float) -> None:
        del self._requests[req.tid]
        req.stage = OVER
        self._out.append(Done(req.tid, outcome))
        self._release(req, outcome, now)

    def _release(self, req: Request, outcome: Outcome | None, now: float) -> None:
        """Pass the key on: its queued requests take a decision, or the next one runs."""
        if not req.holds:
            return
        req.holds = False
        queue = self._keys[req.key]
        decided = outcome is not None and outcome.status == DECIDED
        while queue:
            waiter = self._requests.get(queue.popleft())
            if waiter is None or waiter.stage != QUEUED:
                continue
            if decided and not waiter.carry:
                # (a carry-over needs the value in the newest epoch: it runs itself)
                assert outcome is not None
                self._finish(waiter, Outcome(DECIDED, outcome.value), now)
            else:
                waiter.holds = True
                self._run(waiter, now)
                return
        del self._keys[req.key]
