"""Signing keys from files, and JWTs signed with them (PyJWT on `cryptography`).

Every failure a person can meet is a `KeyFileError` naming the config key and the file, and
saying what to do: a missing or unreadable file, a file others may read, an encrypted PEM
without its passphrase (or with a wrong one), a key of the wrong type for the algorithm.
Parsed keys are cached by (path, size, mtime, passphrase): an RSA key takes milliseconds to
load and check, an assertion is wanted on every token request. Nothing here logs a key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from .base import KeyFileError

__all__ = [
    "ALGORITHMS",
    "KeyFileError",
    "PrivateKey",
    "algorithm_for",
    "cert_thumbprint",
    "check_tls_pair",
    "fresh_claims",
    "load_private_key",
    "load_signing_key",
    "read_private_file",
    "sign",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
# Which key type each algorithm we sign with needs (RFC 7518 §3.1, RFC 8037 §3.1).
ALGORITHMS: dict[str, str] = {
    "RS256": "RSA",
    "PS256": "RSA",
    "ES256": "EC P-256",
    "EdDSA": "Ed25519",
}
MAX_KEY_FILE = 64 * 1024  # a PEM key or a service-account JSON is a few kB


def read_private_file(path: str, *, key: str) -> bytes:
    """A secret file's bytes, refusing one other users may read (group or world bits)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(key, "is not a regular file", str(p))
        if st.st_mode & 0o077:
            raise KeyFileError(
                key,
                f"can be read by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run `chmod 600 {p}`",
                str(p),
            )
        if st.st_size > MAX_KEY_FILE:
            raise KeyFileError(key, f"is larger than {MAX_KEY_FILE // 1024} KiB", str(p))
        return p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(key, "no such file", str(p)) from None
    except PermissionError:
        raise KeyFileError(key, "cannot read it: permission denied", str(p)) from None
    except OSError as e:
        raise KeyFileError(key, f"cannot read it: {e.strerror}", str(p)) from None


def load_private_key(path: str, *, key: str, passphrase: str | None = None) -> PrivateKey:
    """The private key in the PEM file `path` (named `key` in the config)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)  # chmod too
    except OSError:
        stamp = (0, 0, 0, 0)  # read_private_file below says what is wrong
    return _load_cached(str(p), key, passphrase, stamp)


@functools.lru_cache(maxsize=64)
def _load_cached(path: str, key: str, passphrase: str | None, stamp: tuple[int, ...]) -> PrivateKey:
    try:
        return parse_private_key(read_private_file(path, key=key), key=key, passphrase=passphrase)
    except KeyFileError as e:
        raise e.at(path) from None


def parse_private_key(pem: bytes, *, key: str, passphrase: str | None = None) -> PrivateKey:
    """A PEM private key, or a `KeyFileError` saying what is wrong with it."""
    password = passphrase.encode() if passphrase else None
    try:
        loaded = load_pem_private_key(pem, password=password)
    except TypeError:
        # cryptography: "Password was not given but private key is encrypted" (or the reverse).
        if password is None:
            raise KeyFileError(
                key, "the key is encrypted; give its passphrase as private_key_passphrase"
            ) from None
        raise KeyFileError(key, "the key is not encrypted; remove private_key_passphrase") from None
    except ValueError:
        if password is not None and b"ENCRYPTED" in pem:
            raise KeyFileError(key, "wrong passphrase for the encrypted key") from None
        raise KeyFileError(
            key,
            "not a PEM private key (expected '-----BEGIN PRIVATE KEY-----' or the RSA/EC forms)",
        ) from None
    except Exception as e:  # unsupported algorithms and the like
        raise KeyFileError(key, f"cannot load the key ({type(e).__name__})") from None
    if isinstance(loaded, ed448.Ed448PrivateKey):
        raise KeyFileError(key, "Ed448 keys are not supported; use Ed25519")
    if not isinstance(
        loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise KeyFileError(key, f"unsupported key type {type(loaded).__name__}")
    return loaded


def _kind(private_key: PrivateKey) -> str:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return f"EC {'P-256' if private_key.curve.name == 'secp256r1' else private_key.curve.name}"
    return "Ed25519"


def algorithm_for(private_key: PrivateKey, wanted: str | None, *, key: str) -> str:
    """The JWS algorithm: `wanted` if the key suits it, else the key's natural one."""
    kind = _kind(private_key)
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size < 2048:
        bits = private_key.key_size
        raise KeyFileError(key, f"the RSA key has {bits} bits; use 2048 or more")
    if wanted is None:
        natural = {"RSA": "RS256", "EC P-256": "ES256", "Ed25519": "EdDSA"}.get(kind)
        if natural is None:
            raise KeyFileError(key, f"an {kind} key; use an EC P-256, RSA or Ed25519 key")
        return natural
    if wanted not in ALGORITHMS:
        expected = ", ".join(ALGORITHMS)
        raise KeyFileError("signing_alg", f"expected one of {expected}, got {wanted!r}")
    if ALGORITHMS[wanted] != kind:
        raise KeyFileError(
            key,
            f"signing_alg {wanted} needs an {ALGORITHMS[wanted]} key, the file holds an {kind} key",
        )
    return wanted


def load_signing_key(
    path: str, *, key: str, passphrase: str | None = None, wanted: str | None = None
) -> tuple[PrivateKey, str]:
    """The private key in `path` and the JWS algorithm it signs with, checked together."""
    private_key = load_private_key(path, key=key, passphrase=passphrase)
    try:
        return private_key, algorithm_for(private_key, wanted, key=key)
    except KeyFileError as e:
        raise (e.at(str(Path(path).expanduser())) if e.key == key else e) from None


def load_certificate(path: str, *, key: str) -> x509.Certificate:
    """The PEM certificate at `path`; errors name the config `key` and the file."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(key, "no such file", str(p)) from None
    except OSError as e:
        raise KeyFileError(key, f"cannot read it: {e.strerror}", str(p)) from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise KeyFileError(
            key, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)", str(p)
        ) from None


def cert_thumbprint(path: str, *, key: str) -> str:
    """`x5t#S256` (RFC 7515 §4.1.8, RFC 8705 §3.1): base64url SHA-256 of the certificate's DER."""
    cert = load_certificate(path, key=key)
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(
    claims: Mapping[str, Any],
    private_key: PrivateKey | str,
    algorithm: str,
    *,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """A compact JWS. `private_key` is a key, or an HMAC secret for HS256."""
    return jwt.encode(dict(claims), private_key, algorithm=algorithm, headers=dict(headers or {}))


def fresh_claims(
    issuer: str, subject: str, audience: str, lifetime: float, now: float | None = None
) -> dict[str, Any]:
    """iss/sub/aud with a fresh `jti` and a short life (RFC 7523 §3): iat = nbf = now."""
    now = int(time.time() if now is None else now)
    return {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + int(lifetime),
        "jti": secrets.token_urlsafe(16),
    }


def check_tls_pair(cert_path: str, key_path: str) -> tuple[str, str]:
    """A client certificate and its key for mutual TLS (RFC 8705), as absolute paths, once
    checked: the key readable by its owner alone and not encrypted (TLS libraries take no
    passphrase here), the certificate a PEM certificate for that very key."""
    cert = str(Path(cert_path).expanduser())
    key = str(Path(key_path).expanduser())
    _check_pair_cached(cert, key, _stamps(cert, key))
    return cert, key


def load_tls_pair(cert_path: str, key_path: str) -> tuple[x509.Certificate, Any]:
    """The checked certificate and key objects, read again whenever either file changes on
    disk (a renewed certificate is presented on the next connection, no restart needed)."""
    cert, key = check_tls_pair(cert_path, key_path)
    return _check_pair_cached(cert, key, _stamps(cert, key))


def _stamps(*paths: str) -> tuple[tuple[int, ...], ...]:
    try:
        return tuple(
            (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode, st.st_uid)
            for st in map(os.stat, paths)
        )
    except OSError:
        return tuple((0, 0, 0, 0, 0, 0) for _ in paths)


@functools.lru_cache(maxsize=64)
def _check_pair_cached(
    cert: str, key: str, stamps: tuple[tuple[int, ...], ...]
) -> tuple[x509.Certificate, Any]:
    pem = read_private_file(key, key="client_key_file")
    if b"ENCRYPTED" in pem:
        raise KeyFileError(
            "client_key_file",
            "is encrypted; TLS takes no passphrase here, so store it decrypted and owner-only "
            f"(openssl pkey -in {key} -out new.pem; chmod 600 new.pem)",
            key,
        )
    try:
        private_key = parse_private_key(pem, key="client_key_file")
    except KeyFileError as e:
        raise e.at(key) from None
    certificate = load_certificate(cert, key="client_certificate_file")
    if certificate.public_key() != private_key.public_key():
        raise KeyFileError(
            "client_certificate_file",
            f"is not the certificate of client_key_file {key}; give the certificate and key "
            "that belong together",
            cert,
        )
    return certificate, private_key
