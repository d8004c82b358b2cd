"""A secured node served in the test's own process (real TLS sockets on 127.0.0.1), and the
certificates the security tests present to it.

In-process so a test can plant a weakness (monkeypatch a check) and show that the same
assertions would then fail; the real processes of ``tests/support/cluster.py`` cover the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from graven.node.cluster.config import ClusterConfig, parse
from graven.node.cluster.render import member_config
from graven.node.cluster.spec import parse as parse_spec
from graven.node.gateway import routes as decisions
from graven.node.local.cluster import HOST
from graven.node.security import pki, tokens
from graven.node.security.identity import ADMIN, READ, WRITE
from graven.node.security.node import node_security
from graven.node.server.main import serve
from graven.node.storage import RegisterStore
from tests.support.cluster import free_ports

CLUSTER = "demo"


def write_pair(d: Path, name: str, issued: pki.Issued) -> tuple[Path, Path]:
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    return cert, key


@dataclass
class Pki:
    """A cluster CA, the member certificates, tokens by role, and the strangers' certificates."""

    dir: Path
    ca: pki.Issued
    tokens: dict[str, str]  # role -> token

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def token_file(self) -> Path:
        return self.dir / "tokens.yaml"

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def context(self, name: str | None, ca: Path | None = None) -> ssl.SSLContext:
        """A client context presenting certificate ``name`` (None: none)."""
        ctx = ssl.create_default_context(cafile=str(ca or self.ca_file))
        if name is not None:
            cert, key = self.pair(name)
            ctx.load_cert_chain(cert, key)
        return ctx


def make_pki(d: Path, members: Sequence[str]) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca(CLUSTER)
    (d / "ca.crt").write_bytes(ca.cert_pem)
    for name in members:
        write_pair(d, name, pki.issue_member(ca, CLUSTER, name, [HOST]))
    by_role = {role: tokens.new_token() for role in (READ, WRITE, ADMIN)}
    entries = [tokens.TokenEntry(f"t-{r}", r, tokens.digest(t)) for r, t in by_role.items()]
    (d / "tokens.yaml").write_text(tokens.dump(entries))
    # strangers, each with one thing wrong
    write_pair(d, "client-write", pki.issue_client(ca, CLUSTER, WRITE, "eve"))
    write_pair(d, "client-admin", pki.issue_client(ca, CLUSTER, ADMIN, "orchestrator"))
    write_pair(d, "not-a-member", pki.issue_member(ca, CLUSTER, "demo-9", [HOST]))
    write_pair(d, "other-cluster", pki.issue_member(ca, "other", members[-1], [HOST]))
    foreign = pki.new_ca(CLUSTER)
    (d / "foreign-ca.crt").write_bytes(foreign.cert_pem)
    write_pair(d, "wrong-ca", pki.issue_member(foreign, CLUSTER, members[-1], [HOST]))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    write_pair(d, "expired", pki.issue_member(ca, CLUSTER, members[-1], [HOST], days=1, now=past))
    return Pki(d, ca, by_role)


def config(members: int, quorums: dict | None = None) -> ClusterConfig:
    spec = parse_spec({"replicas": members, "quorums": quorums or {"preset": "paxos"}})
    urls = [f"https://{HOST}:{p}" for p in free_ports(members)]
    return parse(member_config(CLUSTER, spec, urls))


@contextlib.asynccontextmanager
async def secure_node(
    root: Path, cfg: ClusterConfig, keys: Pki, index: int = 0, gateway: bool = True
) -> AsyncIterator[str]:
    """Member ``index`` of ``cfg`` served in this process over TLS; yields its URL."""
    name = cfg.members[index].name
    url = cfg.members[index].url
    port = int(url.rsplit(":", 1)[1])
    cert, key = keys.pair(name)
    security = node_security(
        cfg.cluster,
        frozenset(m.name for m in cfg.members),
        keys.ca_file,
        cert,
        key,
        keys.token_file,
    )
    store = RegisterStore.open(root / name, cluster=cfg.cluster, node=name)
    stop = asyncio.Event()
    extensions = (decisions.extension(),) if gateway else ()
    task = asyncio.create_task(
        serve(cfg, name, store, HOST, port, extensions, stop=stop, security=security)
    )
    try:
        ctx = keys.context(None)
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # bounded: 200 x 25 ms
                if task.done():
                    task.result()
                with contextlib.suppress(OSError):
                    async with session.get(url + "/readyz", ssl=ctx) as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.025)
            else:
                raise RuntimeError(f"{name} did not become ready")
        yield url
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
        store.close()


async def call(
    url: str,
    method: str,
    path: str,
    ctx: ssl.SSLContext,
    body: bytes | None = None,
    token: str | None = None,
) -> tuple[int, bytes] | str:
    """(status, body), or the reason the connection was refused (a TLS handshake failure)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, url + path, data=body, headers=headers, ssl=ctx, timeout=_TIMEOUT
            ) as resp,
        ):
            return resp.status, await resp.read()
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError) as exc:
        return f"refused: {type(exc).__name__}: {exc}"


_TIMEOUT = aiohttp.ClientTimeout(total=10)
