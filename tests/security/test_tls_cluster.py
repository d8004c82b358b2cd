"""Real member processes over mutual TLS: decisions flow between members (peer API, forwarding),
clients authenticate, the smart client's fast path works with a write-role certificate."""

from __future__ import annotations

from collections.abc import Callable

from graven.node.client import AsyncClient, Client
from graven.node.client.core import ClientError
from graven.node.client.credentials import Credentials
from graven.node.client.smart import SmartClient
from tests.support.cluster import LocalCluster


async def test_members_and_clients_over_mtls(local_cluster: Callable[..., LocalCluster]) -> None:
    # one cluster for both halves (a start costs seconds): a fast layout, whose first set any
    # proposer may write, and whose later sets are owned by the members
    c = local_cluster(3, {"preset": "fast"}, tls=True)
    assert all(url.startswith("https://") for url in c.urls)
    # one client per member, no routing: proposals reach non-home members, which forward to
    # the home or propose themselves, over mTLS either way
    for i, url in enumerate(c.urls):
        with Client([url], route=False, credentials=c.credentials) as client:
            d = client.propose(f"key-{i}", f"value-{i}")
            assert d.won and d.value == f"value-{i}"
    with Client(c.urls, credentials=c.credentials) as client:
        for i in range(3):
            assert client.get(f"key-{i}") == f"value-{i}"
    # without credentials: refused, with the server's reason
    anonymous = Credentials(ca=c.credentials.ca)
    with Client(c.urls, credentials=anonymous) as client:
        try:
            client.propose("key-x", "x")
        except ClientError as exc:
            assert exc.status == 401
        else:
            raise AssertionError("an anonymous client proposed")
    async with SmartClient(c.urls, credentials=c.credentials) as smart:
        for i in range(5):
            d = await smart.propose(f"fast-{i}", "v")
            assert d.won
        assert smart.stats["fast"] == 5, smart.stats  # decided in the client, over TLS
    async with AsyncClient(c.urls, credentials=c.credentials) as client:
        assert await client.get("fast-3") == "v"
