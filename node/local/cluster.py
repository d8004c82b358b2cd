"""A ConsensusCluster spec run as local processes: rendering, the data directory, discovery.

``graven up`` turns the same manifest the operator reads into a ClusterConfig whose members are
``<name>-<i>`` at ``http://127.0.0.1:<base-port + i>``, keeps it in ``DIR/cluster.yaml`` and
publishes the running members in ``DIR/discovery.json`` for ``graven propose/get/status``.
Process supervision lives in ``supervisor``; everything here is plain files and checks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..cluster.config import ClusterConfig, ConfigError, dump, load, parse
from ..cluster.render import member_config
from ..cluster.spec import Manifest, SpecError, load_manifest
from ..protocol.checker import check
from ..storage.durable import replace_file

DEFAULT_DATA_DIR = ".graven"
DEFAULT_BASE_PORT = 7100
HOST = "127.0.0.1"
CONFIG_FILE = "cluster.yaml"
DISCOVERY_FILE = "discovery.json"
LOCK_FILE = "up.lock"
PACKAGED_SPEC = "default-cluster.yaml"  # installed copy of examples/cluster.yaml's cluster


class LocalClusterError(Exception):
    """Something the user can fix (bad spec, busy port, running cluster): one line."""


def default_spec_path() -> Path:
    """examples/cluster.yaml of the source tree, else the copy shipped inside the package."""
    here = Path(__file__).resolve().parent
    in_repo = here.parent.parent / "examples" / "cluster.yaml"
    return in_repo if in_repo.is_file() else here / PACKAGED_SPEC


def load_spec(path: str | Path) -> Manifest:
    """Read a ConsensusCluster manifest with the operator's parser."""
    try:
        return load_manifest(path)
    except SpecError as exc:
        raise LocalClusterError(str(exc)) from None


def render(
    manifest: Manifest,
    base_port: int,
    source: str | Path = "spec",
    incarnation: str | None = None,
    scheme: str = "https",
) -> ClusterConfig:
    """The ClusterConfig for local members (the operator's renderer, 127.0.0.1 URLs; https
    unless TLS is switched off); errors name the spec file."""
    replicas = manifest.spec.replicas
    last = base_port + replicas - 1
    if base_port < 1 or last > 65535:
        raise LocalClusterError(
            f"--base-port {base_port}: ports {base_port}..{last} must lie within 1..65535"
        )
    urls = [f"{scheme}://{HOST}:{base_port + i}" for i in range(replicas)]
    try:
        cfg = parse(member_config(manifest.name, manifest.spec, urls, 0, incarnation))
    except ConfigError as exc:
        raise LocalClusterError(f"{source}: {exc}") from None
    report = check(cfg.layout)
    if not report.safe:
        # the operator never rolls out such a layout; a local cluster should not either
        failed = ", ".join(sorted({v.condition for v in report.violations}))
        raise LocalClusterError(
            f"{source}: the layout is unsafe (violates {failed}); "
            f"`graven layout check {source}` shows the quorums that fail to intersect"
        )
    return cfg


def member_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- the data directory ------------------------------------------------------------------------


def previous_config(data_dir: Path) -> ClusterConfig | None:
    path = data_dir / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return load(path)
    except ConfigError as exc:
        raise LocalClusterError(f"{path} is not a usable configuration: {exc}") from None


def previous_base_port(previous: ClusterConfig | None) -> int | None:
    """The base port of the last run, so a plain restart comes back on the same URLs."""
    if previous is None:
        return None
    ports = [member_port(m.url) for m in previous.members]
    return ports[0] if ports == list(range(ports[0], ports[0] + len(ports))) else None


def check_same_cluster(previous: ClusterConfig, wanted: ClusterConfig, data_dir: Path) -> None:
    """Refuse a spec that changes membership or layout of an existing data directory."""

    def shape(cfg: ClusterConfig) -> str:
        names = ", ".join(m.name for m in cfg.members)
        return f"cluster {cfg.cluster} [{names}] layout {json.dumps(cfg.layout.to_spec())}"

    same = (
        previous.cluster == wanted.cluster
        and previous.epoch == wanted.epoch
        and [m.name for m in previous.members] == [m.name for m in wanted.members]
        and dict(previous.layout.to_spec()) == dict(wanted.layout.to_spec())
    )
    if not same:
        raise LocalClusterError(
            f"{data_dir} holds {shape(previous)} but the spec asks for {shape(wanted)}; "
            "reconfiguration is not supported yet (use another --data-dir, or delete "
            f"{data_dir} to start afresh)"
        )


def write_config(cfg: ClusterConfig, data_dir: Path) -> Path:
    path = data_dir / CONFIG_FILE
    replace_file(path, yaml.safe_dump(dump(cfg), sort_keys=False))
    return path


def check_ports_free(cfg: ClusterConfig) -> None:
    for member in cfg.members:
        port = member_port(member.url)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # same option the node's listener uses, so a TIME_WAIT remnant is not "in use"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError as exc:
                why = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise LocalClusterError(
                    f"port {port} on {HOST} (for {member.name}) is {why}; "
                    "choose another --base-port"
                ) from None


class SupervisorLock:
    """One ``graven up`` per data directory; the kernel releases it even after SIGKILL."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise LocalClusterError(
                f"a graven up{who} is already running the cluster in {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- discovery ---------------------------------------------------------------------------------


def discovery_path(data_dir: Path) -> Path:
    return data_dir / DISCOVERY_FILE


def write_discovery(
    data_dir: Path,
    cfg: ClusterConfig,
    pids: Mapping[str, int | None],
    config_path: Path,
    security: Mapping[str, str] | None = None,
) -> None:
    """``security``: the client's CA, certificate, key and token file (absent: TLS off)."""
    doc: dict[str, Any] = {
        "cluster": cfg.cluster,
        "members": [{"name": m.name, "url": m.url, "pid": pids.get(m.name)} for m in cfg.members],
        "config": str(config_path.resolve()),
        "supervisor": os.getpid(),
    }
    if security is not None:
        doc["security"] = dict(security)
    replace_file(discovery_path(data_dir), json.dumps(doc, indent=2) + "\n")


def read_discovery(data_dir: Path) -> dict[str, Any] | None:
    """The discovery document, or None when absent; LocalClusterError when unreadable."""
    path = discovery_path(data_dir)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LocalClusterError(f"{path} is not readable discovery JSON: {exc}") from None
    members = doc.get("members") if isinstance(doc, dict) else None
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and isinstance(m.get("url"), str) for m in members
    ):
        raise LocalClusterError(f"{path} does not list members with urls")
    return doc


def live_pids(doc: Mapping[str, Any]) -> list[int]:
    """Processes named in a discovery document that still run (supervisor first)."""
    pids = [doc.get("supervisor")] + [m.get("pid") for m in doc.get("members", [])]
    return [p for p in pids if isinstance(p, int) and p > 0 and pid_alive(p)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        # a zombie still answers kill(0) but no longer runs anything
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_discovery(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        discovery_path(data_dir).unlink()


class RecordFile:
    """A reconfiguration's record in a file of the data dir (``transition.RecordStore``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        return json.loads(self.path.read_text(encoding="utf-8"))

    def save(self, state: Mapping[str, Any]) -> None:
        replace_file(self.path, json.dumps(state, indent=2, sort_keys=True))
