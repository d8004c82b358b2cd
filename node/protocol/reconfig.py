"""The reconfiguration orchestrator: a pure state machine from one live view to a new epoch.

Steps, in order (``../shared/design/reconfiguration.md``):

1. ``publish``: record the new epoch at the master (the record says so) and tell the members:
   the live view is now the old epochs plus the new one. Proposals start in the new epoch with
   phase 1 over every live epoch, without fast path or phase-1 skip.
2. ``fence``: a global fence at ``set_id(E+1, 0)`` on every old member that answers; the step
   ends once the fenced members ``F`` meet every phase-2 quorum of every set of every older live
   epoch. From then on no older set can reach a new decision.
3. ``carry``: list every key ``F`` holds below the fence (complete, since the fence came first),
   and run a carry-over proposal for each in the new epoch, in batches, in key order. A carry-over
   only ends with a decision in the new epoch (``Proposer.carry``).
4. ``retire``: record and tell the members that only the new epoch is live.

Events in, actions out, like the proposer runtime: the host carries out ``Save`` (the record, at
the configuration master, before anything else of the same drain), ``Publish`` (the live
epochs), ``Fence``, ``ListKeys``, ``Carry`` and reports back. Every action is idempotent: after a
crash the host builds a new ``Orchestrator`` from the saved record and it resumes the step it
reached (the keys still to carry are listed again from ``F``; keys up to ``carried_upto`` are
skipped). ``retry()`` re-sends whatever failed (the host calls it after a delay).

``refusal`` says why a target cannot be reached safely, before anything is published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .checker import check
from .epochs import Epoch, View, view
from .layout import set_id
from .quorums import Mask

PUBLISH, FENCE, CARRY, RETIRE, DONE = "publish", "fence", "carry", "retire", "done"
STEPS = (PUBLISH, FENCE, CARRY, RETIRE, DONE)
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class Record:
    """What the configuration master keeps about a transition (JSON-friendly)."""

    from_epoch: int
    to_epoch: int
    step: str = PUBLISH
    fenced: tuple[str, ...] = ()  # F, once the fence step is over
    carried: int = 0
    total: int = 0  # keys the carry step carries in all (0 until F's keys are listed)
    carried_upto: str | None = None  # every key <= this one is carried
    last_error: str = ""

    def to_dict(self) -> dict:
        return {
            "fromEpoch": self.from_epoch,
            "toEpoch": self.to_epoch,
            "step": self.step,
            "fenced": list(self.fenced),
            "carried": self.carried,
            "total": self.total,
            "carriedUpto": self.carried_upto,
            "lastError": self.last_error,
        }

    @classmethod
    def from_dict(cls, doc: Mapping) -> Record:
        step = doc.get("step", PUBLISH)
        if step not in STEPS:
            raise ValueError(f"unknown reconfiguration step {step!r}")
        return cls(
            int(doc["fromEpoch"]),
            int(doc["toEpoch"]),
            step,
            tuple(str(n) for n in doc.get("fenced", ())),
            int(doc.get("carried", 0)),
            int(doc.get("total", 0)),
            doc.get("carriedUpto"),
            str(doc.get("lastError", "")),
        )


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Save:
    record: Record


@dataclass(frozen=True)
class Publish:
    """Make these the live epochs at the master and on every member of them."""

    epochs: tuple[Epoch, ...]


@dataclass(frozen=True)
class Fence:
    member: str
    rs: int  # refuse every write below this set, for every key


@dataclass(frozen=True)
class ListKeys:
    member: str
    below: int
    after: str | None  # page cursor


@dataclass(frozen=True)
class Carry:
    key: str
    value: str  # a value the key holds: proposed only if the decision table leaves it free


@dataclass(frozen=True)
class Finished:
    epochs: tuple[Epoch, ...]


Action = Save | Publish | Fence | ListKeys | Carry | Finished


# -- refusals --------------------------------------------------------------------------------


def refusal(live: Sequence[Epoch], target: Epoch) -> str | None:
    """Why moving from the live epochs to ``target`` is unsafe now (None: it may start)."""
    newest = max(live, key=lambda e: e.number)
    if len(live) > 1:
        return (
            f"epoch {newest.number} is still being reached (older epochs are live); "
            "the new configuration waits for it"
        )
    if target.number != newest.number + 1:
        return f"the next epoch must be {newest.number + 1}, got {target.number}"
    report = check(target.layout)
    if not report.safe:
        first = report.violations[0]
        return f"the target layout is unsafe: {first.condition}: {first.message}"
    kept = [m for m in newest.members if m in target.members]
    both = view([newest, target])
    kept_mask = both.members_mask(kept)
    for seg in _old_segments(both):
        if not seg.phase2.hits_every_quorum(kept_mask):
            removed = [m for m in newest.members if m not in target.members]
            return (
                f"removing {', '.join(removed)} at once is more than epoch {newest.number} "
                f"tolerates: the members that stay ({', '.join(kept) or 'none'}) must meet "
                "every phase-2 quorum of the old layout so the fence never depends on a member "
                "being removed; remove fewer members per step"
            )
    return None


def _old_segments(v: View) -> list:
    first = v.layout.first_set
    return [seg for seg in v.layout.segments if seg.start < first]


def fence_complete(v: View, fenced: Mask) -> bool:
    """Do the fenced members meet every phase-2 quorum of every set of every older epoch?"""
    return all(seg.phase2.hits_every_quorum(fenced) for seg in _old_segments(v))


# -- the machine -----------------------------------------------------------------------------


@dataclass
class _Carrying:
    listing: dict[str, str | bool | None] = field(default_factory=dict)  # member -> cursor/done
    keys: dict[str, str] = field(default_factory=dict)  # key -> a value it holds
    queue: list[str] = field(default_factory=list)
    batch: set[str] = field(default_factory=set)
    batch_last: str | None = None


class Orchestrator:
    def __init__(
        self,
        live: Sequence[Epoch],
        target: Epoch,
        record: Record | None = None,
        *,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        """``live``: the epochs live before the transition (one, usually); ``record``: the saved
        record when resuming, None to start."""
        old = tuple(e for e in live if e.number < target.number)
        self.old = old
        self.target = target
        self.view = view([*old, target])
        self.fence_at = set_id(target.number, 0)
        self.batch = max(1, batch)
        self.record = record or Record(old[-1].number, target.number)
        self._out: list[Action] = []
        self._fenced: set[str] = set(self.record.fenced)
        self._failed: list[Action] = []
        self._carry = _Carrying()
        self._batch_size = 0
        self._started = False

    # -- driving ---------------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """The actions of the recorded step (a fresh start, or a resume after a crash)."""
        if not self._started:
            self._started = True
            self._enter(self.record.step, save=self.record.step == PUBLISH)
        return self.take()

    def take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    @property
    def step(self) -> str:
        return self.record.step

    @property
    def done(self) -> bool:
        return self.record.step == DONE

    def retry(self) -> list[Action]:
        """Send again what failed (the host calls this after a delay)."""
        failed, self._failed = self._failed, []
        self._out.extend(failed)
        return self.take()

    # -- events ----------------------------------------------------------------------------------

    def on_published(self, epochs: Sequence[Epoch]) -> list[Action]:
        numbers = sorted(e.number for e in epochs)
        step = self.record.step
        if step == PUBLISH and numbers == [e.number for e in self.view.epochs]:
            self._enter(FENCE)
        elif step == RETIRE and numbers == [self.target.number]:
            self._enter(DONE)
        return self.take()

    def on_publish_failed(self, epochs: Sequence[Epoch], error: str) -> list[Action]:
        self._error(f"publishing epochs {[e.number for e in epochs]} failed: {error}")
        self._failed.append(Publish(tuple(epochs)))
        return self.take()

    def on_fenced(self, member: str) -> list[Action]:
        if self.record.step != FENCE:
            return []
        self._fenced.add(member)
        if self._fence_complete():
            # F goes into the same saved record as the step: a resume lists exactly F's keys.
            self.record = replace(self.record, fenced=tuple(sorted(self._fenced)))
            self._enter(CARRY)
        return self.take()

    def on_fence_failed(self, member: str, error: str) -> list[Action]:
        if self.record.step != FENCE:
            return []
        missing = [m for m in self._old_members() if m not in self._fenced]
        self._error(
            f"waiting for the fence at epoch {self.target.number}: fenced "
            f"{', '.join(sorted(self._fenced)) or 'none'}; not yet {', '.join(missing)} "
            f"({member}: {error})"
        )
        self._failed.append(Fence(member, self.fence_at))
        return self.take()

    def on_keys(
        self, member: str, keys: Mapping[str, Mapping[int, str]], after: str | None
    ) -> list[Action]:
        """One page of ``member``'s keys below the fence (key -> its values); ``after``: the
        cursor of the next page, None when this was the last."""
        c = self._carry
        if self.record.step != CARRY or c.listing.get(member) is True:
            return []
        upto = self.record.carried_upto
        for key, values in keys.items():
            if not values or (upto is not None and key <= upto) or key in c.keys:
                continue
            c.keys[key] = values[max(values)]  # the highest set's value: most likely decided
        if after is None:
            c.listing[member] = True
            if all(done is True for done in c.listing.values()):
                c.queue = sorted(c.keys, reverse=True)
                # After a resume the listing skips keys up to carried_upto: counting them in
                # keeps carried/total those of the whole transition (status, metrics).
                done = self.record.carried if upto is not None else 0
                self.record = replace(self.record, total=done + len(c.queue), carried=done)
                self._out.append(Save(self.record))
                self._next_batch()
        else:
            c.listing[member] = after
            self._out.append(ListKeys(member, self.fence_at, after))
        return self.take()

    def on_list_failed(self, member: str, after: str | None, error: str) -> list[Action]:
        self._error(f"listing the keys of {member} failed: {error}")
        self._failed.append(ListKeys(member, self.fence_at, after))
        return self.take()

    def on_carried(self, key: str) -> list[Action]:
        c = self._carry
        if self.record.step != CARRY or key not in c.batch:
            return []
        c.batch.discard(key)
        if not c.batch:
            self.record = replace(
                self.record,
                carried=self.record.carried + self._batch_size,
                carried_upto=c.batch_last,
                last_error="",
            )
            self._out.append(Save(self.record))
            self._next_batch()
        return self.take()

    def on_carry_failed(self, key: str, error: str) -> list[Action]:
        c = self._carry
        if self.record.step != CARRY or key not in c.batch:
            return []
        self._error(f"carrying {key!r} failed: {error}")
        self._failed.append(Carry(key, c.keys[key]))
        return self.take()

    # -- steps -----------------------------------------------------------------------------------

    def _enter(self, step: str, save: bool = True) -> None:
        if step != self.record.step or save:
            self.record = replace(self.record, step=step, last_error="")
            self._out.append(Save(self.record))
        if step == PUBLISH:
            self._out.append(Publish(self.view.epochs))
        elif step == FENCE:
            # Every old member, not just a quorum's worth: F may be whoever answers first.
            self._out.extend(Fence(m, self.fence_at) for m in self._old_members())
        elif step == CARRY:
            self._after_fence()
        elif step == RETIRE:
            self._out.append(Publish((self.target,)))
        elif step == DONE:
            self._out.append(Finished((self.target,)))

    def _after_fence(self) -> None:
        """List F's keys (the planted ``retire-before-carry`` skips this)."""
        assert self.record.fenced, "the carry step needs the fenced members F"
        c = self._carry
        for member in self.record.fenced:
            c.listing[member] = None
            self._out.append(ListKeys(member, self.fence_at, None))

    def _fence_complete(self) -> bool:
        return fence_complete(self.view, self.view.members_mask(sorted(self._fenced)))

    def _next_batch(self) -> None:
        c = self._carry
        if not c.queue:
            self._enter(RETIRE)
            return
        batch = [c.queue.pop() for _ in range(min(self.batch, len(c.queue)))]
        c.batch = set(batch)
        c.batch_last = batch[-1]
        self._batch_size = len(batch)
        self._out.extend(Carry(key, c.keys[key]) for key in batch)

    def _old_members(self) -> list[str]:
        seen: list[str] = []
        for epoch in self.old:
            seen.extend(m for m in epoch.members if m not in seen)
        return seen

    def _error(self, text: str) -> None:
        self.record = replace(self.record, last_error=text)
