"""`graven up` again with an edited spec reconfigures the cluster live, with TLS on (the
default): the orchestrator calls the members with the local admin certificate and the new
member gets its certificate before it starts. A `graven up` SIGKILLed in the middle of a
transition finishes it when started again."""

from __future__ import annotations

import json
import signal
import ssl
import urllib.request
from pathlib import Path

import yaml

from graven.node.local.security import LocalSecurity, client_context
from tests.support.up import EXAMPLE, free_base_port, graven, start_up, wait_until

KEYS = 400


def _spec(path: Path, replicas: int, quorums: dict) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["replicas"] = replicas
    doc["spec"]["quorums"] = quorums
    path.write_text(yaml.safe_dump(doc))


def _client(data: Path) -> ssl.SSLContext:
    return client_context(LocalSecurity(data / "tls"))


def _batch(url: str, items: list[dict], ctx: ssl.SSLContext) -> list[dict]:
    req = urllib.request.Request(
        url + "/v1/decisions:batch",
        data=json.dumps({"decisions": items}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
        return json.loads(resp.read())["results"]


def _step(data: Path) -> str | None:
    try:
        return json.loads((data / "reconfiguration.json").read_text())["record"]["step"]
    except (OSError, ValueError, KeyError):
        return None


def test_graven_up_again_reconfigures_and_resumes_after_sigkill(tmp_path: Path) -> None:
    _spec(tmp_path / "three.yaml", 3, {"preset": "paxos"})
    _spec(tmp_path / "four.yaml", 4, {"preset": "fast"})
    base = free_base_port(4)
    up = start_up(tmp_path, "three.yaml", "--base-port", str(base))
    try:
        url = up.wait_ready()["members"][0]["url"]
        assert url.startswith("https://")
        items = [{"key": f"k{i}", "value": f"v{i}"} for i in range(KEYS)]
        decided = {r["key"]: r["value"] for r in _batch(url, items, _client(up.data_dir))}
        assert len(decided) == KEYS
    finally:
        assert up.stop() == 0

    # Edited spec: the cluster comes up as it was, then moves to 4 members and fast. SIGKILL
    # graven up (its members die with it) once the carry-over has started.
    up = start_up(tmp_path, "four.yaml")
    try:
        wait_until(lambda: _step(up.data_dir) == "carry", 120, "the carry step")
        up.proc.send_signal(signal.SIGKILL)
        up.proc.wait(30)
    finally:
        up.kill_everything()
    assert _step(up.data_dir) in ("carry", "retire")

    assert (up.data_dir / "tls" / "demo-3.crt").exists()  # issued before it started
    again = start_up(tmp_path, "four.yaml")
    try:
        again.wait_ready()
        wait_until(lambda: "reconfigured to epoch 1" in again.stdout(), 180, "the transition")
        assert _step(again.data_dir) == "done"
        status = graven("status", "--json", cwd=tmp_path)
        report = json.loads(status.stdout)
        assert report["epoch"] == 1 and report["live_epochs"] == [1]
        assert len(report["members"]) == 4 and report["members_up"] == 4
        url = again.discovery()["members"][3]["url"]  # the new member answers for old keys
        rivals = [{"key": k, "value": "late"} for k in decided]
        replies = _batch(url, rivals, _client(again.data_dir))
        assert {r["key"]: r["value"] for r in replies} == decided
    finally:
        assert again.stop() == 0


def test_graven_up_grows_one_member_to_three_then_takes_explicit_segments(tmp_path: Path) -> None:
    # 1 -> 3: the old epoch's only member is its fence quorum and the source of every key;
    # then paxos -> explicit quorum sets (a layout given as segments, not a preset)
    _spec(tmp_path / "one.yaml", 1, {"preset": "paxos"})
    _spec(tmp_path / "three.yaml", 3, {"preset": "paxos"})
    pairs = {"type": "explicit", "sets": [[0, 1], [1, 2], [0, 2]]}
    _spec(tmp_path / "sets.yaml", 3, {"segments": [{"phase1": pairs, "phase2": pairs}]})
    up = start_up(tmp_path, "one.yaml", "--base-port", str(free_base_port(3)))
    try:
        url = up.wait_ready()["members"][0]["url"]
        items = [{"key": f"solo{i}", "value": f"v{i}"} for i in range(50)]
        decided = {r["key"]: r["value"] for r in _batch(url, items, _client(up.data_dir))}
        assert len(decided) == 50
    finally:
        assert up.stop() == 0

    for epoch, spec in ((1, "three.yaml"), (2, "sets.yaml")):
        again = start_up(tmp_path, spec)
        try:
            again.wait_ready()
            done = f"reconfigured to epoch {epoch}"
            wait_until(lambda up=again, done=done: done in up.stdout(), 120, "the transition")
            report = json.loads(graven("status", "--json", cwd=tmp_path).stdout)
            assert report["live_epochs"] == [epoch] and report["members_up"] == 3
            for member in again.discovery()["members"]:  # each member answers for old keys
                rivals = [{"key": k, "value": "late"} for k in decided]
                replies = _batch(member["url"], rivals, _client(again.data_dir))
                assert {r["key"]: r["value"] for r in replies} == decided, member["name"]
        finally:
            assert again.stop() == 0
    cluster = yaml.safe_load((tmp_path / ".graven" / "cluster.yaml").read_text())
    assert cluster["epoch"] == 2
    assert cluster["quorums"] == {"segments": [{"phase1": pairs, "phase2": pairs}]}
