"""A throw-away Graven cluster on 127.0.0.1 for benchmarks, run through `graven up`.

    with GravenCluster(Path("bench/specs/paxos-3.yaml")) as graven:
        print(graven.endpoints, graven.pids)

`graven up SPEC --data-dir DIR --base-port P` runs in the foreground and writes
DIR/discovery.json ({"cluster", "members": [{"name", "url", "pid"}]}). We wait until every member
answers /readyz, and on exit send SIGTERM to `graven up` (it stops its members), then stop any
member still alive by PID and remove DIR, also on error.

`prepare`, if given, is called with DIR before `graven up` starts (the members' stores live in
DIR/<member name>/; bench/preload.py fills them there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ports import free_block
from procstat import is_alive, stop_pids, stop_popen

DEFAULT_BASE_PORT = 27100
PORTS_PER_CLUSTER = 20  # checked free before start (members use base, base+1, ...)
READY_TIMEOUT_S = 60.0
GRAVEN_CMD = [sys.executable, "-m", "graven.node.cli"]


class GravenError(RuntimeError):
    """`graven up` failed or its members did not become ready."""


def available() -> bool:
    """True once the proposer gateway and `graven up` are part of the installed package."""
    probe = "import graven.node.server.decisions, graven.node.cli_up"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd="/")
    return done.returncode == 0


def pick_base_port() -> int:
    return free_block(DEFAULT_BASE_PORT, PORTS_PER_CLUSTER, 100)


class GravenCluster:
    """Context manager around one `graven up` process and its members."""

    def __init__(
        self,
        spec: Path,
        base_port: int | None = None,
        prepare: Callable[[Path], None] | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.spec = spec
        self.base_port = base_port
        self.prepare = prepare
        self.ready_timeout = ready_timeout
        self.data_dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.members: list[dict[str, object]] = []

    @property
    def endpoints(self) -> list[str]:
        return [str(m["url"]).rstrip("/") for m in self.members]

    @property
    def pids(self) -> list[int]:
        return [int(str(m["pid"])) for m in self.members]

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
        if self.prepare is not None:
            self.prepare(self.data_dir)
        base = self.base_port or pick_base_port()
        cmd = [*GRAVEN_CMD, "up", str(self.spec.resolve()), "--data-dir", str(self.data_dir)]
        cmd += ["--base-port", str(base)]
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "wb")  # noqa: SIM115
        self.log_path = Path(log.name)
        with log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,  # not bench/: its modules must not shadow the package
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.wait_ready(self.ready_timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait for discovery.json, then for every member's /readyz to answer 200."""
        assert self.proc is not None and self.data_dir is not None
        discovery = self.data_dir / "discovery.json"
        deadline = time.monotonic() + timeout
        pending: set[str] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GravenError(
                    f"graven up exited with {self.proc.returncode}: {self.log_tail()}"
                )
            if not self.members:
                self.members = _read_members(discovery)
                pending = set(self.endpoints)
            if self.members:
                pending = {ep for ep in pending if not _ready(ep)}
                if not pending:
                    return
            time.sleep(0.2)
        raise GravenError(f"graven up not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        path = getattr(self, "log_path", None)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None:
            stop_popen(self.proc, timeout=15.0)
            self.proc = None
        leftovers = [pid for pid in self.pids if is_alive(pid)]
        if leftovers:
            stop_pids(leftovers, must_contain="graven")
        self.members = []
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        path = getattr(self, "log_path", None)
        if path is not None:
            path.unlink(missing_ok=True)


def _read_members(discovery: Path) -> list[dict[str, object]]:
    """Members from discovery.json, or [] while it is missing or half written."""
    try:
        data = json.loads(discovery.read_text())
    except (OSError, ValueError):
        return []
    members = data.get("members", []) if isinstance(data, dict) else []
    return [m for m in members if isinstance(m, dict) and "url" in m and "pid" in m]


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/readyz", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False
