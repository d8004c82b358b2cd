"""Safety checks applied to every simulated run, as events happen.

* agreement: all outputs for a key are equal;
* non-triviality: every output is some proposer's input for that key;
* linearizable reads: a read that answers a value answers the decided one, and a read never
  answers "nothing decided" once some client had a decision for the key before it began;
* write-once: what an acceptor reported about a register never changes — a value stays the same
  value, a nil stays nil — and an acknowledged fence is never forgotten.
"""

from __future__ import annotations

from ..protocol.acceptor import Reply
from ..protocol.layout import Layout


class Violation(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Checker:
    def __init__(self, layout: Layout, inputs: dict[str, set[str]]) -> None:
        self.layout = layout
        self.inputs = inputs
        self.outputs: dict[str, str] = {}
        # (acceptor, key) -> (highest fence reported, every value reported)
        self.reported: dict[tuple[int, str], tuple[int, dict[int, str]]] = {}

    def on_output(self, proposer: int, key: str, value: str) -> None:
        if value not in self.inputs[key]:
            raise Violation("non-triviality", f"proposer {proposer} output {value!r} for {key}")
        first = self.outputs.setdefault(key, value)
        if first != value:
            raise Violation(
                "agreement",
                f"proposer {proposer} output {value!r} for {key}, another output {first!r}",
            )

    def on_read(self, reader: int, key: str, value: str | None, decided_before: bool) -> None:
        if value is None:
            if decided_before:
                raise Violation(
                    "linearizability",
                    f"a read at proposer {reader} found nothing decided for {key}, but "
                    f"{self.outputs[key]!r} was decided before the read began",
                )
            return
        self.on_output(reader, key, value)

    def on_reply(self, server: int, key: str, reply: Reply) -> None:
        before = self.reported.get((server, key))
        if before is not None:
            fence, values = before
            if reply.fence < fence:
                raise Violation(
                    "write-once",
                    f"acceptor {server} forgot fence {fence} of {key} (now {reply.fence})",
                )
            for rs, value in values.items():
                now = reply.values.get(rs)
                if now != value:
                    raise Violation(
                        "write-once",
                        f"acceptor {server} register {rs} of {key} changed {value!r} -> {now!r}",
                    )
            for rs in reply.values:
                if rs < fence and rs not in values:
                    raise Violation(
                        "write-once",
                        f"acceptor {server} register {rs} of {key} changed nil -> value",
                    )
            if len(reply.values) == len(values) and reply.fence == fence:
                return
        self.reported[(server, key)] = (reply.fence, dict(reply.values))
