"""Slow or numerous clients cannot hold a member: a cap on connections, deadlines for request
heads and bodies, bounded heads. Each check also runs against a planted weakness (the limit
lifted) to show it would notice. A token added with `graven token` works without a restart."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import pytest

from graven.node.cli import main as graven
from graven.node.http import jsonio
from graven.node.server import guard
from tests.security.support import Pki, call, config, make_pki, secure_node


@pytest.fixture
def keys(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", ["demo-0"])


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


async def _open(url: str, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = _addr(url)
    return await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection (EOF) within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
        return True
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


async def held_connections(url: str, ctx: ssl.SSLContext, cap: int) -> tuple[bytes, bool]:
    """Open ``cap`` idle connections, then one more: (what the extra one got, whether a new
    connection works once one of the idle ones is closed)."""
    held = [await _open(url, ctx) for _ in range(cap)]
    await asyncio.sleep(0.1)  # the server has counted them
    reader, writer = await _open(url, ctx)
    try:
        async with asyncio.timeout(5):
            extra = await reader.read(4096)
    except TimeoutError:
        extra = b""
    writer.close()
    held[0][1].close()
    await asyncio.sleep(0.2)
    status = await call(url, "GET", "/healthz", ctx)
    for _, w in held[1:]:
        w.close()
    return extra, isinstance(status, tuple) and status[0] == 200


@pytest.mark.parametrize("planted", [False, True], ids=["guarded", "planted-no-cap"])
async def test_connection_cap(
    tmp_path: Path, keys: Pki, planted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "MAX_CONNECTIONS", 10_000 if planted else 6)
    async with secure_node(tmp_path, config(1), keys, gateway=False) as url:
        extra, recovered = await held_connections(url, keys.context(None), 6)
    if planted:
        assert b"503" not in extra  # the check below would fail: no cap
        return
    assert extra.startswith(b"HTTP/1.1 503"), extra
    assert b"too_many_connections" in extra
    assert recovered


@pytest.mark.parametrize("planted", [False, True], ids=["guarded", "planted-no-deadline"])
async def test_slow_heads_are_cut(
    tmp_path: Path, keys: Pki, planted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "HEAD_TIMEOUT", 60.0 if planted else 0.5)
    async with secure_node(tmp_path, config(1), keys, gateway=False) as url:
        ctx = keys.context(None)
        # a client trickling its head, one header line at a time
        reader, writer = await _open(url, ctx)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for i in range(8):  # bounded
            if reader.at_eof():
                break
            writer.write(f"X-Slow-{i}: y\r\n".encode())
            await asyncio.sleep(0.25)
        cut = await _closed_within(reader, 1.5)
        writer.close()
        # a connection that answered one request and then idles is cut as well
        reader, writer = await _open(url, ctx)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await reader.read(4096)
        idle_cut = await _closed_within(reader, 1.5)
        writer.close()
    assert first.startswith(b"HTTP/1.1 200")
    if planted:
        assert not cut and not idle_cut
        return
    assert cut and time.monotonic() - started < 4
    assert idle_cut


async def test_slow_bodies_get_408_and_change_nothing(
    tmp_path: Path, keys: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonio, "BODY_TIMEOUT", 0.5)
    async with secure_node(tmp_path, config(1), keys) as url:
        ctx = keys.context(None)
        reader, writer = await _open(url, ctx)
        head = (
            "PUT /v1/decisions/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {keys.tokens['write']}\r\nContent-Length: 100\r\n\r\n"
        )
        writer.write(head.encode() + b'{"value": ')
        async with asyncio.timeout(5):
            answer = await reader.read(4096)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"body_timeout" in answer
        got = await call(url, "GET", "/v1/decisions/slow", ctx, None, keys.tokens["read"])
        assert got[0] == 404


async def test_oversized_heads_and_bodies_are_4xx(tmp_path: Path, keys: Pki) -> None:
    async with secure_node(tmp_path, config(1), keys) as url:
        ctx = keys.context(None)
        for head in (
            f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\n" + "X-H: 1\r\n" * 100 + "\r\n",
            f"GET /{'p' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            reader, writer = await _open(url, ctx)
            writer.write(head.encode())
            async with asyncio.timeout(5):
                answer = await reader.read(4096)
            writer.close()
            assert answer[9:12] in (b"400", b"431", b"414"), answer[:80]
        big = json.dumps({"value": "v" * (9 << 20)}).encode()
        got = await call(url, "PUT", "/v1/decisions/big", ctx, big, keys.tokens["write"])
        assert isinstance(got, str) or got[0] == 413, got


async def test_a_new_token_works_without_a_restart(
    tmp_path: Path, keys: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    async with secure_node(tmp_path, config(1), keys) as url:
        ctx = keys.context(None)
        assert graven(["token", "--name", "carol", "--role", "write", "--tokens",
                       str(keys.token_file)]) == 0  # fmt: skip
        token = capsys.readouterr().out.strip().splitlines()[-1]  # after the node's own line
        assert keys.token_file.read_text().count("carol") == 1
        assert token not in keys.token_file.read_text()  # stored hashed only
        body = b'{"value": "c"}'
        status = None
        for _ in range(40):  # bounded: the file is re-read within a second
            got = await call(url, "PUT", "/v1/decisions/carol", ctx, body, token)
            status = got[0] if isinstance(got, tuple) else got
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
