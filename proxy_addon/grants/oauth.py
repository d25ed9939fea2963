"""What every grant that talks to a token endpoint shares: the endpoints, client
authentication, one bounded request, reading the answer, and the refresh-token request.

Blocking I/O: callers run these in a worker thread (the proxy) or at the command line.
A subclass sets how it obtains a token. A grant that must add something to every request it
sends (a DPoP proof, a header) overrides `prepare`; one that learns from a refusal how to ask
again (a DPoP nonce) overrides `again`. Client authentication is `client_auth`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .. import hints
from ..discovery import Endpoints, endpoints_for
from ..dpop import NonceCache, nonce_asked, proof
from ..errors import GrantError
from ..idp_http import Answer, exchange
from ..token_answer import parse_token_answer
from .base import KeyFileError
from .client_auth import Authenticate, prepare

if TYPE_CHECKING:
    from ..config import CredentialConfig
    from ..dpop import DpopKey
    from ..tokens import Token

__all__ = ["DPOP_REFRESH_REFUSALS", "ONE_TIME_GRANTS", "OAuthGrant", "TokenRequest"]

logger = logging.getLogger(__name__)

# Grant types whose request spends a one-time secret: sent twice, the second meets a spent
# secret (and an IdP with reuse detection revokes the whole sign-in).
ONE_TIME_GRANTS = frozenset({"refresh_token", "authorization_code"})
# How an IdP refuses a DPoP-bound refresh token with a proof of another key (RFC 9449 §5 names
# no error: some say invalid_grant, others invalid_dpop_proof).
DPOP_REFRESH_REFUSALS = frozenset({"invalid_grant", "invalid_dpop_proof"})


@dataclass(slots=True)
class TokenRequest:
    """One POST to an endpoint of the IdP, client authentication included, before it is sent."""

    url: str
    form: dict[str, str] = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    basic: tuple[str, str] | None = field(default=None, repr=False)
    cert: tuple[str, str] | None = None  # (certificate file, key file) for mutual TLS


class OAuthGrant:
    """Base of the grants that ask a token endpoint. Subclasses implement `obtain`."""

    refreshable = True
    persist = True
    seed_id: str | None = None
    key_error_code = "bad_client_key"  # a key file found unusable at first use

    def __init__(self, cfg: CredentialConfig, verify: str | bool) -> None:
        self.cfg, self.name, self.verify = cfg, cfg.name, verify
        self._endpoints: Endpoints | None = None
        self._client: Authenticate | None = None  # client authentication, its files read
        self._keys_loaded = False
        # DPoP (RFC 9449): the credential's key, given by whoever owns the store
        # (`dpop_keys.attach_dpop_key`), and the nonces the IdP's origins asked for.
        self.dpop_key: DpopKey | None = None
        self.dpop_nonces = NonceCache()

    def obtain(self, previous: Token | None) -> Token:
        raise NotImplementedError

    def load_keys(self) -> None:
        """Read and check every key, certificate and service-account file the grant signs or
        connects with, once: the runtime calls this at start, so that a bad file stops the
        start with a `KeyFileError` naming it, and requests reuse what was loaded. (A grant a
        command-line tool builds loads them at first use instead.)"""
        self._load_keys()
        self._keys_loaded = True

    def _load_keys(self) -> None:
        """What `load_keys` loads; a subclass with files of its own extends it."""
        self._client = prepare(self.cfg)

    def keys_loaded(self) -> None:
        """`load_keys` now if nobody has yet; a bad file is then a terminal GrantError."""
        if not self._keys_loaded:
            try:
                self.load_keys()
            except KeyFileError as e:
                raise GrantError(
                    self.key_error_code, f"credential {self.name!r}: {e}", terminal=True
                ) from None

    def endpoints(self) -> Endpoints:
        """Configured or discovered once (from `issuer`) and kept."""
        if self._endpoints is None:
            from .registry import spec_for  # the registry imports grant modules lazily

            needs = spec_for(self.cfg.grant).rules.endpoint
            self._endpoints = endpoints_for(self.cfg, self.verify, needs=needs)
        return self._endpoints

    def scope_param(self) -> dict[str, str]:
        return {"scope": " ".join(self.cfg.scopes)} if self.cfg.scopes else {}

    def prepare(self, request: TokenRequest) -> TokenRequest:
        """The last word on a request before it is sent; a hook for proofs (DPoP) or headers.
        With a DPoP key: a fresh proof, with the nonce the endpoint's origin last gave."""
        if self.dpop_key is not None:
            nonce = self.dpop_nonces.get(request.url)
            request.headers["DPoP"] = proof(self.dpop_key, "POST", request.url, nonce=nonce)
        return request

    def again(self, request: TokenRequest, answer: Answer) -> TokenRequest | None:
        """A request to send once more after `answer` refused `request` without acting on it
        (a DPoP `use_dpop_nonce`), or None to take the answer as it is. At most once per
        request; `prepare` runs again on it (a fresh proof with the nonce just learned)."""
        if self.dpop_key is None:
            return None
        self.dpop_nonces.learn(request.url, answer.headers)
        return request if nonce_asked(answer.status, answer.headers, answer.body) else None

    def post(self, url: str, form: dict[str, str], *, what: str, timeout: float) -> Answer:
        """One bounded POST to `url` with `form` and the client's authentication."""
        self.keys_loaded()
        authenticate = self._client
        assert authenticate is not None  # loaded with the keys
        client = authenticate(url)
        request = self.prepare(
            TokenRequest(
                url, {**form, **client.form}, dict(client.headers), client.basic, client.cert
            )
        )
        answer = self._send(request, what, timeout)
        retry = self.again(request, answer)
        if retry is None:
            return answer
        # A fresh client assertion too: the refused request may have spent its jti.
        retry.form.update(authenticate(url).form)
        answer = self._send(self.prepare(retry), what, timeout)
        if self.dpop_key is not None:
            self.dpop_nonces.learn(url, answer.headers)
        return answer

    def _send(self, request: TokenRequest, what: str, timeout: float) -> Answer:
        return exchange(
            "POST",
            request.url,
            what=what,
            timeout=timeout,
            verify=self.verify,
            data=request.form,
            auth=request.basic,
            headers=request.headers,
            cert=request.cert,
        )

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
        started = time.time()
        try:
            # Extra params from the config never override the protocol's own fields.
            answer = self.post(
                token_url,
                {**dict(self.cfg.params), **form},
                what=what,
                timeout=timeout or self.cfg.policy.idp_timeout,
            )
            if 300 <= answer.status < 400:
                raise GrantError(
                    "idp_redirected",
                    f"{what}: the token endpoint redirected; set token_url to "
                    "where it points (secrets are never re-sent to a redirect)",
                    terminal=True,
                )
            parsed = parse_token_answer(
                answer,
                what=what,
                obtained_at=started,
                default_lifetime=self.cfg.policy.default_lifetime,
                secrets=(*self.cfg.secrets(), *sent),
                credential=self.name,
            )
        except GrantError as e:
            # Only a request that spends a one-time secret (a rotating refresh token, a code)
            # must never be sent twice; asking again for client credentials is harmless.
            if form.get("grant_type") not in ONE_TIME_GRANTS:
                e.outcome_unknown = False
            raise
        for warning in parsed.warnings:
            logger.warning("credential %s: %s", self.name, warning)
        return parsed.token

    def refresh(self, refresh_token: str, previous: Token | None = None) -> Token:
        try:
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
        except GrantError as e:
            if self.dpop_key is not None and e.code in DPOP_REFRESH_REFUSALS:
                raise self._dpop_refresh_refused(e) from None
            raise
        # Keep the refresh token we used if the IdP did not rotate it (RFC 6749 §6).
        if not token.refresh_token:
            token = replace(token, refresh_token=refresh_token)
        return replace(token, seed_id=self.seed_id)

    def _dpop_refresh_refused(self, e: GrantError) -> GrantError:
        """A DPoP refresh refused: the refresh token is bound to the key it was issued with
        (RFC 9449 §5), and no other proof, however fresh, will redeem it. Terminal, so that
        the cache stops asking; `invalid_grant`, so that clients and `status` are told to
        sign in again."""
        thumbprint = self.dpop_key.thumbprint if self.dpop_key else ""
        return GrantError(
            "invalid_grant",
            f"{e}. The refresh token is bound to the DPoP key it was "
            f"issued to, and the IdP refused a proof of the key held now (thumbprint "
            f"{thumbprint[:12]}...); if the key stored with the credential's tokens was lost "
            "or replaced, the tokens bound to the old key cannot be used any more: a new "
            f"sign-in is needed (run `{hints.login(self.name)}`, or put a new refresh_token in "
            "the config)",
            terminal=True,
        )

    def needs_login(self) -> GrantError:
        return GrantError(
            "needs_login",
            f"credential {self.name!r} has no usable refresh token: run `{hints.login(self.name)}`",
            terminal=True,
        )
