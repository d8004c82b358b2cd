"""The cluster document with older live epochs (a reconfiguration under way)."""

from __future__ import annotations

import re

import pytest

from graven.node.cli.client import live_members, render_status
from graven.node.cluster.config import ConfigError, dump, parse
from graven.node.protocol.layout import set_id


def doc(**extra):
    base = {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ClusterConfig",
        "cluster": "demo",
        "epoch": 1,
        "members": [{"name": f"demo-{i}", "url": f"http://127.0.0.1:{7100 + i}"} for i in range(4)],
        "quorums": {"preset": "fast"},
    }
    base.update(extra)
    return base


PREVIOUS = [
    {
        "epoch": 0,
        "members": [
            {"name": "demo-0", "url": "http://127.0.0.1:7100"},
            {"name": "old-9", "url": "http://127.0.0.1:7199"},
            {"name": "demo-2", "url": "http://127.0.0.1:7102"},
        ],
        "quorums": {"preset": "paxos"},
    }
]


def test_previous_epochs_make_the_live_view():
    cfg = parse(doc(previous=PREVIOUS))
    v = cfg.view()
    assert [e.number for e in v.epochs] == [0, 1]
    assert v.names == ("demo-0", "demo-1", "demo-2", "demo-3", "old-9")
    assert [m.name for m in cfg.live_members()] == list(v.names)
    assert v.layout.base_set == set_id(0, 0) and not v.layout.fast_first
    assert parse(dump(cfg)) == cfg  # round trip, previous included
    assert "previous" not in dump(parse(doc()))  # a single epoch writes what it always wrote


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        ([{**PREVIOUS[0], "epoch": 3}], "previous[0].epoch must be 0"),
        (
            [{**PREVIOUS[0], "members": [{"name": "demo-0", "url": "http://127.0.0.1:9"}]}],
            "two URLs",
        ),
        ([{**PREVIOUS[0], "extra": 1}], "unknown field"),
        ("nope", "must be a list"),
    ],
)
def test_bad_previous_epochs_are_refused(previous, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(doc(previous=previous))


def test_status_says_when_a_reconfiguration_is_under_way():
    report = {
        "cluster": "demo",
        "epoch": 1,
        "live_epochs": [0, 1],
        "layout": {"preset": "fast"},
        "members_up": 0,
        "decisions": None,
        "error": None,
    }
    assert "reconfiguring: live epochs 0, 1" in render_status(report, [])
    assert "reconfiguring" not in render_status({**report, "live_epochs": [1]}, [])


def test_metrics_count_live_epochs(tmp_path) -> None:
    """graven_config_live_epochs above 1 is how a dashboard sees a transition under way."""
    from prometheus_client import generate_latest

    from graven.node.server.metrics import NodeMetrics
    from graven.node.storage import RegisterStore

    store = RegisterStore.open(tmp_path / "d", cluster="demo", node="demo-0")
    try:
        during = generate_latest(
            NodeMetrics(parse(doc(previous=PREVIOUS)), "demo-0", store).registry
        )
        after = generate_latest(NodeMetrics(parse(doc()), "demo-0", store).registry)
    finally:
        store.close()
    assert b"graven_config_live_epochs 2.0" in during and b"graven_config_epoch 1.0" in during
    assert b"graven_config_live_epochs 1.0" in after


def test_status_probes_the_members_of_every_live_epoch() -> None:
    info = doc(previous=PREVIOUS)
    names = [name for name, _ in live_members(info)]
    assert names == ["demo-0", "demo-1", "demo-2", "demo-3", "old-9"]  # old-9 serves until retired
    assert [n for n, _ in live_members(doc())] == ["demo-0", "demo-1", "demo-2", "demo-3"]
