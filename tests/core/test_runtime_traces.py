"""Data-driven traces of the proposer runtime (etcd raft's ``testdata/*.txt`` style).

Each file under ``testdata/runtime/`` is a script of events fed to one ``Runtime``; after every
command the effects it produced are printed and must match the text under ``----``. A block
ends at a blank line; lines starting with ``#`` between blocks are comments. Run with
``GRAVEN_REWRITE=1`` to write the actual output back (then read the diff before committing).

Commands (``key=value`` arguments; ``now=T`` on any command sets the clock first):

    new preset=P members=N [index=I] [slot=S|none] [client] [<layout keys>] [attempt=T]
    up members=0,2                        the members the host believes reachable
    floor key=K rs=R                      what the store says was used for K (the harness
                                          also records every floor the runtime submits)
    propose tid=1 key=K value=V [deadline=T] [forward]
    read tid=2 key=K [deadline=T]
    reply tid=1 from=M [ok=false] [fence=F] [values=RS:V,RS:V]
    failed tid=1 from=M
    durable tid=1 rs=R                    the floor for R is durable
    floor-failed tid=1 rs=R
    forwarded tid=1 value=V|none
    tick                                  fire the timers due at the current time
    abandon tid=1
    state tid=1                           the request's stage, proposer and held messages
    wake                                  when the runtime wants ``tick`` next
"""

from __future__ import annotations

import os
import random
import shlex
from pathlib import Path

import pytest

from graven.node.protocol.acceptor import Reply
from graven.node.protocol.effects import Cancel, Done, Effect, Forward, PersistFloor, Send, Timing
from graven.node.protocol.presets import build
from graven.node.protocol.proposer import Read
from graven.node.protocol.quorums import mask_of, members_of
from graven.node.protocol.runtime import Runtime

DATA = Path(__file__).parent / "testdata" / "runtime"
REWRITE = os.environ.get("GRAVEN_REWRITE") == "1"


Block = tuple[int, list[str], str, str]  # line, comments before it, command, expected output


def parse(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    comments: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            if line.startswith("#"):
                comments.append(line)
            i += 1
            continue
        start, command = i + 1, line
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ValueError(f"line {start}: expected '----' after the command")
        i += 1
        out = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        blocks.append((start, comments, command, "\n".join(out)))
        comments = []
    return blocks


def render(blocks: list[tuple[list[str], str, str]]) -> str:
    parts = []
    for comments, command, out in blocks:
        parts.append("".join(c + "\n" for c in comments) + f"{command}\n----\n{out}".rstrip())
    return "\n\n".join(parts) + "\n"


def fmt_effect(e: Effect) -> str:
    if isinstance(e, Send):
        m = e.message
        if isinstance(m, Read):
            return f"send {e.tid} -> {e.member}: read {m.key}@{m.rs}"
        return f"send {e.tid} -> {e.member}: write {m.key}@{m.rs}={m.value}"
    if isinstance(e, PersistFloor):
        return f"persist {e.tid}: floor {e.key}@{e.rs}"
    if isinstance(e, Forward):
        return f"forward {e.tid} -> {e.member}: {e.key}={e.value} (wait {e.timeout:g})"
    if isinstance(e, Cancel):
        return f"cancel {e.tid}"
    assert isinstance(e, Done)
    o = e.outcome
    parts = [o.status]
    if o.value is not None:
        parts.append(repr(o.value))
    if o.path:
        parts.append(f"path={o.path}")
    if o.missing:
        parts.append(f"missing={members_of(o.missing)}")
    if o.detail:
        parts.append(f"({o.detail})")
    if o.attempts:
        parts.append(f"attempts={o.attempts} round_trips={o.round_trips}")
    if o.conflicts:
        parts.append(f"conflicts={o.conflicts}")
    return f"done {e.tid}: " + " ".join(parts)


class Harness:
    def __init__(self) -> None:
        self.rt: Runtime | None = None
        self.now = 0.0
        self.floors: dict[str, int] = {}

    def run(self, command: str) -> str:
        words = shlex.split(command)
        name, args = words[0], {}
        for w in words[1:]:
            k, _, v = w.partition("=")
            args[k] = v if _ else ""
        if "now" in args:
            self.now = float(args.pop("now"))
        if name == "new":
            return self.new(args)
        rt = self.rt
        assert rt is not None, "start with 'new'"
        now = self.now
        tid = int(args.get("tid", 0))
        if name == "up":
            rt.up = mask_of(int(m) for m in args["members"].split(",") if m)
        elif name == "floor":
            self.floors[args["key"]] = int(args["rs"])
        elif name == "propose":
            deadline = float(args.get("deadline", now + 5))
            rt.propose(tid, args["key"], args["value"], now, deadline, "forward" in args)
        elif name == "read":
            rt.read(tid, args["key"], now, float(args.get("deadline", now + 5)))
        elif name == "reply":
            values = {}
            for item in filter(None, args.get("values", "").split(",")):
                rs, _, v = item.partition(":")
                values[int(rs)] = v
            reply = Reply(args.get("ok", "true") == "true", int(args.get("fence", 0)), values)
            rt.on_reply(tid, int(args["from"]), reply, now)
        elif name == "failed":
            rt.on_send_failed(tid, int(args["from"]), now)
        elif name == "durable":
            rt.on_floor_durable(tid, int(args["rs"]), now)
        elif name == "floor-failed":
            rt.on_floor_failed(tid, int(args["rs"]), "disk full", now)
        elif name == "forwarded":
            value = args["value"]
            rt.on_forwarded(tid, None if value == "none" else value, now)
        elif name == "tick":
            rt.tick(now)
        elif name == "abandon":
            rt.abandon(tid, now)
        elif name == "state":
            return self.state(tid)
        elif name == "wake":
            wake = rt.next_wake()
            return "no timer" if wake is None else f"next wake at {wake:g}"
        else:
            raise ValueError(f"unknown command {name!r}")
        effects = rt.take()
        for e in effects:
            if isinstance(e, PersistFloor):  # the store reports submitted floors too
                self.floors[e.key] = max(self.floors.get(e.key, -1), e.rs)
        return "\n".join(fmt_effect(e) for e in effects) or "(nothing)"

    def new(self, args: dict[str, str]) -> str:
        n = int(args.pop("members"))
        index = int(args.pop("index")) if "index" in args else None
        slot_arg = args.pop("slot", None)
        client = args.pop("client", None) is not None
        timing = Timing(
            attempt_timeout=float(args.pop("attempt", 1.0)),
            backoff_first=0.005,
            backoff_max=0.25,
            candidate_grace=0.05,
        )
        block: dict[str, object] = {k: (int(v) if v.isdigit() else v) for k, v in args.items()}
        layout = build(block, n)
        if slot_arg is None:
            slot = index if index is not None and index < layout.proposers else None
        else:
            slot = None if slot_arg == "none" else int(slot_arg)
        self.floors = {}
        self.now = 0.0
        self.rt = Runtime(
            layout,
            index=index,
            slot=slot,
            timing=timing,
            rng=random.Random(0),
            floors=lambda key: self.floors.get(key, -1),
            client=client,
        )
        role = "client" if client else f"member {index}, slot {slot}"
        return f"{layout.name} on {n} members; {role}"

    def state(self, tid: int) -> str:
        assert self.rt is not None
        req = self.rt._requests.get(tid)
        if req is None:
            return f"request {tid}: over"
        line = f"request {tid}: {req.stage}"
        p = req.proposer
        if p is not None:
            line += f", attempt {p.attempt} {p.phase} rs={p.rs} floor={p.used_floor}"
        if req.held:
            line += f", held for rs={req.held_rs}: " + ", ".join(f"-> {s.server}" for s in req.held)
        return line


FILES = sorted(DATA.glob("*.txt"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_trace(path: Path) -> None:
    harness = Harness()
    actual: list[tuple[list[str], str, str]] = []
    for line, comments, command, expected in parse(path.read_text()):
        got = harness.run(command)
        actual.append((comments, command, got))
        if not REWRITE:
            assert got == expected, f"{path.name}:{line}: {command}"
    if REWRITE:
        path.write_text(render(actual))


def test_there_are_traces() -> None:
    assert len(FILES) >= 5
