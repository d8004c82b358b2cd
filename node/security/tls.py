"""TLS contexts (standard ``ssl``) that follow their files: certificates rotate without restarts.

``ServerTls`` is the context a node listens with. Every handshake passes through its SNI
callback (OpenSSL calls it with or without SNI), which swaps in the newest context built from
the files; the files are checked at most once per ``RECHECK`` seconds. So writing a new
certificate, key or trust bundle (atomically: write elsewhere, then rename) takes effect for new
connections within a second, and connections already open keep theirs.

``ClientTls`` is the same for outgoing connections (a member calling its peers, a client).

The trust bundle (``ca.crt``) may hold several CAs: that is how a CA rotates without downtime
(trust old + new, reissue every certificate from the new CA, then trust only the new one).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
RECHECK = 1.0  # seconds between checks of the files for changes


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path  # trust bundle: PEM, one or more CA certificates
    cert: Path | None = None  # our certificate (PEM); None for a client without one
    key: Path | None = None

    @classmethod
    def of(cls, ca: str | Path, cert: str | Path | None, key: str | Path | None) -> TlsFiles:
        if (cert is None) != (key is None):
            raise ValueError("a certificate needs its key, and a key its certificate")
        return cls(Path(ca), Path(cert) if cert else None, Path(key) if key else None)

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in (self.ca, self.cert, self.key):
            if path is None:
                continue
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert files.cert is not None and files.key is not None
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(files.ca)
    # Optional: clients may authenticate with a bearer token instead. A certificate that is
    # presented is verified (expired, wrong CA: the handshake fails); the peer API then demands
    # a member's certificate (``access``).
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _client_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert is not None and files.key is not None:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx


class _Following:
    """A context rebuilt when its files change (a broken or half-written set keeps the old)."""

    def __init__(self, files: TlsFiles, build: type | object) -> None:
        self.files = files
        self._build = build
        self._stamp = files.stamp()
        self._ctx: ssl.SSLContext = build(files)  # type: ignore[operator]
        self._checked = time.monotonic()
        self.reloads = 0

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= RECHECK:
            self._checked = now
            self._reload()
        return self._ctx

    def _reload(self) -> None:
        try:
            stamp = self.files.stamp()
            if stamp == self._stamp:
                return
            ctx = self._build(self.files)  # type: ignore[operator]
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("TLS files %s not reloaded (keeping the old ones): %s", self.files, exc)
            return
        self._ctx, self._stamp = ctx, stamp
        self.reloads += 1
        self._on_reload(ctx)

    def _on_reload(self, ctx: ssl.SSLContext) -> None:
        pass


class ServerTls(_Following):
    """The listening context: ``context`` goes to the server; each handshake uses the newest."""

    def __init__(self, files: TlsFiles) -> None:
        if files.cert is None:
            raise ValueError("a server needs a certificate and key")
        super().__init__(files, _server_context)
        self.context = _server_context(files)  # the one the listener holds; delegates per hello
        self.context.sni_callback = self._hello

    def _hello(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = self.current()


class ClientTls(_Following):
    """Outgoing connections: ``current()`` before each new connection."""

    def __init__(self, files: TlsFiles) -> None:
        super().__init__(files, _client_context)
