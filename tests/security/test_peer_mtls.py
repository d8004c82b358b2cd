"""The peer register API accepts only members of this cluster, authenticated by certificate.

Each stranger tries to write a client-restricted register set (the kind whose single owner
safety rests on) and must get 401/403 or a refused handshake, with the register unwritten.
Each check is also run against a planted weakness, to show it would catch one.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from graven.node.acceptor import routes as acceptor_routes
from graven.node.security import access, tls
from tests.security.support import Pki, call, config, make_pki, secure_node

MEMBERS = ["demo-0", "demo-1", "demo-2"]
WRITE = json.dumps({"writes": [{"key": "k", "rs": 5, "value": "stranger"}]}).encode()
READ = json.dumps({"reads": [{"key": "k", "rs": 6}]}).encode()

# who presents what; every one of them must be kept out
STRANGERS = {
    "no certificate": None,
    "client certificate (write role)": "client-write",
    "member name not in the cluster": "not-a-member",
    "member of another cluster, same CA": "other-cluster",
    "member certificate from another CA": "wrong-ca",
    "expired member certificate": "expired",
}


@pytest.fixture
def keys(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", MEMBERS)


async def stranger_wrote(url: str, keys: Pki, who: str | None) -> tuple[bool, object]:
    """Try the write as ``who``; then read the register as a member: did it land?"""
    outcome = await call(url, "POST", "/v1/registers/write", keys.context(who), WRITE)
    status, body = await call(url, "POST", "/v1/registers/read", keys.context("demo-1"), READ)
    assert status == 200, body
    reply = json.loads(body)["replies"][0]
    written = "stranger" in json.dumps(reply)
    return written, outcome


@pytest.mark.parametrize("who", list(STRANGERS))
async def test_stranger_cannot_write_a_register(tmp_path: Path, keys: Pki, who: str) -> None:
    cfg = config(3)
    async with secure_node(tmp_path, cfg, keys, gateway=False) as url:
        written, outcome = await stranger_wrote(url, keys, STRANGERS[who])
    assert not written
    if isinstance(outcome, tuple):
        assert outcome[0] in (401, 403), outcome
        assert json.loads(outcome[1])["error"]["code"] in ("unauthenticated", "forbidden")
    else:
        assert outcome.startswith("refused"), outcome  # the TLS handshake failed


async def test_member_can_write_and_fence(tmp_path: Path, keys: Pki) -> None:
    cfg = config(3)
    async with secure_node(tmp_path, cfg, keys, gateway=False) as url:
        ctx = keys.context("demo-1")
        status, _ = await call(url, "POST", "/v1/registers/write", ctx, WRITE)
        assert status == 200
        status, body = await call(url, "POST", "/v1/registers/read", ctx, READ)
        assert "stranger" in body.decode()
        status, _ = await call(url, "POST", "/v1/registers/fence", ctx, b'{"rs": 3}')
        assert status == 200
        # a write-role client may not fence or list keys
        eve = keys.context("client-write")
        status, _ = await call(url, "POST", "/v1/registers/fence", eve, b'{"rs": 9}')
        assert status == 403
        status, _ = await call(url, "GET", "/v1/registers/keys", eve)
        assert status == 403


async def test_write_client_may_write_only_fast_sets(tmp_path: Path, keys: Pki) -> None:
    """The smart client's fast path: quorum-intersecting sets yes, owned sets no."""
    cfg = config(3, {"preset": "fast"})
    fast_set = cfg.layout.fast_sets()[0].start
    owned = cfg.layout.segments[-1].start
    eve = keys.context("client-write")
    async with secure_node(tmp_path, cfg, keys, gateway=False) as url:
        body = json.dumps({"writes": [{"key": "f", "rs": fast_set, "value": "v"}]}).encode()
        assert (await call(url, "POST", "/v1/registers/write", eve, body))[0] == 200
        body = json.dumps(
            {
                "writes": [
                    {"key": "g", "rs": fast_set, "value": "v"},
                    {"key": "g", "rs": owned, "value": "v"},
                ]
            }
        ).encode()
        status, reply = await call(url, "POST", "/v1/registers/write", eve, body)
        assert status == 403, reply
        read = json.dumps({"reads": [{"key": "g", "rs": owned + 1}]}).encode()
        _, state = await call(url, "POST", "/v1/registers/read", keys.context("demo-1"), read)
        assert '"v"' not in state.decode()  # not even the allowed half of a refused request


FENCE = ("POST", "/v1/registers/fence", b'{"rs": 9}')
KEYS = ("GET", "/v1/registers/keys", None)


async def _admin_calls(url: str, keys: Pki) -> dict[str, list[int | str]]:
    """Status of fence, key listing, register write and read for each kind of caller."""
    callers: dict[str, tuple[str | None, str | None]] = {
        "admin certificate": ("client-admin", None),
        "admin token": (None, keys.tokens["admin"]),
        "write token": (None, keys.tokens["write"]),
        "read token": (None, keys.tokens["read"]),
        "write certificate": ("client-write", None),
        "non-member certificate": ("not-a-member", None),
    }
    seen: dict[str, list[int | str]] = {}
    for who, (cert, token) in callers.items():
        ctx = keys.context(cert)
        row: list[int | str] = []
        for method, path, body in (FENCE, KEYS, ("POST", "/v1/registers/write", WRITE)):
            outcome = await call(url, method, path, ctx, body, token=token)
            row.append(outcome[0] if isinstance(outcome, tuple) else outcome)
        seen[who] = row
    return seen


# fence, keys, write: the orchestrator (admin) fences and lists, nothing more
EXPECTED_ADMIN = {
    "admin certificate": [200, 200, 403],
    "admin token": [200, 200, 403],
    "write token": [403, 403, 403],  # a write token may write only fast sets: rs 5 is owned
    "read token": [403, 403, 403],
    "write certificate": [403, 403, 403],
    "non-member certificate": [403, 403, 403],
}


async def test_admin_may_fence_and_list_keys_only(tmp_path: Path, keys: Pki) -> None:
    async with secure_node(tmp_path, config(3), keys, gateway=False) as url:
        seen = await _admin_calls(url, keys)
        status, body = await call(url, "POST", "/v1/registers/read", keys.context("demo-1"), READ)
    assert seen == EXPECTED_ADMIN
    assert status == 200 and "stranger" not in body.decode()  # no refused write landed


def _any_role_fences(keys: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    real = access.decide

    def planted(request, policy, ident):  # type: ignore[no-untyped-def]
        if ident is not None and (request.method, request.path) in access.PEER_ADMIN_CALLS:
            return None
        return real(request, policy, ident)

    monkeypatch.setattr(access, "decide", planted)


def _admin_writes(keys: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    real = access.decide

    def planted(request, policy, ident):  # type: ignore[no-untyped-def]
        if ident is not None and ident.has_role("admin") and request.path.startswith("/v1/reg"):
            return None
        return real(request, policy, ident)

    monkeypatch.setattr(access, "decide", planted)
    monkeypatch.setattr(acceptor_routes, "check_register_writes", lambda *_: None)


@pytest.mark.parametrize("plant", [_any_role_fences, _admin_writes])
async def test_admin_check_catches_planted_weakness(
    tmp_path: Path, keys: Pki, plant, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    plant(keys, monkeypatch)
    async with secure_node(tmp_path, config(3), keys, gateway=False) as url:
        seen = await _admin_calls(url, keys)
    assert seen != EXPECTED_ADMIN


# -- the same checks against planted weaknesses: each must then see the stranger's write ------


def _trust_foreign_ca(keys: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tls._server_context

    def planted(files: tls.TlsFiles) -> ssl.SSLContext:
        ctx = real(files)
        ctx.load_verify_locations(keys.dir / "foreign-ca.crt")  # e.g. a system trust store
        return ctx

    monkeypatch.setattr(tls, "_server_context", planted)


def _ignore_expiry(keys: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tls._server_context

    def planted(files: tls.TlsFiles) -> ssl.SSLContext:
        ctx = real(files)
        ctx.verify_flags |= 0x200000  # X509_V_FLAG_NO_CHECK_TIME
        return ctx

    monkeypatch.setattr(tls, "_server_context", planted)


def _any_verified_certificate(keys: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "member_allowed", lambda ident, *_: ident is not None)


def _any_member_name(keys: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        access, "member_allowed", lambda ident, *_: ident is not None and ident.kind == "member"
    )


PLANTS = {
    "member certificate from another CA": _trust_foreign_ca,
    "expired member certificate": _ignore_expiry,
    "client certificate (write role)": _any_verified_certificate,
    "member name not in the cluster": _any_member_name,
    "member of another cluster, same CA": _any_member_name,
}


@pytest.mark.parametrize("who", list(PLANTS))
async def test_checks_catch_planted_weakness(
    tmp_path: Path, keys: Pki, who: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    PLANTS[who](keys, monkeypatch)
    if who == "member of another cluster, same CA":
        # identify() drops other clusters' identities: plant that away too
        monkeypatch.setattr(access, "from_peercert", _any_cluster(access.from_peercert))
    cfg = config(3)
    async with secure_node(tmp_path, cfg, keys, gateway=False) as url:
        written, outcome = await stranger_wrote(url, keys, STRANGERS[who])
    assert written, f"the planted weakness went unnoticed: {outcome}"


def _any_cluster(real):  # type: ignore[no-untyped-def]
    import dataclasses

    def planted(cert):  # type: ignore[no-untyped-def]
        ident = real(cert)
        return dataclasses.replace(ident, cluster="demo") if ident is not None else None

    return planted
