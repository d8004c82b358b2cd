"""Live views over several epochs, and the proposer's rules while an older epoch is live."""

from __future__ import annotations

import pytest

from graven.node.protocol.acceptor import Reply
from graven.node.protocol.epochs import Epoch, view
from graven.node.protocol.layout import LayoutError, set_id
from graven.node.protocol.presets import build
from graven.node.protocol.proposer import Decide, Persist, Proposer, Read, Send, Stale, Write


def epoch(number: int, names: str, block: dict | None = None) -> Epoch:
    members = tuple(names.split())
    return Epoch(number, members, build(block or {"preset": "paxos"}, len(members), number))


OLD = epoch(0, "a b c")
NEW = epoch(1, "d b c e")


def test_the_union_lists_the_newest_members_first_so_their_slots_stay():
    v = view([OLD, NEW])
    assert v.names == ("d", "b", "c", "e", "a")
    assert v.layout.n == 5 and v.layout.proposers == 4
    assert v.layout.first_set == set_id(1, 0) and v.layout.base_set == set_id(0, 0)
    assert v.layout.transition and not view([NEW]).layout.transition


def test_each_set_keeps_its_own_epochs_quorums_over_names():
    v = view([OLD, NEW])
    old_seg = v.layout.segment_of(set_id(0, 7))
    new_seg = v.layout.segment_of(set_id(1, 7))
    assert old_seg.end == set_id(1, 0)  # the old epoch stops where the new one starts
    # epoch 0: majority of a, b, c -> {a, b} is a quorum; {b, d} is not (d is not in epoch 0)
    assert old_seg.phase2.is_quorum(v.members_mask(["a", "b"]))
    assert not old_seg.phase2.is_quorum(v.members_mask(["b", "d"]))
    # epoch 1: majority of d, b, c, e -> 3 of them
    assert new_seg.phase2.is_quorum(v.members_mask(["d", "c", "e"]))
    assert not new_seg.phase2.is_quorum(v.members_mask(["a", "b", "c"]))
    # the newest epoch is bounded too: nobody writes a set of an epoch it does not know
    assert v.layout.end == set_id(2, 0)
    with pytest.raises(LayoutError):
        v.layout.segment_of(set_id(2, 0))


def test_live_epochs_must_be_consecutive():
    with pytest.raises(LayoutError, match="consecutive"):
        view([OLD, epoch(2, "a b c")])


def test_no_fast_path_while_an_older_epoch_is_live():
    fast = epoch(1, "a b c", {"preset": "fast"})
    assert view([fast]).layout.fast_first
    assert not view([OLD, fast]).layout.fast_first


def _sends(actions):
    return [a for a in actions if isinstance(a, Send)]


def test_the_home_skips_phase_1_only_when_no_older_epoch_is_live():
    alone = view([NEW]).layout
    home = alone.home_slot(Proposer(alone, 0, "k").khash)
    p = Proposer(alone, home, "k")
    (persist,) = p.start("x")
    assert isinstance(persist, Persist) and persist.rs == set_id(1, 0)
    assert all(isinstance(s.message, Write) for s in _sends(p.on_persisted(persist.rs)))

    both = view([OLD, NEW]).layout
    p = Proposer(both, home, "k")
    (persist,) = p.start("x")
    assert persist.rs >= set_id(1, 0)  # proposals start in the newest epoch
    reads = _sends(p.on_persisted(persist.rs))
    assert reads and all(isinstance(s.message, Read) for s in reads)
    assert {s.server for s in reads} == set(range(5))  # phase 1 over every live epoch's members


def _run_phase1(p: Proposer, v, replies: dict[str, Reply]):
    (persist,) = p.start("mine")
    actions = list(p.on_persisted(persist.rs))
    for name, reply in replies.items():
        # a read of rs fences every member below rs
        fenced = Reply(reply.ok, max(reply.fence, persist.rs), reply.values)
        actions += p.on_reply(v.index(name), fenced)
    return persist.rs, actions


def test_a_value_decided_in_the_old_epoch_is_what_the_new_epoch_proposes():
    v = view([OLD, NEW])
    p = Proposer(v.layout, 1, "k")
    decided_old = set_id(0, 3)
    held = Reply(True, decided_old + 1, {decided_old: "old"})
    empty = Reply(True, set_id(1, 0), {})
    rs, actions = _run_phase1(p, v, {"a": held, "b": held, "d": empty, "c": empty, "e": empty})
    # {a, b} is an epoch-0 quorum holding "old": a normal proposal outputs it at once
    assert any(isinstance(x, Decide) and x.value == "old" for x in actions)

    carry = Proposer(v.layout, 1, "k", carry=True)
    rs, actions = _run_phase1(carry, v, {"a": held, "b": held, "d": empty, "c": empty})
    writes = [s for s in _sends(actions) if isinstance(s.message, Write)]
    assert writes and all(s.message.value == "old" and s.message.rs == rs for s in writes)
    assert not any(isinstance(x, Decide) for x in actions)  # it must reach the new epoch
    actions = []
    for name in ["d", "b", "c"]:  # a quorum of epoch 1
        actions += carry.on_reply(v.index(name), Reply(True, rs, {decided_old: "old", rs: "old"}))
    assert [x.value for x in actions if isinstance(x, Decide)] == ["old"]


def test_a_fence_past_the_view_means_a_newer_epoch_exists():
    v = view([OLD])
    p = Proposer(v.layout, 1, "k")
    (persist,) = p.start("x")
    p.on_persisted(persist.rs)
    actions = p.on_reply(0, Reply(False, set_id(1, 0), {}))
    assert actions == [Stale("k")]
