"""Live reconfiguration with real `graven node` processes under load: 3 -> 5 members (paxos ->
fast) -> 3 members (flexible q1/q2), the driver stopped mid-way and resumed from its state file,
a member SIGKILLed during a carry-over, and every member that stays SIGKILLed and restarted
on each published document (a harsher schedule than members installing it live). About 25 s
on two cores, so it runs in `make test`. Clients keep proposing and reading throughout; a
history check asserts agreement, reads that return the acknowledged value, and no
acknowledged decision lost; the longest time any request failed or waited is reported."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from graven.node.cluster.config import ClusterConfig, parse
from graven.node.cluster.render import member_config
from graven.node.cluster.spec import parse as parse_spec
from graven.node.cluster.transition import Driver
from graven.node.local.cluster import RecordFile, write_config
from graven.node.local.launcher import Member
from graven.node.protocol import reconfig as rc
from tests.support.cluster import HOST, LocalCluster, free_ports

CLIENTS = 3
NEW_KEYS = 150  # per client: then it only races on and reads its keys (bounds carry-over time)
STOP_GRACE = 15.0


class Reconfigurable(LocalCluster):
    """Members follow the published cluster document: new members start, the others restart
    one at a time on it, members in no live epoch stop."""

    def publish(self, doc: dict) -> None:
        cfg = parse(doc)
        write_config(cfg, self.root)
        live = {m.name: m for m in cfg.live_members()}
        known = {m.name for m in self.members}
        # new members first: until they serve, the new epoch's quorums need every old member
        for name, m in sorted(live.items(), key=lambda item: item[0] in known):
            if name not in known:
                member = Member(
                    len(self.members), name, m.url, self.root / name, self.root / f"{name}.log"
                )
                self.members.append(member)
                self._spawn(member)
                self.wait_ready(member.index)
            else:
                member = next(x for x in self.members if x.name == name)
                self.kill(member.index)  # SIGKILL: what it acknowledged is durable anyway
                self._spawn(member)
                self.wait_ready(member.index)
        for member in self.members:
            if member.name not in live and member.running:
                self.stop(member)

    def stop(self, member: Member) -> None:
        if member.proc is not None and member.running:
            member.proc.terminate()
            member.proc.wait(STOP_GRACE)

    def live_urls(self) -> list[str]:
        return [m.url for m in self.members if m.running]


class History:
    """What clients were told, checked as it happens and at the end."""

    def __init__(self) -> None:
        self.acked: dict[str, str] = {}
        self.lock = threading.Lock()
        self.problems: list[str] = []
        self.longest = 0.0
        self.decisions = 0
        self.reads = 0

    def decided(self, key: str, value: str, waited: float) -> None:
        with self.lock:
            self.decisions += 1
            self.longest = max(self.longest, waited)
            first = self.acked.setdefault(key, value)
            if first != value:
                self.problems.append(f"disagreement on {key}: {first!r} then {value!r}")

    def read(self, key: str, value: str | None, waited: float) -> None:
        with self.lock:
            self.reads += 1
            self.longest = max(self.longest, waited)
            acked = self.acked.get(key)
            if acked is not None and value != acked:
                self.problems.append(f"read {key}: {value!r}, acknowledged {acked!r}")


def _http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _until_answered(cluster: Reconfigurable, method: str, path: str, body, stop) -> tuple:
    """Retry on errors (503, 504, refused connections while members restart) until a
    member answers; returns (status, reply, seconds it took)."""
    started = time.monotonic()
    delay = 0.02
    for _ in range(10_000):
        urls = cluster.live_urls()
        try:
            status, reply = _http(method, random.choice(urls) + path, body) if urls else (0, {})
        except OSError:
            status, reply = 0, {}
        if status in (200, 404):
            return status, reply, time.monotonic() - started
        if stop.is_set() and time.monotonic() - started > 60:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise AssertionError(f"{method} {path}: no answer")


def client(cluster: Reconfigurable, history: History, n: int, stop: threading.Event) -> None:
    rng = random.Random(n)
    mine: list[str] = []
    i = 0
    while not stop.is_set():
        i += 1
        roll = rng.random()
        if (roll < 0.6 and len(mine) < NEW_KEYS) or not mine:
            key = f"c{n}-k{i}"
            _, reply, waited = _until_answered(
                cluster, "PUT", f"/v1/decisions/{quote(key)}", {"value": f"v{n}.{i}"}, stop
            )
            history.decided(key, reply["value"], waited)
            mine.append(key)
        elif roll < 0.8:  # a racing proposal for a decided key must get the decided value
            key = rng.choice(mine)
            _, reply, waited = _until_answered(
                cluster, "PUT", f"/v1/decisions/{quote(key)}", {"value": f"other{n}.{i}"}, stop
            )
            history.decided(key, reply["value"], waited)
        else:
            key = rng.choice(mine)
            status, reply, waited = _until_answered(
                cluster, "GET", f"/v1/decisions/{quote(key)}", None, stop
            )
            history.read(key, reply.get("value") if status == 200 else None, waited)


def target(cluster: Reconfigurable, replicas: int, quorums: dict, epoch: int) -> ClusterConfig:
    by_name = {m.name: m.url for m in cluster.members}
    names = [f"{cluster.cluster}-{i}" for i in range(replicas)]
    fresh = iter(free_ports(replicas))
    urls = [by_name.get(name) or f"http://{HOST}:{next(fresh)}" for name in names]
    spec = parse_spec({"replicas": replicas, "quorums": quorums})
    return parse(member_config(cluster.cluster, spec, urls, epoch))


def test_three_to_five_to_three_members_under_load(tmp_path: Path) -> None:
    cluster = Reconfigurable(tmp_path / "c", 3, {"preset": "paxos"})
    history = History()
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(cluster, history, n, stop), daemon=True)
        for n in range(CLIENTS)
    ]
    state = RecordFile(tmp_path / "reconfiguration.json")
    with cluster:
        for t in threads:
            t.start()
        time.sleep(1.0)  # decisions in epoch 0 first
        old = parse(cluster.doc)

        # 3 -> 5, paxos -> fast; the driver "crashes" right after saving the fence step and a
        # new one resumes from the state file
        new = target(cluster, 5, {"preset": "fast"}, 1)

        def crash_at_fence(record: rc.Record) -> None:
            if record.step == rc.FENCE:
                raise KeyboardInterrupt  # stands for a SIGKILL right after the save

        try:
            Driver(state, old, new, cluster.publish, batch=64, progress=crash_at_fence).run()
            raise AssertionError("the driver was to be stopped at the fence step")
        except KeyboardInterrupt:
            pass
        resumed = Driver.resume(state, cluster.publish, batch=64)
        assert resumed is not None and resumed.orch.step == rc.FENCE
        first = resumed.run(deadline=time.monotonic() + 300)
        assert first.step == rc.DONE
        time.sleep(0.5)

        # 5 -> 3, fast -> flexible q1=2 q2=2; a member is SIGKILLed during the carry-over
        newer = target(cluster, 3, {"preset": "flexible", "q1": 2, "q2": 2}, 2)
        killed = []

        def kill_in_carry(record: rc.Record) -> None:
            if record.step == rc.CARRY and not killed:
                victim = next(m for m in cluster.members if m.name.endswith("-1"))
                cluster.kill(victim.index)
                killed.append(victim.index)
                # its supervisor starts it again a moment later; the listing of its keys waits.
                # (The thread that starts a member must outlive it: members get
                # PR_SET_PDEATHSIG from the starting thread.)
                back = threading.Thread(target=supervise, args=(victim.index,), daemon=True)
                back.start()
                killed.append(back)

        done = threading.Event()

        def supervise(index: int) -> None:
            time.sleep(1.0)
            cluster.restart(index)
            done.wait(300)

        second = Driver(state, new, newer, cluster.publish, batch=64, progress=kill_in_carry)
        record = second.run(deadline=time.monotonic() + 300)
        assert record.step == rc.DONE and killed
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(90)

        # Every acknowledged decision reads back the same from every final member.
        lost = []
        for key, value in sorted(history.acked.items()):
            for member in cluster.members[:3]:
                status, reply = _http("GET", f"{member.url}/v1/decisions/{quote(key)}")
                if status != 200 or reply["value"] != value:
                    lost.append((key, member.name, status, reply.get("value")))
        info = _http("GET", f"{cluster.members[0].url}/v1/cluster")[1]
        done.set()
    print(
        f"reconfiguration e2e: {history.decisions} decisions and {history.reads} reads checked, "
        f"{len(history.acked)} keys, {len(history.problems)} disagreements, {len(lost)} lost, "
        f"carried {first.carried}+{record.carried} keys, longest stall {history.longest:.2f}s"
    )
    assert history.problems == []
    assert lost == []
    assert history.decisions > 50
    assert info["epoch"] == 2 and info["liveEpochs"] == [2]
    assert len(info["members"]) == 3
