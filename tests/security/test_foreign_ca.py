"""Certificates Graven issues (`graven cert`, the operator, `graven up`) from a CA made by
another tool verify in a real TLS handshake. Go 1.25+ (and so cert-manager) derives a CA's
subject key identifier as a truncated SHA-256 of its key, not SHA-1: an authority key
identifier recomputed the SHA-1 way names no issuer OpenSSL can find, and every handshake with
such a certificate failed (seen on the real cluster with the real cert-manager)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from graven.node.security import pki
from graven.node.security.identity import WRITE
from tests.security.support import write_pair


def go_style_ca() -> pki.Issued:
    """A CA as Go 1.25+ makes one: subject key identifier = SHA-256 of the key, truncated."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a CA made by another tool")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier(hashlib.sha256(point).digest()[:20]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return pki.Issued(key_pem, cert.public_bytes(serialization.Encoding.PEM))


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> None:
    """A full TLS handshake between the two contexts over memory buffers (no sockets)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=host)
    done = {"client": False, "server": False}
    for _ in range(20):  # a handshake takes a few flights
        for side, obj in (("client", cli), ("server", srv)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            cli.write(b"x")  # TLS 1.3: the server checks the client certificate after this
            s_in.write(c_out.read())
            assert srv.read(1) == b"x"
            return
    raise AssertionError(f"handshake did not finish: {done}")


@pytest.mark.parametrize("make_ca", [go_style_ca, lambda: pki.new_ca("demo")], ids=["go", "own"])
def test_member_and_client_certificates_of_any_ca_verify(make_ca, tmp_path: Path) -> None:
    ca = make_ca()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    member = write_pair(tmp_path, "m", pki.issue_member(ca, "demo", "demo-0", ["demo-0"]))
    client = write_pair(tmp_path, "c", pki.issue_client(ca, "demo", WRITE, "app"))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp_path / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(*member)
    client_ctx = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    client_ctx.load_cert_chain(*client)
    handshake(server_ctx, client_ctx, "demo-0")


def test_the_handshake_check_can_fail(tmp_path: Path) -> None:
    # the certificate of another CA: the same handshake must be refused
    ca, other = go_style_ca(), go_style_ca()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    member = write_pair(tmp_path, "m", pki.issue_member(other, "demo", "demo-0", ["demo-0"]))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*member)
    client_ctx = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_ctx, client_ctx, "demo-0")
