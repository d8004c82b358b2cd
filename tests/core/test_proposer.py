"""The proposer state machine, driven by hand against real acceptor functions."""

from __future__ import annotations

from graven.node.protocol import acceptor as acc
from graven.node.protocol.layout import key_hash
from graven.node.protocol.presets import build
from graven.node.protocol.proposer import Backoff, Decide, Persist, Proposer, Read, Send, Write


class Servers:
    """Acceptor states plus helpers to answer a proposer's Sends (in order, or selectively)."""

    def __init__(self, n: int) -> None:
        self.states = [acc.KeyState() for _ in range(n)]

    def answer(self, send: Send) -> acc.Reply:
        state = self.states[send.server]
        msg = send.message
        if isinstance(msg, Read):
            change, reply = acc.read(state, msg.rs)
        else:
            change, reply = acc.write(state, msg.rs, msg.value)
        if change is not None:
            acc.apply(state, change)
        return reply


def key_homed_at(config, slot: int) -> str:
    return next(
        k for k in (f"key{i}" for i in range(1000)) if config.home_slot(key_hash(k)) == slot
    )


def deliver(p: Proposer, servers: Servers, actions: list, only: set[int] | None = None) -> list:
    """Answer every Send (or those to ``only``), feed replies back, return the new actions."""
    out = []
    for action in actions:
        if isinstance(action, Send) and (only is None or action.server in only):
            out.extend(p.on_reply(action.server, servers.answer(action)))
    return out


def sends(actions: list, kind: type) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and isinstance(a.message, kind)]


def test_home_proposer_skips_phase_1_and_decides_in_one_round_trip():
    config = build({"preset": "paxos"}, 3)
    key = key_homed_at(config, 0)
    p, servers = Proposer(config, 0, key), Servers(3)
    actions = p.start("v")
    assert actions == [Persist(key, 0)]  # durable before any write of a restricted set
    actions = p.on_persisted(0)
    assert len(sends(actions, Write)) == 3 and not sends(actions, Read)
    out = deliver(p, servers, actions, only={0, 1})
    assert out == [Decide(key, "v", "classic")]
    assert p.round_trips == 1


def test_other_proposer_runs_phase_1_and_finishes_it_on_the_decision_table():
    config = build({"preset": "paxos"}, 3)
    key = key_homed_at(config, 0)
    p, servers = Proposer(config, 1, key), Servers(3)
    (persist,) = p.start("mine")
    assert persist.rs > 0 and config.owner(persist.rs, key_hash(key)) == 1
    reads = p.on_persisted(persist.rs)
    assert len(sends(reads, Read)) == 3
    # Two nil replies out of three already make every earlier quorum None: write own value.
    writes = deliver(p, servers, reads, only={1, 2})
    assert {s.message.value for s in sends(writes, Write)} == {"mine"}
    assert deliver(p, servers, writes, only={1, 2}) == [Decide(key, "mine", "classic")]
    assert p.round_trips == 2


def test_phase_1_adopts_a_value_written_earlier():
    config = build({"preset": "paxos"}, 3)
    key = key_homed_at(config, 0)
    servers = Servers(3)
    home = Proposer(config, 0, key)
    home.start("first")
    writes = home.on_persisted(0)
    deliver(home, servers, writes, only={0})  # only server 0 got it: not decided
    other = Proposer(config, 1, key)
    (persist,) = other.start("second")
    reads = other.on_persisted(persist.rs)
    writes = deliver(other, servers, reads, only={0, 1})
    assert {s.message.value for s in sends(writes, Write)} == {"first"}
    assert deliver(other, servers, writes, only={1, 2}) == [Decide(key, "first", "classic")]


def test_early_output_when_phase_1_reads_a_decided_value():
    config = build({"preset": "paxos"}, 3)
    key = key_homed_at(config, 0)
    servers = Servers(3)
    home = Proposer(config, 0, key)
    home.start("x")
    deliver(home, servers, home.on_persisted(0), only={0, 1})
    other = Proposer(config, 2, key)
    (persist,) = other.start("y")
    out = deliver(other, servers, other.on_persisted(persist.rs), only={0, 1})
    assert [a for a in out if isinstance(a, Decide)] == [Decide(key, "x", "classic")]
    assert not sends(out, Write)


def test_fast_path_is_one_round_trip_without_persisting():
    config = build({"preset": "fast"}, 5)
    p, servers = Proposer(config, 3, "k"), Servers(5)
    actions = p.start("v")
    assert len(sends(actions, Write)) == 5 and not [a for a in actions if isinstance(a, Persist)]
    out = deliver(p, servers, actions, only={0, 1, 2, 3})
    assert out == [Decide("k", "v", "fast")]


def test_fast_conflict_recovers_in_a_classic_set():
    config = build({"preset": "fast"}, 3)
    servers = Servers(3)
    a, b = Proposer(config, 0, "k"), Proposer(config, 1, "k")
    wa, wb = a.start("A"), b.start("B")
    # Servers 0,1 see A first, server 2 sees B first: nobody reaches the fast quorum of 3.
    deliver(a, servers, wa, only={0, 1})
    out = deliver(b, servers, wb, only={2})
    out += deliver(b, servers, wb, only={0})  # refused: server 0 holds A
    backoffs = [x for x in out if isinstance(x, Backoff)]
    assert backoffs and b.conflicts == 1
    (persist,) = b.on_timeout(backoffs[0].attempt)
    actions = b.on_persisted(persist.rs)
    if sends(actions, Read):
        actions = deliver(b, servers, actions)
    # Servers 0,1 hold A and server 2 holds B: the only fast quorum {0,1,2} can never decide,
    # so the table lets B write its own value in its classic set.
    writes = sends(actions, Write)
    assert writes and {s.message.value for s in writes} == {"B"}
    decided = deliver(b, servers, actions)
    assert decided == [Decide("k", "B", "recovered")]


def test_a_used_register_set_is_never_written_again_after_restart():
    config = build({"preset": "paxos"}, 3)
    key = key_homed_at(config, 0)
    # Before the crash the home proposer used set 0; its durable floor says so.
    p = Proposer(config, 0, key, used_floor=0)
    (persist,) = p.start("after-restart")
    assert persist.rs > 0
    assert config.owner(persist.rs, key_hash(key)) == 0


def test_fenced_phase_1_gives_up_and_retries_higher():
    config = build({"preset": "paxos"}, 3)
    key = key_homed_at(config, 0)
    servers = Servers(3)
    for s in servers.states:
        s.fence = 100  # someone already read set 100 everywhere
    p = Proposer(config, 1, key)
    (persist,) = p.start("v")
    out = deliver(p, servers, p.on_persisted(persist.rs))
    backoffs = [x for x in out if isinstance(x, Backoff)]
    assert backoffs
    (retry,) = p.on_timeout(backoffs[0].attempt)
    assert isinstance(retry, Persist) and retry.rs >= 100


def test_stale_timeouts_are_ignored():
    config = build({"preset": "paxos"}, 3)
    p = Proposer(config, 1, "k")
    p.start("v")
    assert p.on_timeout(p.attempt - 1) == []
