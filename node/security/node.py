"""A member's security settings, from its command line: TLS both ways plus the access policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .access import Policy
from .tls import ClientTls, ServerTls, TlsFiles
from .tokens import TokenStore


@dataclass
class NodeSecurity:
    server: ServerTls  # what the member listens with
    client: ClientTls  # what it calls the other members with (same certificate)
    policy: Policy


def node_security(
    cluster: str,
    members: frozenset[str],
    ca: str | Path,
    cert: str | Path,
    key: str | Path,
    tokens: str | Path | None = None,
) -> NodeSecurity:
    """Raises OSError, ssl.SSLError, ValueError (incl. TokenFileError) on unusable files."""
    files = TlsFiles.of(ca, cert, key)
    store = TokenStore(Path(tokens)) if tokens is not None else None
    return NodeSecurity(ServerTls(files), ClientTls(files), Policy(cluster, members, store))
