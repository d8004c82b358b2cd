"""The client API in-process: shapes (against the OpenAPI document), bad input, long polls,
batching of acceptor messages, reachability math. Multi-node behaviour: test_decisions_e2e."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from graven.node.cluster.config import parse
from graven.node.gateway import routes as decisions
from graven.node.gateway.decided import DecidedCache
from graven.node.proposer.channel import READ, WRITE, Channel, Item, PeerError, PeerUnavailable
from graven.node.proposer.metrics import ProposerMetrics
from graven.node.proposer.reachability import Reachability, resilience_within
from graven.node.protocol import presets
from graven.node.protocol.acceptor import Reply
from graven.node.protocol.layout import key_hash
from graven.node.protocol.proposer import Persist, Proposer
from graven.node.protocol.quorums import Counting, Explicit, Grid, mask_of
from graven.node.protocol.runtime import Runtime
from graven.node.server.app import create_app
from graven.node.sim.plants import plant
from graven.node.storage import RegisterStore
from tests.support.openapi import OPENAPI, check_against_openapi

VALUE_LIMIT = 2048
DOC = {
    "apiVersion": "graven.dev/v1alpha1",
    "kind": "ClusterConfig",
    "cluster": "solo",
    "members": [{"name": "solo-0", "url": "http://127.0.0.1:7101"}],
    "quorums": {"preset": "paxos"},
    "limits": {"maxValueBytes": VALUE_LIMIT, "maxKeyBytes": 512, "maxBodyBytes": 64 * 1024},
}


@pytest.fixture
async def solo(tmp_path: Path) -> AsyncIterator[TestClient]:
    """A one-member cluster: its proposer calls its own acceptor in-process."""
    store = RegisterStore.open(tmp_path / "data", cluster="solo", node="solo-0")
    app = create_app(parse(json.loads(json.dumps(DOC))), "solo-0", store, [decisions.extension()])
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client
    finally:
        store.close()


async def test_the_gateway_runs_the_proposer_runtime_the_simulator_runs(solo: TestClient) -> None:
    gateway = solo.server.app[decisions.GATEWAY].gateway
    assert type(gateway.pump.runtime) is Runtime  # the class sim/world.py hosts (plants aside)
    assert plant(None).runtime is Runtime
    resp = await solo.put("/v1/decisions/k", json={"value": "v"})
    assert (resp.status, (await resp.json())["value"]) == (200, "v")


async def call(client: TestClient, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    resp = await client.request(method, path, data=data)
    return resp.status, await resp.json()


async def test_shapes_match_the_openapi_document(solo: TestClient) -> None:
    template = "/v1/decisions/{key}"
    status, body = await call(solo, "PUT", "/v1/decisions/colour", {"value": "blue"})
    assert (status, body) == (200, {"key": "colour", "value": "blue", "won": True})
    check_against_openapi(template, "PUT", status, body)
    status, body = await call(solo, "PUT", "/v1/decisions/colour", {"value": "red"})
    assert (status, body) == (200, {"key": "colour", "value": "blue", "won": False})
    status, body = await call(solo, "GET", "/v1/decisions/colour")
    assert (status, body) == (200, {"key": "colour", "value": "blue"})
    check_against_openapi(template, "GET", status, body)
    status, body = await call(solo, "GET", "/v1/decisions/unknown")
    assert status == 404 and body["error"]["code"] == "not_decided"
    check_against_openapi(template, "GET", status, body)
    status, body = await call(solo, "GET", "/v1/decisions/a%2Fb%20c")  # any UTF-8 key
    assert status == 404 and "'a/b c'" in body["error"]["message"]

    batch = {"decisions": [{"key": "x", "value": "1"}, {"key": "colour", "value": "green"}]}
    status, body = await call(solo, "POST", "/v1/decisions:batch", batch)
    assert body == {
        "results": [
            {"key": "x", "value": "1", "won": True},
            {"key": "colour", "value": "blue", "won": False},
        ]
    }
    check_against_openapi("/v1/decisions:batch", "POST", status, body)
    status, body = await call(solo, "POST", "/v1/decisions:batchGet", {"keys": ["x", "nope"]})
    assert body["results"][0] == {"key": "x", "value": "1"}
    assert body["results"][1]["error"]["code"] == "not_decided"
    check_against_openapi("/v1/decisions:batchGet", "POST", status, body)

    status, body = await call(solo, "GET", "/v1/cluster")
    assert body["members"][0]["up"] is True and body["quorumMargin"] == 0
    doc = yaml.safe_load(OPENAPI.read_text())
    served = {r.resource.canonical for r in solo.app.router.routes() if r.resource}
    assert served == set(doc["paths"])


async def test_carry_over_answers_the_decided_value_and_refuses_bad_input(solo: TestClient) -> None:
    await call(solo, "PUT", "/v1/decisions/kept", {"value": "first"})
    items = [{"key": "kept", "value": "other"}, {"key": "fresh", "value": "held"}]
    status, body = await call(solo, "POST", "/v1/admin/carry", {"items": items})
    assert status == 200 and body["epoch"] == 0
    # a decided key keeps its value; an undecided one gets the value it holds
    assert body["results"] == [{"key": "kept", "value": "first"}, {"key": "fresh", "value": "held"}]
    check_against_openapi("/v1/admin/carry", "POST", status, body)
    status, body = await call(solo, "POST", "/v1/admin/carry", {"items": [{"key": "x"}]})
    assert status == 422 and "value" in body["error"]["message"]
    # the transition's progress on the member: both accepted keys, nothing for the refusal
    text = await (await solo.get("/metrics")).text()
    assert "graven_carried_keys_total 2.0" in text


BIG_KEY = "k" * 513
BAD = [
    ("PUT", "/v1/decisions/k", b'{"value": ', 400, "malformed_json"),
    ("PUT", "/v1/decisions/k", b"", 400, "malformed_json"),
    ("PUT", "/v1/decisions/k", b'{"value": 5}', 422, "invalid_request"),
    ("PUT", "/v1/decisions/k", b'{"value": null}', 422, "invalid_request"),
    ("PUT", "/v1/decisions/k", b'{"value": "v", "ttl": 3}', 422, "invalid_request"),
    ("PUT", "/v1/decisions/k", b"{}", 422, "invalid_request"),
    ("PUT", "/v1/decisions/k", b'["v"]', 422, "invalid_request"),
    ("PUT", f"/v1/decisions/{BIG_KEY}", b'{"value": "v"}', 422, "invalid_request"),
    ("PUT", "/v1/decisions/a%00b", b'{"value": "v"}', 422, "invalid_request"),
    ("PUT", "/v1/decisions/k", orjson.dumps({"value": "v" * (VALUE_LIMIT + 1)}), 413,
     "value_too_large"),
    ("PUT", "/v1/decisions/k", orjson.dumps({"value": "v" * 70_000}), 413, "body_too_large"),
    ("GET", "/v1/decisions/k?wait=0", b"", 422, "invalid_request"),
    ("GET", "/v1/decisions/k?wait=61", b"", 422, "invalid_request"),
    ("GET", "/v1/decisions/k?wait=nan", b"", 422, "invalid_request"),
    ("GET", "/v1/decisions/k?wait=soon", b"", 422, "invalid_request"),
    ("GET", "/v1/decisions/k?wait=1&wait=2", b"", 422, "invalid_request"),
    ("GET", "/v1/decisions/k?consistent=no", b"", 422, "invalid_request"),
    ("POST", "/v1/decisions/k", b"{}", 405, "method_not_allowed"),
    ("POST", "/v1/decisions:batch", b'{"decisions": {}}', 422, "invalid_request"),
    ("POST", "/v1/decisions:batch",
     orjson.dumps({"decisions": [{"key": "k", "value": "v"}, {"key": "k2"}]}), 422,
     "invalid_request"),
    ("POST", "/v1/decisions:batch",
     orjson.dumps({"decisions": [{"key": "k", "value": "v"}, {"key": "", "value": "v"}]}), 422,
     "invalid_request"),
    ("POST", "/v1/decisions:batch",
     orjson.dumps({"decisions": [{"key": f"k{i}", "value": ""} for i in range(1001)]}), 422,
     "invalid_request"),
    ("POST", "/v1/decisions:batchGet", b'{"keys": ["a", 1]}', 422, "invalid_request"),
    ("POST", "/v1/decisions:batchGet", b'{"keys": []', 400, "malformed_json"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD)
async def test_bad_input_is_a_4xx_and_decides_nothing(
    solo: TestClient, method: str, path: str, body: bytes, status: int, code: str
) -> None:
    resp = await solo.request(method, path, data=body)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"]["code"] == code
    # nothing was proposed: the acceptor holds no key at all
    keys = await (await solo.get("/v1/registers/keys")).json()
    assert keys["keys"] == []
    status2, body2 = await call(solo, "PUT", "/v1/decisions/k", {"value": "fine"})
    assert (status2, body2["won"]) == (200, True)


async def test_long_poll_wakes_on_a_local_decision(solo: TestClient) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _ = await call(solo, "GET", "/v1/decisions/later?wait=0.2")
    assert status == 404 and loop.time() - started >= 0.2  # waited the full time
    poll = asyncio.create_task(call(solo, "GET", "/v1/decisions/later?wait=30"))
    with pytest.raises(TimeoutError):  # still waiting: not answered before the decision
        await asyncio.wait_for(asyncio.shield(poll), 0.3)
    put_at = loop.time()
    assert (await call(solo, "PUT", "/v1/decisions/later", {"value": "now"}))[0] == 200
    assert await poll == (200, {"key": "later", "value": "now"})
    assert loop.time() - put_at < 1.0


async def test_graceful_stop_ends_long_polls(tmp_path: Path) -> None:
    store = RegisterStore.open(tmp_path / "data", cluster="solo", node="solo-0")
    app = create_app(parse(json.loads(json.dumps(DOC))), "solo-0", store, [decisions.extension()])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            poll = asyncio.create_task(session.get(server.make_url("/v1/decisions/k?wait=60")))
            with pytest.raises(TimeoutError):  # the poll is open
                await asyncio.wait_for(asyncio.shield(poll), 0.3)
            loop = asyncio.get_running_loop()
            stopping = loop.time()
            await server.close()  # on_shutdown answers the poll before in-flight requests drain
            resp = await poll
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_decided"
            assert loop.time() - stopping < 2.0
    finally:
        store.close()


async def test_metrics_series_exist_from_the_start(solo: TestClient) -> None:
    text = await (await solo.get("/metrics")).text()
    for path in ("fast", "classic", "recovered", "read"):
        assert f'graven_decisions_total{{path="{path}"}} 0.0' in text
    for name in (
        "graven_decision_duration_seconds_bucket",
        "graven_decision_round_trips_bucket",
        "graven_decision_register_sets_bucket",
        "graven_proposal_conflicts_total 0.0",
        "graven_proposal_retries_total 0.0",
        'graven_acceptor_rpc_duration_seconds_bucket{le="0.001",member="solo-0"}',
        'graven_acceptor_rpcs_total{kind="read",member="solo-0"} 0.0',
        "graven_proposals_in_flight 0.0",
        'graven_member_up{member="solo-0"} 1.0',
        "graven_quorum_margin 0.0",
        "graven_carried_keys_total 0.0",
        "graven_config_live_epochs 1.0",
    ):
        assert name in text, name
    await call(solo, "PUT", "/v1/decisions/m", {"value": "v"})
    text = await (await solo.get("/metrics")).text()
    assert 'graven_decisions_total{path="classic"} 1.0' in text
    assert 'graven_acceptor_rpcs_total{kind="write",member="solo-0"} 1.0' in text
    assert 'graven_acceptor_rpcs_total{kind="read",member="solo-0"} 0.0' in text  # home: no P1


async def test_a_restarted_node_never_reuses_a_register_set(tmp_path: Path) -> None:
    """The home node persists the set it is about to write before writing: after a restart
    its proposer for the key starts above it, even though no write was ever acknowledged."""
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    doc = {
        **DOC,
        "cluster": "trio",
        "members": [
            {"name": "trio-0", "url": "http://127.0.0.1:1"},
            *({"name": f"trio-{i + 1}", "url": f"http://127.0.0.1:{s.getsockname()[1]}"}
              for i, s in enumerate(socks)),
        ],
    }  # fmt: skip
    cfg = parse(json.loads(json.dumps(doc)))
    key = next(k for k in (f"k{i}" for i in range(1000)) if cfg.layout.home_slot(key_hash(k)) == 0)
    store = RegisterStore.open(tmp_path / "data", cluster="trio", node="trio-0")
    try:
        app = create_app(cfg, "trio-0", store, [decisions.extension()])
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            path = f"/v1/decisions/{key}"
            status, body = await call(client, "PUT", path, {"value": "a"})
            assert status == 503 and body["error"]["code"] == "quorum_unreachable"
            assert "trio-1 (connection refused)" in body["error"]["message"]
            assert (await call(client, "PUT", path, {"value": "b"}))[0] == 503  # fails fast now
    finally:
        store.close()
        for s in socks:
            s.close()
    store = RegisterStore.open(tmp_path / "data", cluster="trio", node="trio-0")
    try:
        assert store.used_floor(key) == cfg.layout.first_set
        assert store.get(key).values == {cfg.layout.first_set: "a"}  # own acceptor took it
        actions = Proposer(cfg.layout, 0, key, store.used_floor(key)).start("b")
        assert [type(a) for a in actions] == [Persist]
        assert actions[0].rs > cfg.layout.first_set  # type: ignore[union-attr]
    finally:
        store.close()


# -- batching of acceptor messages ------------------------------------------------------------


class GatedTransport:
    """Holds every request until released, and records what each carried."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def call(self, kind: str, items: list[Item]) -> list[Reply]:
        self.calls.append((kind, [i.key for i in items]))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [Reply(True, i.rs, {}) for i in items]

    async def probe(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _channel(transport: GatedTransport, reach: Reachability) -> Channel:
    metrics = ProposerMetrics(CollectorRegistry(), ["a", "b", "c"], reach.is_up, reach.margin)
    return Channel(1, "b", transport, reach, metrics, max_in_flight=2, max_batch_bytes=1 << 20)


async def test_messages_queued_behind_busy_requests_share_one_request() -> None:
    layout = presets.build({"preset": "paxos"}, 3)
    reach = Reachability(layout, ["a", "b", "c"], 0)
    transport = GatedTransport()
    channel = _channel(transport, reach)
    first = []
    for i in range(2):  # two requests in flight, each queued in its own loop turn
        first.append(channel.send(READ, f"k{i}", 1))
        await _turns(2)  # the end-of-turn dispatch, then the request task starts
    assert transport.calls == [("read", ["k0"]), ("read", ["k1"])]
    rest = [channel.send(READ, f"q{i}", 1) for i in range(10)]
    rest.append(channel.send(WRITE, "w", 2, "v"))
    await _turns(2)  # nothing more is sent while both requests are busy
    assert len(transport.calls) == 2
    rest[3].cancel()  # a message whose proposal finished is dropped, not sent
    transport.gate.set()
    await asyncio.gather(*first, *(f for f in rest if not f.cancelled()))
    assert transport.calls[2:] == [
        ("write", ["w"]),
        ("read", [f"q{i}" for i in range(10) if i != 3]),
    ]
    await channel.close()


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_messages_queued_in_one_loop_turn_share_one_request() -> None:
    layout = presets.build({"preset": "paxos"}, 3)
    reach = Reachability(layout, ["a", "b", "c"], 0)
    transport = GatedTransport()
    channel = _channel(transport, reach)
    # e.g. proposals woken by one group commit: the idle channel still sends one request
    sent = [channel.send(WRITE, f"k{i}", 0, "v") for i in range(5)]
    await _turns(2)
    assert transport.calls == [("write", [f"k{i}" for i in range(5)])]
    transport.gate.set()
    await asyncio.gather(*sent)
    await channel.close()


async def test_a_failed_request_marks_the_member_down_and_fails_fast() -> None:
    layout = presets.build({"preset": "paxos"}, 3)
    reach = Reachability(layout, ["a", "b", "c"], 0)
    transport = GatedTransport()
    transport.fail = ConnectionRefusedError(111, "refused")
    channel = _channel(transport, reach)
    sent = channel.send(READ, "k", 1)
    transport.gate.set()
    with pytest.raises(PeerUnavailable):
        await sent
    assert not reach.is_up(1) and reach.margin() == 0
    calls = len(transport.calls)
    with pytest.raises(PeerUnavailable):
        await channel.send(READ, "k2", 1)  # down: not even sent
    assert len(transport.calls) == calls
    assert "b (" in reach.describe(mask_of([1]))
    reach.mark_up(1)
    transport.fail = PeerError("HTTP 422 from the peer API", down=False)
    with pytest.raises(PeerUnavailable):
        await channel.send(READ, "k3", 1)
    assert reach.is_up(1)  # a refused request is not an unreachable member
    await channel.close()


# -- reachability math ------------------------------------------------------------------------


def test_resilience_within_the_members_that_are_up() -> None:
    every = mask_of(range(5))
    assert resilience_within(Counting(every, 3), every) == 2
    assert resilience_within(Counting(every, 3), mask_of([0, 1, 2])) == 0
    assert resilience_within(Counting(every, 3), mask_of([0, 1])) == -1
    grid = Grid(mask_of(range(6)), 2, 3, "rows")  # rows {0,1,2} {3,4,5}
    assert resilience_within(grid, mask_of(range(6))) == 1
    assert resilience_within(grid, mask_of([0, 1, 2, 3])) == 0
    assert resilience_within(grid, mask_of([0, 1, 3])) == -1
    explicit = Explicit(mask_of(range(3)), (mask_of([0, 1]), mask_of([1, 2])))
    assert resilience_within(explicit, mask_of(range(3))) == 0  # member 1 is in both


def test_quorum_margin_follows_the_last_segment() -> None:
    layout = presets.build({"preset": "fast"}, 5)  # fast set 0, then majorities of 5
    reach = Reachability(layout, [f"m{i}" for i in range(5)], 0)
    assert reach.margin() == 2
    reach.mark_down(4, "timed out")
    reach.mark_down(0, "ignored: this node itself")
    assert reach.margin() == 1 and reach.can_decide(reach.up_mask)
    reach.mark_down(3, "connection refused")
    reach.mark_down(2, "connection refused")
    assert reach.margin() == -1 and not reach.can_decide(reach.up_mask)
    assert reach.describe(mask_of([2, 3])) == "m2 (connection refused), m3 (connection refused)"


async def test_decided_cache_is_bounded_and_wakes_waiters() -> None:
    cache = DecidedCache(max_bytes=350)
    waiter = asyncio.create_task(cache.wait("a", 5))
    await asyncio.sleep(0)  # let the waiter register
    cache.put("a", "1")
    assert await waiter == "1"
    assert await cache.wait("missing", 0.01) is None
    for key in "bcd":
        cache.put(key, "x")
    assert cache.get("a") is None and cache.get("d") == "x"  # least recently used went first


BAD_ITEMS = [
    ({}, "field"),  # not a list
    ([{"key": "k", "value": "v"}, {"key": "k2"}], "value"),  # an item without a value
    ([{"key": "", "value": "v"}], "key"),  # an empty key
    ([{"key": "k", "value": "v", "ttl": 1}], "ttl"),  # an unknown field
    ([{"key": "k", "value": 5}], "value"),  # not text
    ([{"key": BIG_KEY, "value": "v"}], "key"),  # over the key limit
    ([{"key": f"k{i}", "value": ""} for i in range(1001)], "at most 1000"),
]


@pytest.mark.parametrize(("items", "says"), BAD_ITEMS)
async def test_batch_and_carry_refuse_bad_items_alike(
    solo: TestClient, items: Any, says: str
) -> None:
    """`:batch` and the carry-over parse items with one parser: the same refusal, nothing
    proposed."""
    answers = []
    for path, field in (("/v1/decisions:batch", "decisions"), ("/v1/admin/carry", "items")):
        status, body = await call(solo, "POST", path, {field: items})
        message = body["error"]["message"]
        assert says.replace("field", field) in message, message
        answers.append((status, body["error"]["code"], message.replace(field, "FIELD", 1)))
    assert answers[0] == answers[1] and answers[0][0] == 422
    keys = await (await solo.get("/v1/registers/keys")).json()
    assert keys["keys"] == []


async def test_client_replies_name_the_live_epochs(solo: TestClient) -> None:
    """``Graven-Epoch`` on every client-API, peer-API and /v1/cluster reply, errors too
    (documented): a smart client talking to acceptors follows a newer epoch as well."""
    doc = yaml.safe_load(OPENAPI.read_text())
    documented = {
        path
        for path, ops in doc["paths"].items()
        for op in ops.values()
        if isinstance(op, dict)
        and "Graven-Epoch" in op.get("responses", {}).get("200", {}).get("headers", {})
    }
    assert documented == {
        "/v1/decisions/{key}",
        "/v1/decisions:batch",
        "/v1/decisions:batchGet",
        "/v1/admin/carry",
        "/v1/admin/config",
        "/v1/cluster",
        "/v1/registers/read",
        "/v1/registers/write",
        "/v1/registers/fence",
        "/v1/registers/keys",
    }
    calls = [
        ("PUT", "/v1/decisions/e", {"value": "v"}, 200),
        ("GET", "/v1/decisions/e", None, 200),
        ("GET", "/v1/decisions/none", None, 404),
        ("POST", "/v1/decisions:batch", {"decisions": [{"key": "e", "value": "w"}]}, 200),
        ("POST", "/v1/decisions:batchGet", {"keys": ["e"]}, 200),
        ("POST", "/v1/decisions:batch", {"decisions": {}}, 422),
        ("POST", "/v1/admin/carry", {"items": [{"key": "e", "value": "w"}]}, 200),
        ("GET", "/v1/cluster", None, 200),
        ("GET", "/v1/registers/keys", None, 200),
        ("POST", "/v1/registers/read", {"reads": [{"key": "e", "rs": 1}]}, 200),
        ("POST", "/v1/registers/write", {"writes": {}}, 422),
    ]
    for method, path, body, status in calls:
        resp = await solo.request(method, path, json=body)
        assert (resp.status, resp.headers.get("Graven-Epoch")) == (status, "0"), path
    for path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes: no epoch
        assert "Graven-Epoch" not in (await solo.get(path)).headers
