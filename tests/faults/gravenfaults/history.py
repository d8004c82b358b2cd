"""One operation of the decisions API as a client saw it (invoke and completion times).

Outcomes follow Jepsen: ``ok`` (the reply says what happened), ``fail`` (it certainly did not
happen: a 4xx refusal) and ``info`` (unknown: a timeout, a reset connection, a 5xx; the PUT may
take effect at any moment after its invocation, even after the end of the history).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["put", "get"]
Outcome = Literal["ok", "fail", "info"]


@dataclass(frozen=True, slots=True)
class Op:
    id: int
    client: int
    kind: Kind
    key: str
    invoke: float  # monotonic seconds
    complete: float
    outcome: Outcome
    proposed: str | None = None  # put: the value sent
    value: str | None = None  # ok put: the decided value; ok get: the value, None = not decided
    won: bool | None = None  # ok put: the `won` flag of the reply
    member: str = ""  # the member the request went to
    error: str = ""  # fail/info: what was seen (status + code, or the exception)
    final: bool = False  # a read of the final phase (after every fault healed)

    def describe(self) -> str:
        what = f"put {self.key}={self.proposed!r}" if self.kind == "put" else f"get {self.key}"
        if self.outcome == "ok":
            got = "not decided" if self.value is None else repr(self.value)
            extra = f" won={self.won}" if self.kind == "put" else ""
            res = f"-> {got}{extra}"
        else:
            res = f"-> {self.outcome} ({self.error})"
        return (
            f"#{self.id} c{self.client} [{self.invoke:.3f}..{self.complete:.3f}] "
            f"{what} {res} via {self.member or '?'}"
        )


def dump_history(ops: list[Op], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for op in ops:
            fh.write(json.dumps(asdict(op)) + "\n")


def load_history(path: Path) -> list[Op]:
    with open(path, encoding="utf-8") as fh:
        return [Op(**json.loads(line)) for line in fh if line.strip()]
