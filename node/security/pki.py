"""Keys and certificates of a cluster: one CA, a certificate per member, certificates for clients.

Every certificate names who holds it in a URI subject alternative name (see ``identity``):
``graven://CLUSTER/member/NAME`` for members, ``graven://CLUSTER/client/ROLE/NAME`` for clients.
Member certificates are server and client certificates at once (members call each other), with
the member's host names and addresses as DNS/IP SANs so hostname checking works.

Keys are ECDSA P-256: small, fast handshakes, supported by every TLS stack the clients use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .identity import client_uri, member_uri

CA_DAYS = 3650
LEAF_DAYS = 365


@dataclass(frozen=True)
class Issued:
    """A key and its certificate, PEM-encoded."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_ca(cluster: str, days: int = CA_DAYS, now: dt.datetime | None = None) -> Issued:
    """A self-signed CA for one cluster (a random tag makes the subject unique, so a rotated CA
    never shares a subject with the one it replaces: issuers are told apart by subject)."""
    now = now or _now()
    key = _key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "graven"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"graven {cluster} CA {secrets.token_hex(6)}"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def _san(uri: str, hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue(
    ca: Issued,
    common_name: str,
    uri: str,
    hosts: Iterable[str] = (),
    *,
    days: int = LEAF_DAYS,
    now: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
) -> Issued:
    """A leaf certificate signed by ``ca`` for TLS server and client use."""
    now = now or _now()
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = ca.cert
    key = _key()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(uri, hosts), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The CA's own subject key identifier when it has one: verifiers (OpenSSL) find the issuer
    by it, and CAs made elsewhere do not all derive it as SHA-1 of the key (Go 1.25+ and so
    cert-manager take a truncated SHA-256): a recomputed one would not match them."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def issue_member(ca: Issued, cluster: str, name: str, hosts: Iterable[str], **kw: object) -> Issued:
    return issue(ca, name, member_uri(cluster, name), hosts, **kw)  # type: ignore[arg-type]


def issue_client(ca: Issued, cluster: str, role: str, name: str, **kw: object) -> Issued:
    return issue(ca, name, client_uri(cluster, role, name), (), **kw)  # type: ignore[arg-type]


def expires(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
