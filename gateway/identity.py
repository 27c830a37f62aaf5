"""Identities from mTLS certificates, and a local certificate authority for demos and tests.

A caller's identity is the subject alternative name of the client certificate
it presented: the first URI SAN (``spiffe://govgate.local/alice``) or, without
one, the first DNS SAN. Never a request field: a decision engine cannot claim
to be somebody else, and an overseer cannot approve as another reviewer.

:func:`init_certs` (``govgate certs init``) creates a small CA, a server
certificate for ``localhost``/``127.0.0.1`` and one client certificate per
identity. It uses ECDSA P-256, which every gRPC TLS stack accepts. Private
keys are written 0600 and never overwritten. This is for demos and test
setups; production sites issue certificates from their own PKI.

Example::

    paths = init_certs(Path("certs"), ["engine-1", "alice", "bob"])
    assert identity_of(paths["alice"].cert.read_bytes()) == "spiffe://govgate.local/alice"
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TRUST_DOMAIN", "CertPaths", "IdentityError", "identity_of", "init_certs"]

TRUST_DOMAIN = "govgate.local"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_VALID = dt.timedelta(days=365)


class IdentityError(ValueError):
    """A certificate carries no usable identity, or certificate files cannot be made."""


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


def identity_of(cert_pem: bytes) -> str:
    """The identity a certificate proves: its first URI SAN, else its first DNS SAN."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise IdentityError(f"not a PEM certificate: {err}") from None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError("the certificate has no subject alternative name") from None
    for kind in (x509.UniformResourceIdentifier, x509.DNSName):
        names = sans.get_values_for_type(kind)
        if names:
            name = str(names[0])
            # An identity is recorded as the actor of what it does: a blank one, or one
            # that needs quoting to be read back, names nobody.
            if not name.strip() or name != name.strip() or any(not c.isprintable() for c in name):
                raise IdentityError(f"the certificate's first SAN {name!r} is not an identity")
            return name
    raise IdentityError("the certificate has no URI or DNS subject alternative name")


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # whatever the umask said


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _checked(identities: Iterable[str]) -> list[str]:
    names = list(identities)
    for n in names:
        if not _NAME.fullmatch(n) or n in ("ca", "server"):
            raise IdentityError(
                f"{n!r} is not a usable identity name (lowercase letters, digits, . _ -)"
            )
    if len(set(names)) != len(names):
        raise IdentityError("identity names must be distinct")
    return names


def init_certs(directory: Path, identities: Iterable[str]) -> dict[str, CertPaths]:
    """Create ``ca``, ``server`` and one client certificate per identity in ``directory``.

    When ``directory`` already holds the CA (``ca.pem`` and ``ca.key``), only the named
    identities are issued, by that CA: this is how identities are added later. Returns
    the paths of what it wrote, by name. Never overwrites a file.
    """
    if (directory / "ca.pem").exists() and (directory / "ca.key").exists():
        return add_identities(directory, identities)
    names = _checked(identities)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, CertPaths] = {}
    targets = ["ca", "server", *names]
    for n in targets:
        for suffix in (".pem", ".key"):
            if (directory / f"{n}{suffix}").exists():
                raise IdentityError(f"{directory / (n + suffix)} already exists; refusing")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("govgate local CA", ca_key, None, ca_key, ca=True)

    def issue(n: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(n, key, ca.subject, ca_key, sans=sans, usage=[usage])
        paths = CertPaths(directory / f"{n}.pem", directory / f"{n}.key")
        _write(paths.key, _key_pem(key), 0o600)
        _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        out[n] = paths

    ca_paths = CertPaths(directory / "ca.pem", directory / "ca.key")
    _write(ca_paths.key, _key_pem(ca_key), 0o600)
    _write(ca_paths.cert, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    out["ca"] = ca_paths
    issue(
        "server",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    for n in names:
        uri = f"spiffe://{TRUST_DOMAIN}/{n}"
        issue(n, [x509.UniformResourceIdentifier(uri)], ExtendedKeyUsageOID.CLIENT_AUTH)
    return out


def add_identities(directory: Path, identities: Iterable[str]) -> dict[str, CertPaths]:
    """Issue client certificates for ``identities`` from the CA already in ``directory``."""
    names = _checked(identities)
    for n in names:
        for suffix in (".pem", ".key"):
            if (directory / f"{n}{suffix}").exists():
                raise IdentityError(f"{directory / (n + suffix)} already exists; refusing")
    try:
        ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except (OSError, ValueError, TypeError) as err:
        raise IdentityError(f"cannot read the CA in {directory}: {err}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{directory / 'ca.key'} is not an ECDSA key")
    out: dict[str, CertPaths] = {}
    for n in names:
        key = ec.generate_private_key(ec.SECP256R1())
        uri = x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/{n}")
        cert = _cert(n, key, ca.subject, ca_key, sans=[uri],
                     usage=[ExtendedKeyUsageOID.CLIENT_AUTH])  # fmt: skip
        paths = CertPaths(directory / f"{n}.pem", directory / f"{n}.key")
        _write(paths.key, _key_pem(key), 0o600)
        _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        out[n] = paths
    return out
