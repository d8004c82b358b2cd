"""Who is calling: identities from certificates and tokens, and the roles they carry.

A certificate names its holder in one URI subject alternative name:
``graven://CLUSTER/member/NAME`` (a member) or ``graven://CLUSTER/client/ROLE/NAME`` (a client).
The name is only trusted once the TLS handshake verified the chain to the cluster's CA; this
module just reads what ``ssl.SSLSocket.getpeercert()`` returns.

Roles are ordered: ``read`` (GET decisions, cluster info, metrics) < ``write`` (also PUT) <
``admin`` (also cluster operations). A member may do everything, including the peer API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEME = "graven"
READ, WRITE, ADMIN = "read", "write", "admin"
ROLES = (READ, WRITE, ADMIN)
MEMBER = "member"
CLIENT = "client"


def member_uri(cluster: str, name: str) -> str:
    return f"{SCHEME}://{cluster}/{MEMBER}/{name}"


def client_uri(cluster: str, role: str, name: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return f"{SCHEME}://{cluster}/{CLIENT}/{role}/{name}"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: a member of ``cluster`` or a client with ``role``."""

    cluster: str | None  # None for tokens (they belong to the node's own cluster by storage)
    kind: str  # MEMBER | CLIENT
    name: str
    role: str  # ADMIN for members
    via: str  # "certificate" | "token"

    def has_role(self, needed: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)


def parse_uri(uri: str) -> Identity | None:
    """The identity a ``graven://`` URI names, or None when it names none."""
    prefix = f"{SCHEME}://"
    if not uri.startswith(prefix):
        return None
    parts = uri[len(prefix) :].split("/")
    if len(parts) == 3 and parts[1] == MEMBER and parts[0] and parts[2]:
        return Identity(parts[0], MEMBER, parts[2], ADMIN, "certificate")
    if len(parts) == 4 and parts[1] == CLIENT and parts[2] in ROLES and parts[0] and parts[3]:
        return Identity(parts[0], CLIENT, parts[3], parts[2], "certificate")
    return None


def from_peercert(cert: Mapping[str, Any] | None) -> Identity | None:
    """The identity of a verified peer certificate (``getpeercert()``), None without one.

    A certificate naming more than one graven identity names none: which would it be?"""
    if not cert:
        return None
    found = [
        ident
        for kind, value in cert.get("subjectAltName", ())
        if kind == "URI" and (ident := parse_uri(str(value))) is not None
    ]
    return found[0] if len(found) == 1 else None
