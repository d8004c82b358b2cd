"""Helpers for tests that run `graven up` and the client commands as a user would."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graven.node.client.credentials import Credentials

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cluster.yaml"
START_TIMEOUT = 40.0  # seconds for `graven up` to publish its discovery file
STOP_TIMEOUT = 30.0  # seconds for `graven up` to stop its members after a signal
POLL = 0.05  # seconds between bounded polls of files and processes


def graven_argv() -> list[str]:
    script = Path(sys.executable).parent / "graven"
    return [str(script)] if script.exists() else [sys.executable, "-m", "graven.node.cli"]


def graven(*args: str, cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*graven_argv(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def free_base_port(count: int, attempts: int = 200) -> int:
    """A base port with ``count`` consecutive free ports on 127.0.0.1."""
    rng = random.Random()
    # below the kernel's ephemeral range: a port picked there can be taken by any outgoing
    # connection (a client's, a member's) before graven up binds it (seen: "address in use")
    top = _ephemeral_low() - count
    for _ in range(attempts):
        base = rng.randrange(10000, top)
        if all(port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no run of free ports found")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(POLL)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Up:
    """A `graven up` process started by a test, with its output files."""

    proc: subprocess.Popen[bytes]
    cwd: Path
    data_dir: Path
    out: Path
    err: Path

    @property
    def discovery_path(self) -> Path:
        return self.data_dir / "discovery.json"

    def credentials(self) -> Credentials:
        """The local admin client's credentials, as `graven propose` finds them."""
        return Credentials.from_discovery(self.discovery())

    def discovery(self) -> dict[str, Any]:
        return json.loads(self.discovery_path.read_text())

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_ready(self) -> dict[str, Any]:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"graven up exited {self.proc.returncode}: {self.stderr()}{self.stdout()}"
                )
            return self.discovery_path.exists()

        wait_until(ready, START_TIMEOUT, "the discovery file")
        return self.discovery()

    def member_pids(self) -> list[int]:
        return [m["pid"] for m in self.discovery()["members"]]

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=STOP_TIMEOUT)

    def kill_everything(self) -> None:
        """Teardown after a failed test: no process may outlive it."""
        pids = []
        if self.discovery_path.exists():
            pids = [p for p in self.member_pids() if p]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids:
            if not pid_gone(pid):
                os.kill(pid, signal.SIGKILL)


def start_up(
    cwd: Path, *args: str, data_dir: str = ".graven", env: dict[str, str] | None = None
) -> Up:
    """``graven up ARGS`` in ``cwd``; ``env``: extra environment (the members inherit it)."""
    out, err = cwd / f"up-{time.monotonic_ns()}.out", cwd / f"up-{time.monotonic_ns()}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            [*graven_argv(), "up", *args, "--data-dir", data_dir],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
        )
    return Up(proc, cwd, cwd / data_dir, out, err)
