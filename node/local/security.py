"""TLS and tokens of a local cluster, kept in its data directory (``DIR/tls/``).

``graven up`` calls ``ensure`` before starting members. The first time it creates:

- ``ca.crt`` / ``ca.key``: the cluster's CA (the key readable by the owner only);
- ``<member>.crt`` / ``.key``: each member's certificate (``graven://CLUSTER/member/NAME``,
  SANs 127.0.0.1 and localhost), its server and client certificate at once;
- ``client.crt`` / ``.key``: an ``admin`` client certificate for the local user;
- ``admin.token`` (the token, owner-only) and ``tokens.yaml`` (only its SHA-256 digest), what a
  client without the certificate can use.

Later runs reuse them and renew any leaf certificate that expires within ``RENEW_BEFORE``
(or was issued by another CA), so a long-lived data directory never serves an expired one.
The discovery file names the client's files, so ``graven propose`` finds them by itself.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..security import pki, tokens
from ..security.identity import ADMIN

TLS_DIR = "tls"
RENEW_BEFORE = dt.timedelta(days=30)
HOSTS = ("127.0.0.1", "localhost")
CLIENT = "client"
TOKEN_FILE = "admin.token"
TOKENS_FILE = "tokens.yaml"


@dataclass(frozen=True)
class LocalSecurity:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def token_file(self) -> Path:
        return self.dir / TOKEN_FILE

    @property
    def tokens(self) -> Path:
        return self.dir / TOKENS_FILE

    def node_args(self, member: str) -> list[str]:
        """The ``graven node`` flags of one member."""
        return [
            "--tls-ca", str(self.ca.resolve()),
            "--tls-cert", str(self.cert(member).resolve()),
            "--tls-key", str(self.key(member).resolve()),
            "--tokens", str(self.tokens.resolve()),
        ]  # fmt: skip

    def discovery(self) -> dict[str, str]:
        """What clients of this cluster need (in the discovery file)."""
        return {
            "ca": str(self.ca.resolve()),
            "cert": str(self.cert(CLIENT).resolve()),
            "key": str(self.key(CLIENT).resolve()),
            "tokenFile": str(self.token_file.resolve()),
        }


def _write(path: Path, data: bytes, private: bool = False) -> None:
    # atomic (members re-read their files when they change) and never briefly world-readable
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _needs_leaf(sec: LocalSecurity, name: str, ca: x509.Certificate, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(sec.cert(name).read_bytes())
        sec.key(name).stat()
    except (OSError, ValueError):
        return True
    return cert.issuer != ca.subject or cert.not_valid_after_utc - now < RENEW_BEFORE


def ensure(data_dir: Path, cluster: str, members: Iterable[str]) -> LocalSecurity:
    """Create what is missing (or about to expire) under ``data_dir``/tls; return the paths."""
    sec = LocalSecurity(data_dir / TLS_DIR)
    sec.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = sec.dir / "ca.key"
    try:
        ca = pki.Issued(ca_key.read_bytes(), sec.ca.read_bytes())
        ca.cert  # noqa: B018 -- parse now: a damaged file is replaced below
    except (OSError, ValueError):
        ca = pki.new_ca(cluster)
        _write(ca_key, ca.key_pem, private=True)
        _write(sec.ca, ca.cert_pem)
    ca_cert = ca.cert
    for name in members:
        if _needs_leaf(sec, name, ca_cert, now):
            leaf = pki.issue_member(ca, cluster, name, HOSTS)
            _write(sec.key(name), leaf.key_pem, private=True)
            _write(sec.cert(name), leaf.cert_pem)
    if _needs_leaf(sec, CLIENT, ca_cert, now):
        leaf = pki.issue_client(ca, cluster, ADMIN, "local-admin")
        _write(sec.key(CLIENT), leaf.key_pem, private=True)
        _write(sec.cert(CLIENT), leaf.cert_pem)
    if not sec.token_file.exists() or not sec.tokens.exists():
        token = tokens.new_token()
        _write(sec.token_file, (token + "\n").encode(), private=True)
        entry = tokens.TokenEntry("local-admin", ADMIN, tokens.digest(token))
        _write(sec.tokens, tokens.dump([entry]).encode())
    return sec
