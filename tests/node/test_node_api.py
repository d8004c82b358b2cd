"""The node's peer API over real HTTP on 127.0.0.1: replies, refusals, bad input, metrics."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from graven.node.cluster.config import ClusterConfig, ConfigError, Limits, dump, load, parse
from graven.node.server.app import create_app
from graven.node.storage import RegisterStore
from graven.node.storage.schema import DB_NAME, connect
from tests.support.openapi import OPENAPI, check_against_openapi

VALUE_LIMIT = 2048
BODY_LIMIT = 64 * 1024
DOC = {
    "apiVersion": "graven.dev/v1alpha1",
    "kind": "ClusterConfig",
    "cluster": "demo",
    "epoch": 0,
    "members": [
        {"name": "demo-0", "url": "http://127.0.0.1:7101"},
        {"name": "demo-1", "url": "http://127.0.0.1:7102"},
        {"name": "demo-2", "url": "http://127.0.0.1:7103"},
    ],
    "quorums": {"preset": "paxos"},
    "limits": {"maxValueBytes": VALUE_LIMIT, "maxKeyBytes": 512, "maxBodyBytes": BODY_LIMIT},
}


def config() -> ClusterConfig:
    return parse(json.loads(json.dumps(DOC)))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[TestClient, RegisterStore]]:
    store = RegisterStore.open(tmp_path / "data", cluster="demo", node="demo-0")
    app = create_app(config(), "demo-0", store)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client, store
    finally:
        store.close()


async def post(client: TestClient, path: str, body: Any, status: int = 200) -> Any:
    resp = await client.post(path, data=orjson.dumps(body))
    data = await resp.json()
    assert resp.status == status, data
    return data


async def snapshot(client: TestClient) -> Any:
    """Everything the node reports, to compare before and after a refused request."""
    resp = await client.get("/v1/registers/keys", params={"limit": "10000"})
    assert resp.status == 200
    return await resp.json()


# -- the configuration document ------------------------------------------------------------


def test_config_round_trip_and_defaults() -> None:
    cfg = config()
    assert [m.name for m in cfg.members] == ["demo-0", "demo-1", "demo-2"]
    assert cfg.layout.n == 3 and cfg.layout.name == "paxos"
    assert parse(dump(cfg)) == cfg
    minimal = {k: v for k, v in DOC.items() if k not in ("limits", "quorums", "epoch")}
    defaults = parse(minimal)
    assert defaults.limits == Limits(1 << 20, 512, 8 << 20)
    assert defaults.epoch == 0 and defaults.layout.name == "paxos"


def _with(**changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(DOC)), **changes}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_with(replicas=3), "unknown field(s) replicas"),
        (_with(kind="Cluster"), "kind must be 'ClusterConfig'"),
        (_with(apiVersion="v1"), "apiVersion must be"),
        (_with(cluster="Demo_1"), "cluster must be a lowercase DNS label"),
        (_with(epoch=-1), "epoch must be an integer"),
        (_with(members=[]), "members must be a non-empty list"),
        (_with(members=[{"name": "a", "url": "http://h:1"}, {"name": "a", "url": "http://h:2"}]),
         "duplicate member name 'a'"),
        (_with(members=[{"name": "a", "url": "http://h:1"}, {"name": "b", "url": "http://h:1"}]),
         "duplicate member url"),
        (_with(members=[{"name": "a", "url": "ftp://h:1"}]), "must be an http(s)://HOST[:PORT]"),
        (_with(members=[{"name": "a", "url": "http://h:99999"}]), "bad URL"),
        (_with(members=[{"name": "a", "url": "http://h:1/path"}]), "must not have a path"),
        (_with(members=[{"name": "a", "url": "http://h:1", "role": "x"}]), "unknown field(s) role"),
        (_with(members=[{"name": "a"}]), "members[0].url is required"),
        (_with(quorums={"preset": "raft"}), "quorums: unknown preset 'raft'"),
        (_with(quorums={"preset": "flexible", "grid": "2x2"}), "quorums: a 2x2 grid needs 4"),
        (_with(limits={"maxValueBytes": 0}), "limits.maxValueBytes must be an integer"),
        (_with(limits={"maxValueBytes": 10, "maxBodyBytes": 5}), "maxBodyBytes must be at least"),
        (_with(limits={"maxKeys": 5}), "limits: unknown field(s) maxKeys"),
        ([1, 2], "must be a mapping"),
    ],
)  # fmt: skip
def test_config_errors_are_one_clear_line(doc: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(doc)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_load_from_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(DOC))
    (tmp_path / "c.json").write_text(json.dumps(DOC))
    assert load(tmp_path / "c.yaml") == load(tmp_path / "c.json") == config()
    (tmp_path / "bad.yaml").write_text("members: [\n  - {")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")


# -- shapes and semantics ------------------------------------------------------------------


async def test_write_then_read_shapes(node: tuple[TestClient, RegisterStore]) -> None:
    client, _ = node
    out = await post(
        client, "/v1/registers/write", {"writes": [{"key": "k", "rs": 3, "value": "x"}]}
    )
    assert out == {"replies": [{"key": "k", "rs": 3, "ok": True, "fence": 3, "values": {"3": "x"}}]}
    out = await post(client, "/v1/registers/read", {"rs": 5, "keys": ["k", "fresh"]})
    assert out == {
        "replies": [
            {"key": "k", "ok": True, "fence": 5, "values": {"3": "x"}},
            {"key": "fresh", "ok": True, "fence": 5, "values": {}},
        ]
    }
    # reading at or below the fence is a plain peek
    out = await post(client, "/v1/registers/read", {"rs": 0, "keys": ["k"]})
    assert out["replies"][0]["fence"] == 5
    # the per-item form: each key at its own register set, in request order
    reads = [{"key": "fresh", "rs": 9}, {"key": "k", "rs": 0}, {"key": "new", "rs": 2}]
    out = await post(client, "/v1/registers/read", {"reads": reads})
    assert [(r["key"], r["fence"]) for r in out["replies"]] == [("fresh", 9), ("k", 5), ("new", 2)]


async def test_refusals_carry_the_state(node: tuple[TestClient, RegisterStore]) -> None:
    client, _ = node
    await post(client, "/v1/registers/write", {"writes": [{"key": "k", "rs": 4, "value": "a"}]})
    out = await post(
        client,
        "/v1/registers/write",
        {
            "writes": [
                {"key": "k", "rs": 4, "value": "b"},  # written with another value
                {"key": "k", "rs": 2, "value": "c"},  # fenced: nil
                {"key": "k", "rs": 4, "value": "a"},  # duplicate of the same value: acknowledged
            ]
        },
    )
    assert [(r["ok"], r["fence"], r["values"]) for r in out["replies"]] == [
        (False, 4, {"4": "a"}),
        (False, 4, {"4": "a"}),
        (True, 4, {"4": "a"}),
    ]


async def test_items_of_one_batch_see_each_other(node: tuple[TestClient, RegisterStore]) -> None:
    client, store = node
    out = await post(
        client,
        "/v1/registers/write",
        {
            "writes": [
                {"key": "k", "rs": 1, "value": "a"},
                {"key": "k", "rs": 1, "value": "b"},
                {"key": "k", "rs": 6, "value": "c"},
                {"key": "k", "rs": 3, "value": "d"},
            ]
        },
    )
    assert [r["ok"] for r in out["replies"]] == [True, False, True, False]
    assert out["replies"][-1]["values"] == {"1": "a", "6": "c"}
    assert store.get("k").values == {1: "a", 6: "c"}


async def test_global_fence(node: tuple[TestClient, RegisterStore]) -> None:
    client, _ = node
    assert await post(client, "/v1/registers/fence", {"rs": 100}) == {"fence": 100}
    assert await post(client, "/v1/registers/fence", {"rs": 7}) == {"fence": 100}  # never lowers
    out = await post(client, "/v1/registers/read", {"rs": 0, "keys": ["new"]})
    assert out["replies"][0]["fence"] == 100
    out = await post(
        client,
        "/v1/registers/write",
        {
            "writes": [
                {"key": "new", "rs": 99, "value": "x"},
                {"key": "new", "rs": 100, "value": "y"},
            ]
        },
    )
    assert [r["ok"] for r in out["replies"]] == [False, True]
    assert (await snapshot(client))["globalFence"] == 100


async def test_key_pagination_and_values_below(node: tuple[TestClient, RegisterStore]) -> None:
    client, _ = node
    writes = [{"key": f"k{i:02d}", "rs": i, "value": f"v{i}"} for i in range(25)]
    await post(client, "/v1/registers/write", {"writes": writes})
    seen: list[str] = []
    after: str | None = None
    for _ in range(10):  # bounded
        params = {"limit": "10", **({"after": after} if after else {})}
        resp = await client.get("/v1/registers/keys", params=params)
        page = await resp.json()
        seen += [item["key"] for item in page["keys"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [f"k{i:02d}" for i in range(25)]
    resp = await client.get("/v1/registers/keys", params={"below": "3"})
    page = await resp.json()
    assert page == {
        "keys": [
            {"key": "k00", "fence": 0, "values": {"0": "v0"}},
            {"key": "k01", "fence": 1, "values": {"1": "v1"}},
            {"key": "k02", "fence": 2, "values": {"2": "v2"}},
        ],
        "next": None,
        "globalFence": 0,
    }


async def test_cluster_health_ready(node: tuple[TestClient, RegisterStore]) -> None:
    client, _ = node
    resp = await client.get("/v1/cluster")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["cluster"] == "demo" and doc["epoch"] == 0 and doc["node"] == "demo-0"
    assert doc["members"][1] == {"name": "demo-1", "url": "http://127.0.0.1:7102"}
    assert doc["layout"] == {"preset": "paxos"}
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "alive"
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"


async def test_broken_store_is_503_not_500(
    node: tuple[TestClient, RegisterStore], tmp_path: Path
) -> None:
    client, _ = node
    await post(client, "/v1/registers/read", {"rs": 1, "keys": ["k"]})
    resp = await client.get("/metrics")
    assert metric(await resp.text(), "graven_store_failed") == 0
    side = connect(tmp_path / "data" / DB_NAME)  # a register appears behind the node's back
    side.execute("INSERT INTO registers(key, rs, value) VALUES ('k', 5, 'side')")
    side.close()
    out = await post(
        client, "/v1/registers/write", {"writes": [{"key": "k", "rs": 5, "value": "x"}]}, 503
    )
    assert out["error"]["code"] == "store_unavailable"
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "not_ready"
    await post(client, "/v1/registers/read", {"rs": 9, "keys": ["k"]}, 503)
    resp = await client.get("/metrics")
    assert metric(await resp.text(), "graven_store_failed") == 1


def metric(text: str, series: str) -> float:
    """The value of one exported series (name plus labels exactly as exported)."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not exported")


async def test_metrics(node: tuple[TestClient, RegisterStore]) -> None:
    client, _ = node
    await post(client, "/v1/registers/write", {"writes": [{"key": "a", "rs": 1, "value": "x"}]})
    await post(client, "/v1/registers/write", {"writes": [{"key": "a", "rs": 1, "value": "y"}]})
    await post(client, "/v1/registers/read", {"rs": 3, "keys": ["a", "b"]})
    await post(client, "/v1/registers/fence", {"rs": 2})
    await client.get("/nowhere")
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert metric(text, 'graven_register_ops_total{op="write",result="ok"}') == 1
    assert metric(text, 'graven_register_ops_total{op="write",result="refused"}') == 1
    assert metric(text, 'graven_register_ops_total{op="read",result="ok"}') == 2
    assert metric(text, 'graven_register_ops_total{op="fence",result="ok"}') == 1
    assert metric(text, "graven_commit_batch_size_count") == 3
    assert metric(text, "graven_commit_batch_size_sum") == 4
    assert metric(text, "graven_commit_duration_seconds_count") == 3
    assert 'graven_commit_duration_seconds_bucket{le="0.0001"}' in text
    assert metric(text, "graven_stored_keys") == 2
    assert metric(text, "graven_fence_watermark") == 2
    assert metric(text, "graven_storage_bytes") > 0
    assert metric(text, "graven_config_epoch") == 0
    assert metric(text, "graven_config_live_epochs") == 1
    assert metric(text, 'graven_node_info{cluster="demo",node="demo-0"}') == 1
    assert (
        'graven_http_request_duration_seconds_count{method="POST",'
        'route="/v1/registers/write",status="200"} 2.0' in text
    )
    assert 'route="unmatched",status="404"' in text


# -- bad input: the right 4xx, JSON, and nothing changes -----------------------------------

BIG_KEY = "k" * 513
MULTIBYTE_KEY = "é" * 257  # 257 characters, 514 UTF-8 bytes
OK_WRITE = {"key": "fine", "rs": 1, "value": "v"}
READ, WRITE, FENCE, KEYS = (f"/v1/registers/{p}" for p in ("read", "write", "fence", "keys"))
BAD, TOO_LARGE = 422, 413


def reads(rs: Any, keys: Any) -> bytes:
    return orjson.dumps({"rs": rs, "keys": keys})


def writes(**second: Any) -> bytes:
    """A valid first item and a bad second one: the whole batch must be refused."""
    return orjson.dumps({"writes": [OK_WRITE, {**OK_WRITE, **second}]})


BAD_REQUESTS = [
    # (method, path, raw body, status, error code)
    ("POST", WRITE, b'{"writes": [', 400, "malformed_json"),
    ("POST", WRITE, b"", 400, "malformed_json"),
    ("POST", READ, b"NaN", 400, "malformed_json"),
    ("POST", READ, b'"just a string"', BAD, "invalid_request"),
    ("POST", READ, reads("1", ["a"]), BAD, "invalid_request"),
    ("POST", READ, reads(1.0, ["a"]), BAD, "invalid_request"),
    ("POST", READ, reads(True, ["a"]), BAD, "invalid_request"),
    ("POST", READ, reads(-1, ["a"]), BAD, "invalid_request"),
    ("POST", READ, reads(1 << 62, ["a"]), BAD, "invalid_request"),
    ("POST", READ, b'{"rs": 18446744073709551616, "keys": ["a"]}', BAD, "invalid_request"),
    ("POST", READ, reads(1, "a"), BAD, "invalid_request"),
    ("POST", READ, reads(1, ["a", 5]), BAD, "invalid_request"),
    ("POST", READ, reads(1, ["a", ""]), BAD, "invalid_request"),
    ("POST", READ, b'{"rs": 1, "keys": ["a"], "x": 1}', BAD, "invalid_request"),
    ("POST", READ, b'{"rs": 1}', BAD, "invalid_request"),
    ("POST", READ, reads(1, ["a", BIG_KEY]), BAD, "invalid_request"),
    ("POST", READ, reads(1, [MULTIBYTE_KEY]), BAD, "invalid_request"),
    ("POST", READ, reads(1, ["a\x00b"]), BAD, "invalid_request"),
    ("POST", READ, reads(1, ["k"] * 10_001), BAD, "invalid_request"),
    ("POST", READ, b'{"reads": [{"key": "a", "rs": 1}], "rs": 1}', BAD, "invalid_request"),
    ("POST", READ, b'{"reads": [{"key": "a"}]}', BAD, "invalid_request"),
    ("POST", READ, b'{"reads": [{"key": "a", "rs": -1}]}', BAD, "invalid_request"),
    ("POST", READ, b'{"reads": {"key": "a", "rs": 1}}', BAD, "invalid_request"),
    ("POST", WRITE, orjson.dumps({"writes": [OK_WRITE, {"key": "b", "rs": 1}]}), BAD,
     "invalid_request"),
    ("POST", WRITE, writes(extra=1), BAD, "invalid_request"),
    ("POST", WRITE, writes(value=5), BAD, "invalid_request"),
    ("POST", WRITE, writes(value=None), BAD, "invalid_request"),
    ("POST", WRITE, writes(key=BIG_KEY), BAD, "invalid_request"),
    ("POST", WRITE, writes(rs=-3), BAD, "invalid_request"),
    ("POST", WRITE, writes(value="v" * (VALUE_LIMIT + 1)), TOO_LARGE, "value_too_large"),
    ("POST", WRITE, writes(value="é" * (VALUE_LIMIT // 2 + 1)), TOO_LARGE, "value_too_large"),
    ("POST", WRITE, orjson.dumps({"writes": [OK_WRITE], "pad": "x" * BODY_LIMIT}), TOO_LARGE,
     "body_too_large"),
    ("POST", WRITE, orjson.dumps({"writes": {"key": "a"}}), BAD, "invalid_request"),
    ("POST", FENCE, b'{"rs": "9"}', BAD, "invalid_request"),
    ("POST", FENCE, b'{"rs": 9, "keys": []}', BAD, "invalid_request"),
    ("POST", FENCE, b"[9]", BAD, "invalid_request"),
    ("GET", f"{KEYS}?limit=0", b"", BAD, "invalid_request"),
    ("GET", f"{KEYS}?limit=ten", b"", BAD, "invalid_request"),
    ("GET", f"{KEYS}?limit=1&limit=2", b"", BAD, "invalid_request"),
    ("GET", f"{KEYS}?below=-1", b"", BAD, "invalid_request"),
    ("GET", f"{KEYS}?sort=desc", b"", BAD, "invalid_request"),
    ("GET", f"{KEYS}?after={BIG_KEY}", b"", BAD, "invalid_request"),
    ("GET", "/v1/registers/nowhere", b"", 404, "not_found"),
    ("POST", "/v1/decisions/k", b"{}", 404, "not_found"),
    ("GET", WRITE, b"", 405, "method_not_allowed"),
    ("PUT", READ, b"{}", 405, "method_not_allowed"),
    ("DELETE", "/v1/cluster", b"", 405, "method_not_allowed"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS)
async def test_bad_input_is_refused_and_changes_nothing(
    node: tuple[TestClient, RegisterStore],
    method: str,
    path: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    client, _ = node
    await post(client, "/v1/registers/write", {"writes": [{"key": "a", "rs": 2, "value": "x"}]})
    before = await snapshot(client)
    resp = await client.request(method, path, data=body)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert error["code"] == code and error["message"]
    if status == 405:
        assert resp.headers["Allow"]
    assert await snapshot(client) == before
    # the node still serves normally afterwards
    out = await post(client, "/v1/registers/read", {"rs": 0, "keys": ["a", "fine"]})
    assert [r["values"] for r in out["replies"]] == [{"2": "x"}, {}]


async def test_limits_are_inclusive(node: tuple[TestClient, RegisterStore]) -> None:
    client, _ = node
    writes = [
        {"key": "k" * 512, "rs": 1, "value": "v" * VALUE_LIMIT},
        {"key": "é" * 256, "rs": (1 << 62) - 1, "value": "é" * (VALUE_LIMIT // 2)},
    ]
    out = await post(client, "/v1/registers/write", {"writes": writes})
    assert all(r["ok"] for r in out["replies"])


# -- property: no JSON body makes the node answer 5xx --------------------------------------


class ThreadedNode:
    """The app on its own event loop in a thread, so a synchronous hypothesis test can call it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> ThreadedNode:
        self._thread.start()
        assert self._ready.wait(30), "node thread did not start"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = RegisterStore.open(self.data_dir, cluster="demo", node="demo-0")
        runner = web.AppRunner(create_app(config(), "demo-0", store))
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            store.close()


@pytest.fixture(scope="module")
def threaded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedNode]:
    with ThreadedNode(tmp_path_factory.mktemp("prop") / "data") as served:
        yield served


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["rs", "keys", "writes", "key", "value", "x"]), inner)
    ),
    max_leaves=12,
)
# Well-formed bodies and bodies with a bad part too, so the deeper paths (decisions, commits,
# refusals) run as well, not only the first type check.
good_keys = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=8)
good_sets = st.integers(0, 100)
any_keys = good_keys | st.text(max_size=600) | json_scalars
any_sets = good_sets | st.integers(-3, 1 << 63) | json_scalars


Strategy = st.SearchStrategy[Any]


def read_body(keys: Strategy, sets: Strategy) -> Strategy:
    return st.fixed_dictionaries({"rs": sets, "keys": st.lists(keys, max_size=5)})


def write_body(keys: Strategy, sets: Strategy, values: Strategy) -> Strategy:
    item = st.fixed_dictionaries({"key": keys, "rs": sets, "value": values})
    return st.fixed_dictionaries({"writes": st.lists(item, max_size=5)})


requests = st.one_of(
    st.tuples(st.sampled_from([READ, WRITE, FENCE]), json_values),
    st.tuples(st.just(READ), read_body(good_keys, good_sets)),
    st.tuples(st.just(READ), read_body(any_keys, any_sets)),
    st.tuples(st.just(WRITE), write_body(good_keys, good_sets, st.text(max_size=20))),
    st.tuples(st.just(WRITE), write_body(any_keys, any_sets, json_values)),
    st.tuples(st.just(FENCE), st.fixed_dictionaries({"rs": any_sets})),
)


@settings(max_examples=400, deadline=None)
@given(request=requests, raw_noise=st.binary(max_size=12))
def test_random_json_never_5xx(
    threaded_node: ThreadedNode, request: tuple[str, Any], raw_noise: bytes
) -> None:
    path, body = request
    try:
        payload = json.dumps(body, allow_nan=True).encode()  # NaN/Infinity: not JSON, must be 400
    except ValueError:
        payload = b"{}"
    for data in (payload, payload + raw_noise):
        conn = http.client.HTTPConnection("127.0.0.1", threaded_node.port, timeout=30)
        try:
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            reply = resp.read()
        finally:
            conn.close()
        assert resp.status < 500, (resp.status, reply)
        assert resp.getheader("Content-Type", "").startswith("application/json")
        decoded = orjson.loads(reply)
        if resp.status >= 400:
            assert set(decoded["error"]) == {"code", "message"}
        elif path != FENCE:
            assert len(decoded["replies"]) == len(body["keys" if path == READ else "writes"])


def test_node_still_ready_after_random_bodies(threaded_node: ThreadedNode) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", threaded_node.port, timeout=30)
    try:
        conn.request("GET", "/readyz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


# -- the OpenAPI document describes what the node really sends --------------------------------


async def test_replies_match_the_openapi_document(node: tuple[TestClient, RegisterStore]) -> None:
    client, _ = node
    calls: list[tuple[str, str, Any]] = [
        ("POST", WRITE, {"writes": [{"key": "k", "rs": 3, "value": "x"}, OK_WRITE]}),
        ("POST", READ, {"rs": 5, "keys": ["k", "other"]}),
        ("POST", READ, {"reads": [{"key": "k", "rs": 6}, {"key": "other", "rs": 0}]}),
        ("POST", FENCE, {"rs": 2}),
        ("GET", KEYS, None),
        ("GET", f"{KEYS}?limit=1", None),
        ("GET", "/v1/cluster", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("POST", READ, {"rs": "x"}),
        ("POST", WRITE, {"writes": [{**OK_WRITE, "value": "v" * (VALUE_LIMIT + 1)}]}),
        ("GET", READ, None),
    ]
    for method, path, body in calls:
        data = None if body is None else orjson.dumps(body)
        resp = await client.request(method, path, data=data)
        check_against_openapi(path.split("?")[0], method, resp.status, await resp.json())
    doc = yaml.safe_load(OPENAPI.read_text())
    served = {r.resource.canonical for r in client.app.router.routes() if r.resource}
    # the client API under /v1/decisions and the carry-over come with the gateway extension
    # (test_decisions_api)
    gateway = ("/v1/decisions", "/v1/admin/carry")
    assert served == {p for p in doc["paths"] if not p.startswith(gateway)}
