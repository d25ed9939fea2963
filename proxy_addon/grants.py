"""Getting tokens from an identity provider. Blocking I/O: callers run these in a worker thread.

Each grant turns the IdP's answer into a `Token`, and every failure into a `GrantError` that says
whether trying again can help (`terminal`), when (`retry_after`), and whether the request may
already have been acted on (`outcome_unknown`). The exchange itself (`idp_http`) has a total
deadline and a size cap; reading the answer (`token_answer`) refuses tokens that could inject
headers and scrubs the IdP's words of every secret the request carried.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Protocol
from urllib.parse import quote_plus

from .config import CredentialConfig
from .discovery import Endpoints, endpoints_for
from .errors import GrantError
from .idp_http import exchange
from .token_answer import TERMINAL_ERRORS, parse_token_answer
from .tokens import Token

__all__ = ["TERMINAL_ERRORS", "Grant", "GrantError", "LoginGrant", "make_grant"]

logger = logging.getLogger(__name__)

# Grants whose request spends a one-time secret: sent twice, the second meets a spent secret
# (and an IdP with reuse detection revokes the whole login).
ONE_TIME_GRANTS = frozenset({"refresh_token", "authorization_code"})


class Grant(Protocol):
    name: str
    refreshable: bool  # can a new token be had when the API rejects the current one?
    seed_id: str | None

    def obtain(self, previous: Token | None) -> Token: ...


class StaticGrant:
    refreshable = False
    seed_id = None

    def __init__(self, cfg: CredentialConfig) -> None:
        self.name = cfg.name
        self._token = Token(access_token=cfg.token or "", expires_at=math.inf, obtained_at=0.0)

    def obtain(self, previous: Token | None) -> Token:
        return self._token


class _OAuthGrant:
    refreshable = True
    seed_id: str | None = None

    def __init__(self, cfg: CredentialConfig, verify: str | bool) -> None:
        self.cfg, self.name, self.verify = cfg, cfg.name, verify
        self._endpoints: Endpoints | None = None

    def endpoints(self) -> Endpoints:
        """Configured or discovered once (from `issuer`) and kept."""
        if self._endpoints is None:
            self._endpoints = endpoints_for(self.cfg, self.verify)
        return self._endpoints

    def client_auth(self) -> tuple[tuple[str, str] | None, dict[str, str]]:
        """(Basic auth, body params): Basic with a secret, else in the body (public: id only)."""
        cfg = self.cfg
        if cfg.client_auth == "basic" and cfg.client_secret:
            # RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            return (quote_plus(cfg.client_id or ""), quote_plus(cfg.client_secret)), {}
        body = {"client_id": cfg.client_id or ""}
        if cfg.client_secret:
            body["client_secret"] = cfg.client_secret
        return None, body

    def scope_param(self) -> dict[str, str]:
        return {"scope": " ".join(self.cfg.scopes)} if self.cfg.scopes else {}

    def call(
        self,
        what: str,
        form: dict[str, str],
        *,
        timeout: float | None = None,
        sent: tuple[str | None, ...] = (),
    ) -> Token:
        """One token request: `form` plus client authentication, to the token endpoint.

        `sent` are the secrets in `form` besides the configured ones (a stored refresh token, a
        code): the IdP's error text may quote them, and must never carry them further."""
        token_url = self.endpoints().token_url
        if token_url is None:
            raise GrantError(
                "no_token_endpoint", f"{what}: the issuer names no token endpoint", terminal=True
            )
        auth, client = self.client_auth()
        # Extra params from the config never override the protocol's own fields.
        body = {**dict(self.cfg.params), **client, **form}
        started = time.time()
        try:
            answer = exchange(
                "POST",
                token_url,
                what=what,
                timeout=timeout or self.cfg.policy.idp_timeout,
                verify=self.verify,
                data=body,
                auth=auth,
            )
        except GrantError as e:
            self._forget_unknown_outcome(e, form)
            raise
        if 300 <= answer.status < 400:
            raise GrantError(
                "idp_redirected",
                f"{what}: the token endpoint redirected; set token_url to "
                "where it points (secrets are never re-sent to a redirect)",
                terminal=True,
            )
        try:
            parsed = parse_token_answer(
                answer,
                what=what,
                obtained_at=started,
                default_lifetime=self.cfg.policy.default_lifetime,
                secrets=(*self.cfg.secrets(), *sent),
                credential=self.name,
            )
        except GrantError as e:
            self._forget_unknown_outcome(e, form)
            raise
        for warning in parsed.warnings:
            logger.warning("credential %s: %s", self.name, warning)
        return parsed.token

    @staticmethod
    def _forget_unknown_outcome(error: GrantError, form: dict[str, str]) -> None:
        # Only a request that spends a one-time secret (a rotating refresh token, a code) must
        # never be sent twice; asking again for client credentials or a password is harmless.
        if form.get("grant_type") not in ONE_TIME_GRANTS:
            error.outcome_unknown = False

    def refresh(self, refresh_token: str, previous: Token | None = None) -> Token:
        token = self.call(
            "refresh_token request",
            # No scope: a refresh keeps the granted scopes (RFC 6749 §6), which may be fewer
            # than those asked for.
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            timeout=self.cfg.policy.refresh_timeout,
            sent=(
                refresh_token,
                *((previous.access_token, previous.refresh_token) if previous else ()),
            ),
        )
        # Keep the refresh token we used if the IdP did not rotate it (RFC 6749 §6).
        if not token.refresh_token:
            token = replace(token, refresh_token=refresh_token)
        return replace(token, seed_id=self.seed_id)

    def needs_login(self) -> GrantError:
        return GrantError(
            "needs_login",
            f"credential {self.name!r} has no usable refresh token: run `authproxy login "
            f"{self.name}`",
            terminal=True,
        )


class ClientCredentialsGrant(_OAuthGrant):
    def obtain(self, previous: Token | None) -> Token:
        form = {"grant_type": "client_credentials", **self.scope_param()}
        sent = (previous.access_token,) if previous else ()
        return self.call("client_credentials token request", form, sent=sent)


class RefreshTokenGrant(_OAuthGrant):
    def __init__(self, cfg: CredentialConfig, verify: str | bool) -> None:
        super().__init__(cfg, verify)
        self.seed_id = cfg.seed_id

    def obtain(self, previous: Token | None) -> Token:
        # A refresh token stored from an older seed is stale once the config names a new one.
        stored = previous.refresh_token if previous and previous.seed_id == self.seed_id else None
        refresh_token = stored or self.cfg.refresh_token
        if not refresh_token:
            raise GrantError(
                "needs_login",
                f"credential {self.name!r} has no refresh token: set refresh_token in its config "
                f"or run `authproxy login {self.name}`",
                terminal=True,
            )
        return self.refresh(refresh_token, previous)


class LoginGrant(_OAuthGrant):
    """authorization_code and device_code: a person signs in once (`authproxy login`), and the
    proxy lives on the refresh token from then on."""

    def obtain(self, previous: Token | None) -> Token:
        if previous is None or not previous.refresh_token:
            raise self.needs_login()
        return self.refresh(previous.refresh_token, previous)


class PasswordGrant(_OAuthGrant):
    """Legacy (RFC 6749 §4.3; dropped by OAuth 2.1): only for providers that still need it."""

    def obtain(self, previous: Token | None) -> Token:
        if previous is not None and previous.refresh_token:
            try:
                return self.refresh(previous.refresh_token, previous)
            except GrantError as e:
                if not e.terminal:
                    raise
        form = {
            "grant_type": "password",
            "username": self.cfg.username or "",
            "password": self.cfg.password or "",
            **self.scope_param(),
        }
        sent = (previous.access_token, previous.refresh_token) if previous else ()
        return self.call("password token request", form, sent=sent)


def make_grant(cfg: CredentialConfig, verify: str | bool) -> Grant:
    if cfg.grant == "static":
        return StaticGrant(cfg)
    if cfg.grant == "client_credentials":
        return ClientCredentialsGrant(cfg, verify)
    if cfg.grant == "refresh_token":
        return RefreshTokenGrant(cfg, verify)
    if cfg.grant == "password":
        return PasswordGrant(cfg, verify)
    return LoginGrant(cfg, verify)
