"""A throw-away etcd cluster on 127.0.0.1 for benchmarks (Debian's etcd 3.4).

    with EtcdCluster(members=3) as etcd:
        print(etcd.endpoints, etcd.pids)

Members get their own ports and a temporary data directory; they are stopped by PID (SIGTERM,
then SIGKILL) and the directory removed when the block exits, also on error.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from ports import free_block
from procstat import stop_popen

HOST = "127.0.0.1"
APT_PACKAGES = ("etcd-server", "etcd-client")
DEFAULT_BASE_PORT = 23790  # member i: client base+10*i, peer base+10*i+1
HEALTH_TIMEOUT_S = 30.0


class EtcdError(RuntimeError):
    """etcd could not be installed or did not become healthy."""


def ensure_etcd() -> str:
    """Return the etcd binary path, installing the Debian packages first if needed."""
    found = shutil.which("etcd")
    if found:
        return found
    if os.geteuid() != 0:
        raise EtcdError("etcd not installed; run: apt-get install -y etcd-server etcd-client")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
    found = shutil.which("etcd")
    if not found:
        raise EtcdError("apt-get finished but no etcd binary on PATH")
    return found


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    first = out.stdout.splitlines()[0] if out.stdout else "etcd ?"
    return first.replace("etcd Version:", "etcd").strip()


def pick_base_port(members: int) -> int:
    """A base port whose client and peer ports (base + 10*i, +1) are all free."""
    return free_block(DEFAULT_BASE_PORT, 10 * members, 100)


class EtcdCluster:
    """Context manager: start N etcd members, wait until all report healthy, stop them."""

    def __init__(self, members: int = 3, base_port: int | None = None, tls: bool = False) -> None:
        """``tls``: client and peer URLs over TLS with client-certificate checks, certificates
        from a CA of its own; ``ssl_context`` is then a client's (bench/tls.py)."""
        self.members = members
        self.base_port = base_port
        self.tls = tls
        self.ssl_context: ssl.SSLContext | None = None
        self.binary = ""
        self.version = ""
        self.data_dir: Path | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.endpoints: list[str] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.binary = ensure_etcd()
        self.version = etcd_version(self.binary)
        base = self.base_port or pick_base_port(self.members)
        self.data_dir = d = Path(tempfile.mkdtemp(prefix="graven-bench-etcd-"))
        scheme = "https" if self.tls else "http"
        names = [f"e{i}" for i in range(self.members)]
        peers = [f"{scheme}://{HOST}:{base + 10 * i + 1}" for i in range(self.members)]
        self.endpoints = [f"{scheme}://{HOST}:{base + 10 * i}" for i in range(self.members)]
        initial = ",".join(f"{n}={u}" for n, u in zip(names, peers, strict=True))
        token = f"graven-bench-{os.getpid()}-{int(time.time())}"
        tls = self._certificates(d) if self.tls else []
        for name, client, peer in zip(names, self.endpoints, peers, strict=True):
            cmd = [
                self.binary,
                f"--name={name}",
                f"--data-dir={d / name}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={initial}",
                f"--initial-cluster-token={token}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-outputs=stderr",
                "--log-level=warn",
                *tls,
            ]
            log = open(d / f"{name}.log", "wb")  # noqa: SIM115 (child owns it)
            with log:
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        self.wait_healthy()

    def _certificates(self, d: Path) -> list[str]:
        """A CA, one server/peer certificate for every member and a client's; the flags."""
        from graven.node.security import pki

        ca = pki.new_ca("etcd")
        leaf = pki.issue(ca, "etcd", "graven://etcd/member/e", [HOST, "localhost"])
        client = pki.issue(ca, "client", "graven://etcd/client/admin/bench")
        files = {
            "ca.crt": ca.cert_pem,
            "server.crt": leaf.cert_pem,
            "server.key": leaf.key_pem,
            "client.crt": client.cert_pem,
            "client.key": client.key_pem,
        }
        for name, data in files.items():
            (d / name).write_bytes(data)
        self.ssl_context = ssl.create_default_context(cafile=str(d / "ca.crt"))
        self.ssl_context.load_cert_chain(d / "client.crt", d / "client.key")
        return [
            f"--cert-file={d / 'server.crt'}", f"--key-file={d / 'server.key'}",
            f"--trusted-ca-file={d / 'ca.crt'}", "--client-cert-auth",
            f"--peer-cert-file={d / 'server.crt'}", f"--peer-key-file={d / 'server.key'}",
            f"--peer-trusted-ca-file={d / 'ca.crt'}", "--peer-client-cert-auth",
        ]  # fmt: skip

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Poll each member's /health until every one reports a leader."""
        deadline = time.monotonic() + timeout
        pending = set(self.endpoints)
        while pending and time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise EtcdError(f"etcd pid {proc.pid} exited early: {self.log_tail()}")
            pending = {ep for ep in pending if not _healthy(ep, self.ssl_context)}
            if pending:
                time.sleep(0.2)
        if pending:
            raise EtcdError(f"etcd not healthy after {timeout}s: {sorted(pending)}")

    def log_tail(self, lines: int = 5) -> str:
        if self.data_dir is None:
            return ""
        tails = []
        for log in sorted(self.data_dir.glob("*.log")):
            tails += log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(tails)

    def stop(self) -> None:
        for proc in self.procs:
            stop_popen(proc)
        self.procs = []
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


def _healthy(endpoint: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/health", timeout=2, context=context) as resp:
            return json.loads(resp.read()).get("health") == "true"
    except (OSError, urllib.error.URLError, ValueError):
        return False


if __name__ == "__main__":
    with EtcdCluster() as cluster:
        print(cluster.version, cluster.endpoints, cluster.pids)
