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
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..cluster.transition import MemberCalls
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


def client_context(sec: LocalSecurity) -> ssl.SSLContext:
    """A context trusting the cluster's CA and presenting the local admin client's
    certificate: what ``graven up`` calls its members with."""
    ctx = ssl.create_default_context(cafile=str(sec.ca))
    ctx.load_cert_chain(sec.cert(CLIENT), sec.key(CLIENT))
    return ctx


def admin_calls(sec: LocalSecurity) -> MemberCalls:
    """The reconfiguration orchestrator's credentials: the admin client certificate (the
    access policy lets ``admin`` fence, list keys and carry; nothing else of the peer API)."""
    return MemberCalls(ssl_context=client_context(sec))


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


def _issue_leaves(
    sec: LocalSecurity, ca: pki.Issued, cluster: str, members: Iterable[str], force: bool
) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_cert = ca.cert
    for name in members:
        if force or _needs_leaf(sec, name, ca_cert, now):
            leaf = pki.issue_member(ca, cluster, name, HOSTS)
            _write_pair(sec, name, leaf)
    if force or _needs_leaf(sec, CLIENT, ca_cert, now):
        _write_pair(sec, CLIENT, pki.issue_client(ca, cluster, ADMIN, "local-admin"))


def _write_pair(sec: LocalSecurity, name: str, leaf: pki.Issued) -> None:
    # Key first, then certificate: a reader between the two sees a mismatched pair, fails to
    # load it and keeps its previous one until its next check (tls.RECHECK).
    _write(sec.key(name), leaf.key_pem, private=True)
    _write(sec.cert(name), leaf.cert_pem)


def _load_ca(sec: LocalSecurity, stem: str = "ca") -> pki.Issued:
    cert = (sec.dir / f"{stem}.crt").read_bytes()
    if stem == "ca":  # ca.crt is the trust bundle: during a rotation it holds two CAs
        cert = (sec.dir / "ca-own.crt").read_bytes() if (sec.dir / "ca-own.crt").exists() else cert
    return pki.Issued((sec.dir / f"{stem}.key").read_bytes(), cert)


def renew(data_dir: Path, cluster: str, members: Iterable[str]) -> None:
    """Reissue every leaf certificate from the current CA (members reload them within
    ``tls.RECHECK`` seconds, without a restart)."""
    sec = LocalSecurity(data_dir / TLS_DIR)
    _issue_leaves(sec, _load_ca(sec), cluster, members, force=True)


def rotate_ca(data_dir: Path, cluster: str, step: str, members: Iterable[str] = ()) -> None:
    """One step of a CA rotation without downtime; run the steps in order, each after every
    member has picked up the previous one (``tls.RECHECK`` seconds locally):

    1. ``trust``: make a new CA and trust old + new (the bundle ``ca.crt`` holds both);
    2. ``reissue``: issue every member and client certificate from the new CA;
    3. ``finish``: trust only the new CA; the old one's certificates stop working.
    """
    sec = LocalSecurity(data_dir / TLS_DIR)
    if step == "trust":
        old = _load_ca(sec)
        new = pki.new_ca(cluster)
        _write(sec.dir / "ca-next.key", new.key_pem, private=True)
        _write(sec.dir / "ca-next.crt", new.cert_pem)
        _write(sec.dir / "ca-own.crt", old.cert_pem)
        _write(sec.ca, old.cert_pem + new.cert_pem)
    elif step == "reissue":
        _issue_leaves(sec, _load_ca(sec, "ca-next"), cluster, members, force=True)
    elif step == "finish":
        new = _load_ca(sec, "ca-next")
        _write(sec.dir / "ca.key", new.key_pem, private=True)
        _write(sec.ca, new.cert_pem)
        for leftover in ("ca-next.key", "ca-next.crt", "ca-own.crt"):
            (sec.dir / leftover).unlink()
    else:
        raise ValueError(f"unknown CA rotation step {step!r}: trust, reissue or finish")


def ensure(data_dir: Path, cluster: str, members: Iterable[str]) -> LocalSecurity:
    """Create what is missing (or about to expire) under ``data_dir``/tls; return the paths."""
    sec = LocalSecurity(data_dir / TLS_DIR)
    sec.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key = sec.dir / "ca.key"
    try:
        ca = _load_ca(sec)
        ca.cert  # noqa: B018 -- parse now: a damaged file is replaced below
    except (OSError, ValueError):
        ca = pki.new_ca(cluster)
        _write(ca_key, ca.key_pem, private=True)
        _write(sec.ca, ca.cert_pem)
    _issue_leaves(sec, ca, cluster, members, force=False)
    if not sec.token_file.exists() or not sec.tokens.exists():
        token = tokens.new_token()
        _write(sec.token_file, (token + "\n").encode(), private=True)
        entry = tokens.TokenEntry("local-admin", ADMIN, tokens.digest(token))
        _write(sec.tokens, tokens.dump([entry]).encode())
    return sec


def local_ca(data_dir: Path) -> pki.Issued:
    """The CA ``graven up`` signs with in ``data_dir`` (the new one during a rotation)."""
    return _load_ca(LocalSecurity(data_dir / TLS_DIR))


def issue_client_pair(
    ca: pki.Issued, cluster: str, role: str, name: str, out: Path, days: int
) -> tuple[Path, Path]:
    """A client certificate for ``role`` signed by ``ca``, written as ``out``/NAME.crt/.key
    (the key readable by its owner only); returns the two paths."""
    leaf = pki.issue_client(ca, cluster, role, name, days=days)
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / f"{name}.crt", out / f"{name}.key"
    _write(key, leaf.key_pem, private=True)
    _write(cert, leaf.cert_pem)
    return cert, key
