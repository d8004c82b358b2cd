"""What TLS costs: Graven and etcd, each with TLS off and on, same load generator, same box.

    python bench/tls.py [--seconds 5] [--concurrency 1 16]

Graven: 3 members, paxos, through the proposer gateway; TLS on means mutual TLS between the
members and a client certificate for the load generator (what `graven up` runs by default).
etcd: 3 members, the JSON gateway; TLS on means `--cert-file/--key-file/--trusted-ca-file
--client-cert-auth` on the client URLs and the `--peer-*` equivalents on the peer URLs, with
certificates from the same kind of CA. Prints one row per system, TLS mode and concurrency,
then the ratios TLS-on / TLS-off and Graven / etcd with TLS on for both.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from adapters import REQUEST_TIMEOUT_S, EtcdAdapter, GravenAdapter
from etcd import HOST, EtcdCluster, EtcdError, ensure_etcd, etcd_version, pick_base_port
from gravencluster import GravenCluster
from load import run_loop, servers, with_cost

from graven.node.client.loadgen import Workload, run_load
from graven.node.security import pki

SPEC = Path(__file__).with_name("specs") / "paxos-3.yaml"


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    return ctx


class _TlsSession:
    """An adapter whose keep-alive session speaks TLS with a client certificate."""

    ctx: ssl.SSLContext | None = None

    async def open(self, endpoints: Sequence[str]) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=0, ssl=self.ctx if self.ctx else True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)


class TlsGraven(_TlsSession, GravenAdapter):
    pass


class TlsEtcd(_TlsSession, EtcdAdapter):
    pass


def graven_adapter(cluster: GravenCluster) -> TlsGraven:
    """The gateway adapter, with the local CA and a client certificate when TLS is on."""
    a = TlsGraven()
    if cluster.security is not None:
        d = cluster.security.discovery()
        a.ctx = client_context(Path(d["ca"]), Path(d["cert"]), Path(d["key"]))
    return a


class EtcdTls(EtcdCluster):
    """etcd with TLS on the client and the peer URLs (certificates from our own CA)."""

    def start(self) -> None:
        self.binary = ensure_etcd()
        self.version = etcd_version(self.binary)
        base = self.base_port or pick_base_port(self.members)
        self.data_dir = Path(tempfile.mkdtemp(prefix="graven-bench-etcd-tls-"))
        ca = pki.new_ca("etcd")
        (self.data_dir / "ca.crt").write_bytes(ca.cert_pem)
        leaf = pki.issue(ca, "etcd", "graven://etcd/member/e", [HOST, "localhost"])
        for name, data in (("server.crt", leaf.cert_pem), ("server.key", leaf.key_pem)):
            (self.data_dir / name).write_bytes(data)
        client = pki.issue(ca, "client", "graven://etcd/client/admin/bench")
        (self.data_dir / "client.crt").write_bytes(client.cert_pem)
        (self.data_dir / "client.key").write_bytes(client.key_pem)
        d = self.data_dir
        names = [f"e{i}" for i in range(self.members)]
        peers = [f"https://{HOST}:{base + 10 * i + 1}" for i in range(self.members)]
        self.endpoints = [f"https://{HOST}:{base + 10 * i}" for i in range(self.members)]
        initial = ",".join(f"{n}={u}" for n, u in zip(names, peers, strict=True))
        tls = [
            f"--cert-file={d / 'server.crt'}", f"--key-file={d / 'server.key'}",
            f"--trusted-ca-file={d / 'ca.crt'}", "--client-cert-auth",
            f"--peer-cert-file={d / 'server.crt'}", f"--peer-key-file={d / 'server.key'}",
            f"--peer-trusted-ca-file={d / 'ca.crt'}", "--peer-client-cert-auth",
        ]  # fmt: skip
        for name, url, peer in zip(names, self.endpoints, peers, strict=True):
            cmd = [
                self.binary, f"--name={name}", f"--data-dir={d / name}",
                f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={initial}", f"--initial-cluster-token=tls-{os.getpid()}",
                "--initial-cluster-state=new", "--logger=zap", "--log-outputs=stderr",
                "--log-level=warn", *tls,
            ]  # fmt: skip
            with open(d / f"{name}.log", "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        self.ctx = client_context(d / "ca.crt", d / "client.crt", d / "client.key")
        self._wait(self.ctx)

    def _wait(self, ctx: ssl.SSLContext, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        pending = set(self.endpoints)
        while pending and time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise EtcdError(f"etcd exited early: {self.log_tail()}")
            done = set()
            for ep in pending:
                try:
                    with urllib.request.urlopen(ep + "/health", timeout=2, context=ctx) as r:
                        if json.loads(r.read()).get("health") == "true":
                            done.add(ep)
                except (OSError, ValueError):
                    pass
            pending -= done
            if pending:
                time.sleep(0.2)
        if pending:
            raise EtcdError(f"etcd (TLS) not healthy: {sorted(pending)}")


def measure(adapter: Any, endpoints: list[str], pids: list[int], load: Workload) -> dict:
    from contextlib import asynccontextmanager

    out: dict[str, Any] = {}
    hook = servers(pids, False)

    @asynccontextmanager
    async def m():  # type: ignore[no-untyped-def]
        async with hook() as o:
            yield o
        out.update(o)

    result = run_loop(run_load(adapter, endpoints, load, m))
    row = with_cost(result, out)
    s = row.summary()
    return {
        k: s.get(k) for k in ("ops_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_op", "errors")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args(argv)
    rows: dict[tuple[str, bool, int], dict] = {}
    for tls in (False, True):
        with GravenCluster(SPEC, tls=tls) as g:
            for c in args.concurrency:
                load = Workload(mode="unique", concurrency=c, seconds=args.seconds)
                rows[("graven", tls, c)] = measure(graven_adapter(g), g.endpoints, g.pids, load)
                print("graven", "tls" if tls else "plain", c, rows[("graven", tls, c)], flush=True)
        cluster = EtcdTls() if tls else EtcdCluster()
        with cluster:
            for c in args.concurrency:
                a = TlsEtcd()
                a.ctx = getattr(cluster, "ctx", None)
                load = Workload(mode="unique", concurrency=c, seconds=args.seconds)
                rows[("etcd", tls, c)] = measure(a, cluster.endpoints, cluster.pids, load)
                print("etcd", "tls" if tls else "plain", c, rows[("etcd", tls, c)], flush=True)
    print()
    print("system  c   ops/s plain  ops/s TLS  TLS/plain  CPU ms/op plain  CPU ms/op TLS")
    for system in ("graven", "etcd"):
        for c in args.concurrency:
            p, t = rows[(system, False, c)], rows[(system, True, c)]
            print(
                f"{system:7} {c:<3} {p['ops_per_s']:>11} {t['ops_per_s']:>10} "
                f"{t['ops_per_s'] / p['ops_per_s']:>9.2f} {p['server_cpu_ms_per_op']:>16} "
                f"{t['server_cpu_ms_per_op']:>14}"
            )
    for c in args.concurrency:
        g, e = rows[("graven", True, c)], rows[("etcd", True, c)]
        print(
            f"TLS on for both, c={c}: graven/etcd throughput {g['ops_per_s'] / e['ops_per_s']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
