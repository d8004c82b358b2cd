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
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from adapters import REQUEST_TIMEOUT_S, EtcdAdapter, GravenAdapter
from etcd import EtcdCluster
from gravencluster import GravenCluster
from load import run_loop, servers, with_cost

from graven.node.client.loadgen import Workload, run_load

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
        cluster = EtcdCluster(tls=tls)
        with cluster:
            for c in args.concurrency:
                a = TlsEtcd()
                a.ctx = cluster.ssl_context
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
