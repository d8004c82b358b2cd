"""Real `graven node` processes on 127.0.0.1 for integration tests (reusable).

    cluster = LocalCluster(tmp_path, members=3, quorums={"preset": "paxos"})
    cluster.start()            # renders the ClusterConfig on free ports, waits for /readyz
    cluster.url(0)             # http://127.0.0.1:PORT of member 0
    cluster.kill(1)            # SIGKILL;  cluster.restart(1) starts it again on its data dir
    cluster.pause(2)           # SIGSTOP;  cluster.resume(2) sends SIGCONT
    cluster.close()            # SIGTERM (SIGKILL after a grace period) for every member

Or as a fixture: ``def test_x(local_cluster): c = local_cluster(members=3)``; every cluster the
factory made is closed after the test. Synchronous on purpose (subprocess + http.client), so
both plain and asyncio tests can use it; the waits are bounded polls of ``/readyz``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

NODE_CMD = (sys.executable, "-m", "graven.node.cli", "node")
READY_TIMEOUT = 20.0  # seconds for a node to answer /readyz
STOP_GRACE = 10.0  # seconds after SIGTERM before SIGKILL
POLL = 0.05
HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now (all bound at once, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_status(url: str, path: str, timeout: float = 1.0) -> int | None:
    """Status of GET url+path, None when nothing answers."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@dataclass
class Member:
    index: int
    name: str
    port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    def __init__(
        self,
        root: Path,
        members: int = 3,
        quorums: Mapping[str, Any] | None = None,
        *,
        cluster: str = "demo",
        limits: Mapping[str, int] | None = None,
        node_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.cluster = cluster
        self.node_args = list(node_args)
        self.env = {**os.environ, **(env or {})}
        ports = free_ports(members)
        self.members = [
            Member(i, f"{cluster}-{i}", port, root / f"{cluster}-{i}", root / f"{cluster}-{i}.log")
            for i, port in enumerate(ports)
        ]
        doc: dict[str, Any] = {
            "apiVersion": "graven.dev/v1alpha1",
            "kind": "ClusterConfig",
            "cluster": cluster,
            "epoch": 0,
            "members": [{"name": m.name, "url": m.url} for m in self.members],
            "quorums": dict(quorums or {"preset": "paxos"}),
        }
        if limits:
            doc["limits"] = dict(limits)
        self.doc = doc
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / f"{cluster}.yaml"
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    # -- whole cluster --------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        for m in self.members:
            self._spawn(m)
        for m in self.members:
            self.wait_ready(m.index)
        return self

    def close(self) -> None:
        for m in self.members:
            if m.running:
                assert m.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGCONT)  # a paused node cannot handle SIGTERM
                    m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait(STOP_GRACE)

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def url(self, index: int) -> str:
        return self.members[index].url

    def name(self, index: int) -> str:
        return self.members[index].name

    # -- one member -----------------------------------------------------------------------------

    def _spawn(self, m: Member) -> None:
        if m.running:
            raise RuntimeError(f"{m.name} is already running")
        with m.log.open("ab") as log:
            m.proc = subprocess.Popen(
                [
                    *NODE_CMD,
                    *("--id", m.name, "--listen", f"{HOST}:{m.port}"),
                    *("--data-dir", str(m.data_dir), "--config", str(self.config_path)),
                    *self.node_args,
                ],
                stdout=log,
                stderr=log,
                env=self.env,
            )

    def wait_ready(self, index: int, timeout: float = READY_TIMEOUT) -> None:
        m = self.members[index]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not m.running:
                raise RuntimeError(f"{m.name} exited: {m.log.read_text(errors='replace')[-2000:]}")
            if http_status(m.url, "/readyz", timeout=0.5) == 200:
                return
            time.sleep(POLL)
        raise RuntimeError(f"{m.name} not ready after {timeout}s: {m.log.read_text()[-2000:]}")

    def kill(self, index: int) -> None:
        """SIGKILL: the process dies at once, without flushing or closing anything."""
        m = self.members[index]
        if m.proc is not None and m.running:
            m.proc.send_signal(signal.SIGKILL)
        if m.proc is not None:
            m.proc.wait(STOP_GRACE)

    def restart(self, index: int) -> None:
        """Start a stopped or killed member again on its data directory; waits until ready."""
        m = self.members[index]
        if m.running:
            self.kill(index)
        self._spawn(m)
        self.wait_ready(index)

    def pause(self, index: int) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        proc = self.members[index].proc
        assert proc is not None and proc.poll() is None
        proc.send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        proc = self.members[index].proc
        assert proc is not None and proc.poll() is None
        proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Factory: ``local_cluster(members=3, quorums={...})`` returns a started cluster."""
    made: list[LocalCluster] = []

    def make(members: int = 3, quorums: Mapping[str, Any] | None = None, **kw: Any) -> LocalCluster:
        root = tmp_path / f"cluster{len(made)}"
        cluster = LocalCluster(root, members, quorums, **kw)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
