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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..discovery import Endpoints
from .keys import (
    KeyFileError,
    PrivateKey,
    algorithm_for,
    fresh_claims,
    load_signing_key,
    parse_private_key,
    read_private_file,
    sign,
)
from .oauth import OAuthGrant

if TYPE_CHECKING:
    from ..config import CredentialConfig
    from ..tokens import Token

__all__ = [
    "JWT_BEARER_GRANT",
    "JwtBearerGrant",
    "ServiceAccount",
    "Signer",
    "load_signer",
    "read_service_account",
]

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
    key, where = "service_account_file", str(Path(path).expanduser())
    raw = read_private_file(path, key=key)
    try:
        data: Any = json.loads(raw)
    except ValueError:
        raise KeyFileError(key, "is not JSON (a service-account key is)", where) from None
    if not isinstance(data, dict):
        raise KeyFileError(key, "is not a service-account key (expected an object)", where)
    kind = data.get("type")
    if kind != "service_account":
        raise KeyFileError(
            key,
            f"has type {kind!r}, not 'service_account'; download a key of the service account "
            "(IAM > Service accounts > Keys), not an OAuth client or a user's credentials",
            where,
        )
    missing = [k for k in ("client_email", "private_key", "token_uri") if not data.get(k)]
    if missing:
        raise KeyFileError(key, f"lacks {', '.join(missing)}", where)
    token_uri = str(data["token_uri"])
    if not token_uri.startswith("https://"):
        raise KeyFileError(key, f"token_uri must be an https:// URL, got {token_uri!r}", where)
    try:
        private_key = parse_private_key(str(data["private_key"]).encode(), key=key)
    except KeyFileError as e:
        raise e.at(where) from None
    return ServiceAccount(
        client_email=str(data["client_email"]),
        token_uri=token_uri,
        private_key=private_key,
        private_key_id=str(data["private_key_id"]) if data.get("private_key_id") else None,
    )


@dataclass(frozen=True, slots=True)
class Signer:
    """Who signs the assertions, with which key: read from the files once, at start."""

    issuer: str
    subject: str | None  # None: no `sub` (Google, unless acting for a user)
    private_key: PrivateKey = field(repr=False)
    algorithm: str
    kid: str | None
    scope_in_assertion: bool  # Google's way; RFC 7523 sends `scope` as a form parameter
    token_uri: str | None = None  # a service account's token endpoint


def load_signer(cfg: CredentialConfig) -> Signer:
    """The signer a jwt_bearer credential names, or a `KeyFileError` saying what is wrong."""
    opts = cfg.options
    if "service_account_file" in opts:
        path = opts["service_account_file"]
        account = read_service_account(path)
        try:
            alg = algorithm_for(
                account.private_key, opts.get("signing_alg"), key="service_account_file"
            )
        except KeyFileError as e:
            raise (e.at(path) if e.key == "service_account_file" else e) from None
        return Signer(
            issuer=account.client_email,
            subject=opts.get("assertion_subject"),  # a user to act for (delegation)
            private_key=account.private_key,
            algorithm=alg,
            kid=opts.get("key_id") or account.private_key_id,
            scope_in_assertion=True,
            token_uri=account.token_uri,
        )
    if not opts.get("private_key_file") or not opts.get("assertion_issuer"):
        raise KeyFileError(
            "private_key_file",
            "grant jwt_bearer needs service_account_file, or private_key_file and "
            "assertion_issuer",
        )
    issuer = opts["assertion_issuer"]
    private_key, alg = load_signing_key(
        opts["private_key_file"],
        key="private_key_file",
        passphrase=opts.get("private_key_passphrase"),
        wanted=opts.get("signing_alg"),
    )
    return Signer(
        issuer=issuer,
        subject=opts.get("assertion_subject") or issuer,
        private_key=private_key,
        algorithm=alg,
        kid=opts.get("key_id"),
        scope_in_assertion=False,
    )


class JwtBearerGrant(OAuthGrant):
    key_error_code = "bad_signing_key"

    def __init__(self, cfg: CredentialConfig, verify: str | bool) -> None:
        super().__init__(cfg, verify)
        self._signer: Signer | None = None

    def _load_keys(self) -> None:
        super()._load_keys()
        self._signer = load_signer(self.cfg)

    def signer(self) -> Signer:
        if self._signer is None:
            self.keys_loaded()
        assert self._signer is not None  # load_keys sets it or raises
        return self._signer

    def endpoints(self) -> Endpoints:
        if self.cfg.token_url is None and self.cfg.issuer is None:
            # Only a service-account file can stand in for token_url (the config checks).
            if self._endpoints is None:
                self._endpoints = Endpoints(token_url=self.signer().token_uri)
            return self._endpoints
        return super().endpoints()

    def assertion(self, token_url: str) -> tuple[str, dict[str, str]]:
        """The signed assertion, and the form parameters that go with it."""
        signer = self.signer()
        scope = " ".join(self.cfg.scopes)
        scoped = {"scope": scope} if scope else {}
        extra, form = (scoped, {}) if signer.scope_in_assertion else ({}, scoped)
        audience = self.cfg.options.get("assertion_audience") or token_url
        claims = fresh_claims(signer.issuer, signer.subject or "", audience, ASSERTION_LIFETIME)
        if signer.subject is None:
            del claims["sub"]  # Google: no sub unless acting for a user
        headers = {"kid": signer.kid} if signer.kid else {}
        token = sign({**claims, **extra}, signer.private_key, signer.algorithm, headers=headers)
        return token, form

    def obtain(self, previous: Token | None) -> Token:
        token_url = self.endpoints().token_url or ""
        assertion, form = self.assertion(token_url)
        sent = (assertion, *((previous.access_token,) if previous else ()))
        return self.call(
            "jwt_bearer token request",
            {"grant_type": JWT_BEARER_GRANT, "assertion": assertion, **form},
            sent=sent,
        )
