"""The smart client against real nodes: one round trip on a fast layout, the gateway otherwise.

What a user sees: the decided value (the same from every member and every client), ``won``,
and that proposals still decide when the fast path cannot (a conflict, a member down or
silent, a layout without a fast first set). ``stats`` shows which path decided.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from graven.node.client.aio import AsyncClient
from graven.node.client.core import ClientError
from graven.node.client.smart import SmartClient
from tests.support.cluster import LocalCluster


@pytest.fixture(scope="module")
def fast3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("fast3"), 3, {"preset": "fast"}) as cluster:
        yield cluster


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def read_everywhere(http: aiohttp.ClientSession, cluster: LocalCluster, key: str) -> set:
    """The value every member answers for ``key`` (a set of one value when they agree)."""
    seen = set()
    for url in cluster.urls:
        async with http.get(f"{url}/v1/decisions/{quote(key, safe='')}") as resp:
            assert resp.status == 200, await resp.text()
            seen.add((await resp.json())["value"])
    return seen


async def acceptor_writes(http: aiohttp.ClientSession, cluster: LocalCluster) -> float:
    total = 0.0
    for url in cluster.urls:
        async with http.get(url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith('graven_register_ops_total{op="write",result="ok"}'):
                    total += float(line.rsplit(" ", 1)[1])
    return total


async def test_fast_layout_decides_in_the_client(
    fast3: LocalCluster, http: aiohttp.ClientSession
) -> None:
    async with SmartClient(fast3.urls) as client:
        before = await acceptor_writes(http, fast3)
        decision = await client.propose("smart/one", "v1")
        assert (decision.value, decision.won) == ("v1", True)
        assert client.stats == {"fast": 1}
        assert await acceptor_writes(http, fast3) - before == 3  # one write per acceptor
        assert await read_everywhere(http, fast3, "smart/one") == {"v1"}

        again = await client.propose("smart/one", "v2")  # decided already: the old value
        assert (again.value, again.won) == ("v1", False)
        assert await client.get("smart/one") == "v1"
        assert await client.get("smart/never") is None


async def test_losers_learn_the_winner_from_the_fast_set_itself(fast3: LocalCluster) -> None:
    """Four proposals of one key leave in one batch per acceptor: the first wins everywhere, and
    the other three read the decision from the refusals, without the gateway."""
    async with SmartClient(fast3.urls) as client:
        await client.propose("warm-batch", "w")
        decisions = await asyncio.gather(*(client.propose("one-batch", f"r{i}") for i in range(4)))
        assert [(d.value, d.won) for d in decisions] == [("r0", True)] + [("r0", False)] * 3
        assert client.stats == {"fast": 5}


async def test_racing_clients_and_gateways_agree(
    fast3: LocalCluster, http: aiohttp.ClientSession
) -> None:
    """Smart clients and gateway requests race on the same keys with different values."""
    keys = [f"race-{i}" for i in range(40)]
    rng = random.Random(7)  # jitter, so racers reach the acceptors in different orders
    clients = [SmartClient(fast3.urls) for _ in range(3)]
    gateway = AsyncClient(fast3.urls, route=False)
    try:

        async def smart(c: int, key: str) -> tuple[str, str, bool]:
            await asyncio.sleep(rng.uniform(0, 0.002))
            d = await clients[c].propose(key, f"smart{c}")
            return key, d.value, d.won

        async def plain(node: int, key: str) -> tuple[str, str, bool]:
            await asyncio.sleep(rng.uniform(0, 0.002))
            d = await gateway.propose(key, f"node{node}", via=fast3.url(node))
            return key, d.value, d.won

        racers = [smart(c, k) for k in keys for c in range(3)]
        racers += [plain(n, k) for k in keys for n in range(3)]
        results = await asyncio.gather(*racers)
    finally:
        for c in clients:
            await c.close()
        await gateway.close()
    by_key: dict[str, set[str]] = {}
    for key, value, _ in results:
        by_key.setdefault(key, set()).add(value)
    assert all(len(values) == 1 for values in by_key.values()), by_key
    for key in keys:
        winners = [won for k, _, won in results if k == key and won]
        assert len(winners) >= 1  # the decided value was somebody's, and they were told so
        assert await read_everywhere(http, fast3, key) == by_key[key]
    # with six racers per key some lost the fast set and went through the gateway
    assert sum(c.stats["gateway"] for c in clients) > 0


async def test_member_down_goes_through_the_gateway(
    local_cluster: Any, http: aiohttp.ClientSession
) -> None:
    """Fast-3 needs every member for the fast set; with one killed the gateway decides."""
    cluster = local_cluster(members=3, quorums={"preset": "fast"})
    async with SmartClient(cluster.urls) as client:
        assert (await client.propose("before", "a")).value == "a"
        cluster.kill(2)
        for i in range(5):
            decision = await client.propose(f"after-{i}", "b")
            assert (decision.value, decision.won) == ("b", True)
        assert client.stats["fast"] == 1 and client.stats["gateway"] == 5
        cluster.restart(2)
        assert await read_everywhere(http, cluster, "after-4") == {"b"}


async def test_silent_member_costs_the_fast_timeout_only(
    local_cluster: Any, http: aiohttp.ClientSession
) -> None:
    cluster = local_cluster(members=3, quorums={"preset": "fast"})
    async with SmartClient(cluster.urls, fast_timeout=0.3) as client:
        assert (await client.propose("warm", "w")).value == "w"
        cluster.members[1].proc.send_signal(signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            decision = await client.propose("stalled", "s")
            assert (decision.value, decision.won) == ("s", True)
            assert loop.time() - started < 5.0  # the gateway's request deadline is 5 s
            assert client.stats["gateway"] == 1
            # once its request times out (2 x the fast timeout) the member counts as down and
            # the client stops waiting for it; a node may still spend its own attempt timeout
            # (1 s) on the fast set until it notices too
            took = []
            for i in range(10):
                started = loop.time()
                assert (await client.propose(f"later-{i}", "s")).won
                took.append(loop.time() - started)
            assert max(took) < 2.0 and sum(t < 0.5 for t in took) >= 5, took
            assert client.stats["gateway"] == 11
        finally:
            cluster.members[1].proc.send_signal(signal.SIGCONT)
    assert await read_everywhere(http, cluster, "stalled") == {"s"}


async def test_paxos_layout_uses_the_home_member(
    local_cluster: Any, http: aiohttp.ClientSession
) -> None:
    """No fast first set: every proposal goes to the key's home through the gateway."""
    cluster = local_cluster(members=3, quorums={"preset": "paxos"})
    async with SmartClient(cluster.urls) as client:
        for i in range(6):
            assert (await client.propose(f"p-{i}", "x")).value == "x"
        assert client.stats == {"gateway": 6}
    forwarded = 0.0
    for url in cluster.urls:  # routed to the home: no node had to pass a proposal on
        async with http.get(url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("graven_proposal_forwards_total"):
                    forwarded += float(line.rsplit(" ", 1)[1])
    assert forwarded == 0


async def test_bad_input_is_refused_and_changes_nothing(
    fast3: LocalCluster, http: aiohttp.ClientSession
) -> None:
    async with SmartClient(fast3.urls) as client:
        before = await acceptor_writes(http, fast3)
        with pytest.raises(ClientError) as empty:
            await client.propose("", "v")
        assert empty.value.status == 400
        with pytest.raises(ClientError) as long_key:
            await client.propose("k" * 600, "v")  # over maxKeyBytes: the gateway says why
        assert long_key.value.status == 422 and "512" in long_key.value.message
        with pytest.raises(ClientError):
            await client.propose("k", 5)  # type: ignore[arg-type]
        assert await acceptor_writes(http, fast3) == before


def test_fast_timeout_must_fit_the_request_timeout() -> None:
    with pytest.raises(ValueError, match="fast timeout"):
        SmartClient(["http://127.0.0.1:1"], timeout=1.0, fast_timeout=2.0)


def graven_bench(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "graven.node.cli", "bench", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def test_graven_bench_smart(fast3: LocalCluster) -> None:
    endpoints = [arg for url in fast3.urls for arg in ("--endpoint", url)]
    doc = graven_bench("--smart", "--seconds", "1", "--concurrency", "4", *endpoints)
    assert doc["client"] == "smart" and doc["ops"] > 0 and doc["errors"] == 0
    assert doc["fast_in_client"] >= doc["ops"]  # every unique key took the fast path
    doc = graven_bench(
        "--smart", "--seconds", "1", "--racers", "3", "--concurrency", "2", *endpoints
    )
    assert doc["ops"] > 0 and doc["errors"] == 0
    assert doc["disagreements"] == 0 and doc["won_anomalies"] == 0
