"""A throw-away Graven cluster on 127.0.0.1 for benchmarks, started by Graven's one launcher.

    with GravenCluster(Path("bench/specs/paxos-3.yaml")) as graven:
        print(graven.endpoints, graven.pids)

The spec is read and rendered exactly as `graven up` does (`graven.node.local`), on a block of
free ports; the members are started by `graven.node.local.launcher`, which `graven up` and the
tests use too, and they die with this process. On exit they are stopped and DIR is removed, also
on error.

`prepare`, if given, is called with DIR before the members start (their stores live in
DIR/<member name>/; bench/preload.py fills them there).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ports import free_block

from graven.node.local import cluster as lc
from graven.node.local import security as local_security
from graven.node.local.launcher import Launcher

DEFAULT_BASE_PORT = 27100
PORTS_PER_CLUSTER = 20  # checked free before start (members use base, base+1, ...)
READY_TIMEOUT_S = 60.0


class GravenError(RuntimeError):
    """The spec was refused or the members did not become ready."""


def pick_base_port() -> int:
    return free_block(DEFAULT_BASE_PORT, PORTS_PER_CLUSTER, 100)


class GravenCluster:
    """Context manager around one local cluster's member processes."""

    def __init__(
        self,
        spec: Path,
        base_port: int | None = None,
        prepare: Callable[[Path], None] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        tls: bool = False,
    ) -> None:
        """``tls``: members talk mutual TLS as ``graven up`` runs them by default; off by
        default so rows compare with etcd's plain-http defaults (bench/tls.py has both)."""
        self.spec = spec
        self.tls = tls
        self.base_port = base_port
        self.prepare = prepare
        self.ready_timeout = ready_timeout
        self.data_dir: Path | None = None
        self.launcher: Launcher | None = None
        self.security: local_security.LocalSecurity | None = None  # TLS files, when on

    @property
    def endpoints(self) -> list[str]:
        return self.launcher.urls if self.launcher else []

    @property
    def pids(self) -> list[int]:
        return self.launcher.pids if self.launcher else []

    def __enter__(self) -> GravenCluster:
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
        self.data_dir = Path(tempfile.mkdtemp(prefix="graven-bench-"))
        base = self.base_port or pick_base_port()
        try:
            manifest = lc.load_spec(self.spec)
            cfg = lc.render(manifest, base, self.spec, scheme="https" if self.tls else "http")
        except lc.LocalClusterError as exc:
            raise GravenError(str(exc)) from None
        config_path = lc.write_config(cfg, self.data_dir)
        if self.tls:
            names = [m.name for m in cfg.members]
            self.security = local_security.ensure(self.data_dir, cfg.cluster, names)
        if self.prepare is not None:
            self.prepare(self.data_dir)
        self.launcher = Launcher(cfg, config_path, self.data_dir, security=self.security)
        self.launcher.start(self.ready_timeout)

    def stop(self) -> None:
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
