"""The demo IdP's checks of signed JWTs: client assertions (RFC 7523 §2.2, OIDC Core §9
`private_key_jwt` / `client_secret_jwt`) and JWT-bearer grants (RFC 7523 §2.1).

Strict where real servers are: the key registered for the client (or issuer) and an algorithm
that key allows, the audience, a short life, `sub`, and each `jti` once (a replayed assertion
is refused while it could still be valid). Verification is PyJWT's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from proxy_addon.demo.idp_grants import OAuthError, invalid_client

__all__ = ["ASSERTION_TYPE", "JWT_BEARER_GRANT", "Asserted", "JwtChecker", "VerifyKey"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_LIFETIME = 3600.0  # Google's limit for a service account's assertion
LEEWAY = 5.0

VerifyKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | str


def _algorithms(key: VerifyKey) -> list[str]:
    """The algorithms a key may verify: never HS256 with a public key (alg confusion)."""
    if isinstance(key, str):
        return ["HS256"]
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "PS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ["ES256"]
    return ["EdDSA"]


@dataclass(frozen=True, slots=True)
class Asserted:
    """What a verified assertion says."""

    issuer: str
    subject: str
    claims: dict[str, Any]
    headers: dict[str, Any]


class JwtChecker:
    """Keys of clients and issuers, and the `jti`s seen; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client_keys: dict[str, VerifyKey] = {}
        self._issuer_keys: dict[str, VerifyKey] = {}
        self._seen: dict[str, float] = {}  # jti -> when it stops mattering
        self.accepted: list[Asserted] = []  # every verified assertion, for tests to look at

    def add_client_key(self, client_id: str, key: VerifyKey) -> None:
        with self._lock:
            self._client_keys[client_id] = key

    def add_issuer_key(self, issuer: str, key: VerifyKey) -> None:
        with self._lock:
            self._issuer_keys[issuer] = key

    def client(self, form: dict[str, str], audiences: list[str]) -> str:
        """The client a `client_assertion` proves, or `invalid_client`."""
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", "unsupported client_assertion_type")
        token = form.get("client_assertion", "")
        claimed = _unverified(token, invalid_client).get("iss", "")
        with self._lock:
            key = self._client_keys.get(claimed)
        if key is None:
            raise invalid_client("no key registered for this client")
        asserted = self._verify(token, key, audiences, invalid_client)
        if asserted.subject != asserted.issuer:
            raise invalid_client("the assertion's sub must be the client_id")
        if form.get("client_id", asserted.issuer) != asserted.issuer:
            raise invalid_client("client_id differs from the assertion's iss")
        return asserted.issuer

    def bearer(self, assertion: str, audiences: list[str]) -> Asserted:
        """A verified JWT-bearer grant assertion, or `invalid_grant`."""

        def bad(description: str) -> OAuthError:
            return OAuthError("invalid_grant", description)

        claimed = _unverified(assertion, bad).get("iss", "")
        with self._lock:
            key = self._issuer_keys.get(claimed)
        if key is None:
            raise bad("unknown issuer")
        return self._verify(assertion, key, audiences, bad)

    def _verify(self, token: str, key: VerifyKey, audiences: list[str], bad: Any) -> Asserted:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=_algorithms(key),
                audience=audiences,
                leeway=LEEWAY,
                options={"require": ["iss", "aud", "exp", "iat"]},
            )
            headers = jwt.get_unverified_header(token)
        except jwt.ExpiredSignatureError:
            raise bad("the assertion expired") from None
        except jwt.InvalidAudienceError:
            raise bad("the assertion is for another audience") from None
        except jwt.InvalidTokenError as e:
            raise bad(f"assertion rejected: {type(e).__name__}") from None
        if claims["exp"] - claims["iat"] > MAX_LIFETIME:
            raise bad("the assertion lives too long")
        jti = claims.get("jti")
        now = time.time()
        with self._lock:
            self._seen = {j: until for j, until in self._seen.items() if until > now}
            if jti is not None:
                if jti in self._seen:
                    raise bad("the assertion's jti was used before")
                self._seen[jti] = claims["exp"] + LEEWAY
            asserted = Asserted(claims["iss"], claims.get("sub", claims["iss"]), claims, headers)
            self.accepted.append(asserted)
        return asserted


def _unverified(token: str, bad: Any) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise bad("malformed assertion") from None
    return claims
