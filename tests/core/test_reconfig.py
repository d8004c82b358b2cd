"""The reconfiguration orchestrator: steps in order, refusals, resuming from any saved record."""

from __future__ import annotations

from graven.node.protocol import reconfig as rc
from graven.node.protocol.epochs import Epoch
from graven.node.protocol.layout import set_id
from graven.node.protocol.presets import build


def epoch(number: int, count: int, block: dict | None = None) -> Epoch:
    names = tuple(f"m{i}" for i in range(count))
    return Epoch(number, names, build(block or {"preset": "paxos"}, count, number))


class Host:
    """An in-memory master and members: keys per member, fences, carried keys."""

    def __init__(self, keys: dict[str, dict[str, dict[int, str]]], down: set[str] = frozenset()):
        self.keys = keys
        self.down = set(down)
        self.fences: dict[str, int] = {}
        self.saved: list[rc.Record] = []
        self.published: list[tuple[int, ...]] = []
        self.carried: list[str] = []
        self.finished = False

    def run(self, orch: rc.Orchestrator, stop_after_saves: int | None = None) -> None:
        queue = list(orch.start())
        retries = 3  # rounds of re-sending what failed (members still down fail again)
        for _ in range(10_000):
            if not queue:
                queue = orch.retry() if retries else []
                retries -= 1
                if not queue:
                    return
            action = queue.pop(0)
            if isinstance(action, rc.Save):
                self.saved.append(action.record)
                if stop_after_saves is not None and len(self.saved) >= stop_after_saves:
                    return  # the orchestrator "crashes" right after this save
            elif isinstance(action, rc.Publish):
                self.published.append(tuple(e.number for e in action.epochs))
                queue += orch.on_published(action.epochs)
            elif isinstance(action, rc.Fence):
                if action.member in self.down:
                    queue += orch.on_fence_failed(action.member, "down")
                else:
                    self.fences[action.member] = action.rs
                    queue += orch.on_fenced(action.member)
            elif isinstance(action, rc.ListKeys):
                held = {
                    k: {rs: v for rs, v in vals.items() if rs < action.below}
                    for k, vals in self.keys.get(action.member, {}).items()
                }
                queue += orch.on_keys(action.member, held, None)
            elif isinstance(action, rc.Carry):
                self.carried.append(action.key)
                queue += orch.on_carried(action.key)
            elif isinstance(action, rc.Finished):
                self.finished = True
        raise AssertionError("the orchestrator did not settle")


KEYS = {
    "m0": {"a": {3: "x"}, "b": {5: "y"}},
    "m1": {"a": {3: "x"}, "c": {1: "z"}},
    "m2": {"d": {2: "w"}},
}


def test_a_transition_goes_through_every_step_in_order():
    old, new = epoch(0, 3), epoch(1, 5)
    host = Host(KEYS)
    host.run(rc.Orchestrator([old], new, batch=2))
    assert host.finished
    assert [r.step for r in host.saved][:3] == ["publish", "fence", "carry"]
    assert host.saved[-1].step == "done"
    assert host.published == [(0, 1), (1,)]
    assert set(host.fences.values()) == {set_id(1, 0)}
    # F is the first members to answer that meet every old phase-2 quorum: m0 and m1. "d"
    # sits on m2 alone: it was never decided (no majority) and, fenced, never can be.
    assert host.saved[-1].fenced == ("m0", "m1")
    assert sorted(host.carried) == ["a", "b", "c"]
    assert host.saved[-1].carried == 3


def test_the_fence_waits_for_members_that_meet_every_old_phase2_quorum():
    old, new = epoch(0, 3), epoch(1, 3, {"preset": "fast"})
    host = Host(KEYS, down={"m1", "m2"})
    orch = rc.Orchestrator([old], new)
    host.run(orch)
    assert orch.step == "fence" and not host.carried
    assert "waiting for the fence" in orch.record.last_error
    host.down = {"m2"}  # m0 and m1 meet every majority of three
    host.run(orch)
    assert host.finished and orch.record.fenced == ("m0", "m1")
    # m2 was never fenced, so its keys are not listed; anything it holds alone was never
    # decided in epoch 0 (no majority without m0 or m1), and can never be now
    assert sorted(host.carried) == ["a", "b", "c"]


def test_a_crash_after_any_save_resumes_and_finishes():
    old, new = epoch(0, 3), epoch(1, 4)
    full = Host(KEYS)
    full.run(rc.Orchestrator([old], new, batch=1))
    for cut in range(1, len(full.saved)):
        host = Host(KEYS)
        host.run(rc.Orchestrator([old], new, batch=1), stop_after_saves=cut)
        record = host.saved[-1]
        live = [old, new] if record.step != "publish" else [old]
        again = rc.Orchestrator(live, new, rc.Record.from_dict(record.to_dict()), batch=1)
        host.run(again)
        assert host.finished, f"resume after save {cut} ({record.step}) did not finish"
        assert set(host.carried) == {"a", "b", "c"}
        upto = record.carried_upto
        if upto is not None:  # keys carried before the crash are not carried again
            assert all(k > upto for k in host.carried[host.carried.index(upto) + 1 :])
        # progress counts the whole transition, not what is left after the resume: status
        # and metrics never go back
        counted = [(r.carried, r.total) for r in host.saved[cut:] if r.total]
        assert counted and all(total == 3 for _, total in counted), counted
        assert [c for c, _ in counted] == sorted(c for c, _ in counted), counted
        assert counted[0][0] >= record.carried and host.saved[-1].carried == 3


def test_refusals_name_what_is_unsafe():
    three, five = epoch(0, 3), epoch(0, 5)
    assert rc.refusal([three], epoch(1, 5)) is None
    assert rc.refusal([five], epoch(1, 3)) is None  # 3 kept of 5 meet every majority
    assert "more than epoch 0 tolerates" in rc.refusal([five], epoch(1, 2))
    assert "more than epoch 0 tolerates" in rc.refusal([three], epoch(1, 1))
    assert "next epoch must be 1" in rc.refusal([three], epoch(2, 3))
    unsafe = epoch(1, 5, {"preset": "flexible", "q1": 2, "q2": 2})
    assert "unsafe" in rc.refusal([three], unsafe)
    assert "waits" in rc.refusal([three, epoch(1, 3)], epoch(2, 3))


def test_fence_complete_is_about_phase2_quorums_of_every_old_set():
    from graven.node.protocol.epochs import view

    v = view([epoch(0, 4, {"preset": "fast"}), epoch(1, 4)])
    # fast on 4: fast phase-2 quorums are 3 of 4 (blocked by 2), classic ones 3 of 4 too
    assert not rc.fence_complete(v, v.members_mask(["m0"]))
    assert rc.fence_complete(v, v.members_mask(["m0", "m1"]))
