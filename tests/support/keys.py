"""Key and certificate files for the credential tests, written owner-only as users must."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

_RSA: list[rsa.RSAPrivateKey] = []  # one 2048-bit key per session: generating it is slow


def new_key(
    kind: str = "RSA",
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    if kind == "RSA":
        if not _RSA:
            _RSA.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _RSA[0]
    if kind == "RSA2":  # a second, different RSA key (the wrong key)
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def pem(key, passphrase: str | None = None) -> bytes:  # type: ignore[no-untyped-def]
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
    return path


def write_key(path: Path, key, passphrase: str | None = None, mode: int = 0o600) -> Path:  # type: ignore[no-untyped-def]
    return write_private(path, pem(key, passphrase), mode)


def self_signed_cert(path: Path, key, name: str = "authproxy-test-client") -> Path:  # type: ignore[no-untyped-def]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
