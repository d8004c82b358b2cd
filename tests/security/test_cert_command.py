"""`graven cert` issues client certificates that members honour by role, and refuses bad
input with one line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from graven.node.client import Client
from graven.node.client.core import ClientError
from graven.node.client.credentials import Credentials
from graven.node.security import pki
from tests.support.cluster import LocalCluster

GRAVEN = [sys.executable, "-m", "graven.node.cli"]


def cert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GRAVEN, "cert", *args], capture_output=True, text=True, timeout=60)


def test_issued_certificates_carry_their_role(
    local_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    c = local_cluster(1, {"preset": "paxos"}, tls=True)
    out = tmp_path / "certs"
    for name, role in (("reader", "read"), ("writer", "write")):
        done = cert("--name", name, "--role", role, "--data-dir", str(c.root), "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(out / f"{name}.crt"), str(out / f"{name}.key")]
        assert (out / f"{name}.key").stat().st_mode & 0o077 == 0
    ca = c.credentials.ca

    def as_(name: str) -> Credentials:
        return Credentials(ca=ca, cert=str(out / f"{name}.crt"), key=str(out / f"{name}.key"))

    with Client(c.urls, credentials=as_("writer")) as writer:
        assert writer.propose("k", "v").won
    with Client(c.urls, credentials=as_("reader")) as reader:
        assert reader.get("k") == "v"
        with pytest.raises(ClientError) as refused:
            reader.propose("k2", "v")
        assert refused.value.status == 403
    # the explicit form (a Kubernetes CA Secret exported to files), from another CA: refused
    other = pki.new_ca("demo")
    (tmp_path / "tls.crt").write_bytes(other.cert_pem)
    (tmp_path / "tls.key").write_bytes(other.key_pem)
    done = cert(
        "--name", "mallory", "--role", "admin", "--cluster", c.cfg.cluster,
        "--ca-cert", str(tmp_path / "tls.crt"), "--ca-key", str(tmp_path / "tls.key"),
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Client(c.urls, credentials=as_("mallory")) as stranger, pytest.raises(ClientError):
        stranger.get("k")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-dir", "{tmp}/nothing"], "no cluster in"),
        (["--cluster", "x"], "--cluster, --ca-cert and --ca-key go together"),
        (["--cluster", "x", "--ca-cert", "{tmp}/a", "--ca-key", "{tmp}/b"], "cannot"),
        (["--days", "0"], "--days must be at least 1"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = cert("--name", "n", "--role", "read", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("graven cert: error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
