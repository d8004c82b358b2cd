"""Decisions end to end: real `graven node` processes on 127.0.0.1, clients over HTTP.

Agreement under contention, every preset, the one-round-trip fast paths (counted through
/metrics), and faults: SIGKILL, quorum loss (503 naming the members), restarts (nothing decided
is lost) and SIGSTOP (no stall).
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from graven.node.cluster.config import parse
from graven.node.protocol.layout import key_hash
from tests.support.cluster import LocalCluster

DEADLINE = 5.0  # the node's default request deadline
ATTEMPT = 1.0  # the node's default attempt timeout


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="module")
def paxos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("paxos"), 3, {"preset": "paxos"})
    with cluster:
        yield cluster


def path(key: str) -> str:
    return "/v1/decisions/" + quote(key, safe="")


async def put(http: aiohttp.ClientSession, url: str, key: str, value: Any) -> tuple[int, Any]:
    async with http.put(url + path(key), json={"value": value}) as resp:
        return resp.status, await resp.json()


async def get(http: aiohttp.ClientSession, url: str, key: str, query: str = "") -> tuple[int, Any]:
    async with http.get(url + path(key) + query) as resp:
        return resp.status, await resp.json()


async def metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("graven_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def rpcs(before: dict[str, float], after: dict[str, float], cluster: LocalCluster) -> dict:
    """(member, kind) -> acceptor requests sent between two scrapes of one node."""
    out = {}
    for m in cluster.members:
        for kind in ("read", "write"):
            series = f'graven_acceptor_rpcs_total{{kind="{kind}",member="{m.name}"}}'
            out[(m.name, kind)] = after[series] - before[series]
    return out


def home_key(cluster: LocalCluster, node: int, prefix: str) -> str:
    """A key whose first register set the given node owns (its home node)."""
    layout = parse(cluster.doc).layout
    for i in range(10_000):
        key = f"{prefix}-{i}"
        if layout.home_slot(key_hash(key)) == node:
            return key
    raise AssertionError("no home key found")


async def wait_until_put_works(
    http: aiohttp.ClientSession, url: str, key: str, value: str, timeout: float = 15.0
) -> tuple[int, Any]:
    """Bounded polling: PUT until the cluster answers 200 (after members came back)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    status, body = 0, None
    while loop.time() < end:
        status, body = await put(http, url, key, value)
        if status == 200:
            return status, body
        assert status in (503, 504), body
        await asyncio.sleep(0.1)
    raise AssertionError(f"PUT did not succeed within {timeout}s: {status} {body}")


# -- basics on one paxos cluster --------------------------------------------------------------


async def test_put_then_get_through_other_nodes(
    paxos: LocalCluster, http: aiohttp.ClientSession
) -> None:
    assert await put(http, paxos.url(0), "greeting", "hello") == (
        200,
        {"key": "greeting", "value": "hello", "won": True},
    )
    for node in (1, 2):
        assert await get(http, paxos.url(node), "greeting") == (
            200,
            {"key": "greeting", "value": "hello"},
        )
    assert await put(http, paxos.url(2), "greeting", "bye") == (
        200,
        {"key": "greeting", "value": "hello", "won": False},
    )
    status, body = await get(http, paxos.url(1), "never-proposed")
    assert status == 404 and body["error"]["code"] == "not_decided"


async def test_contending_clients_agree_on_one_of_their_values(
    paxos: LocalCluster, http: aiohttp.ClientSession
) -> None:
    keys = [f"race-{i}" for i in range(20)]
    clients = 6
    rng = random.Random(7)

    async def client(c: int) -> list[tuple[str, int, Any]]:
        order = keys[:]
        rng.shuffle(order)
        url = paxos.url(c % 3)
        return [(key, *(await put(http, url, key, f"client-{c}"))) for key in order]

    results = await asyncio.gather(*(client(c) for c in range(clients)))
    decided: dict[str, str] = {}
    for c, answers in enumerate(results):
        for key, status, body in answers:
            assert status == 200, body
            assert decided.setdefault(key, body["value"]) == body["value"], key
            assert body["won"] == (body["value"] == f"client-{c}")
    assert set(decided.values()) <= {f"client-{c}" for c in range(clients)}
    for node in range(3):
        for key in keys:
            assert await get(http, paxos.url(node), key) == (
                200,
                {"key": key, "value": decided[key]},
            )


async def test_bad_input_changes_nothing(paxos: LocalCluster, http: aiohttp.ClientSession) -> None:
    async def registers() -> list[Any]:
        out = []
        for url in paxos.urls:
            async with http.get(url + "/v1/registers/keys?limit=10000") as resp:
                out.append((await resp.json())["keys"])
        return out

    before = await registers()
    bad = [
        (b'{"value": ', 400, "malformed_json"),
        (b'{"value": 3}', 422, "invalid_request"),
        (b'{"value": "v", "extra": 1}', 422, "invalid_request"),
        (b'{"value": "' + b"v" * (1 << 20) + b'x"}', 413, "value_too_large"),
    ]
    for body, status, code in bad:
        async with http.put(paxos.url(0) + path("untouched"), data=body) as resp:
            assert resp.status == status
            assert (await resp.json())["error"]["code"] == code
    async with http.put(paxos.url(1) + path("k" * 513), json={"value": "v"}) as resp:
        assert resp.status == 422
    assert await registers() == before
    assert (await get(http, paxos.url(2), "untouched"))[0] == 404


async def test_long_poll_returns_once_another_node_decides(
    paxos: LocalCluster, http: aiohttp.ClientSession
) -> None:
    loop = asyncio.get_running_loop()
    poll = asyncio.create_task(get(http, paxos.url(1), "awaited", "?wait=20"))
    with pytest.raises(TimeoutError):  # nothing decided yet: the poll is still open
        await asyncio.wait_for(asyncio.shield(poll), 0.3)
    assert (await put(http, paxos.url(2), "awaited", "at last"))[0] == 200
    decided_at = loop.time()
    assert await poll == (200, {"key": "awaited", "value": "at last"})
    assert loop.time() - decided_at < 2.0  # re-checks at least every 0.5 s
    started = loop.time()
    status, body = await get(http, paxos.url(0), "still-nothing", "?wait=0.4")
    assert status == 404 and body["error"]["code"] == "not_decided"
    assert loop.time() - started >= 0.4


async def test_home_node_skips_phase_one(paxos: LocalCluster, http: aiohttp.ClientSession) -> None:
    """Paxos through the key's home node: one round trip (writes only), else reads first."""
    key = home_key(paxos, 0, "home")
    before = await metrics(http, paxos.url(0))
    assert (await put(http, paxos.url(0), key, "v"))[0] == 200
    after = await metrics(http, paxos.url(0))
    counted = rpcs(before, after, paxos)
    assert all(counted[(m.name, "read")] == 0 for m in paxos.members), counted
    assert all(counted[(m.name, "write")] == 1 for m in paxos.members), counted
    assert (
        after['graven_decisions_total{path="classic"}']
        - before['graven_decisions_total{path="classic"}']
        == 1
    )

    other = home_key(paxos, 1, "forwarded")  # node 0 is not its home: hand it to node 1
    before = [await metrics(http, paxos.url(i)) for i in (0, 1)]
    assert (await put(http, paxos.url(0), other, "v"))[0] == 200
    after = [await metrics(http, paxos.url(i)) for i in (0, 1)]
    forwards = 'graven_proposal_forwards_total{outcome="ok"}'
    assert after[0][forwards] - before[0][forwards] == 1
    counted = rpcs(before[0], after[0], paxos)  # node 0 sent nothing to any acceptor
    assert all(counted[(m.name, k)] == 0 for m in paxos.members for k in ("read", "write"))
    counted = rpcs(before[1], after[1], paxos)  # the home decided it in one round trip
    assert all(counted[(m.name, "read")] == 0 for m in paxos.members), counted
    assert (await get(http, paxos.url(2), other)) == (200, {"key": other, "value": "v"})

    away = home_key(paxos, 1, "away")  # a request already forwarded is not passed on again
    before = [await metrics(http, paxos.url(0))]
    async with http.put(
        paxos.url(0) + path(away), json={"value": "v"}, headers={"Graven-Forwarded": "test"}
    ) as resp:
        assert resp.status == 200
    counted = rpcs(before[0], await metrics(http, paxos.url(0)), paxos)
    assert all(counted[(m.name, "read")] == 1 for m in paxos.members), counted


async def test_fast_layout_sends_only_keys_that_lost_the_fast_set_to_the_leader(
    local_cluster: Any, http: aiohttp.ClientSession
) -> None:
    cluster = local_cluster(members=3, quorums={"preset": "fast"})
    layout = parse(cluster.doc).layout
    key = next(f"solo-{i}" for i in range(100) if layout.leader_slot(key_hash(f"solo-{i}")) == 1)
    forwards = 'graven_proposal_forwards_total{outcome="ok"}'
    fast = 'graven_decisions_total{path="fast"}'
    before = await metrics(http, cluster.url(0))
    assert (await put(http, cluster.url(0), key, "v"))[0] == 200  # uncontended: decided here
    after = await metrics(http, cluster.url(0))
    assert (after[fast] - before[fast], after[forwards] - before[forwards]) == (1, 0)

    # racers on every member: losers of the fast set meet at the key's leader
    keys = [f"raced-{i}" for i in range(30)]
    before = [await metrics(http, url) for url in cluster.urls]
    results = await asyncio.gather(
        *(put(http, cluster.url(m), k, f"m{m}") for k in keys for m in range(3))
    )
    after = [await metrics(http, url) for url in cluster.urls]
    decided: dict[str, set[str]] = {}
    for (status, body), k in zip(results, [k for k in keys for _ in range(3)], strict=True):
        assert status == 200, body
        decided.setdefault(k, set()).add(body["value"])
    assert all(len(v) == 1 for v in decided.values()), decided
    forwarded = sum(a[forwards] - b[forwards] for a, b in zip(after, before, strict=True))
    assert forwarded > 0
    for k in keys[:5]:
        assert (await get(http, cluster.url(2), k))[1]["value"] in decided[k]


async def test_forwarding_falls_back_when_the_home_is_down(
    local_cluster: Any, http: aiohttp.ClientSession
) -> None:
    """The home is SIGSTOPped (up as far as anyone knows, but silent): the node proposes
    itself after the forwarding wait and the client still gets its decision."""
    cluster = local_cluster(members=3, quorums={"preset": "paxos"})
    key = home_key(cluster, 2, "stopped-home")
    cluster.members[2].proc.send_signal(signal.SIGSTOP)
    try:
        status, body = await put(http, cluster.url(0), key, "v")
        assert (status, body["value"]) == (200, "v")
        m = await metrics(http, cluster.url(0))
        assert m['graven_proposal_forwards_total{outcome="failed"}'] == 1
    finally:
        cluster.members[2].proc.send_signal(signal.SIGCONT)
    assert (await get(http, cluster.url(2), key)) == (200, {"key": key, "value": "v"})


# -- every preset -----------------------------------------------------------------------------

PRESETS = [
    ("paxos", 3),
    ("flexible", 3),
    ("fast", 5),
    ("colocated", 3),
    ("fixed-majority", 3),
]


@pytest.mark.parametrize(("preset", "members"), PRESETS, ids=[p for p, _ in PRESETS])
async def test_every_preset_decides(
    local_cluster: Any, http: aiohttp.ClientSession, preset: str, members: int
) -> None:
    cluster = local_cluster(members=members, quorums={"preset": preset})
    keys = [f"{preset}-{i}" for i in range(4)]
    answers = await asyncio.gather(
        *(put(http, cluster.url(i % members), k, f"a-{k}") for i, k in enumerate(keys)),
        *(put(http, cluster.url((i + 1) % members), k, f"b-{k}") for i, k in enumerate(keys)),
    )
    decided: dict[str, str] = {}
    for key, (status, body) in zip(keys + keys, answers, strict=True):
        assert status == 200, body
        assert body["value"] in (f"a-{key}", f"b-{key}")
        assert decided.setdefault(key, body["value"]) == body["value"]
    for node in range(members):
        for key in keys:
            assert await get(http, cluster.url(node), key) == (
                200,
                {"key": key, "value": decided[key]},
            )
    assert (await get(http, cluster.url(0), "nothing-here"))[0] == 404


async def test_fast_preset_decides_in_one_write_round_trip(
    local_cluster: Any, http: aiohttp.ClientSession
) -> None:
    cluster = local_cluster(members=3, quorums={"preset": "fast"})
    for node in range(3):
        url = cluster.url(node)
        before = await metrics(http, url)
        assert await put(http, url, f"fresh-{node}", "v") == (
            200,
            {"key": f"fresh-{node}", "value": "v", "won": True},
        )
        after = await metrics(http, url)
        counted = rpcs(before, after, cluster)
        assert counted == {
            (m.name, k): int(k == "write") for m in cluster.members for k in ("read", "write")
        }
        assert (
            after['graven_decisions_total{path="fast"}']
            - before['graven_decisions_total{path="fast"}']
            == 1
        )
        assert (
            after["graven_decision_round_trips_sum"]
            - before.get("graven_decision_round_trips_sum", 0)
            == 1
        )


# -- faults -----------------------------------------------------------------------------------


async def test_one_member_killed_decisions_continue(
    local_cluster: Any, http: aiohttp.ClientSession
) -> None:
    cluster = local_cluster(members=3)
    cluster.kill(2)
    decided = {}
    for i in range(8):
        key = f"k{i}"
        status, body = await put(http, cluster.url(i % 2), key, f"v{i}")
        assert (status, body["value"]) == (200, f"v{i}"), body
        decided[key] = body["value"]
    for key, value in decided.items():
        assert await get(http, cluster.url(1 - int(key[1:]) % 2), key) == (
            200,
            {"key": key, "value": value},
        )
    cluster.restart(2)
    for key, value in decided.items():  # the restarted member never saw most of them
        assert await get(http, cluster.url(2), key) == (200, {"key": key, "value": value})


async def test_quorum_loss_is_503_naming_members_and_restart_resumes(
    local_cluster: Any, http: aiohttp.ClientSession
) -> None:
    cluster = local_cluster(members=3)
    loop = asyncio.get_running_loop()
    decided = {}
    for i in range(6):
        status, body = await put(http, cluster.url(i % 3), f"early-{i}", f"v{i}")
        assert status == 200
        decided[f"early-{i}"] = body["value"]
    home = home_key(cluster, 0, "floor")
    assert (await put(http, cluster.url(0), home, "mine"))[0] == 200
    decided[home] = "mine"

    cluster.kill(1)
    cluster.kill(2)
    for attempt in range(3):
        started = loop.time()
        status, body = await put(http, cluster.url(0), f"during-{attempt}", "x")
        assert loop.time() - started < DEADLINE
        assert status == 503, body
        assert body["error"]["code"] == "quorum_unreachable"
        assert cluster.name(1) in body["error"]["message"]
        assert cluster.name(2) in body["error"]["message"]
    layout = parse(cluster.doc).layout
    for key, value in decided.items():
        status, body = await get(http, cluster.url(0), key)
        # sent to node 0, or forwarded to it as the key's home: node 0 decided it, it knows
        if key.endswith(("-0", "-3")) or layout.home_slot(key_hash(key)) == 0:
            assert (status, body) == (200, {"key": key, "value": value})
        else:  # node 0 cannot tell alone, and never guesses
            assert status == 503 and body["error"]["code"] == "quorum_unreachable", body
    status, body = await get(http, cluster.url(0), "during-0")
    assert status == 503, body  # never a 404 that might be wrong
    async with http.get(cluster.url(0) + "/v1/cluster") as resp:
        view = await resp.json()
    assert [m["up"] for m in view["members"]] == [True, False, False]
    assert view["quorumMargin"] == -1
    text = await (await http.get(cluster.url(0) + "/metrics")).text()
    assert re.search(rf'graven_member_up{{member="{cluster.name(1)}"}} 0\.0', text)
    assert "graven_quorum_margin -1.0" in text

    cluster.restart(1)
    cluster.restart(2)
    await wait_until_put_works(http, cluster.url(0), "after", "back")
    for node in range(3):
        for key, value in decided.items():
            assert await get(http, cluster.url(node), key) == (200, {"key": key, "value": value})
        status, body = await get(http, cluster.url(node), "during-0")
        assert status in (200, 404)  # the 503 PUT may or may not have landed; all nodes agree
    # node 0 durably recorded the register set it used as the home of `home`
    with sqlite3.connect(cluster.members[0].data_dir / "registers.sqlite3") as conn:
        row = conn.execute("SELECT rs FROM proposer_floors WHERE key = ?", (home,)).fetchone()
    assert row is not None and row[0] >= 0


@pytest.mark.parametrize("preset", ["paxos", "fast"])
async def test_paused_member_does_not_stall_proposals(
    local_cluster: Any, http: aiohttp.ClientSession, preset: str
) -> None:
    """SIGSTOP: the member's connections stay open but nothing answers. Paxos never waits for
    it; the fast preset (fast quorum = all 3) moves to a classic set after one attempt."""
    cluster = local_cluster(members=3, quorums={"preset": preset})
    loop = asyncio.get_running_loop()
    cluster.pause(2)
    try:
        for i in range(6):
            started = loop.time()
            status, body = await put(http, cluster.url(i % 2), f"p{i}", "v")
            assert status == 200, body
            assert loop.time() - started < ATTEMPT + 1.0
            assert (await get(http, cluster.url(1 - i % 2), f"p{i}"))[0] == 200
    finally:
        cluster.resume(2)
    for i in range(6):
        assert await get(http, cluster.url(2), f"p{i}") == (200, {"key": f"p{i}", "value": "v"})
