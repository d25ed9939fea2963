"""`grant: jwt_bearer` (RFC 7523 §2.1): the proxy signs an assertion and trades it for a token.

Two ways to say who signs: `assertion_issuer` (+ `assertion_subject`, `assertion_audience`)
with a `private_key_file`, or a Google service-account key (`service_account_file`: its
`client_email` is the issuer, its `private_key` signs, its `token_uri` is the token endpoint
unless the config names one, its `private_key_id` is the `kid`). Google wants the scopes in
the assertion's `scope` claim; RFC 7523 sends them as the `scope` parameter: both are done
as each expects. No refresh token: a new assertion buys the next token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..discovery import Endpoints
from ..errors import GrantError
from .keys import (
    KeyFileError,
    PrivateKey,
    algorithm_for,
    fresh_claims,
    load_private_key,
    parse_private_key,
    read_private_file,
    sign,
)
from .oauth import OAuthGrant

if TYPE_CHECKING:
    from ..tokens import Token

__all__ = ["JWT_BEARER_GRANT", "JwtBearerGrant", "ServiceAccount", "read_service_account"]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 300.0  # Google allows an hour; a token request needs seconds


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """What a Google service-account JSON key says."""

    client_email: str
    token_uri: str
    private_key: PrivateKey = field(repr=False)
    private_key_id: str | None = None


def read_service_account(path: str) -> ServiceAccount:
    """The service account in `path`, or a `KeyFileError` saying what is wrong with the file."""
    key = "service_account_file"
    raw = read_private_file(path, key=key)
    try:
        data: Any = json.loads(raw)
    except ValueError:
        raise KeyFileError(f"{key}: {path} is not JSON (a service-account key is)") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{key}: {path} is not a service-account key (expected an object)")
    kind = data.get("type")
    if kind != "service_account":
        raise KeyFileError(
            f"{key}: {path} has type {kind!r}, not 'service_account'; download a key of the "
            "service account (IAM > Service accounts > Keys), not an OAuth client or a user's "
            "credentials"
        )
    missing = [k for k in ("client_email", "private_key", "token_uri") if not data.get(k)]
    if missing:
        raise KeyFileError(f"{key}: {path} lacks {', '.join(missing)}")
    token_uri = str(data["token_uri"])
    if not token_uri.startswith("https://"):
        raise KeyFileError(f"{key}: token_uri must be an https:// URL, got {token_uri!r}")
    return ServiceAccount(
        client_email=str(data["client_email"]),
        token_uri=token_uri,
        private_key=parse_private_key(str(data["private_key"]).encode(), key=key),
        private_key_id=str(data["private_key_id"]) if data.get("private_key_id") else None,
    )


class JwtBearerGrant(OAuthGrant):
    def endpoints(self) -> Endpoints:
        if self.cfg.token_url is None and self.cfg.issuer is None:
            # Only a service-account file can stand in for token_url (the config checks).
            if self._endpoints is None:
                self._endpoints = Endpoints(token_url=self._service_account().token_uri)
            return self._endpoints
        return super().endpoints()

    def _service_account(self) -> ServiceAccount:
        try:
            return read_service_account(self.cfg.options["service_account_file"])
        except KeyFileError as e:
            raise self._bad(e) from None

    def _bad(self, e: Exception) -> GrantError:
        return GrantError("bad_signing_key", f"credential {self.name!r}: {e}", terminal=True)

    def assertion(self, token_url: str) -> tuple[str, dict[str, str]]:
        """The signed assertion, and the form parameters that go with it."""
        opts = self.cfg.options
        scope = " ".join(self.cfg.scopes)
        try:
            if "service_account_file" in opts:
                account = self._service_account()
                issuer, private_key = account.client_email, account.private_key
                kid = opts.get("key_id") or account.private_key_id
                subject = opts.get("assertion_subject")  # a user to act for (delegation)
                extra, form = ({"scope": scope} if scope else {}), {}
            else:
                if not opts.get("private_key_file") or not opts.get("assertion_issuer"):
                    raise KeyFileError(
                        "grant jwt_bearer needs service_account_file, or private_key_file and "
                        "assertion_issuer"
                    )
                issuer = opts["assertion_issuer"]
                private_key = load_private_key(
                    opts["private_key_file"],
                    key="private_key_file",
                    passphrase=opts.get("private_key_passphrase"),
                )
                kid = opts.get("key_id")
                subject = opts.get("assertion_subject") or issuer
                extra, form = {}, ({"scope": scope} if scope else {})
            alg = algorithm_for(private_key, opts.get("signing_alg"), key="private_key_file")
        except KeyFileError as e:
            raise self._bad(e) from None
        audience = opts.get("assertion_audience") or token_url
        claims = fresh_claims(issuer, subject or "", audience, ASSERTION_LIFETIME)
        if subject is None:
            del claims["sub"]  # Google: no sub unless acting for a user
        headers = {"kid": kid} if kid else {}
        return sign({**claims, **extra}, private_key, alg, headers=headers), form

    def obtain(self, previous: Token | None) -> Token:
        token_url = self.endpoints().token_url or ""
        assertion, form = self.assertion(token_url)
        sent = (assertion, *((previous.access_token,) if previous else ()))
        return self.call(
            "jwt_bearer token request",
            {"grant_type": JWT_BEARER_GRANT, "assertion": assertion, **form},
            sent=sent,
        )
