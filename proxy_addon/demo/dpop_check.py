"""The demo servers' check of DPoP proofs (RFC 9449 §4.3), strict as a real server is:
`typ: dpop+jwt`, an asymmetric `alg` with the public key in `jwk`, the signature, `htm` and
`htu` of this very request, a recent `iat`, a `jti` never seen before, `ath` of the access
token on resource requests, and the server's current nonce once it demands one."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from typing import Any

import jwt

__all__ = ["DpopVerifier", "ProofError", "jwk_thumbprint"]

MAX_AGE = 60.0  # seconds a proof's iat may lie in the past (or future)


class ProofError(Exception):
    """Why a proof was refused; `use_nonce` says the client should retry with the nonce."""

    def __init__(self, message: str, *, use_nonce: bool = False) -> None:
        super().__init__(message)
        self.use_nonce = use_nonce


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 over the required members of an EC, OKP or RSA key."""
    required = {
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
        "RSA": ("e", "kty", "n"),
    }
    members = required.get(str(jwk.get("kty")))
    if members is None or any(m not in jwk for m in members):
        raise ProofError("unsupported or incomplete jwk")
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


class DpopVerifier:
    """One server's proof checks: `require_nonce` makes it demand its current `nonce`."""

    def __init__(self, *, require_nonce: bool = False) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self.require_nonce = require_nonce
        self.nonce = secrets.token_urlsafe(12)
        self.checked = 0  # proofs accepted, for tests

    def rotate_nonce(self) -> str:
        with self._lock:
            self.nonce = secrets.token_urlsafe(12)
            return self.nonce

    def verify(self, proof: str, method: str, url: str, access_token: str | None = None) -> str:
        """The proof's key thumbprint (`jkt`), or ProofError."""
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.InvalidTokenError:
            raise ProofError("malformed DPoP proof") from None
        if header.get("typ") != "dpop+jwt":
            raise ProofError("typ is not dpop+jwt")
        alg, jwk = header.get("alg"), header.get("jwk")
        if alg not in ("ES256", "RS256", "PS256", "EdDSA") or not isinstance(jwk, dict):
            raise ProofError("an asymmetric alg and a jwk are required")
        if any(k in jwk for k in ("d", "p", "q", "dp", "dq", "qi")):
            raise ProofError("the jwk holds a private key")
        try:
            key = jwt.PyJWK(jwk, alg).key
            claims = jwt.decode(
                proof, key, algorithms=[alg],
                options={"require": ["jti", "htm", "htu", "iat"], "verify_aud": False},
            )  # fmt: skip
        except (jwt.InvalidTokenError, jwt.PyJWKError) as e:
            raise ProofError(f"DPoP proof rejected: {type(e).__name__}") from None
        if claims["htm"] != method.upper():
            raise ProofError("htm is not this request's method")
        if claims["htu"] != url:
            raise ProofError("htu is not this request's URL")
        now = time.time()
        if abs(now - float(claims["iat"])) > MAX_AGE:
            raise ProofError("iat is too far from now")
        if access_token is not None:
            ath = _b64(hashlib.sha256(access_token.encode()).digest())
            if claims.get("ath") != ath:
                raise ProofError("ath does not match the access token")
        with self._lock:
            if self.require_nonce and claims.get("nonce") != self.nonce:
                raise ProofError("a fresh nonce is required", use_nonce=True)
            if len(self._seen) > 1024:  # forget what can no longer be replayed, now and then
                self._seen = {j: t for j, t in self._seen.items() if t > now}
            if claims["jti"] in self._seen:
                raise ProofError("jti was used before")
            self._seen[claims["jti"]] = now + 2 * MAX_AGE
            self.checked += 1
        return jwk_thumbprint(jwk)
