"""Checks a history of decisions-API operations (see ``history.Op``) for safety violations.

Every key is a write-once register seen through the API, so the checks are per key:

- agreement: every ok observation (a PUT's decided value, a GET's value) is the same value;
- validity: every observed value was proposed for that key by a PUT that was invoked before the
  observation completed and did not certainly fail (ok or indeterminate: Jepsen's ``info``);
- won: a PUT reply's ``won`` says exactly whether the decided value is the value it proposed,
  and (values being unique per PUT) at most one PUT of a key won;
- reads never go back: once any operation completed having seen a decision, no GET invoked
  later answers "not decided" (after a PUT was acknowledged such a read is also counted as a
  lost acknowledged decision: this is how durability across restarts is checked);
- final reads: after the faults heal, every key with an acknowledged PUT is read again and
  must answer its decided value (an indeterminate final read is "unverified", not a pass).

Indeterminate operations never count as observations; an indeterminate PUT may have taken
effect at any time after its invocation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .history import Op

CONTEXT_OPS = 12  # operations shown around a violation


@dataclass
class Violation:
    kind: str  # agreement | validity | won | read-went-back | lost-acknowledged
    key: str
    message: str
    ops: list[int]  # ids of the operations that show it
    context: list[str] = field(default_factory=list)  # described operations around it


@dataclass
class Result:
    violations: list[Violation]
    lost_acknowledged: int  # keys whose acknowledged decision was later read as undecided
    unverified: int  # keys with an acknowledged decision whose final read was indeterminate
    keys: int
    ops: int

    @property
    def valid(self) -> bool:
        return not self.violations

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for v in self.violations:
            out[v.kind] += 1
        return dict(out)


def check(history: Iterable[Op]) -> Result:
    ops = sorted(history, key=lambda o: (o.invoke, o.id))
    per_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        per_key[op.key].append(op)
    violations: list[Violation] = []
    lost: set[str] = set()
    unverified = 0
    for key, kops in per_key.items():
        found, key_lost, key_unverified = _check_key(key, kops)
        violations.extend(found)
        if key_lost:
            lost.add(key)
        unverified += key_unverified
    for v in violations:
        v.context = _context(per_key[v.key], v.ops)
    return Result(violations, len(lost), unverified, len(per_key), len(ops))


def _observations(kops: list[Op]) -> list[Op]:
    """Ok operations that saw a decided value."""
    return [o for o in kops if o.outcome == "ok" and o.value is not None]


def _check_key(key: str, kops: list[Op]) -> tuple[list[Violation], bool, int]:
    out: list[Violation] = []
    seen = _observations(kops)
    # agreement: one value per key
    first = seen[0] if seen else None
    for o in seen[1:]:
        if first is not None and o.value != first.value:
            out.append(
                Violation(
                    "agreement",
                    key,
                    f"{key!r} decided {first.value!r} (op #{first.id}) and {o.value!r} "
                    f"(op #{o.id})",
                    [first.id, o.id],
                )
            )
            break  # one report per key: the rest would repeat it
    # validity: the value was proposed before it was observed, by a PUT that may have happened
    proposals = [o for o in kops if o.kind == "put" and o.outcome != "fail"]
    for o in seen:
        if not any(p.proposed == o.value and p.invoke <= o.complete for p in proposals):
            out.append(
                Violation(
                    "validity",
                    key,
                    f"op #{o.id} saw {o.value!r} for {key!r}, which no PUT proposed before",
                    [o.id],
                )
            )
    # won: the flag says whether the decided value is the proposed one; one winner per key
    winners = []
    for o in kops:
        if o.kind != "put" or o.outcome != "ok":
            continue
        if o.won is None or o.won != (o.value == o.proposed):
            out.append(
                Violation(
                    "won",
                    key,
                    f"op #{o.id} proposed {o.proposed!r}, was told {o.value!r} is decided, "
                    f"but won={o.won}",
                    [o.id],
                )
            )
        if o.won:
            winners.append(o)
    distinct = {w.proposed for w in winners}
    if len(distinct) > 1:
        out.append(
            Violation(
                "won",
                key,
                f"{len(distinct)} PUTs of {key!r} with different values were all told won=true",
                [w.id for w in winners],
            )
        )
    # reads never go back; a read that loses an acknowledged PUT is a lost acknowledgement
    lost = False
    for r in kops:
        if r.kind != "get" or r.outcome != "ok" or r.value is not None:
            continue
        earlier = [o for o in seen if o.complete < r.invoke]
        if not earlier:
            continue
        acked = [o for o in earlier if o.kind == "put"]
        witness = acked[0] if acked else earlier[0]
        kind = "lost-acknowledged" if acked else "read-went-back"
        lost = lost or bool(acked)
        out.append(
            Violation(
                kind,
                key,
                f"op #{r.id} (invoked {r.invoke:.3f}) read {key!r} as not decided after op "
                f"#{witness.id} had seen {witness.value!r} (completed {witness.complete:.3f})",
                [witness.id, r.id],
            )
        )
    # final reads: an acknowledged decision must be read back once the faults are gone
    unverified = 0
    acked_puts = [o for o in kops if o.kind == "put" and o.outcome == "ok"]
    finals = [o for o in kops if o.final]
    if acked_puts and finals:
        definite = [o for o in finals if o.outcome == "ok"]
        if not definite:
            unverified = 1
        elif any(o.value is None for o in definite) and not lost:
            lost = True  # already reported above as lost-acknowledged
    return out, lost, unverified


def _context(kops: list[Op], ids: list[int]) -> list[str]:
    """The operations on the key nearest in time to the ones that show the violation."""
    if not kops:
        return []
    marks = [o for o in kops if o.id in ids]
    centre = sum(o.invoke for o in marks) / len(marks) if marks else kops[0].invoke
    near = sorted(kops, key=lambda o: abs(o.invoke - centre))[:CONTEXT_OPS]
    near.sort(key=lambda o: (o.invoke, o.id))
    return [("* " if o.id in ids else "  ") + o.describe() for o in near]


def report(result: Result, limit: int = 10) -> str:
    """Human-readable summary, with the operations around each violation."""
    lines = [
        f"checker: {result.ops} operations on {result.keys} keys: "
        f"{len(result.violations)} violation(s) {result.by_kind() or ''}, "
        f"lost acknowledged {result.lost_acknowledged}, unverified {result.unverified}"
    ]
    for v in result.violations[:limit]:
        lines.append(f"VIOLATION {v.kind}: {v.message}")
        lines.extend(f"    {c}" for c in v.context)
    if len(result.violations) > limit:
        lines.append(f"... and {len(result.violations) - limit} more")
    return "\n".join(lines)
