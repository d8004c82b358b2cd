"""What a client presents to a cluster: a trust bundle, a client certificate, a bearer token.

    Credentials(ca="tls/ca.crt", cert="tls/client.crt", key="tls/client.key")
    Credentials(ca="ca.crt", token="gvn_...")

``from_discovery`` reads them from the discovery file of a local cluster (``graven up``), so
``graven propose`` needs no flags there. A certificate is presented on every TLS connection;
the token goes in ``Authorization: Bearer`` on every request.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..security.tls import ClientTls, TlsFiles


class CredentialsError(ValueError):
    """Unusable credential files (one line)."""


@dataclass(frozen=True)
class Credentials:
    ca: str | None = None  # PEM trust bundle; None: the system's trust store
    cert: str | None = None  # client certificate (PEM), with ``key``
    key: str | None = None
    token: str | None = None

    @classmethod
    def from_discovery(cls, doc: Mapping[str, Any] | None) -> Credentials:
        """The local cluster's client credentials (none when it runs without TLS)."""
        sec = (doc or {}).get("security")
        if not isinstance(sec, Mapping):
            return cls()
        return cls(ca=sec.get("ca"), cert=sec.get("cert"), key=sec.get("key"))

    @staticmethod
    def read_token(path: str | Path) -> str:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"cannot read token file {path}: {exc}") from None
        if not token:
            raise CredentialsError(f"token file {path} is empty")
        return token

    @property
    def empty(self) -> bool:
        return not (self.ca or self.cert or self.key or self.token)

    def tls(self) -> Callable[[], ssl.SSLContext] | None:
        """A source of the current client context (it follows the files), None without a CA."""
        if self.ca is None and self.cert is None:
            return None
        if self.ca is None:
            ctx = ssl.create_default_context()
            ctx.load_cert_chain(str(self.cert), str(self.key))
            return lambda: ctx
        try:
            return ClientTls(TlsFiles.of(self.ca, self.cert, self.key)).current
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise CredentialsError(f"unusable TLS files: {exc}") from None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def header_lines(self) -> bytes:
        """``headers()`` as raw CRLF-terminated lines (the peer transport's form)."""
        return b"".join(f"{k}: {v}\r\n".encode() for k, v in self.headers().items())
