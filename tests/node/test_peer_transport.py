"""The node's own HTTP/1.1 client for peer requests, and the ordering the proposer runtime and
its pump keep between a used-set floor and the messages of its register set."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from graven.node.cluster.config import parse
from graven.node.proposer.channel import AcceptorChannel, Channel, Item, describe_failure
from graven.node.proposer.httpclient import PeerDisconnected, PeerHttpClient
from graven.node.proposer.local import LocalChannel
from graven.node.proposer.metrics import ProposerMetrics
from graven.node.proposer.pump import Pump
from graven.node.proposer.reachability import Reachability
from graven.node.protocol import presets
from graven.node.protocol.acceptor import Reply
from graven.node.protocol.effects import DECIDED, Timing
from graven.node.protocol.layout import key_hash
from graven.node.protocol.runtime import Runtime
from graven.node.server.metrics import NodeMetrics
from graven.node.storage import RegisterStore
from graven.node.storage.schema import DB_NAME
from graven.node.storage.writer import CommitWriter

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a raw TCP server with the given handler; returns its http:// URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


async def test_content_length_chunked_and_keep_alive(serve: Callable) -> None:
    connections = 0
    answers = [
        b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Type: application/json\r\n\r\n{"a":1}',
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"b\r\n4\r\n":2}\r\n0\r\n\r\n',
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for answer in answers:
            head, body = await _read_request(reader)
            assert head.startswith(b"POST /v1/registers/write HTTP/1.1\r\nHost: 127.0.0.1:")
            assert body == b'{"x":1}'
            writer.write(answer[:10])  # split writes: the parser must wait for the rest
            await writer.drain()
            writer.write(answer[10:])
            await writer.drain()
        writer.close()

    client = PeerHttpClient(await serve(handler))
    try:
        seen = [await client.request("POST", "/v1/registers/write", b'{"x":1}', 5) for _ in answers]
    finally:
        client.close()
    assert seen == [(200, b'{"a":1}'), (200, b'{"b":2}'), (503, b"{}")]
    assert connections == 1  # one keep-alive connection for all three


async def test_close_delimited_body_and_connection_close(serve: Callable) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    client = PeerHttpClient(await serve(handler))
    try:
        assert await client.request("GET", "/readyz", None, 5) == (200, b"until the end")
        assert await client.request("GET", "/readyz", None, 5) == (200, b"until the end")
    finally:
        client.close()
    assert connections == 2  # "Connection: close" is honoured: no reuse


async def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one(serve: Callable) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if len(connections) == 1:
            writer.close()  # the peer drops the idle keep-alive connection (e.g. it restarted)

    client = PeerHttpClient(await serve(handler))
    try:
        assert await client.request("GET", "/readyz", None, 5) == (200, b"ok")
        await asyncio.sleep(0.05)  # the close reaches the client's pooled connection
        assert await client.request("GET", "/readyz", None, 5) == (200, b"ok")
    finally:
        client.close()
    assert len(connections) == 2


async def test_failures_are_os_errors_with_the_usual_reasons(serve: Callable) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = PeerHttpClient(refused_url)
    with pytest.raises(ConnectionRefusedError) as refused:
        await client.request("GET", "/readyz", None, 5)
    assert describe_failure(refused.value) == "connection refused"

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    client = PeerHttpClient(await serve(silent))
    with pytest.raises(TimeoutError) as late:
        await client.request("GET", "/readyz", None, 0.1)
    assert describe_failure(late.value) == "timed out"
    client.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        await writer.drain()
        writer.close()

    client = PeerHttpClient(await serve(hang_up))
    with pytest.raises(PeerDisconnected) as cut:
        await client.request("GET", "/readyz", None, 5)
    assert isinstance(cut.value, OSError)  # what the channel treats as "member unreachable"
    assert describe_failure(cut.value) == "connection closed"
    client.close()


# -- the used-set floor and the messages of its register set ----------------------------------


class FloorCheckingTransport:
    """A remote acceptor that, on every message, checks the floor is already on disk."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.checked: list[tuple[str, int, int]] = []  # key, rs, durable floor at arrival

    async def call(self, kind: str, items: list[Item]) -> list[Reply]:
        conn = sqlite3.connect(self.db)  # a separate reader sees committed data only
        try:
            for item in items:
                row = conn.execute(
                    "SELECT rs FROM proposer_floors WHERE key = ?", (item.key,)
                ).fetchone()
                self.checked.append((item.key, item.rs, -1 if row is None else row[0]))
        finally:
            conn.close()
        return [Reply(True, i.rs, {i.rs: i.value or ""}) for i in items]

    async def probe(self) -> bool:
        return True

    def close(self) -> None:
        pass


async def test_floor_is_durable_before_other_members_hear_of_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As under load: every commit goes to the writer thread and takes its time there, so a
    # message released before its floor's commit would reach the member first.
    slow_write = CommitWriter._write

    def write_slowly(self: CommitWriter, ops: list) -> None:
        time.sleep(0.1)
        slow_write(self, ops)

    monkeypatch.setattr(CommitWriter, "commit_inline", lambda self, pending: False)
    monkeypatch.setattr(CommitWriter, "_write", write_slowly)
    doc = {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ClusterConfig",
        "cluster": "trio",
        "members": [{"name": f"trio-{i}", "url": f"http://127.0.0.1:{7101 + i}"} for i in range(3)],
        "quorums": {"preset": "paxos"},
    }
    cfg = parse(doc)
    layout = presets.build({"preset": "paxos"}, 3)
    key = next(k for k in (f"k{i}" for i in range(100)) if layout.home_slot(key_hash(k)) == 0)
    store = RegisterStore.open(tmp_path / "data", cluster="trio", node="trio-0")
    commits: list[int] = []
    store.on_commit = lambda _seconds, changes: commits.append(changes)
    names = ["trio-0", "trio-1", "trio-2"]
    reach = Reachability(layout, names, 0)
    metrics = ProposerMetrics(CollectorRegistry(), names, reach.is_up, reach.margin)
    remote = FloorCheckingTransport(tmp_path / "data" / DB_NAME)
    local = LocalChannel(0, names[0], store, NodeMetrics(cfg, "trio-0", store), reach, metrics)
    channels: list[AcceptorChannel] = [
        local,
        *(
            Channel(i, names[i], remote, reach, metrics, max_in_flight=2, max_batch_bytes=1 << 20)
            for i in (1, 2)
        ),
    ]
    runtime = Runtime(
        layout,
        index=0,
        slot=0,
        timing=Timing(),
        rng=random.Random(1),
        floors=store.used_floor,
    )
    pump = Pump(runtime, channels, reach, store)
    try:
        loop = asyncio.get_running_loop()
        outcome = await pump.propose(key, "v", loop.time() + 5, forward=False)
        await asyncio.sleep(0.05)  # let the second remote's message arrive too
    finally:
        pump.close()
        for channel in channels:
            await channel.close()
        store.close()
    assert (outcome.status, outcome.value) == (DECIDED, "v")
    assert remote.checked == [(key, 0, 0), (key, 0, 0)]  # both saw set 0 with its floor on disk
    assert commits == [2]  # the floor and this node's own write: one transaction, one fsync
