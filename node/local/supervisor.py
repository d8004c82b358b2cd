"""`graven up`'s supervisor: start the members, await readiness, watch, stop.

Members are started by the one launcher's rules (``launcher``: the same command line, and they
die with this process even when it is SIGKILLed), in their own session, so a terminal's Ctrl-C
reaches only this supervisor, which then stops them in order (SIGTERM, a grace period, SIGKILL).
A member that dies is reported, never silently restarted: a crash should be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiohttp

from ..cli.node import REFUSED_EXIT
from ..cluster.config import ClusterConfig, parse
from ..cluster.describe import describe_layout, table
from ..protocol.checker import check
from . import cluster as localcluster
from .cluster import HOST, member_port
from .launcher import READY_POLL, READY_TIMEOUT, STOP_GRACE, die_with_parent, member_argv
from .security import LocalSecurity

KILL_WAIT = 5.0  # seconds to reap a member after SIGKILL
APPLY_TIMEOUT = 300.0  # seconds for every member to serve a newly published document
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Member:
    name: str
    url: str
    log: Path
    proc: asyncio.subprocess.Process | None = None
    exited: asyncio.Task[int] | None = field(default=None, repr=False)
    reported: bool = False  # its unexpected exit has been printed

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    def __init__(
        self,
        cfg: ClusterConfig,
        data_dir: Path,
        config_path: Path,
        hint: str,
        resumed: bool,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
        security: LocalSecurity | None = None,
    ) -> None:
        self.cfg = cfg
        self.security = security  # None: plain http, no access control (--no-tls)
        self.data_dir = data_dir
        self.config_path = config_path
        self.hint = hint
        self.resumed = resumed
        self.out, self.err = out, err
        self.members = [
            Member(m.name, m.url, data_dir / f"{m.name}.log") for m in cfg.live_members()
        ]
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second Ctrl-C: skip the grace period
        self._failed = False  # a member could not start
        self._refused = False  # a member refused this configuration for its data (exit 3)
        # A reconfiguration to run once the members are ready: called in a thread with the
        # functions that prepare a cluster document (``apply``) and settle after the members
        # installed it (``settle``), both run on this loop.
        self.transition: Callable[[Callable[[dict], None], Callable[[dict], None]], str] | None
        self.transition = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal)
        try:
            await self._spawn_all()
            if not await self._await_ready():
                if self._refused:
                    return 2  # start-up refused, as for graven up's own checks
                return 1 if self._failed else 0  # 0: stopped by the user during start-up
            self._publish()
            self._print_ready()
            if self.transition is not None:
                self._start_transition(loop)
            return await self._watch()
        finally:
            await self._stop_all()
            localcluster.remove_discovery(self.data_dir)
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    # -- reconfiguration --------------------------------------------------------------------

    def _start_transition(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the transition in a daemon thread (its HTTP calls block); every member start
        and stop it asks for runs here, on the loop thread, which the members outlive."""
        transition = self.transition
        assert transition is not None

        def publish(doc: dict) -> None:
            future = asyncio.run_coroutine_threadsafe(self.apply(doc), loop)
            future.result(timeout=APPLY_TIMEOUT)

        def settle(doc: dict) -> None:
            future = asyncio.run_coroutine_threadsafe(self.settle(doc), loop)
            future.result(timeout=APPLY_TIMEOUT)

        def work() -> None:
            try:
                message = transition(publish, settle)
            except Exception as exc:  # reported; the members keep serving the last document
                message = f"graven up: reconfiguration stopped: {exc}"
                loop.call_soon_threadsafe(self._say, message, True)
                return
            loop.call_soon_threadsafe(self._say, message)

        threading.Thread(target=work, name="reconfigure", daemon=True).start()

    async def apply(self, doc: dict) -> None:
        """Before members are given this cluster document: write it (a member that starts
        reads it) and start the members of its live epochs that do not run yet. Running
        members are not restarted: the Driver pushes the document to them (``server.live``)."""
        cfg = parse(doc)
        localcluster.write_config(cfg, self.data_dir)
        by_name = {m.name: m for m in self.members}
        starting = []
        for wanted in cfg.live_members():
            member = by_name.get(wanted.name)
            if member is None:
                member = Member(wanted.name, wanted.url, self.data_dir / f"{wanted.name}.log")
                self.members.append(member)
            elif member.running:
                continue
            if self._stop.is_set():
                return
            await self._spawn(member)
            starting.append(member)
        async with self._session() as session:  # they start side by side
            ready = await asyncio.gather(*(self._ready(session, m) for m in starting))
        late = [f"{m.name} (log: {m.log})" for m, ok in zip(starting, ready, strict=True) if not ok]
        if late:
            raise RuntimeError(f"did not come up: {', '.join(late)}")
        self._publish()

    async def settle(self, doc: dict) -> None:
        """Every member of the document's live epochs serves it: stop the others."""
        cfg = parse(doc)
        live = {m.name for m in cfg.live_members()}
        for member in [m for m in self.members if m.name not in live]:
            await self._halt(member, signal.SIGTERM)
            self.members.remove(member)
        self.cfg = cfg
        self._publish()

    async def _halt(self, member: Member, sig: signal.Signals) -> None:
        member.reported = True  # an exit we asked for is not "unexpected"
        if member.running:
            _signal(member, sig)
            if member.exited is not None:
                await asyncio.wait({member.exited}, timeout=STOP_GRACE)

    def _fail(self) -> None:
        self._failed = True
        self._stop.set()

    def _on_signal(self) -> None:
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def _say(self, text: str, err: bool = False) -> None:
        # a closed terminal must not stop the clean-up that follows a message
        with contextlib.suppress(OSError, ValueError):
            print(text, file=self.err if err else self.out, flush=True)

    # -- start ------------------------------------------------------------------------------

    async def _spawn_all(self) -> None:
        for member in self.members:
            if self._stop.is_set():
                return
            await self._spawn(member)

    async def _spawn(self, member: Member) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # log lines land in the log at once
        port = member_port(member.url)
        extra = self.security.node_args(member.name) if self.security else ()
        argv = member_argv(
            member.name, f"{HOST}:{port}", self.data_dir / member.name, self.config_path, extra
        )
        with open(member.log, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== graven up: starting {member.name} at {stamp} ===\n".encode())
            log.flush()
            member.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        member.exited = asyncio.create_task(member.proc.wait())
        member.reported = False

    def _session(self) -> aiohttp.ClientSession:
        """A session for readiness probes (over TLS: trusting the cluster's CA)."""
        connector = None
        if self.security is not None:
            ctx = ssl.create_default_context(cafile=str(self.security.ca))
            connector = aiohttp.TCPConnector(ssl=ctx)
        return aiohttp.ClientSession(connector=connector)

    async def _await_ready(self) -> bool:
        async with self._session() as session:
            results = await asyncio.gather(*(self._ready(session, m) for m in self.members))
        return all(results)

    async def _ready(self, session: aiohttp.ClientSession, member: Member) -> bool:
        if member.exited is None:
            return False
        stop = asyncio.create_task(self._stop.wait())
        deadline = time.monotonic() + READY_TIMEOUT
        probe = aiohttp.ClientTimeout(total=2.0)
        try:
            while time.monotonic() < deadline:
                if member.exited.done():
                    self._fail()  # one member cannot start: take the rest down
                    self._refused |= member.exited.result() == REFUSED_EXIT
                    self._say(
                        f"graven up: {member.name} exited during start-up "
                        f"({describe_exit(member.exited.result())}): {last_line(member.log)} "
                        f"(log: {member.log})",
                        err=True,
                    )
                    return False
                if self._stop.is_set():
                    return False
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(member.url + "/readyz", timeout=probe) as resp:
                        if resp.status == 200:
                            return True
                # bounded poll; an exit or a stop signal ends the pause at once
                await asyncio.wait({member.exited, stop}, timeout=READY_POLL)
            self._fail()
            self._say(
                f"graven up: {member.name} was not ready within {READY_TIMEOUT:g} s "
                f"(log: {member.log})",
                err=True,
            )
            return False
        finally:
            stop.cancel()

    def _publish(self) -> None:
        pids = {m.name: m.pid if m.running else None for m in self.members}
        security = self.security.discovery() if self.security is not None else None
        localcluster.write_discovery(self.data_dir, self.cfg, pids, self.config_path, security)

    def _print_ready(self) -> None:
        how = "resumed" if self.resumed else "started"
        tolerates = check(self.cfg.layout).tolerates
        self._say(
            f"graven up: cluster {self.cfg.cluster} {how}: {len(self.members)} members, "
            f"layout {describe_layout(self.cfg.layout.to_spec())}, "
            f"tolerates {tolerates} failure{'' if tolerates == 1 else 's'}, "
            f"epoch {self.cfg.epoch}, data in {self.data_dir}"
        )
        rows = [(m.name, m.url, m.pid, "ready") for m in self.members]
        self._say(table(("MEMBER", "URL", "PID", "STATE"), rows))
        self._say(f"\nTry: {self.hint}\nPress Ctrl-C to stop the cluster.")

    # -- watch ------------------------------------------------------------------------------

    async def _watch(self) -> int:
        stop = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                pending = {m.exited for m in self.members if m.exited and not m.reported}
                if not pending:
                    self._say("graven up: every member has exited; stopping", err=True)
                    return 1
                await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
                for member in self.members:
                    if member.exited and member.exited.done() and not member.reported:
                        member.reported = True
                        if not self._stop.is_set():
                            self._report_exit(member)
            return 0
        finally:
            stop.cancel()

    def _report_exit(self, member: Member) -> None:
        assert member.exited is not None
        self._say(
            f"graven up: member {member.name} (pid {member.pid}) exited unexpectedly "
            f"({describe_exit(member.exited.result())}); not restarting it (log: {member.log})",
            err=True,
        )
        self._publish()

    # -- stop -------------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        running = [m for m in self.members if m.running]
        for member in running:
            _signal(member, signal.SIGTERM)
        waits = {m.exited for m in running if m.exited is not None}
        if waits:
            # every member gone, the grace period over, or a second Ctrl-C: whichever is first
            everyone = asyncio.create_task(asyncio.wait(waits))
            hurry = asyncio.create_task(self._hurry.wait())
            await asyncio.wait(
                {everyone, hurry}, timeout=STOP_GRACE, return_when=asyncio.FIRST_COMPLETED
            )
            everyone.cancel()
            hurry.cancel()
        stubborn = [m for m in running if m.running]
        for member in stubborn:
            self._say(f"graven up: {member.name} did not stop in time; killing it", err=True)
            _signal(member, signal.SIGKILL)
        if stubborn:
            await asyncio.wait({m.exited for m in stubborn if m.exited}, timeout=KILL_WAIT)
        if running:
            self._say(f"graven up: stopped {len(running)} member(s) of {self.cfg.cluster}")


def _signal(member: Member, sig: signal.Signals) -> None:
    if member.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            member.proc.send_signal(sig)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def last_line(log: Path) -> str:
    """The last non-empty line a member wrote (its one-line error, usually)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [ln for ln in lines if ln and not ln.startswith("=== graven up:")]
    return lines[-1] if lines else "(nothing logged)"
