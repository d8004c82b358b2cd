"""Graven's container image, built from the repository's Dockerfile by `make kube`
(tools/kube/images.sh: podman over a Debian-made python base, no registry): it builds, its
entry point answers `--help`, and a member started from it serves decisions.

`podman run` cannot start containers on these machines (they withhold CAP_SYS_RESOURCE and
podman sets rlimits), so the container runs with `buildah run`, the same runc underneath.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubeenv import REPO, wait_for

IMAGE = "localhost/graven:0.1.0"
CACHE = Path("/var/cache/graven-kube")  # tools/kube/env.sh: KUBE_CACHE


def buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    storage = ("--root", str(CACHE / "podman/storage"), "--runroot", str(CACHE / "podman/run"))
    return subprocess.run(
        ["buildah", *storage, *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def image() -> str:
    # `make kube` built it (pip needs PyPI, which this network namespace cannot reach): the
    # image must be the one built from the sources under test.
    done = subprocess.run(
        ["bash", str(REPO / "tools/kube/images.sh"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[str]:
    made = buildah("from", "--pull-never", image)
    assert made.returncode == 0, made.stderr
    name = made.stdout.strip()
    try:
        yield name
    finally:
        buildah("rm", name)


def test_the_image_is_built_from_the_dockerfile(image: str) -> None:
    done = buildah("inspect", "--type", "image", image)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)["OCIv1"]["config"]
    assert config["Entrypoint"] == ["graven"]
    assert config["User"] == "10001:10001"


def run_in(container: str, *command: str, network: str = "none") -> list[str]:
    return [
        "buildah",
        *("--root", str(CACHE / "podman/storage"), "--runroot", str(CACHE / "podman/run")),
        *("run", "--runtime", "/usr/sbin/runc", "--isolation", "oci", "--network", network),
        container,
        "--",
        *command,
    ]


def test_graven_help_runs_in_the_image(container: str) -> None:
    done = subprocess.run(
        run_in(container, "graven", "--help"), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: graven")
    for command in ("node", "operator", "propose"):
        assert command in done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_member_runs_from_the_image_and_decides(container: str, tmp_path: Path) -> None:
    port = free_port()
    config = {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ClusterConfig",
        "cluster": "image",
        "epoch": 0,
        "members": [{"name": "image-0", "url": f"http://127.0.0.1:{port}"}],
        "quorums": {"preset": "paxos"},
    }
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(config))
    tmp_path.chmod(0o755)
    (tmp_path / "cluster.yaml").chmod(0o644)
    # Plain http on purpose: this checks the image's entry point and storage, with a config
    # written here and no operator; the operator's members from this image run TLS (test_e2e).
    # The member shares this network namespace (the cluster's, under `make test-kube`) and
    # stops by itself after a minute if this test dies before stopping it.
    command = run_in(
        container,
        *("timeout", "60", "graven", "node", "--id", "image-0", "--listen"),
        *(f"127.0.0.1:{port}", "--data-dir", "/var/lib/graven/data"),
        *("--config", "/config/cluster.yaml"),
        network="host",
    )
    command.insert(command.index("--network"), f"--volume={tmp_path}:/config:ro")
    log = tmp_path / "member.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=1) as rsp:
                    return rsp.status == 200
            except OSError:
                return False

        wait_for(ready, 60, "the member's /readyz", interval=0.5)
        body = json.dumps({"value": "from-the-image"}).encode()
        put = urllib.request.Request(
            f"{url}/v1/decisions/image-key",
            data=body,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(put, timeout=10) as rsp:
            assert json.load(rsp)["value"] == "from-the-image"
        with urllib.request.urlopen(f"{url}/v1/decisions/image-key", timeout=10) as rsp:
            assert json.load(rsp) == {"key": "image-key", "value": "from-the-image"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        deadline = time.monotonic() + 30  # buildah's container process ends with `timeout`
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
            except OSError:
                break
            time.sleep(0.5)
