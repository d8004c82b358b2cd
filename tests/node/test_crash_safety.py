"""Real `graven node` processes: SIGKILL at random moments loses nothing acknowledged.

Client tasks write distinct registers, fence keys and raise the global fence over HTTP and note
every acknowledgement. The node is SIGKILLed after a random number of acknowledgements (seeded),
restarted on the same data directory, and everything acknowledged must still be there, with no
register changed. The same harness run against the deliberately lying store
(tests/support/lying_node.py) must report losses, which shows the check can fail.

Also here: the process contract (graceful SIGTERM, one-line errors with exit status 2).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from graven.node.storage import RegisterStore
from graven.node.storage.schema import DB_NAME

NODE_CMD = [sys.executable, "-m", "graven.node.cli", "node"]
# the same command over a store that acknowledges before it syncs (a test double)
LYING_NODE_CMD = [
    sys.executable,
    str(Path(__file__).parents[1] / "support" / "lying_node.py"),
    "node",
]
ROUNDS = int(os.environ.get("GRAVEN_CRASH_ROUNDS", "8"))
SEED = int(os.environ.get("GRAVEN_CRASH_SEED", "20261129"))
CLIENTS = 8
MAX_OPS_PER_CLIENT = 3000  # per round: a bound, the kill normally comes much earlier
START_TIMEOUT = 30.0
LISTENING = re.compile(r"graven node demo-0 listening on (http://127\.0\.0\.1:\d+)")

CONFIG = """\
apiVersion: graven.dev/v1alpha1
kind: ClusterConfig
cluster: demo
epoch: 0
members:
  - name: demo-0
    url: http://127.0.0.1:7101
quorums: {preset: paxos}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(CONFIG)
    return path


# -- running a node --------------------------------------------------------------------------


@dataclass
class Node:
    proc: asyncio.subprocess.Process
    url: str


async def start_node(config: Path, data_dir: Path, log: Path, lying: bool = False) -> Node:
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *(LYING_NODE_CMD if lying else NODE_CMD),
            *("--id", "demo-0", "--listen", "127.0.0.1:0"),
            *("--data-dir", str(data_dir), "--config", str(config)),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
    match = LISTENING.fullmatch(line.decode().strip())
    if match is None:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"node did not start: {line!r}; stderr: {log.read_text()}")
    return Node(proc, match.group(1))


async def kill(node: Node) -> None:
    if node.proc.returncode is None:
        node.proc.send_signal(signal.SIGKILL)
    await asyncio.wait_for(node.proc.wait(), 30)


# -- what clients were told ------------------------------------------------------------------


@dataclass
class Ledger:
    attempted: dict[tuple[str, int], str] = field(default_factory=dict)  # each (key, rs) once
    acked: dict[tuple[str, int], str] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)  # acknowledged fence per key
    global_fence: int = 0
    acks: int = 0


class Client:
    """One client task's workload: writes (fresh keys and new sets of its own keys), key fences
    and global fences. Only this client writes its keys, so every (key, rs) gets one value."""

    def __init__(self, name: str, ledger: Ledger, rng: random.Random) -> None:
        self.name = name
        self.ledger = ledger
        self.rng = rng
        self.keys: dict[str, set[int]] = {}
        self.serial = 0

    def _write_item(self) -> dict[str, Any]:
        rng = self.rng
        if self.keys and rng.random() < 0.3:
            key = rng.choice(sorted(self.keys))
        else:
            self.serial += 1
            key = f"{self.name}-{self.serial}"
        used = self.keys.setdefault(key, set())
        rs = rng.choice([r for r in range(64) if r not in used] or [64 + len(used)])
        used.add(rs)
        value = f"{key}@{rs}:{rng.getrandbits(64):016x}"
        self.ledger.attempted[(key, rs)] = value  # before sending: it may land unacknowledged
        return {"key": key, "rs": rs, "value": value}

    async def step(self, session: aiohttp.ClientSession, url: str, round_no: int) -> None:
        rng, ledger = self.rng, self.ledger
        choice = rng.random()
        if choice < 0.65 or not self.keys:
            items = [self._write_item() for _ in range(rng.randint(1, 3))]
            out = await _post(session, f"{url}/v1/registers/write", {"writes": items})
            for item, reply in zip(items, out["replies"], strict=True):
                if reply["ok"]:
                    assert reply["values"][str(item["rs"])] == item["value"]
                    ledger.acked[(item["key"], item["rs"])] = item["value"]
        elif choice < 0.9:
            keys = rng.sample(sorted(self.keys), min(3, len(self.keys)))
            out = await _post(
                session, f"{url}/v1/registers/read", {"rs": rng.randrange(96), "keys": keys}
            )
            for key, reply in zip(keys, out["replies"], strict=True):
                ledger.fences[key] = max(ledger.fences.get(key, 0), reply["fence"])
        else:
            rs = rng.randrange(4 * round_no + 4)  # rises slowly so most writes still land
            out = await _post(session, f"{url}/v1/registers/fence", {"rs": rs})
            ledger.global_fence = max(ledger.global_fence, out["fence"])
        ledger.acks += 1


async def _post(session: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def run_until_killed(
    node: Node, clients: list[Client], ledger: Ledger, kill_after: int, round_no: int
) -> None:
    enough = asyncio.Event()

    async def drive(session: aiohttp.ClientSession, client: Client) -> None:
        for _ in range(MAX_OPS_PER_CLIENT):
            try:
                await client.step(session, node.url, round_no)
            except (TimeoutError, aiohttp.ClientError):
                return  # the node died under us: this request may or may not have landed
            if ledger.acks >= kill_after:
                enough.set()

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(drive(session, c)) for c in clients]
        waiter = asyncio.create_task(enough.wait())
        await asyncio.wait([waiter, *tasks], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        await kill(node)  # SIGKILL at once, requests in flight
        waiter.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def observe(node: Node, ledger: Ledger) -> tuple[dict[str, Any], int]:
    """What the node now reports for every key the clients ever touched (reads at rs 0 change
    nothing), plus its global fence."""
    keys = sorted({key for key, _ in ledger.attempted} | set(ledger.fences))
    state: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            out = await _post(session, f"{node.url}/v1/registers/read", {"rs": 0, "keys": chunk})
            state.update(zip(chunk, out["replies"], strict=True))
        async with session.get(f"{node.url}/v1/registers/keys", params={"limit": "1"}) as resp:
            global_fence = (await resp.json())["globalFence"]
    return state, global_fence


def problems(ledger: Ledger, state: dict[str, Any], global_fence: int) -> list[str]:
    found = []
    for (key, rs), value in ledger.acked.items():
        if state[key]["values"].get(str(rs)) != value:
            found.append(f"lost acknowledged write {key}@{rs}")
    for key, reply in state.items():
        for rs, value in reply["values"].items():
            attempted = ledger.attempted.get((key, int(rs)))
            if attempted is None:
                found.append(f"register {key}@{rs} that nobody wrote")
            elif attempted != value:
                found.append(f"register {key}@{rs} holds {value!r}, written was {attempted!r}")
    for key, fence in ledger.fences.items():
        if state[key]["fence"] < fence:
            found.append(f"forgotten fence {key}: {state[key]['fence']} < {fence}")
    if global_fence < ledger.global_fence:
        found.append(f"forgotten global fence: {global_fence} < {ledger.global_fence}")
    return found


async def crash_rounds(
    tmp: Path, config: Path, rounds: int, seed: int, lying: bool = False
) -> tuple[Ledger, list[list[str]]]:
    rng = random.Random(seed)
    ledger = Ledger()
    clients = [Client(f"c{i}", ledger, random.Random(rng.getrandbits(32))) for i in range(CLIENTS)]
    data_dir, log = tmp / "data", tmp / "node.log"
    node = await start_node(config, data_dir, log, lying)
    per_round: list[list[str]] = []
    try:
        for round_no in range(rounds):
            kill_after = ledger.acks + rng.randrange(10, 400)
            await run_until_killed(node, clients, ledger, kill_after, round_no)
            node = await start_node(config, data_dir, log, lying)
            state, global_fence = await observe(node, ledger)
            per_round.append(problems(ledger, state, global_fence))
    finally:
        await kill(node)
    return ledger, per_round


async def test_sigkill_loses_nothing_acknowledged(tmp_path: Path, config_file: Path) -> None:
    ledger, per_round = await crash_rounds(tmp_path, config_file, ROUNDS, SEED)
    assert per_round == [[]] * ROUNDS, [p[:5] for p in per_round]
    # the workload really did something worth checking
    assert len(ledger.acked) > 50 and ledger.fences and ledger.global_fence > 0


async def test_the_check_catches_a_store_that_acknowledges_early(
    tmp_path: Path, config_file: Path
) -> None:
    # The lying store acknowledges at submit and writes 0.2 s later, and the kill comes right
    # after an acknowledgement, so the latest acknowledged changes are never on disk.
    _, per_round = await crash_rounds(tmp_path, config_file, 2, SEED, lying=True)
    assert all(any(p.startswith("lost acknowledged write") for p in found) for found in per_round)


# -- process contract --------------------------------------------------------------------------


async def test_sigterm_finishes_and_exits_0(tmp_path: Path, config_file: Path) -> None:
    data_dir = tmp_path / "data"
    node = await start_node(config_file, data_dir, tmp_path / "node.log")
    try:
        async with aiohttp.ClientSession() as session:
            body = {"writes": [{"key": "k", "rs": 1, "value": "kept"}]}
            assert (await _post(session, f"{node.url}/v1/registers/write", body))["replies"][0][
                "ok"
            ]
            async with session.get(f"{node.url}/readyz") as resp:
                assert resp.status == 200
        node.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(node.proc.wait(), 30) == 0
    finally:
        await kill(node)
    store = RegisterStore.open(data_dir, cluster="demo", node="demo-0")  # lock released
    try:
        assert store.get("k").values == {1: "kept"}
    finally:
        store.close()


def _run_node(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NODE_CMD, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _args(config: Path, data_dir: Path, node_id: str = "demo-0", listen: str = "127.0.0.1:0"):
    return [
        "--id",
        node_id,
        "--listen",
        listen,
        "--data-dir",
        str(data_dir),
        "--config",
        str(config),
    ]


def _assert_refused(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("graven node: error: ")
    assert expected in lines[0], lines[0]
    assert "listening" not in result.stdout


def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG + "replicas: 3\n")
    _assert_refused(_run_node(_args(config, tmp_path / "d")), "unknown field(s) replicas")
    config.write_text("members: [\n")
    _assert_refused(_run_node(_args(config, tmp_path / "d")), "not valid YAML")
    _assert_refused(_run_node(_args(tmp_path / "missing.yaml", tmp_path / "d")), "cannot read")


def test_unknown_member_and_bad_listen_exit_2(tmp_path: Path, config_file: Path) -> None:
    result = _run_node(_args(config_file, tmp_path / "d", node_id="demo-9"))
    _assert_refused(result, "'demo-9' is not a member of cluster demo")
    result = _run_node(_args(config_file, tmp_path / "d", listen="7101"))
    _assert_refused(result, "--listen must be HOST:PORT")


def test_locked_data_dir_exits_2(tmp_path: Path, config_file: Path) -> None:
    store = RegisterStore.open(tmp_path / "d", cluster="demo", node="demo-0")
    try:
        result = _run_node(_args(config_file, tmp_path / "d"))
    finally:
        store.close()
    _assert_refused(result, f"is in use by another graven node (pid {os.getpid()})")


def test_damaged_store_exits_2(tmp_path: Path, config_file: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / DB_NAME).write_bytes(b"not a database at all" * 500)
    _assert_refused(_run_node(_args(config_file, tmp_path / "d")), "not a readable graven")


def test_port_in_use_exits_2(tmp_path: Path, config_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_node(_args(config_file, tmp_path / "d", listen=f"127.0.0.1:{port}"))
    _assert_refused(result, f"cannot listen on 127.0.0.1:{port}")
    # the store was opened and must have been closed again: the directory is free
    RegisterStore.open(tmp_path / "d", cluster="demo", node="demo-0").close()
