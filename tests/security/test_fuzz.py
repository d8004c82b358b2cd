"""Property-based fuzzing of both APIs of a real TLS member, as every kind of caller.

Requests are drawn from the paths of docs/openapi.yaml (keys and bodies random, plus unknown
paths and methods), sent as: nobody, a bogus token, read/write tokens, a write-role client
certificate, a certificate naming a member that does not exist, and the member itself.
Properties: never a 5xx; a refused request (401/403) changes no register.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graven.node.local.security import HOSTS
from graven.node.security import pki, tokens
from graven.node.security.identity import READ, WRITE
from tests.support.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
OPENAPI_PATHS = list(yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())["paths"])
CALLERS = ["nobody", "bogus-token", "read-token", "write-token", "write-cert", "stranger-cert"]


class Member:
    """One TLS member and a keep-alive connection per kind of caller."""

    def __init__(self, cluster: LocalCluster, creds: dict[str, tuple]) -> None:
        self.host, port = cluster.url(0).removeprefix("https://").rsplit(":", 1)
        self.port = int(port)
        self.creds = creds  # caller -> (ssl context, headers)
        self.conns: dict[str, http.client.HTTPSConnection] = {}

    def request(self, caller: str, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        ctx, headers = self.creds[caller]
        for attempt in range(2):
            conn = self.conns.get(caller)
            if conn is None:
                conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=10)
                self.conns[caller] = conn
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    conn.close()
                    del self.conns[caller]
                return resp.status, data
            except (http.client.HTTPException, ConnectionError, ssl.SSLError):
                conn.close()
                self.conns.pop(caller, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def state(self) -> bytes:
        """Every register of every key, as the member sees it."""
        status, body = self.request("member", "GET", "/v1/registers/keys?limit=1000", None)
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Member]:
    root = tmp_path_factory.mktemp("fuzz")
    cluster = LocalCluster(root / "c", 1, tls=True)
    tls = root / "c" / "tls"
    ca = pki.Issued((tls / "ca.key").read_bytes(), (tls / "ca.crt").read_bytes())
    by_role = {READ: tokens.new_token(), WRITE: tokens.new_token()}
    entries = list(tokens.load(tls / "tokens.yaml").values())
    entries += [tokens.TokenEntry(f"t-{r}", r, tokens.digest(t)) for r, t in by_role.items()]
    (tls / "tokens.yaml").write_text(tokens.dump(entries))

    def ctx(cert: pki.Issued | None = None, name: str = "") -> ssl.SSLContext:
        c = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        if cert is not None:
            (root / f"{name}.crt").write_bytes(cert.cert_pem)
            (root / f"{name}.key").write_bytes(cert.key_pem)
            c.load_cert_chain(root / f"{name}.crt", root / f"{name}.key")
        return c

    plain = ctx()
    creds = {
        "nobody": (plain, {}),
        "bogus-token": (plain, {"Authorization": "Bearer gvn_bogus"}),
        "read-token": (plain, {"Authorization": f"Bearer {by_role[READ]}"}),
        "write-token": (plain, {"Authorization": f"Bearer {by_role[WRITE]}"}),
        "write-cert": (ctx(pki.issue_client(ca, "demo", WRITE, "eve"), "eve"), {}),
        "stranger-cert": (ctx(pki.issue_member(ca, "demo", "demo-9", HOSTS), "demo-9"), {}),
        "member": (_member_ctx(tls), {}),
    }
    cluster.start(60.0)  # generous: a loaded box starts Python slowly
    try:
        m = Member(cluster, creds)
        yield m
        for conn in m.conns.values():
            conn.close()
    finally:
        cluster.close()


def _member_ctx(tls: Path) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    c.load_cert_chain(tls / "demo-0.crt", tls / "demo-0.key")
    return c


keys = st.text(min_size=0, max_size=40) | st.sampled_from(["k", "a/b", "ü", "%2F", " "])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
register_items = st.fixed_dictionaries(
    {"key": keys, "rs": st.integers(-5, 2**63) | st.just(5), "value": st.text(max_size=10)}
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda k: json.dumps({"value": k}).encode(), keys),
    st.builds(lambda w: json.dumps({"writes": w}).encode(), st.lists(register_items, max_size=4)),
    st.builds(
        lambda r: json.dumps({"reads": r}).encode(),
        st.lists(st.fixed_dictionaries({"key": keys, "rs": st.integers(-5, 2**40)}), max_size=4),
    ),
    st.builds(lambda rs: json.dumps({"rs": rs}).encode(), st.integers(-5, 2**63)),
)


def _path(template: str, key: str, query: str) -> str:
    path = template.replace("{key}", quote(key.encode(), safe="") or "k")
    return path + query


requests_ = st.tuples(
    st.sampled_from([*CALLERS, "member"]),
    st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH"]),
    st.sampled_from([*OPENAPI_PATHS, "/v1/nope", "/v1/registers/../cluster", "/"]),
    keys,
    st.sampled_from(["", "?wait=0.01", "?wait=-1", "?limit=x", "?below=5", "?x=1"]),
    bodies,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(req=requests_)
def test_no_5xx_and_refusals_change_nothing(member: Member, req: tuple) -> None:
    caller, method, template, key, query, body = req
    before = member.state()
    status, reply = member.request(caller, method, _path(template, key, query), body)
    assert status < 500, (status, reply[:300])
    if status in (401, 403):
        assert member.state() == before, f"a refused {method} {template} changed registers"
        assert json.loads(reply)["error"]["code"] in ("unauthenticated", "forbidden")
    if caller in ("nobody", "bogus-token") and template not in ("/healthz", "/readyz"):
        assert status == 401, (caller, method, template, status)
    if caller == "stranger-cert" and template.startswith("/v1/registers/"):
        assert status in (401, 403)
