"""`graven up` as a user runs it: start, discovery, Ctrl-C, restart with the decisions kept,
a crashed member reported, and every refusal as one line with its exit status."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from graven.node import cli
from graven.node.local import cluster as lc
from tests.support.up import (
    EXAMPLE,
    REPO,
    free_base_port,
    graven,
    pid_gone,
    start_up,
    wait_until,
)


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_up_serves_stops_on_ctrl_c_and_resumes_with_its_decisions(tmp_path: Path) -> None:
    base = free_base_port(3)
    up = start_up(tmp_path, "--base-port", str(base))  # no SPEC: the repository's example
    try:
        doc = up.wait_ready()
        assert doc["cluster"] == "demo"
        urls = [f"https://127.0.0.1:{base + i}" for i in range(3)]  # TLS is on by default
        assert [(m["name"], m["url"]) for m in doc["members"]] == [
            (f"demo-{i}", urls[i]) for i in range(3)
        ]
        assert Path(doc["config"]) == (tmp_path / ".graven" / "cluster.yaml").resolve()
        pids = up.member_pids()
        assert all(not pid_gone(p) for p in pids)
        out = up.stdout()
        assert "MEMBER" in out and "PID" in out and "STATE" in out
        for i, pid in enumerate(pids):
            assert f"demo-{i}  {urls[i]}  {pid}  ready" in out
        assert "Try: graven propose hello world\n" in out
        assert (tmp_path / ".graven" / "demo-1" / "LOCK").exists()  # member data under DIR
        assert "listening on" in (tmp_path / ".graven" / "demo-1.log").read_text()

        assert graven("propose", "hello", "world", cwd=tmp_path).returncode == 0

        # a second `graven up` on the same directory is refused while this one runs
        again = graven("up", "--base-port", str(free_base_port(3)), cwd=tmp_path)
        assert again.returncode == 2
        assert "already running" in one_line(again.stderr)
        # another directory cannot take the same ports
        clash = graven("up", "--data-dir", "other", "--base-port", str(base), cwd=tmp_path)
        assert clash.returncode == 2
        assert f"port {base} on 127.0.0.1 (for demo-0) is already in use" in one_line(clash.stderr)

        assert up.stop(signal.SIGINT) == 0
        assert all(pid_gone(p) for p in pids)
        assert not up.discovery_path.exists()
        assert "stopped 3 member(s) of demo" in up.stdout()
        assert up.stderr() == ""
    finally:
        up.kill_everything()

    # no --base-port: the restart comes back on the same URLs, with the same decisions
    again = start_up(tmp_path)
    try:
        doc = again.wait_ready()
        assert [m["url"] for m in doc["members"]] == urls
        assert "cluster demo resumed" in again.stdout()
        got = graven("get", "hello", cwd=tmp_path)
        assert (got.returncode, got.stdout) == (0, "world\n")
        assert again.stop(signal.SIGTERM) == 0
        assert not again.discovery_path.exists()
    finally:
        again.kill_everything()


def test_members_stop_when_graven_up_is_sigkilled(tmp_path: Path) -> None:
    # SIGKILL leaves the supervisor no chance to stop anyone: the members must go by themselves.
    # (With --no-tls, for debugging: plain http, no credentials anywhere.)
    base = free_base_port(3)
    up = start_up(tmp_path, "--base-port", str(base), "--no-tls")
    try:
        doc = up.wait_ready()
        assert [m["url"] for m in doc["members"]] == [
            f"http://127.0.0.1:{base + i}" for i in range(3)
        ]
        assert "security" not in doc and not (tmp_path / ".graven" / "tls").exists()
        assert graven("propose", "plain", "http", cwd=tmp_path).returncode == 0
        pids = up.member_pids()
        ports = [base + i for i in range(3)]
        assert not any(lc_port_free(p) for p in ports)  # every member listens
        up.proc.send_signal(signal.SIGKILL)
        assert up.proc.wait(timeout=10) == -signal.SIGKILL
        wait_until(lambda: all(pid_gone(p) for p in pids), 30, "the members to exit")
        wait_until(lambda: all(lc_port_free(p) for p in ports), 10, "the members' ports to close")
    finally:
        up.kill_everything()


def lc_port_free(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:port any more."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_member_that_dies_is_reported_not_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = REPO / "examples" / "fast-3.yaml"
    up = start_up(tmp_path, str(spec), "--base-port", str(free_base_port(3)), data_dir="fast")
    try:
        up.wait_ready()
        victim = up.member_pids()[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: "exited unexpectedly" in up.stderr(), 20, "the crash report")
        report = one_line(up.stderr())
        assert f"member fast-3-1 (pid {victim}) exited unexpectedly (killed by SIGKILL)" in report
        assert "not restarting" in report
        wait_until(lambda: up.discovery()["members"][1]["pid"] is None, 10, "discovery update")
        monkeypatch.chdir(tmp_path)
        assert cli.main(["status", "--json", "--data-dir", "fast"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [m["state"] for m in doc["members"]] == ["up", "down", "up"]
        assert doc["layout"]["preset"] == "fast"
        assert cli.main(["status", "--data-dir", "fast"]) == 0
        human = capsys.readouterr().out
        assert "members 3 (2 up)" in human and "connection refused" in human
        # the cluster still decides without one member (the fast path needs all three)
        assert cli.main(["propose", "k", "v", "--data-dir", "fast"]) == 0
        assert "your proposal won" in capsys.readouterr().out
        assert not pid_gone(victim) or up.proc.poll() is None  # the supervisor keeps running
        others = [p for p in up.member_pids() if p]
        assert up.stop(signal.SIGINT) == 0
        assert all(pid_gone(p) for p in others)
    finally:
        up.kill_everything()


# -- refusals (nothing is started) --------------------------------------------------------------


def refused(tmp_path: Path, *args: str, status: int = 2) -> str:
    """`graven up ARGS` run in a subprocess, as a user types it."""
    result = graven("up", *args, cwd=tmp_path, timeout=30)
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    return one_line(result.stderr)


@pytest.fixture
def up_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., str]:
    """The same command through ``cli.main`` in this process: refusals start nothing, so the
    subprocess would only add interpreter start-up time."""
    monkeypatch.chdir(tmp_path)

    def refuse(*args: str, status: int = 2) -> str:
        assert cli.main(["up", *args]) == status
        out, err = capsys.readouterr()
        assert out == ""
        return one_line(err)

    return refuse


def test_a_missing_spec_is_refused(tmp_path: Path) -> None:
    assert refused(tmp_path, "missing.yaml") == "graven up: error: missing.yaml: no such file"


def test_malformed_specs_are_refused(tmp_path: Path, up_in_process: Callable[..., str]) -> None:
    (tmp_path / "bad.yaml").write_text("spec: [\n")
    assert "bad.yaml: invalid YAML" in up_in_process("bad.yaml")
    (tmp_path / "layout.yaml").write_text("preset: paxos\nmembers: 3\n")
    assert "expected a ConsensusCluster manifest" in up_in_process("layout.yaml")
    (tmp_path / "noname.yaml").write_text("kind: ConsensusCluster\nspec: {replicas: 3}\n")
    assert "metadata.name is required" in up_in_process("noname.yaml")
    unsafe = {
        "apiVersion": "graven.dev/v1alpha1",
        "kind": "ConsensusCluster",
        "metadata": {"name": "risky"},
        "spec": {"replicas": 3, "quorums": {"preset": "flexible", "q1": 1, "q2": 1}},
    }
    (tmp_path / "unsafe.yaml").write_text(yaml.safe_dump(unsafe))
    assert "the layout is unsafe (violates C2" in up_in_process("unsafe.yaml")
    assert "must lie within 1..65535" in up_in_process("--base-port", "65534")
    assert not (tmp_path / ".graven" / "discovery.json").exists()


def test_a_port_in_use_is_refused(tmp_path: Path, up_in_process: Callable[..., str]) -> None:
    base = free_base_port(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 2))
        busy.listen()
        message = up_in_process(str(EXAMPLE), "--base-port", str(base))
    assert f"port {base + 2} on 127.0.0.1 (for demo-2) is already in use" in message
    assert "--base-port" in message


def test_a_running_cluster_is_not_started_twice(
    tmp_path: Path, up_in_process: Callable[..., str]
) -> None:
    data = tmp_path / ".graven"
    data.mkdir()
    live = {"cluster": "demo", "members": [{"name": "demo-0", "url": "http://x:1", "pid": None}]}
    (data / "discovery.json").write_text(json.dumps({**live, "supervisor": os.getpid()}))
    message = up_in_process("--base-port", str(free_base_port(3)))
    assert f"cluster demo in .graven is already running (pids {os.getpid()})" in message


def test_a_stale_discovery_file_is_ignored_but_the_lock_is_not(
    tmp_path: Path, up_in_process: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / ".graven"
    data.mkdir()
    dead = {"cluster": "demo", "members": [{"name": "demo-0", "url": "http://x:1", "pid": None}]}
    (data / "discovery.json").write_text(json.dumps(dead))
    assert cli.main(["get", "k"]) == 1
    assert "the cluster in .graven is not running" in one_line(capsys.readouterr().err)
    lock = lc.SupervisorLock(data)
    lock.acquire()  # held by this test process: as if a `graven up` ran here
    try:
        message = up_in_process("--base-port", str(free_base_port(3)))
    finally:
        lock.release()
    assert f"a graven up (pid {os.getpid()}) is already running" in message
    # with the lock free, the stale file is cleared (this start then fails on a busy port)
    base = free_base_port(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        assert "already in use" in up_in_process("--base-port", str(base))
    assert not (data / "discovery.json").exists()


def test_another_cluster_or_an_unsafe_step_on_a_data_dir_is_refused(
    tmp_path: Path, up_in_process: Callable[..., str]
) -> None:
    data = tmp_path / ".graven"
    data.mkdir()
    previous = lc.render(lc.load_spec(EXAMPLE), 7100)
    lc.write_config(previous, data)  # what an earlier `graven up` of the example left
    other = yaml.safe_load(EXAMPLE.read_text())
    other["metadata"]["name"] = "other"
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert "holds cluster demo but the spec names other" in up_in_process("other.yaml")
    # 3 -> 1 member at once: the one that stays cannot meet every majority of three
    one = yaml.safe_load(EXAMPLE.read_text())
    one["spec"]["replicas"] = 1
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(one))
    message = up_in_process("one.yaml")
    assert "cannot reconfigure" in message and "more than epoch 0 tolerates" in message


def test_previous_ports_are_reused_only_when_they_were_a_local_run() -> None:
    cfg = lc.render(lc.load_spec(EXAMPLE), 17000)
    assert lc.previous_base_port(cfg) == 17000
    assert lc.previous_base_port(None) is None


@pytest.mark.parametrize("field", ["replicas", "quorums", "limits"])
def test_packaged_default_spec_is_the_example_cluster(field: str) -> None:
    packaged = lc.load_spec(REPO / "node" / "local" / lc.PACKAGED_SPEC)
    example = lc.load_spec(EXAMPLE)
    assert packaged.name == example.name
    assert getattr(packaged.spec, field) == getattr(example.spec, field)
    assert lc.default_spec_path() == EXAMPLE  # from a source tree the example itself is used
