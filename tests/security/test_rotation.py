"""Certificates and the CA rotate under load without a restart and without a failed request.

Bound: zero failed client requests. Why it holds: members and clients re-read their files
within ``tls.RECHECK`` (1 s) and only new connections use them; each step of a CA rotation
is taken only after that, so every handshake meets a peer that trusts the other's CA (old and
new are both trusted between ``trust`` and ``finish``).

The planted weakness: members that never re-read their files (a ``sitecustomize`` in the
members' environment sets ``RECHECK`` to a day; the product has no such switch). The same
rotation must then show failures.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509

from graven.node.client import AsyncClient
from graven.node.client.core import ClientError
from graven.node.local import security as local_security
from graven.node.security.tls import RECHECK
from tests.support.cluster import LocalCluster

SETTLE = 1.5 * RECHECK  # every member and client has looked at its files since the change
WORKERS = 6
READY = 60.0  # seconds for members to start (a loaded two-core box is slow to start Python)


def served_serial(url: str, ca: Path) -> int:
    """The serial of the certificate a member serves to a new connection (verified by ``ca``)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def rotate_under_load(c: LocalCluster) -> tuple[int, int, list[str]]:
    """(acknowledged, failed, problems) after renewing member certificates and rotating the
    CA while clients keep proposing."""
    names = [m.name for m in c.members]
    tls = c.root / "tls"
    acked: dict[str, str] = {}
    failures: list[str] = []
    stop = asyncio.Event()

    async def worker(w: int, client: AsyncClient) -> None:
        n = 0
        while not stop.is_set() and n < 10_000:  # bounded
            key = f"rot-{w}-{n}"
            try:
                d = await client.propose(key, f"v{n}")
                acked[key] = d.value
            except ClientError as exc:
                failures.append(f"{key}: {exc}")
            n += 1

    async def step(action: str) -> None:
        await asyncio.to_thread(_do, action)
        await asyncio.sleep(SETTLE)

    def _do(action: str) -> None:
        if action == "renew":
            local_security.renew(c.root, c.cluster, names)
        else:
            local_security.rotate_ca(c.root, c.cluster, action, names)

    problems: list[str] = []
    # each worker has its own client: its connections are opened (and re-opened) on their own
    clients = [AsyncClient(c.urls, credentials=c.credentials, timeout=10) for _ in range(WORKERS)]
    try:
        tasks = [asyncio.create_task(worker(w, cl)) for w, cl in enumerate(clients)]
        await asyncio.sleep(0.5)
        before = served_serial(c.urls[0], tls / "ca.crt")
        await step("renew")
        if served_serial(c.urls[0], tls / "ca.crt") == before:
            problems.append("a member still serves its old certificate after renewal")
        for action in ("trust", "reissue", "finish"):
            await step(action)
        try:  # new connections verify with only the new CA
            served_serial(c.urls[1], tls / "ca.crt")
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"a member does not serve a certificate of the new CA: {exc}")
        stop.set()
        await asyncio.gather(*tasks)
        # a new client: fresh handshakes with the new client certificate and CA only
        async with AsyncClient(c.urls, credentials=c.credentials) as reader:
            for key in list(acked)[:: max(1, len(acked) // 50)] + list(acked)[-5:]:
                try:
                    if await reader.get(key) != acked[key]:
                        problems.append(f"{key} lost or changed")
                except ClientError as exc:
                    problems.append(f"reading {key} after the rotation: {exc}")
                    break
    finally:
        stop.set()
        for cl in clients:
            await cl.close()
    return len(acked), len(failures), problems + failures[:3]


async def test_rotation_under_load_fails_nothing(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "c", 3, tls=True).start(READY)
    try:
        started = time.monotonic()
        acked, failed, problems = await rotate_under_load(c)
    finally:
        c.close()
    assert acked > 20, f"too little load to mean anything: {acked} decisions"
    assert (failed, problems) == (0, []), f"{failed} failed requests; {problems}"
    assert time.monotonic() - started < 60


async def test_rotation_check_catches_members_that_never_reload(tmp_path: Path) -> None:
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(
        "import graven.node.security.tls as t\nt.RECHECK = 86400.0\n"
    )
    c = LocalCluster(tmp_path / "c", 3, tls=True, env={"PYTHONPATH": str(plant)}).start(READY)
    try:
        _, failed, problems = await rotate_under_load(c)
    finally:
        c.close()
    assert failed or problems, "members that never reload went unnoticed"
