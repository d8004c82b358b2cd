"""Network namespaces for one harness run: a hub with a bridge, one namespace per member, one
for the clients (and the harness itself), joined by veth pairs created inside the namespaces.

Nothing is created in the machine's own namespace: each veth pair is made in the hub with its
peer end placed straight into the member's namespace. Names start with ``PREFIX`` followed by
the harness's pid, so a later run can sweep what a crashed run left behind (only runs whose pid
is gone; a concurrent run is left alone). Addresses are in ``SUBNET`` and exist only inside
these namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field

PREFIX = "gvf"  # graven fault harness
SUBNET = "10.213.0"  # /24 inside our namespaces only
HUB_ADDR = f"{SUBNET}.1"
CLIENT_ADDR = f"{SUBNET}.5"  # the workload's connections come from here
CONTROL_ADDR = f"{SUBNET}.6"  # the harness's own probes (not cut off with the clients)
NODE_PORT = 7100  # every node listens on this port of its namespace (what the config says)
PROXY_PORT = 7101  # its delay proxy, which every inbound connection is redirected to
CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}(\d+)-")


class TopologyError(Exception):
    pass


def sh(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise TopologyError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def list_netns() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_netns(name: str) -> None:
    """Kill whatever still runs in the namespace, then delete it."""
    pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        if pid == str(os.getpid()):
            continue  # the harness lives in its clients' namespace
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    sh("ip", "netns", "del", name, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces of earlier runs whose harness process is gone; returns their names."""
    swept = []
    for name in list_netns():
        m = _NAME.match(name)
        if m and not pid_alive(int(m.group(1))):
            delete_netns(name)
            swept.append(name)
    return swept


@dataclass
class Topology:
    members: int
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    created: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.tag}-hub"

    @property
    def client(self) -> str:
        return f"{self.tag}-cli"

    def member_ns(self, i: int) -> str:
        return f"{self.tag}-m{i}"

    @staticmethod
    def member_addr(i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def all_member_addrs(self) -> list[str]:
        return [self.member_addr(i) for i in range(self.members)]

    def create(self) -> None:
        hub = self.hub
        self._add(hub)
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "addr", "add", f"{HUB_ADDR}/24", "dev", "br0")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        sh("ip", "-n", hub, "link", "set", "lo", "up")
        ends = [(self.member_ns(i), self.member_addr(i), f"m{i}") for i in range(self.members)]
        ends.append((self.client, CLIENT_ADDR, "cli"))
        for ns, addr, short in ends:
            self._add(ns)
            # both ends created from the hub: the peer lands directly in the member namespace
            sh(
                "ip",
                "-n",
                hub,
                "link",
                "add",
                f"v-{short}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", hub, "link", "set", f"v-{short}", "master", "br0")
            sh("ip", "-n", hub, "link", "set", f"v-{short}", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.client, "addr", "add", f"{CONTROL_ADDR}/24", "dev", "eth0")
        for i in range(self.members):
            # the harness's probes always pass (nemeses append their DROPs after this rule)
            self.iptables(self.member_ns(i), "-A", "INPUT", "-s", CONTROL_ADDR, "-j", "ACCEPT")
            # every inbound connection to a node goes through its delay proxy (proxy.py)
            self.iptables(
                self.member_ns(i),
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                str(NODE_PORT),
                "-j",
                "REDIRECT",
                "--to-ports",
                str(PROXY_PORT),
            )

    def _add(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)

    def destroy(self) -> None:
        for name in reversed(self.created):
            delete_netns(name)
        self.created.clear()

    # -- running things inside ---------------------------------------------------------------

    def nsenter(self, ns: str) -> list[str]:
        """Prefix that runs a command in namespace ``ns`` (execs: the pid is the command's)."""
        return ["nsenter", f"--net=/run/netns/{ns}", "--"]

    def iptables(self, ns: str, *args: str) -> None:
        sh("ip", "netns", "exec", ns, "iptables", "-w", *args)

    def flush_filters(self, ns: str) -> None:
        self.iptables(ns, "-F", "INPUT")
        self.iptables(ns, "-F", "OUTPUT")


def enter_netns(ns: str) -> None:
    """Move the calling thread (call it before any thread or socket exists) into ``ns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise TopologyError(f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)
