"""Real `graven node` processes on 127.0.0.1 for integration tests, through the one launcher.

    cluster = LocalCluster(tmp_path, members=3, quorums={"preset": "paxos"})
    cluster.start()            # renders the ClusterConfig on free ports, waits for /readyz
    cluster.url(0)             # http://127.0.0.1:PORT of member 0
    cluster.kill(1)            # SIGKILL;  cluster.restart(1) starts it again on its data dir
    cluster.pause(2)           # SIGSTOP;  cluster.resume(2) sends SIGCONT
    cluster.close()            # SIGTERM (SIGKILL after a grace period) for every member

Or as a fixture (tests/conftest.py): ``def test_x(local_cluster): c = local_cluster(members=3)``;
every cluster the factory made is closed after the test. Synchronous on purpose (subprocess +
http.client), so both plain and asyncio tests can use it; the waits are bounded polls of
``/readyz``. The configuration comes from the same renderer as the operator's ConfigMap.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from graven.node.client.credentials import Credentials
from graven.node.cluster.config import dump
from graven.node.cluster.spec import parse as parse_spec
from graven.node.local import security as local_security
from graven.node.local.cluster import HOST
from graven.node.local.launcher import Launcher, render_local

__all__ = ["HOST", "LocalCluster", "free_ports", "local_cluster"]


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


class LocalCluster(Launcher):
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
        tls: bool = False,
    ) -> None:
        """``tls``: https members with certificates and tokens as ``graven up`` makes them
        (``self.security``; ``self.credentials`` is the local admin client's)."""
        spec = parse_spec(
            {"replicas": members, "quorums": dict(quorums or {}), "limits": dict(limits or {})}
        )
        scheme = "https" if tls else "http"
        cfg, config_path = render_local(cluster, spec, root, free_ports(members), scheme)
        self.cluster = cluster
        self.doc = dump(cfg)
        security = None
        self.credentials = Credentials()
        if tls:
            security = local_security.ensure(root, cluster, [m.name for m in cfg.members])
            self.credentials = Credentials.from_discovery({"security": security.discovery()})
        super().__init__(cfg, config_path, root, node_args=node_args, env=env, security=security)

    def start(self, ready_timeout: float = 20.0) -> LocalCluster:
        super().start(ready_timeout)
        return self

    def __enter__(self) -> LocalCluster:
        super().__enter__()
        return self


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
