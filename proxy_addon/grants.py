"""Getting tokens from an identity provider, through requests-oauthlib. Blocking I/O: callers
run these in a worker thread.

Each grant turns the IdP's answer into a `Token`, and every failure into a `GrantError` that says
whether trying again can help (`terminal`). Token requests never go through a proxy (our own
`HTTPS_PROXY` may point back at us) and always verify the IdP's certificate.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import quote_plus

import requests
from oauthlib.oauth2 import (
    BackendApplicationClient,
    LegacyApplicationClient,
    MissingTokenError,
    OAuth2Error,
)
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from .config import CredentialConfig
from .discovery import Endpoints, endpoints_for
from .errors import GrantError
from .tokens import Token

__all__ = ["Grant", "GrantError", "LoginGrant", "make_grant"]

# oauthlib raises when the IdP grants other scopes than asked; we take what the IdP gives.
os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
# requests-oauthlib and oauthlib log token bodies at DEBUG: never let them.
for _name in ("requests_oauthlib", "oauthlib"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# RFC 6749 §5.2 errors that another attempt with the same input cannot fix.
TERMINAL_ERRORS = frozenset(
    {
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_request",
        "access_denied",
    }
)


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

    def session(self, client: Any = None, *, scoped: bool = True, **kwargs: Any) -> OAuth2Session:
        scope = (list(self.cfg.scopes) or None) if scoped else None
        session = OAuth2Session(
            client=client or BackendApplicationClient(self.cfg.client_id, scope=scope),
            scope=scope,
            **kwargs,
        )
        session.trust_env = False  # never via HTTP(S)_PROXY: that may be us
        session.max_redirects = 0  # a redirect would re-post the secrets in the body elsewhere
        for hook in ("access_token_response", "refresh_token_response"):
            session.register_compliance_hook(hook, _check_status)
        return session

    def client_auth(self) -> tuple[HTTPBasicAuth | None, dict[str, Any]]:
        """(auth, body params) for fetch_token: Basic, or in the body (public clients: id only)."""
        cfg = self.cfg
        if cfg.client_auth == "basic" and cfg.client_secret:
            # RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            auth = HTTPBasicAuth(quote_plus(cfg.client_id or ""), quote_plus(cfg.client_secret))
            return auth, {"include_client_id": False}
        body: dict[str, Any] = {"include_client_id": True}
        if cfg.client_secret:
            body["client_secret"] = cfg.client_secret
        return None, body

    def call(self, what: str, fn: Any, **kwargs: Any) -> Token:
        """One token request through requests-oauthlib, every failure made a GrantError."""
        started = time.time()
        token_url = self.endpoints().token_url
        if token_url is None:
            raise GrantError(
                "no_token_endpoint", f"{what}: the issuer names no token endpoint", terminal=True
            )
        try:
            raw: Mapping[str, Any] = fn(
                token_url, timeout=self.cfg.policy.idp_timeout, verify=self.verify, **kwargs
            )
        except GrantError:
            raise
        except MissingTokenError:
            raise GrantError(
                "idp_bad_response",
                f"{what}: the IdP's answer holds no access token",
                terminal=False,
            ) from None
        except OAuth2Error as e:
            code = e.error or "oauth_error"
            # The IdP's own words, shortened: they reach clients in the 502 body.
            desc = f": {_clip(str(e.description))}" if e.description else ""
            raise GrantError(
                code, f"{what} refused by the IdP: {code}{desc}", terminal=code in TERMINAL_ERRORS
            ) from None
        except requests.Timeout:
            raise GrantError(
                "idp_timeout",
                f"{what}: the IdP did not answer within {self.cfg.policy.idp_timeout:g}s",
                terminal=False,
            ) from None
        except requests.exceptions.SSLError as e:
            raise GrantError(
                "idp_tls_error",
                f"{what}: TLS to the IdP failed ({_short(e)}); if it uses a private CA, list it "
                "under ca_certs",
                terminal=False,
            ) from None
        except requests.ConnectionError as e:
            raise GrantError(
                "idp_unreachable", f"{what}: cannot reach the IdP ({_short(e)})", terminal=False
            ) from None
        except requests.TooManyRedirects:
            raise GrantError(
                "idp_redirected",
                f"{what}: the token endpoint redirected; set token_url to "
                "where it points (secrets are never re-sent to a redirect)",
                terminal=True,
            ) from None
        except requests.RequestException as e:
            raise GrantError(
                "idp_unavailable",
                f"{what}: {type(e).__name__} talking to the IdP",
                terminal=False,
            ) from None
        except (ValueError, KeyError, TypeError) as e:
            # oauthlib could not read the answer (not JSON, no access_token, ...).
            raise GrantError(
                "idp_bad_response",
                f"{what}: unreadable answer from the IdP ({_short(e)})",
                terminal=False,
            ) from None
        return _to_token(raw, started, self.cfg.policy.default_lifetime)

    def refresh(self, refresh_token: str) -> Token:
        auth, extra = self.client_auth()
        extra.pop("include_client_id")
        if auth is None:
            extra["client_id"] = self.cfg.client_id
        token = self.call(
            "refresh_token request",
            # No scope: a refresh keeps the granted scopes (RFC 6749 §6), which may be fewer
            # than those asked for.
            self.session(scoped=False).refresh_token,
            refresh_token=refresh_token,
            auth=auth,
            **extra,
            **dict(self.cfg.params),
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
        auth, extra = self.client_auth()
        return self.call(
            "client_credentials token request",
            self.session().fetch_token,
            auth=auth,
            **extra,
            **dict(self.cfg.params),
        )


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
        return self.refresh(refresh_token)


class LoginGrant(_OAuthGrant):
    """authorization_code and device_code: a person signs in once (`authproxy login`), and the
    proxy lives on the refresh token from then on."""

    def obtain(self, previous: Token | None) -> Token:
        if previous is None or not previous.refresh_token:
            raise self.needs_login()
        return self.refresh(previous.refresh_token)


class PasswordGrant(_OAuthGrant):
    """Legacy (RFC 6749 §4.3; dropped by OAuth 2.1): only for providers that still need it."""

    def obtain(self, previous: Token | None) -> Token:
        if previous is not None and previous.refresh_token:
            try:
                return self.refresh(previous.refresh_token)
            except GrantError as e:
                if not e.terminal:
                    raise
        auth, extra = self.client_auth()
        scope = list(self.cfg.scopes) or None
        session = self.session(client=LegacyApplicationClient(self.cfg.client_id, scope=scope))
        return self.call(
            "password token request",
            session.fetch_token,
            username=self.cfg.username,
            password=self.cfg.password,
            auth=auth,
            **extra,
            **dict(self.cfg.params),
        )


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


def _check_status(response: requests.Response) -> requests.Response:
    """Compliance hook: 5xx and 429 mean "try later", whatever the body says."""
    if response.status_code >= 500 or response.status_code == 429:
        raise GrantError(
            "idp_unavailable", f"the IdP answered HTTP {response.status_code}", terminal=False
        )
    if response.status_code >= 400 and "json" not in response.headers.get("content-type", ""):
        raise GrantError(
            "idp_error",
            f"the token endpoint answered HTTP {response.status_code} (is token_url right?)",
            terminal=True,
        )
    return response


def _to_token(raw: Mapping[str, Any], obtained_at: float, default_lifetime: float) -> Token:
    expires_in = raw.get("expires_in")
    try:
        lifetime = float(expires_in) if expires_in is not None else default_lifetime
    except (TypeError, ValueError):
        lifetime = default_lifetime
    scope = raw.get("scope") or ()
    if isinstance(scope, str):
        scope = scope.split()
    token_type = str(raw.get("token_type") or "Bearer")
    return Token(
        access_token=str(raw["access_token"]),
        expires_at=obtained_at + lifetime,
        obtained_at=obtained_at,
        token_type="Bearer" if token_type.lower() == "bearer" else token_type,
        refresh_token=raw.get("refresh_token"),
        scope=tuple(scope),
    )


def _short(e: BaseException) -> str:
    """An exception's gist without the URL-laden chains requests produces."""
    return _clip(str(e.args[0] if e.args else e))


def _clip(text: str) -> str:
    return text if len(text) < 160 else text[:157] + "..."
