"""The delay proxy (gravenfaults/proxy.py) keeps every byte stream intact, delays, and lets
connections overtake each other: what the harness's `delay` nemesis relies on. Loopback only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def proxied(tmp_path: Path):
    """(proxy port, arrivals list, control file, proxy process) in front of an echo server."""
    arrivals: list[bytes] = []

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            if data.startswith(b"tag:"):
                arrivals.append(data)
            w.write(data)
            await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    port = free_port()
    control = tmp_path / "delay.json"
    control.write_text(json.dumps({"delay_ms": [20, 60]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gravenfaults.proxy", "--listen", f"127.0.0.1:{port}",
         "--to", f"127.0.0.1:{target}", "--control", str(control)],
        cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)}, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
    assert b"proxy listening" in line
    try:
        yield port, arrivals, control, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.close()
        await server.wait_closed()


async def test_streams_stay_intact_and_are_delayed(proxied) -> None:
    port, _, _, _ = proxied
    payload = os.urandom(300_000)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    for i in range(0, len(payload), 7000):  # many chunks, each with its own due time
        w.write(payload[i : i + 7000])
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(len(payload)), 30)
    assert got == payload
    assert time.monotonic() - started >= 0.04  # at least 20 ms each way
    w.close()


async def test_connections_overtake_each_other_and_sighup_switches_delay_off(proxied) -> None:
    port, arrivals, control, proc = proxied
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    overtaken = 0
    for trial in range(40):
        arrivals.clear()
        for n, (_, w) in enumerate(conns):  # first sent on connection 0, then on 1
            w.write(f"tag:{trial}:{n}".encode())
            await w.drain()
        for r, _ in conns:
            await asyncio.wait_for(r.read(100), 10)
        overtaken += arrivals[0].endswith(b":1")
    assert 0 < overtaken < 40  # reordered sometimes, not always

    control.write_text(json.dumps({"delay_ms": [0, 0]}))
    proc.send_signal(signal.SIGHUP)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    best = 1.0
    for _ in range(20):  # the best of 20 round trips: robust against a busy machine
        t0 = time.monotonic()
        w.write(b"tag:x")
        await w.drain()
        await asyncio.wait_for(r.read(100), 10)
        best = min(best, time.monotonic() - t0)
    assert best < 0.02
    w.close()
    for _, w in conns:
        w.close()
