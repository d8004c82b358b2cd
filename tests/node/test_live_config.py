"""Installing a newer configuration on a running member (``POST /v1/admin/config``).

The order of documents (``cluster.order``) as pure functions; then one member, in-process with
its proposer gateway and a real store: each step of a transition is installed, served at once
(``/v1/cluster``, ``Graven-Epoch`` on every API, metrics, the proposer deciding in the new
epoch), durable before the reply (a restart serves it), and every refusal changes nothing.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from graven.node.cli import node as node_cli
from graven.node.cluster import order
from graven.node.cluster.config import ClusterConfig, dump, parse
from graven.node.gateway import routes as decisions
from graven.node.protocol.layout import EPOCH_BITS
from graven.node.server.app import create_app
from graven.node.storage import RegisterStore, configdoc
from tests.support.openapi import check_against_openapi

MEMBER = {"name": "solo-0", "url": "http://127.0.0.1:7101"}
SECOND = {"name": "solo-1", "url": "http://127.0.0.1:7102"}


def doc(epoch: int = 0, previous: int | None = None, **extra: Any) -> dict[str, Any]:
    """A one-member document at ``epoch``; ``previous``: an older live epoch."""
    out: dict[str, Any] = {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ClusterConfig",
        "cluster": "solo",
        "incarnation": "inc-1",
        "epoch": epoch,
        "members": [dict(MEMBER)],
        "quorums": {"preset": "paxos"},
    }
    if previous is not None:
        out["previous"] = [
            {"epoch": previous, "members": [dict(MEMBER)], "quorums": {"preset": "paxos"}}
        ]
    return out | extra


def cfg(*args: Any, **kw: Any) -> ClusterConfig:
    return parse(doc(*args, **kw))


# -- the order -------------------------------------------------------------------------------


def test_each_step_of_a_transition_is_newer() -> None:
    steps = [cfg(0), cfg(1, previous=0), cfg(1), cfg(2, previous=1), cfg(2)]
    assert [order.version(c) for c in steps] == [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2)]
    for older, newer in itertools.pairwise(steps):
        assert order.compare(older, newer) == order.NEWER
        with pytest.raises(order.InstallRefused) as refused:
            order.compare(newer, older)
        assert refused.value.code == "stale_configuration"
    assert order.compare(cfg(1), cfg(3)) == order.NEWER  # epochs may be skipped


def test_the_same_document_again_is_the_same_and_a_different_one_conflicts() -> None:
    assert order.compare(cfg(1, previous=0), cfg(1, previous=0)) == order.SAME
    # another URL (a member reached elsewhere) or other limits: the same configuration
    moved = doc(1, previous=0, members=[{"name": "solo-0", "url": "http://127.0.0.1:9"}])
    moved["previous"][0]["members"] = moved["members"]
    assert order.compare(cfg(1, previous=0), parse(moved)) == order.SAME
    other = doc(1, previous=0)
    other["quorums"] = {"preset": "flexible", "q1": 1, "q2": 1}
    with pytest.raises(order.InstallRefused) as refused:
        order.compare(cfg(1, previous=0), parse(other))
    assert refused.value.code == "configuration_conflict"


@pytest.mark.parametrize(
    ("change", "code"),
    [({"incarnation": "inc-2"}, "other_incarnation"), ({"cluster": "other"}, "other_cluster")],
)
def test_another_cluster_or_incarnation_is_refused(change: dict, code: str) -> None:
    with pytest.raises(order.InstallRefused) as refused:
        order.compare(cfg(0), cfg(5, **change))
    assert refused.value.code == code


def test_at_start_the_newer_of_file_and_installed_document_is_served() -> None:
    assert order.newer_of(cfg(0), None) == cfg(0)
    assert order.newer_of(cfg(0), cfg(1, previous=0)) == cfg(1, previous=0)
    assert order.newer_of(cfg(1), cfg(1, previous=0)) == cfg(1)  # the file went further
    # the same version: the file (it may change limits, which need a restart anyway)
    limited = cfg(1, limits={"maxValueBytes": 10, "maxKeyBytes": 10, "maxBodyBytes": 100})
    assert order.newer_of(limited, cfg(1)) == limited
    # another incarnation's saved document never wins: the store refuses the file's instead
    assert order.newer_of(cfg(0), cfg(3, incarnation="inc-2")) == cfg(0)


# -- one member --------------------------------------------------------------------------------


@pytest.fixture
async def member(tmp_path: Path) -> AsyncIterator[tuple[TestClient, RegisterStore]]:
    store = RegisterStore.open(
        tmp_path / "data", cluster="solo", node="solo-0", wanted=cfg(0).identity()
    )
    app = create_app(cfg(0), "solo-0", store, [decisions.extension()])
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client, store
    finally:
        store.close()


async def install(client: TestClient, body: Any) -> tuple[int, Any]:
    resp = await client.post("/v1/admin/config", data=orjson.dumps(body))
    reply = await resp.json()
    check_against_openapi("/v1/admin/config", "POST", resp.status, reply)
    return resp.status, reply


async def served(client: TestClient) -> dict[str, Any]:
    """What the member shows of its configuration, on every API."""
    cluster = await client.get("/v1/cluster")
    peer = await client.get("/v1/registers/keys")
    put = await client.put("/v1/decisions/probe", data=orjson.dumps({"value": "x"}))
    metrics = await (await client.get("/metrics")).text()
    gauge = next(
        line for line in metrics.splitlines() if line.startswith("graven_config_live_epochs ")
    )
    return {
        "liveEpochs": (await cluster.json())["liveEpochs"],
        "headers": {
            cluster.headers.get("Graven-Epoch"),
            peer.headers.get("Graven-Epoch"),
            put.headers.get("Graven-Epoch"),
        },
        "gauge": float(gauge.split()[1]),
    }


async def test_a_transition_is_installed_live_step_by_step(
    member: tuple[TestClient, RegisterStore], tmp_path: Path
) -> None:
    client, store = member
    assert (await served(client))["headers"] == {"0"}

    status, reply = await install(client, doc(1, previous=0))  # publish
    assert status == 200 and reply["installed"] is True and reply["liveEpochs"] == [0, 1]
    now = await served(client)
    assert now == {"liveEpochs": [0, 1], "headers": {"0, 1"}, "gauge": 2.0}
    assert store.recorded.epoch == 1
    assert configdoc.load(tmp_path / "data") == dump(cfg(1, previous=0))  # before the reply

    # the proposer now decides in epoch 1's register sets
    resp = await client.put("/v1/decisions/fresh", data=orjson.dumps({"value": "v"}))
    assert resp.status == 200
    assert [rs >> EPOCH_BITS for rs in store.get("fresh").values] == [1]

    status, reply = await install(client, doc(1))  # retire epoch 0
    assert status == 200 and reply["installed"] is True
    assert await served(client) == {"liveEpochs": [1], "headers": {"1"}, "gauge": 1.0}

    status, reply = await install(client, doc(1))  # the same again: nothing to do
    assert status == 200 and reply["installed"] is False
    assert (await (await client.get("/v1/decisions/fresh")).json())["value"] == "v"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (doc(0), 409, "configuration_conflict"),  # pretend the same version, other content
        (doc(2, previous=1, incarnation="inc-2"), 409, "other_incarnation"),
        (doc(2, cluster="other"), 409, "other_cluster"),
        (doc(1, members=[dict(SECOND)]), 409, "not_a_member"),
        ({"kind": "ClusterConfig"}, 400, "invalid_config"),
        (doc(1) | {"epoch": "one"}, 400, "invalid_config"),
    ],
)
async def test_refusals_change_nothing(
    member: tuple[TestClient, RegisterStore],
    tmp_path: Path,
    body: Any,
    status: int,
    code: str,
) -> None:
    client, store = member
    if code == "configuration_conflict":
        body = copy.deepcopy(body)
        body["quorums"] = {"preset": "flexible", "q1": 1, "q2": 1}
    before = await served(client)
    got, reply = await install(client, body)
    assert (got, reply["error"]["code"]) == (status, code), reply
    assert await served(client) == before
    assert store.recorded.epoch == 0
    assert configdoc.load(tmp_path / "data") is None


async def test_an_older_document_is_refused(member: tuple[TestClient, RegisterStore]) -> None:
    client, _ = member
    assert (await install(client, doc(2)))[0] == 200
    status, reply = await install(client, doc(1, previous=0))
    assert (status, reply["error"]["code"]) == (409, "stale_configuration")
    assert (await served(client))["liveEpochs"] == [2]


async def test_a_restarted_member_serves_what_it_installed(tmp_path: Path) -> None:
    config_file = tmp_path / "cluster.json"
    config_file.write_text(json.dumps(doc(0)))
    data = tmp_path / "data"
    store = RegisterStore.open(data, cluster="solo", node="solo-0", wanted=cfg(0).identity())
    try:
        app = create_app(cfg(0), "solo-0", store, [decisions.extension()])
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            assert (await install(client, doc(1, previous=0)))[0] == 200
    finally:
        store.close()
    # the file still says epoch 0 (an old ConfigMap): the member starts in epochs 0, 1
    chosen = node_cli._installed_or(parse(json.loads(config_file.read_text())), str(data))
    assert order.version(chosen) == (1, 0)
    store = RegisterStore.open(data, cluster="solo", node="solo-0", wanted=chosen.identity())
    store.close()
    # a saved document that is not JSON is reported, never guessed around
    configdoc.path(data).write_text("{")
    with pytest.raises(node_cli._Refused, match="not JSON"):
        node_cli._installed_or(cfg(0), str(data))
