"""DPoP (RFC 9449): a key pair per credential, proofs, and server nonces. Pure apart from
generating keys; no I/O.

A proof is a JWT (`typ: dpop+jwt`, ES256, the public key as `jwk` in its header) over the
request: `htm` its method, `htu` its URL without query and fragment, `iat`, a fresh `jti`,
`ath` (the SHA-256 of the access token) on resource requests, and the server's last `nonce`
for that origin when it gave one. `NonceCache` keeps those nonces per origin; `nonce_asked`
reads a refusal that asks for one (a token endpoint's `use_dpop_nonce` error, an API's
`WWW-Authenticate: DPoP error="use_dpop_nonce"`), so the caller can retry once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

__all__ = [
    "DpopKey",
    "NonceCache",
    "access_token_hash",
    "htu",
    "nonce_asked",
    "origin",
    "proof",
    "resource_proof",
]

_USE_NONCE = re.compile(r'error\s*=\s*"?use_dpop_nonce"?', re.IGNORECASE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _header(jwk: Mapping[str, str]) -> str:
    return _b64(_json({"alg": "ES256", "typ": "dpop+jwt", "jwk": dict(jwk)}))


_ES256 = ECAlgorithm(ECAlgorithm.SHA256)


@dataclass(frozen=True, slots=True)
class DpopKey:
    """An EC P-256 key pair (ES256, which every DPoP server supports)."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    jwk: Mapping[str, str] = field(default_factory=dict)
    thumbprint: str = ""  # RFC 7638 JWK thumbprint: the `jkt` tokens are bound to
    header: str = ""  # every proof's JOSE header, base64url (the same for every proof)

    @classmethod
    def generate(cls) -> DpopKey:
        return cls.of(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def of(cls, private_key: ec.EllipticCurvePrivateKey) -> DpopKey:
        numbers = private_key.public_key().public_numbers()
        jwk = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }
        # RFC 7638 §3: the required members, sorted, no whitespace.
        canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
        return cls(private_key, jwk, _b64(hashlib.sha256(canonical).digest()), _header(jwk))

    @classmethod
    def from_pem(cls, pem: bytes) -> DpopKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("a DPoP key is an EC P-256 key")
        return cls.of(key)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def htu(url: str) -> str:
    """The request URL without query and fragment (RFC 9449 §4.2), scheme and host lower case."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


@functools.lru_cache(maxsize=16)  # a token goes with many proofs
def access_token_hash(access_token: str) -> str:
    """`ath`: base64url SHA-256 of the access token's ASCII (RFC 9449 §4.2)."""
    return _b64(hashlib.sha256(access_token.encode("ascii")).digest())


def proof(
    key: DpopKey,
    method: str,
    url: str,
    *,
    access_token: str | None = None,
    nonce: str | None = None,
    now: float | None = None,
) -> str:
    """A fresh DPoP proof for one request."""
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": method.upper(),
        "htu": htu(url),
        "iat": int(time.time() if now is None else now),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    # A compact JWS (RFC 7515 §7.1) whose signature is PyJWT's ES256 (raw r||s, RFC 7518
    # §3.4). jwt.encode would build and serialise the same header for every request, which
    # costs as much as the signature; the header is the key's, made once.
    signing_input = f"{key.header or _header(key.jwk)}.{_b64(_json(claims))}"
    return f"{signing_input}.{_b64(_ES256.sign(signing_input.encode(), key.private_key))}"


def resource_proof(
    grant: object, token_type: str, access_token: str, method: str, url: str, nonces: NonceCache
) -> str | None:
    """The DPoP header for a routed request, or None when the token is not DPoP-bound (or the
    grant holds no key: an IdP that answered `Bearer` to a DPoP request)."""
    key = getattr(getattr(grant, "wrapped", grant), "dpop_key", None)
    if key is None or token_type.lower() != "dpop":
        return None
    return proof(key, method, url, access_token=access_token, nonce=nonces.get(url))


def nonce_asked(status: int, headers: Mapping[str, str], body: bytes = b"") -> str | None:
    """The nonce a refusal asks the next proof to carry, or None if it asks for none.

    A token endpoint answers 400 `{"error": "use_dpop_nonce"}` (§8), an API 401 with
    `WWW-Authenticate: DPoP error="use_dpop_nonce"` (§9); both send `DPoP-Nonce`."""
    if status not in (400, 401):  # nearly every answer: no header lookup
        return None
    nonce = headers.get("DPoP-Nonce") or headers.get("dpop-nonce")
    if not nonce:
        return None
    if status == 401:
        asked = any(
            _USE_NONCE.search(v)
            for k, v in _items(headers)
            if k.lower() == "www-authenticate" and v.strip().lower().startswith("dpop")
        )
    else:
        try:
            asked = json.loads(body).get("error") == "use_dpop_nonce"
        except (ValueError, AttributeError):
            asked = False
    return nonce if asked else None


def _items(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    fields = getattr(headers, "fields", None)  # mitmproxy Headers: every value of a repeated name
    if fields is not None:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in fields]
    return list(headers.items())


class NonceCache:
    """The last nonce each origin gave (RFC 9449 §8.2: a server may change it any time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nonces: dict[str, str] = {}

    def get(self, url: str) -> str | None:
        with self._lock:
            return self._nonces.get(origin(url))

    def learn(self, url: str, headers: Mapping[str, str]) -> None:
        """Keep a `DPoP-Nonce` an answer carries, asked for or not (§8.2)."""
        nonce = headers.get("DPoP-Nonce") or headers.get("dpop-nonce")
        if nonce and len(nonce) <= 512 and nonce.isprintable():
            with self._lock:
                self._nonces[origin(url)] = nonce
