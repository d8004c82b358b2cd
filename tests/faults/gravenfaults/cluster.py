"""A real Graven cluster with every member in its own network namespace.

The ClusterConfig comes from the project's own renderer (``localcluster.render`` of a
ConsensusCluster spec, the code ``graven up`` uses); only the member URLs are then pointed at
the namespace addresses and the result is parsed back by ``clusterconfig.parse``. Each member
is ``graven node`` (via ``nsenter``, so the pid is the node's) listening on ``0.0.0.0:PORT`` of
its namespace, with a delay proxy (``proxy.py``) in front of it: an iptables REDIRECT in the
member's namespace sends every inbound connection through the proxy, which passes bytes
straight through until a delay nemesis switches it on. The node's data directory is a small
tmpfs (full-disk faults) and the node runs under the fault shim (fsync/write faults).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from graven.node.cluster.config import ClusterConfig, dump, parse
from graven.node.cluster.spec import Manifest
from graven.node.cluster.spec import parse as parse_spec
from graven.node.local.cluster import render

from . import disk
from .topology import NODE_PORT as PORT
from .topology import PROXY_PORT, Topology

DISK_MB = 96  # each member's tmpfs; a soak of 15 minutes uses a few MiB
HERE = Path(__file__).resolve().parent
# The store has no unsafe switch any more: nodes that must lie about durability run the test
# double tests/support/lying_node.py instead of the ordinary command.
LYING_NODE = HERE.parents[1] / "support" / "lying_node.py"


@dataclass
class Member:
    index: int
    name: str
    ns: str
    addr: str
    data_dir: Path
    log: Path
    ctl: Path  # fault shim control byte
    delay_ctl: Path  # proxy control file
    proc: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    mounted: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{PORT}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def render_config(
    preset: str, members: int, topo: Topology, extra: dict | None = None
) -> ClusterConfig:
    spec = Manifest(
        f"faults-{preset}",
        parse_spec({"replicas": members, "quorums": {"preset": preset, **(extra or {})}}),
    )
    doc = dump(render(spec, PORT, source=f"preset {preset}"))
    for i, m in enumerate(doc["members"]):
        m["url"] = f"http://{topo.member_addr(i)}:{PORT}"
    return parse(doc)


@dataclass
class NetCluster:
    topo: Topology
    cfg: ClusterConfig
    work: Path
    shim: Path
    node_args: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config_path = self.work / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(dump(self.cfg), sort_keys=False))
        for i, m in enumerate(self.cfg.members):
            mdir = self.work / m.name
            mdir.mkdir(parents=True, exist_ok=True)
            ctl = mdir / "faultfs.ctl"
            ctl.write_bytes(b"0")
            delay_ctl = mdir / "delay.json"
            delay_ctl.write_text(json.dumps({"delay_ms": [0, 0]}))
            self.members.append(
                Member(
                    i,
                    m.name,
                    self.topo.member_ns(i),
                    self.topo.member_addr(i),
                    mdir / "data",
                    mdir / "node.log",
                    ctl,
                    delay_ctl,
                )
            )

    # -- set-up -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Each member's disk and delay proxy."""
        for m in self.members:
            disk.mount_tmpfs(f"{self.topo.tag}-disk{m.index}", m.data_dir, DISK_MB)
            m.mounted = True
            self._start_proxy(m)

    def _start_proxy(self, m: Member) -> None:
        argv = [
            *self.topo.nsenter(m.ns),
            sys.executable,
            "-m",
            "gravenfaults.proxy",
            "--listen",
            f"0.0.0.0:{PROXY_PORT}",
            "--to",
            f"127.0.0.1:{PORT}",
            "--control",
            str(m.delay_ctl),
        ]
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        with open(m.data_dir.parent / "proxy.log", "ab") as log:
            m.proxy = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def set_delay(self, m: Member, lo_ms: float, hi_ms: float) -> None:
        m.delay_ctl.write_text(json.dumps({"delay_ms": [lo_ms, hi_ms]}))
        if m.proxy is not None and m.proxy.poll() is None:
            m.proxy.send_signal(signal.SIGHUP)

    # -- members ----------------------------------------------------------------------------

    def start(self, m: Member) -> None:
        assert not m.running, f"{m.name} already runs"
        argv = [
            *self.topo.nsenter(m.ns),
            sys.executable,
            *(
                [str(LYING_NODE)]
                if os.environ.get("GRAVEN_UNSAFE_ACK_BEFORE_SYNC") == "1"
                else ["-m", "graven.node.cli"]
            ),
            "node",
            "--id",
            m.name,
            "--listen",
            f"0.0.0.0:{PORT}",
            "--data-dir",
            str(m.data_dir),
            "--config",
            str(self.config_path),
            *self.node_args,
        ]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "LD_PRELOAD": str(self.shim),
            "GRAVEN_FAULTFS_CTL": str(m.ctl),
        }
        with open(m.log, "ab") as log:
            log.write(
                f"=== faults: starting {m.name} at {time.strftime('%H:%M:%S')} ===\n".encode()
            )
            log.flush()
            m.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def signal(self, m: Member, sig: signal.Signals) -> None:
        if m.proc is not None and m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.proc.pid, sig)

    def kill(self, m: Member) -> None:
        if m.proc is None:
            return
        self.signal(m, signal.SIGCONT)  # a stopped process dies on SIGKILL too, but be explicit
        self.signal(m, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            m.proc.wait(timeout=10)

    def terminate(self, m: Member, grace: float = 15.0) -> int | None:
        if m.proc is None:
            return None
        self.signal(m, signal.SIGCONT)
        self.signal(m, signal.SIGTERM)
        try:
            return m.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill(m)
            return m.proc.returncode

    def log_tail(self, m: Member, size: int = 8192) -> str:
        try:
            with open(m.log, "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - size))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop everything this cluster started and unmount its disks (idempotent)."""
        for m in self.members:
            self.kill(m)
            if m.proxy is not None and m.proxy.poll() is None:
                m.proxy.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.proxy.wait(timeout=5)
            if m.mounted:
                disk.umount(m.data_dir)
                m.mounted = False
