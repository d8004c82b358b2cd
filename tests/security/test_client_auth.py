"""The client API: 401 without credentials, 403 for the wrong role, never a 5xx; probes open.

A one-member cluster served in this process (its gateway decides alone), so the same checks can
be run against planted weaknesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graven.node.security import access
from tests.security.support import Pki, call, config, make_pki, secure_node

BODY = json.dumps({"value": "v"}).encode()


@pytest.fixture
def keys(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", ["demo-0"])


async def _matrix(url: str, keys: Pki) -> dict[str, int | str]:
    """What each caller gets for each request (status or 'refused')."""
    ctx = keys.context(None)
    t = keys.tokens
    cases = {
        "PUT none": ("PUT", "/v1/decisions/a", None, BODY),
        "PUT read": ("PUT", "/v1/decisions/a", t["read"], BODY),
        "PUT write": ("PUT", "/v1/decisions/a", t["write"], BODY),
        "GET none": ("GET", "/v1/decisions/a", None, None),
        "GET read": ("GET", "/v1/decisions/a", t["read"], None),
        "GET bogus": ("GET", "/v1/decisions/a", "gvn_not-a-token", None),
        "batch read": ("POST", "/v1/decisions:batch", t["read"], b'{"decisions": []}'),
        "batchGet read": ("POST", "/v1/decisions:batchGet", t["read"], b'{"keys": ["a"]}'),
        "cluster none": ("GET", "/v1/cluster", None, None),
        "cluster read": ("GET", "/v1/cluster", t["read"], None),
        "metrics none": ("GET", "/metrics", None, None),
        "metrics read": ("GET", "/metrics", t["read"], None),
        "healthz none": ("GET", "/healthz", None, None),
        "readyz none": ("GET", "/readyz", None, None),
        "unknown write": ("POST", "/v1/reconfigure", t["write"], b"{}"),
        "unknown admin": ("POST", "/v1/reconfigure", t["admin"], b"{}"),
        # the reconfiguration orchestrator's routes: a newer configuration, carried keys
        "config none": ("POST", "/v1/admin/config", None, b"{}"),
        "config write": ("POST", "/v1/admin/config", t["write"], b"{}"),
        "config admin": ("POST", "/v1/admin/config", t["admin"], b"{}"),
        "carry write": ("POST", "/v1/admin/carry", t["write"], b'{"items": []}'),
    }
    out: dict[str, int | str] = {}
    for name, (method, path, token, body) in cases.items():
        got = await call(url, method, path, ctx, body, token)
        out[name] = got[0] if isinstance(got, tuple) else "refused"
        if isinstance(got, tuple) and got[0] >= 400:
            assert "error" in json.loads(got[1]), got  # always the JSON error shape
    return out


EXPECTED = {
    "PUT none": 401,
    "PUT read": 403,
    "PUT write": 200,
    "GET none": 401,
    "GET read": 200,  # decided by "PUT write" before it
    "GET bogus": 401,
    "batch read": 403,
    "batchGet read": 200,
    "cluster none": 401,
    "cluster read": 200,
    "metrics none": 401,
    "metrics read": 200,
    "healthz none": 200,
    "readyz none": 200,
    "unknown write": 403,
    "unknown admin": 404,  # allowed through, and there is no such route
    "config none": 401,
    "config write": 403,
    "config admin": 400,  # allowed through; an empty document is no configuration
    "carry write": 403,
}


async def test_roles(tmp_path: Path, keys: Pki) -> None:
    async with secure_node(tmp_path, config(1), keys) as url:
        got = await _matrix(url, keys)
    assert got == EXPECTED


async def test_refused_put_changes_nothing(tmp_path: Path, keys: Pki) -> None:
    async with secure_node(tmp_path, config(1), keys) as url:
        ctx = keys.context(None)
        assert (await call(url, "PUT", "/v1/decisions/x", ctx, BODY, keys.tokens["read"]))[0] == 403
        assert (await call(url, "PUT", "/v1/decisions/x", ctx, BODY))[0] == 401
        status, _ = await call(url, "GET", "/v1/decisions/x", ctx, None, keys.tokens["read"])
        assert status == 404  # nothing decided


async def test_client_certificate_roles(tmp_path: Path, keys: Pki) -> None:
    """Certificates carry roles too: the write client may PUT; a member may do anything."""
    async with secure_node(tmp_path, config(1), keys) as url:
        for who in ("client-write", "demo-0"):
            status, _ = await call(url, "PUT", f"/v1/decisions/{who}", keys.context(who), BODY)
            assert status == 200, who


@pytest.mark.parametrize(
    "plant",
    ["everything needs read", "tokens ignored for roles"],
)
async def test_role_checks_catch_planted_weakness(
    tmp_path: Path, keys: Pki, plant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if plant == "everything needs read":
        real = access.needed_role
        monkeypatch.setattr(
            access, "needed_role", lambda m, p: None if real(m, p) is None else "read"
        )
    else:  # every authenticated caller is an admin
        monkeypatch.setattr(access.Identity, "has_role", lambda self, needed: True, raising=True)
    async with secure_node(tmp_path, config(1), keys) as url:
        got = await _matrix(url, keys)
    assert got != EXPECTED
    assert got["PUT read"] == 200  # the read token could write: the test above would fail
