"""Who may do what on a node: the one place that decides.

- ``/healthz``, ``/readyz``: anyone (probes).
- The peer register API (``/v1/registers/*``): members whose certificate names one of the
  allowed member identities (``Policy.members``: the members of the live epochs of this
  cluster). A client with the ``write`` role may also read registers and write the
  quorum-intersecting ("fast") sets: that is the smart client's fast path, and those sets have
  no owner, so such a write cannot break the ownership rule that safety rests on (the route
  calls ``check_register_writes``). Fences and key listings: members, and clients with the
  ``admin`` role (the reconfiguration orchestrator: ``graven up``, the operator); nothing else
  of the peer API is open to an admin client.
- The client API: ``read`` for GET decisions, ``:batchGet``, ``/v1/cluster`` and ``/metrics``;
  ``write`` for PUT and ``:batch``; ``admin`` for anything else (cluster operations). A member
  certificate counts as ``admin`` only while its name is one of ``Policy.members``: a member of
  a retired epoch keeps a valid certificate but gets 403 everywhere.
- No credentials: 401 (with ``WWW-Authenticate``); credentials without the role: 403. The check
  runs before the body is read, so a refused request changes nothing.

Credentials are a verified client certificate (see ``identity``) or ``Authorization: Bearer``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..http.errors import ApiError, error_response
from ..protocol.layout import INTERSECTING, Layout, LayoutError
from .identity import ADMIN, MEMBER, READ, WRITE, Identity, from_peercert
from .tokens import TokenStore

# the caller's Identity on a request (absent when auth is off; None when anonymous)
IDENTITY: web.RequestKey[Identity | None] = web.RequestKey("graven_identity", object)  # type: ignore[arg-type]
OPEN = frozenset({"/healthz", "/readyz"})
PEER_PREFIX = "/v1/registers/"
PEER_CLIENT_PATHS = frozenset({"/v1/registers/read", "/v1/registers/write"})
# what the reconfiguration orchestrator needs of the peer API: (method, path)
PEER_ADMIN_CALLS = frozenset({("POST", "/v1/registers/fence"), ("GET", "/v1/registers/keys")})
_REALM = {"WWW-Authenticate": 'Bearer realm="graven"'}


@dataclass(frozen=True)
class Policy:
    cluster: str
    members: frozenset[str]  # member identities the peer API accepts (live epochs)
    tokens: TokenStore | None = None


class PolicyRef:
    """The policy a running member enforces now: a live configuration change replaces it
    (the members of the new live epochs become peers, retired ones stop being)."""

    def __init__(self, policy: Policy) -> None:
        self.current = policy


POLICY: web.AppKey[PolicyRef] = web.AppKey("security_policy", PolicyRef)


def member_allowed(identity: Identity | None, cluster: str, members: frozenset[str]) -> bool:
    """A member certificate of one of ``members`` of ``cluster``: the peer API's core rule."""
    return (
        identity is not None
        and identity.kind == MEMBER
        and identity.via == "certificate"
        and identity.cluster == cluster
        and identity.name in members
    )


def needed_role(method: str, path: str) -> str | None:
    """The client-API role a request needs (None: open)."""
    if path in OPEN:
        return None
    if path.startswith("/v1/decisions"):
        if path == "/v1/decisions:batchGet" or (method in ("GET", "HEAD") and "/" in path[13:]):
            return READ
        if method == "PUT" or path == "/v1/decisions:batch":
            return WRITE
        return ADMIN
    if path in ("/v1/cluster", "/metrics") and method in ("GET", "HEAD"):
        return READ
    return ADMIN


def identify(request: web.Request, policy: Policy) -> Identity | None:
    """The caller, from its verified certificate or its bearer token (None: anonymous)."""
    transport = request.transport
    cert: Any = transport.get_extra_info("peercert") if transport is not None else None
    ident = from_peercert(cert)
    if ident is not None and ident.cluster != policy.cluster:
        ident = None  # same CA, another cluster: not one of ours
    if ident is not None:
        return ident
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip() and policy.tokens is not None:
        return policy.tokens.identify(token.strip())
    return None


def decide(request: web.Request, policy: Policy, ident: Identity | None) -> ApiError | None:
    """None when allowed, else the 401/403 to answer."""
    path = request.path
    if path in OPEN:
        return None
    if path.startswith(PEER_PREFIX):
        if member_allowed(ident, policy.cluster, policy.members):
            return None
        if ident is None:
            return _unauthenticated()
        if ident.kind != MEMBER:
            if ident.has_role(WRITE) and path in PEER_CLIENT_PATHS:
                return None  # narrowed to fast sets by check_register_writes
            if ident.has_role(ADMIN) and (request.method, path) in PEER_ADMIN_CALLS:
                return None  # the orchestrator: fence and enumerate, never write
        return ApiError(
            403, "forbidden", f"{_who(ident)} is not a member of cluster {policy.cluster}"
        )
    role = needed_role(request.method, path)
    if role is None:
        return None
    if ident is None:
        return _unauthenticated()
    if ident.kind == MEMBER and not member_allowed(ident, policy.cluster, policy.members):
        # a member of a retired epoch (or never of this one): its certificate stays valid
        # until it expires, but it speaks for no one any more
        return ApiError(
            403, "forbidden", f"{_who(ident)} is not a member of a live epoch of {policy.cluster}"
        )
    if not ident.has_role(role):
        return ApiError(
            403, "forbidden", f"{_who(ident)} has role {ident.role}; {request.method} "
            f"{path} needs {role}"
        )  # fmt: skip
    return None


def check_register_writes(
    request: web.Request, layout: Layout, register_sets: Iterable[int]
) -> None:
    """Raise 403 unless a member writes, or every set written is quorum-intersecting."""
    ref = request.app.get(POLICY)
    policy = ref.current if ref is not None else None
    ident = request.get(IDENTITY)
    if policy is None or member_allowed(ident, policy.cluster, policy.members):
        return  # auth off, or a member
    for rs in register_sets:
        try:
            fast = layout.segment_of(rs).kind == INTERSECTING
        except LayoutError:
            fast = False
        if not fast:
            who = _who(ident) if ident is not None else "anonymous"
            raise ApiError(
                403,
                "forbidden",
                f"{who} may write only quorum-intersecting register sets; "
                f"set {rs} is owned by a member's proposer",
            )


def _who(ident: Identity) -> str:
    return f"{ident.kind} {ident.name!r} ({ident.via})"


def _unauthenticated() -> ApiError:
    return ApiError(
        401, "unauthenticated", "credentials required: a client certificate or a bearer token"
    )


def middleware(ref: PolicyRef) -> Any:
    """The aiohttp middleware enforcing ``ref.current`` before any handler reads the body."""

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        policy = ref.current
        ident = identify(request, policy)
        refusal = decide(request, policy, ident)
        if refusal is not None:
            headers = _REALM if refusal.status == 401 else None
            return error_response(refusal.status, refusal.code, refusal.message, headers)
        request[IDENTITY] = ident
        return await handler(request)

    return authorize
