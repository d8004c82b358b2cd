"""The client library and `graven propose/get/status/bench`, as a user runs them.

Three levels: pure helpers (endpoint order, reply decoding, metric parsing); the clients'
failover against small real HTTP servers on 127.0.0.1 whose answers the test controls; and the
commands against a real local cluster started with `graven up`.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from graven.node import cli
from graven.node.client.aio import AsyncClient
from graven.node.client.core import ClientError, Router, UnavailableError, decode, parse_endpoint
from graven.node.client.loadgen import percentile
from graven.node.client.probe import decisions_from_metrics
from graven.node.client.sync import Client
from graven.node.cluster.describe import describe_layout, ms, table
from tests.support import up as localup
from tests.support.up import EXAMPLE, Up, free_base_port, graven, start_up

# -- pure helpers -------------------------------------------------------------------------------


def test_endpoints_are_normalised_and_validated() -> None:
    assert parse_endpoint("HTTP://LocalHost:7100/").url == "http://localhost:7100"
    assert parse_endpoint("http://127.0.0.1").port == 80
    for bad in ("127.0.0.1:7100", "ftp://h:1", "http://h:1/v1", "http://h:99999", "http://"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def _cluster_doc(urls: list[str], layout: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "cluster": "demo",
        "epoch": 0,
        "members": [{"name": f"demo-{i}", "url": u} for i, u in enumerate(urls)],
        "layout": layout or {"preset": "paxos"},
    }


def test_router_sends_a_key_to_its_home_member_first() -> None:
    urls = [f"http://127.0.0.1:{7100 + i}" for i in range(3)]
    router = Router(list(reversed(urls)))  # endpoint order differs from member order
    router.learn(_cluster_doc(urls))
    for i in range(50):
        key = f"key-{i}"
        home_member = zlib.crc32(key.encode()) % 3
        first = router.endpoints[router.order(key)[0]].url
        assert first == urls[home_member], key
        assert sorted(router.order(key)) == [0, 1, 2]


def test_router_sends_fast_keys_to_their_recovery_member_and_demotes_dead_endpoints() -> None:
    now = [0.0]
    urls = [f"http://127.0.0.1:{7100 + i}" for i in range(3)]
    router = Router(urls, clock=lambda: now[0])
    router.learn(_cluster_doc(urls, {"preset": "fast"}))  # first set is open to everyone
    # set 1, the first a single member owns, belongs to member crc32(key) % 3: racers that
    # lose the fast set meet there instead of duelling from different members
    for i in range(60):
        assert router.order(f"k{i}")[0] == zlib.crc32(f"k{i}".encode()) % 3
    router.mark_down(0)
    assert router.order(None) == [1, 2, 0]
    now[0] += 60.0  # the penalty expires: the endpoint is tried first again
    assert router.order(None) == [0, 1, 2]
    assert router.order(None, via=urls[2])[0] == 2


def test_router_ignores_members_it_has_no_endpoint_for() -> None:
    router = Router(["http://127.0.0.1:9000"])
    router.learn(_cluster_doc(["http://demo-0.peers:7100", "http://demo-1.peers:7100"]))
    assert all(router.home_of(f"k{i}") is None for i in range(10))
    assert router.order("k1") == [0]


def test_error_replies_carry_the_server_code_and_message() -> None:
    body = json.dumps({"error": {"code": "invalid_request", "message": "key: too long"}})
    with pytest.raises(ClientError) as info:
        decode(422, body.encode(), "http://h:1")
    assert (info.value.status, info.value.code, info.value.message) == (
        422,
        "invalid_request",
        "key: too long",
    )
    with pytest.raises(ClientError) as info:
        decode(502, b"<html>bad gateway</html>", "http://h:1")
    assert info.value.code == "http_502" and "http://h:1" in info.value.message
    assert decode(200, b'{"a": 1}', "x") == {"a": 1}


def test_metrics_parsing_counts_decisions_but_not_reads() -> None:
    text = "\n".join(
        [
            "# TYPE graven_decisions_total counter",
            'graven_decisions_total{path="fast"} 3.0',
            'graven_decisions_total{path="classic"} 4.0',
            'graven_decisions_total{path="read"} 100.0',
            "graven_decisions_created 1.7e9",
            "graven_decisions_total_other 9",
        ]
    )
    assert decisions_from_metrics(text) == 7
    assert decisions_from_metrics("graven_stored_keys 4\n") is None


def test_text_helpers() -> None:
    assert table(("A", "LONGER"), [("xx", None), ("y", 1)]).splitlines() == [
        "A   LONGER",
        "xx  -",
        "y   1",
    ]
    assert (ms(0.00042), ms(0.0123), ms(1.5)) == ("0.42 ms", "12.3 ms", "1.50 s")
    assert describe_layout({"preset": "fast", "fastQuorum": 3}) == "fast (fastQuorum=3)"
    assert describe_layout({"segments": [{}, {}]}) == "explicit (2 segments)"
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([], 99) == 0.0


# -- failover against controllable servers -----------------------------------------------------


class FakeNode(http.server.ThreadingHTTPServer):
    """A member stand-in sharing ``decided`` with its peers; ``mode`` scripts its answers."""

    daemon_threads = True

    def __init__(self, decided: dict[str, str], members: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.decided = decided
        self.members = members
        self.mode = "ok"  # ok | unavailable | bad_request | drop (close after each reply)
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real node
    server: FakeNode

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.server.mode == "drop":
            self.close_connection = True  # closed without saying so: a stale keep-alive

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})

    def _decision_key(self) -> str | None:
        self.server.paths.append(self.path)
        if self.server.mode == "unavailable":
            self._error(503, "quorum_unreachable", "cannot reach demo-1, demo-2")
            return None
        if self.server.mode == "bad_request":
            self._error(422, "invalid_request", "value: too large")
            return None
        if not self.path.startswith("/v1/decisions/"):
            self._error(404, "not_found", f"no route for {self.path}")
            return None
        return unquote(self.path[len("/v1/decisions/") :].split("?")[0])

    def do_GET(self) -> None:
        if self.path == "/v1/cluster":
            urls = self.server.members
            self._send(200, {**_cluster_doc(urls), "node": "fake"})
            return
        key = self._decision_key()
        if key is None:
            return
        if key in self.server.decided:
            self._send(200, {"key": key, "value": self.server.decided[key]})
        else:
            self._error(404, "not_decided", f"nothing is decided for key {key!r}")

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = self._decision_key()
        if key is None:
            return
        value = json.loads(body)["value"]
        decided = self.server.decided.setdefault(key, value)
        self._send(200, {"key": key, "value": decided, "won": decided == value})


@pytest.fixture
def fake_nodes() -> Iterator[list[FakeNode]]:
    decided: dict[str, str] = {}
    members: list[str] = []
    nodes = [FakeNode(decided, members) for _ in range(3)]
    members.extend(n.url for n in nodes)
    threads = [threading.Thread(target=n.serve_forever, daemon=True) for n in nodes]
    for t in threads:
        t.start()
    yield nodes
    for n in nodes:
        n.shutdown()
        n.server_close()


def dead_url() -> str:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_sync_client_fails_over_from_a_dead_endpoint(fake_nodes: list[FakeNode]) -> None:
    node = fake_nodes[0]
    with Client([dead_url(), node.url], route=False) as client:
        decision = client.propose("k", "v1")
        assert (decision.key, decision.value, decision.won) == ("k", "v1", True)
        assert client.propose("k", "v2").won is False
        assert client.get("k") == "v1"
        assert client.get("absent") is None
    assert len(node.paths) == 4


def test_sync_client_moves_on_after_503_and_raises_on_4xx(fake_nodes: list[FakeNode]) -> None:
    a, b, _ = fake_nodes
    a.mode = "unavailable"
    with Client([a.url, b.url], route=False) as client:
        assert client.propose("k", "v").value == "v"
        assert len(a.paths) == 1 and len(b.paths) == 1
        b.mode = "bad_request"
        with pytest.raises(ClientError) as info:
            client.propose("k2", "v")
        assert (info.value.status, info.value.code) == (422, "invalid_request")
        assert "value: too large" in str(info.value)
        b.mode = "unavailable"
        with pytest.raises(UnavailableError) as unavailable:
            client.get("k")
        assert unavailable.value.message.count("quorum_unreachable") == 2


def test_sync_client_routes_keys_home_and_quotes_them(fake_nodes: list[FakeNode]) -> None:
    with Client([n.url for n in fake_nodes]) as client:
        keys = [f"key/{i} ü?#" for i in range(30)]
        for key in keys:
            assert client.propose(key, "v").key == key
    for i, node in enumerate(fake_nodes):
        routed = [unquote(p[len("/v1/decisions/") :]) for p in node.paths]
        assert all(zlib.crc32(k.encode()) % 3 == i for k in routed), routed
        assert all("/" not in p[len("/v1/decisions/") :] for p in node.paths)
    assert sum(len(n.paths) for n in fake_nodes) == 30


def test_sync_client_reconnects_when_a_kept_alive_connection_was_closed(
    fake_nodes: list[FakeNode],
) -> None:
    node = fake_nodes[0]
    node.mode = "drop"
    with Client([node.url], route=False) as client:
        for i in range(3):
            assert client.propose(f"k{i}", "v").won
    assert len(node.paths) == 3


def test_client_rejects_an_empty_key_without_a_request(fake_nodes: list[FakeNode]) -> None:
    with Client([fake_nodes[0].url]) as client, pytest.raises(ClientError) as info:
        client.propose("", "v")
    assert info.value.status == 400
    assert fake_nodes[0].paths == []


async def test_async_client_fails_over_and_routes(fake_nodes: list[FakeNode]) -> None:
    a, b, c = fake_nodes
    async with AsyncClient([dead_url(), a.url, b.url, c.url]) as client:
        decision = await client.propose("x/y", "v")
        assert (decision.value, decision.won) == ("v", True)
        assert await client.get("x/y") == "v"
        assert await client.get("nothing") is None
        home = fake_nodes[zlib.crc32(b"x/y") % 3]
        assert home.paths[0] == "/v1/decisions/x%2Fy"
        b.mode = "bad_request"
        a.mode = c.mode = "unavailable"
        with pytest.raises(ClientError) as info:
            await client.propose("z", "v", via=b.url)
        assert info.value.code == "invalid_request"


# -- the commands against a real local cluster --------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    cwd = tmp_path_factory.mktemp("client")
    up = start_up(cwd, str(EXAMPLE), "--base-port", str(free_base_port(3)))
    try:
        up.wait_ready()
        yield up
    finally:
        up.kill_everything()


def run(up: Up, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = graven(*args, cwd=up.cwd, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_propose_then_get(cluster: Up) -> None:
    first = run(cluster, "propose", "greeting", "hello world")
    assert first.returncode == 0, first.stderr
    assert "greeting = hello world" in first.stdout and "won" in first.stdout
    second = run(cluster, "propose", "greeting", "bonjour", "--json")
    assert second.returncode == 0
    assert json.loads(second.stdout) == {"key": "greeting", "value": "hello world", "won": False}
    got = run(cluster, "get", "greeting")
    assert (got.returncode, got.stdout) == (0, "hello world\n")
    got = run(cluster, "get", "greeting", "--json")
    assert json.loads(got.stdout) == {"key": "greeting", "value": "hello world"}


def test_get_of_an_undecided_key_exits_3(cluster: Up) -> None:
    result = run(cluster, "get", "never-proposed")
    assert result.returncode == 3 and result.stdout == ""
    assert "nothing decided for never-proposed" in one_line(result.stderr)
    result = run(cluster, "get", "never-proposed", "--json", "--wait", "0.3")
    assert result.returncode == 3
    assert json.loads(result.stdout) == {"key": "never-proposed", "value": None}


def test_get_wait_returns_once_someone_decides(cluster: Up) -> None:
    waiter = subprocess.Popen(
        [*localup.graven_argv(), "get", "late-key", "--wait", "20"],
        cwd=cluster.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run(cluster, "propose", "late-key", "finally").returncode == 0
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert (waiter.returncode, out) == (0, "finally\n"), err


def test_keys_with_slashes_and_unicode_round_trip(cluster: Up) -> None:
    key = "tenants/ü 1/leader?#%2F"
    assert run(cluster, "propose", key, "n-1").returncode == 0
    got = run(cluster, "get", key, "--json")
    assert json.loads(got.stdout) == {"key": key, "value": "n-1"}


def test_bad_input_is_one_line_and_exit_2(cluster: Up) -> None:
    result = run(cluster, "propose", "", "v")
    assert result.returncode == 2 and "non-empty" in one_line(result.stderr)
    result = run(cluster, "propose", "k" * 600, "v")
    assert result.returncode == 2 and "512" in one_line(result.stderr)
    result = run(cluster, "get", "k", "--endpoint", "localhost:1")
    assert result.returncode == 2 and "--endpoint" in one_line(result.stderr)


def test_endpoint_mode_with_a_dead_first_endpoint(cluster: Up) -> None:
    urls = [m["url"] for m in cluster.discovery()["members"]]
    tls = cluster.data_dir / "tls"
    args = ["--endpoint", dead_url(), "--endpoint", urls[1], "--data-dir", "/nonexistent"]
    # no discovery file to take credentials from: the members' certificates are not trusted
    refused = run(cluster, "propose", "via-endpoint", "no", *args)
    assert refused.returncode == 1 and "certificate verify failed" in refused.stderr
    args += ["--ca", str(tls / "ca.crt")]  # trusted now, but who is asking? (401, exit 2)
    refused = run(cluster, "propose", "via-endpoint", "no", *args)
    assert refused.returncode == 2 and "unauthenticated" in refused.stderr, refused.stderr
    args += ["--token-file", str(tls / "admin.token")]
    assert run(cluster, "propose", "via-endpoint", "yes", *args).returncode == 0
    got = run(cluster, "get", "via-endpoint", *args)
    assert (got.returncode, got.stdout) == (0, "yes\n")


def test_status_human_and_json(cluster: Up) -> None:
    human = run(cluster, "status")
    assert human.returncode == 0, human.stderr
    assert "cluster demo  epoch 0  layout paxos  members 3 (3 up)" in human.stdout
    for member in cluster.discovery()["members"]:
        line = next(ln for ln in human.stdout.splitlines() if ln.startswith(member["name"]))
        assert member["url"] in line and " up " in line and " ms" in line
    doc = json.loads(run(cluster, "status", "--json").stdout)
    assert (doc["cluster"], doc["epoch"], doc["layout"]) == ("demo", 0, {"preset": "paxos"})
    assert doc["members_up"] == 3
    assert all(m["state"] == "up" and m["latency_ms"] > 0 for m in doc["members"])
    assert isinstance(doc["decisions"], int) and doc["decisions"] >= 1


def test_client_library_sends_each_key_to_its_home_member(cluster: Up) -> None:
    urls = [m["url"] for m in cluster.discovery()["members"]]

    def made() -> list[int]:
        doc = json.loads(run(cluster, "status", "--json").stdout)
        return [m["decisions"] for m in doc["members"]]

    before = made()
    keys = [f"routed-{i}" for i in range(12)]
    with Client([dead_url(), *urls], credentials=cluster.credentials()) as client:
        for key in keys:
            assert client.propose(key, "v").won
    expected = [sum(zlib.crc32(k.encode()) % 3 == i for k in keys) for i in range(3)]
    assert [a - b for a, b in zip(made(), before, strict=True)] == expected


def test_no_cluster_running_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = graven("propose", "k", "v", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "no local cluster is running in .graven" in one_line(result.stderr)


@pytest.mark.parametrize(
    "args", [["get", "k"], ["status"], ["bench", "--seconds", "1"], ["get", "k", "--json"]]
)
def test_every_client_command_says_when_no_cluster_runs(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no local cluster is running in .graven" in one_line(err)


def test_status_of_unreachable_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    url = dead_url()
    assert cli.main(["status", "--endpoint", url]) == 1
    out = capsys.readouterr().out
    assert "cluster unreachable" in out and f"{url}: connection refused" in out
    assert cli.main(["status", "--endpoint", url, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["members_up"] == 0 and doc["members"][0]["state"] == "down"


def bench(up: Up, *args: str) -> dict[str, Any]:
    result = run(up, "bench", "--seconds", "2", "--json", *args, timeout=90)
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_bench_unique_keys(cluster: Up) -> None:
    doc = bench(cluster, "--concurrency", "8")
    assert doc["ops"] > 0 and doc["errors"] == 0 and doc["disagreements"] == 0
    assert doc["concurrency"] == 8 and 1.9 <= doc["seconds"] <= 10
    assert 0 < doc["p50_ms"] <= doc["p99_ms"] <= doc["max_ms"]
    assert doc["ops_per_s"] == pytest.approx(doc["ops"] / doc["seconds"], rel=0.01)


def test_bench_racers_agree(cluster: Up) -> None:
    doc = bench(cluster, "--concurrency", "4", "--racers", "4")
    assert doc["ops"] > 0 and doc["errors"] == 0
    assert doc["disagreements"] == 0 and doc["won_anomalies"] == 0
    doc = bench(cluster, "--concurrency", "4", "--racers", "3", "--keys", "5", "--seconds", "1")
    assert doc["ops"] > 0 and doc["disagreements"] == 0


def test_bench_reads_and_human_output(cluster: Up) -> None:
    doc = bench(cluster, "--reads", "--keys", "50", "--concurrency", "8", "--seconds", "1")
    assert doc["mode"] == "reads" and doc["ops"] > 0
    assert doc["errors"] == 0 and doc["disagreements"] == 0
    human = run(cluster, "bench", "--seconds", "1", "--concurrency", "2", "--keys", "3")
    assert human.returncode == 0, human.stderr
    assert "decisions" in human.stdout and "/s" in human.stdout and "p99" in human.stdout
    assert cli.main(["bench", "--reads", "--racers", "2"]) == 2
