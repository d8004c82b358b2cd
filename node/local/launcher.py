"""Start a cluster's members as processes on this machine: the one launcher.

``graven up`` (through ``supervisor``), the tests and the benchmarks all start members here:
``python -m graven.node.cli node --id NAME --listen HOST:PORT --data-dir DIR/NAME --config FILE``,
logging to ``DIR/NAME.log``. Every member dies with the process that started it (Linux
``PR_SET_PDEATHSIG``, set in the child before it runs the node), so a launcher killed with
SIGKILL leaves no member behind holding its port and data directory.

``Launcher`` is the blocking form (tests, benchmarks): start, await readiness, kill, restart,
pause, resume, close. ``supervisor`` runs the same argv and the same death signal under asyncio.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cluster.config import ClusterConfig, parse
from ..cluster.render import member_config
from ..cluster.spec import ClusterSpec
from .cluster import HOST, member_port, write_config
from .security import LocalSecurity

READY_TIMEOUT = 30.0  # seconds for a member to answer /readyz
READY_POLL = 0.05  # seconds between /readyz probes of a starting member
STOP_GRACE = 15.0  # seconds members get after SIGTERM (a node drains for up to 10 s)
PARENT_DEATH_SIGNAL = signal.SIGTERM  # a graceful stop: the node drains and closes its store
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def member_argv(
    name: str, listen: str, data_dir: Path, config_path: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of one member (``graven node``)."""
    return [
        sys.executable, "-m", "graven.node.cli", "node",
        "--id", name,
        "--listen", listen,
        "--data-dir", str(data_dir),
        "--config", str(config_path),
        *extra,
    ]  # fmt: skip


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive PARENT_DEATH_SIGNAL when the thread that
    started it dies (None where prctl is unavailable: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start one member, its output appended to ``log``; it dies with this thread."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            preexec_fn=die_with_parent(),
        )


def answers_ready(url: str, timeout: float = 1.0, ca: Path | None = None) -> bool:
    """True when ``url``/readyz answers 200 (``ca``: trust bundle for an https member)."""
    scheme, _, rest = url.partition("://")
    host, port = rest.rsplit(":", 1)
    conn: http.client.HTTPConnection
    if scheme == "https":
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def render_local(
    name: str, spec: ClusterSpec, root: Path, ports: Sequence[int], scheme: str = "http"
) -> tuple[ClusterConfig, Path]:
    """The member configuration on 127.0.0.1 ``ports`` (the operator's renderer), written to
    ``root``/cluster.yaml."""
    urls = [f"{scheme}://{HOST}:{port}" for port in ports]
    cfg = parse(member_config(name, spec, urls))
    root.mkdir(parents=True, exist_ok=True)
    return cfg, write_config(cfg, root)


@dataclass
class Member:
    index: int
    name: str
    url: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return member_port(self.url)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Launcher:
    """The members of ``cfg`` as child processes, data and logs under ``root``."""

    def __init__(
        self,
        cfg: ClusterConfig,
        config_path: Path,
        root: Path,
        *,
        node_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        security: LocalSecurity | None = None,
    ) -> None:
        """``security``: each member's TLS files and the token file (https members)."""
        self.cfg = cfg
        self.security = security
        self.config_path = config_path
        self.root = root
        self.node_args = list(node_args)
        self.env = {**os.environ, **(env or {})}
        self.members = [
            Member(i, m.name, m.url, root / m.name, root / f"{m.name}.log")
            for i, m in enumerate(cfg.members)
        ]

    # -- whole cluster --------------------------------------------------------------------

    def start(self, ready_timeout: float = READY_TIMEOUT) -> Launcher:
        for m in self.members:
            self._spawn(m)
        for m in self.members:
            self.wait_ready(m.index, ready_timeout)
        return self

    def close(self) -> None:
        """SIGTERM every member (SIGKILL after the grace period) and reap it."""
        for m in self.members:
            if m.running:
                assert m.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGCONT)  # a paused member cannot handle SIGTERM
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

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members if m.pid is not None]

    def url(self, index: int) -> str:
        return self.members[index].url

    def name(self, index: int) -> str:
        return self.members[index].name

    # -- one member -----------------------------------------------------------------------

    def _spawn(self, m: Member) -> None:
        if m.running:
            raise RuntimeError(f"{m.name} is already running")
        listen = f"{HOST}:{m.port}"
        extra = list(self.node_args)
        if self.security is not None:
            extra += self.security.node_args(m.name)
        argv = member_argv(m.name, listen, m.data_dir, self.config_path, extra)
        m.proc = spawn(argv, m.log, self.env)

    def wait_ready(self, index: int, timeout: float = READY_TIMEOUT) -> None:
        m = self.members[index]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not m.running:
                raise RuntimeError(f"{m.name} exited: {m.log.read_text(errors='replace')[-2000:]}")
            ca = self.security.ca if self.security is not None else None
            if answers_ready(m.url, timeout=0.5, ca=ca):
                return
            time.sleep(READY_POLL)
        tail = m.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{m.name} not ready after {timeout}s: {tail}")

    def kill(self, index: int) -> None:
        """SIGKILL: the member dies at once, without flushing or closing anything."""
        m = self.members[index]
        if m.proc is not None and m.running:
            m.proc.send_signal(signal.SIGKILL)
        if m.proc is not None:
            m.proc.wait(STOP_GRACE)

    def restart(self, index: int) -> None:
        """Start a stopped or killed member again on its data directory; waits until ready."""
        if self.members[index].running:
            self.kill(index)
        self._spawn(self.members[index])
        self.wait_ready(index)

    def pause(self, index: int) -> None:
        """SIGSTOP: the member keeps its sockets but answers nothing."""
        proc = self.members[index].proc
        assert proc is not None and proc.poll() is None
        proc.send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        proc = self.members[index].proc
        assert proc is not None and proc.poll() is None
        proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Launcher:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
