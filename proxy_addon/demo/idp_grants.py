"""What the demo authorization server knows and the rules for changing it: clients, users,
tokens, authorization codes and device authorizations, all guarded by one lock.

`idp.AuthServer` turns HTTP requests into calls here; the calls raise `OAuthError` for any
answer other than a grant. Tokens descended from one grant share a `family`, so revoking one
grant (a reused refresh token, a reused code, an RFC 7009 revocation) takes all of them.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from proxy_addon.demo.idp_protocol import (
    AuthorizationRequest,
    Client,
    check_registrable_redirect_uri,
    new_user_code,
    normalize_scope,
    user_code_key,
    verifier_matches,
)
from proxy_addon.demo.server import Response

__all__ = ["NO_STORE", "WRONG_LOGIN", "GrantStore", "Issued", "OAuthError", "invalid_client"]

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="authproxy-demo"'}
WRONG_LOGIN = "wrong username or password"


class OAuthError(Exception):
    """An error answer of the token endpoint (RFC 6749 §5.2)."""

    def __init__(
        self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status
        self.headers = headers or {}

    def response(self) -> Response:
        payload = {"error": self.error, "error_description": self.description}
        return Response.of_json(self.status, payload, {**NO_STORE, **self.headers})


def invalid_client(description: str) -> OAuthError:
    # 401 either way; the Basic challenge tells the client which scheme we support (§5.2).
    return OAuthError("invalid_client", description, 401, _BASIC_CHALLENGE)


@dataclass(frozen=True, slots=True)
class Issued:
    """What a successful grant hands out; `refresh` is None when no refresh token is issued."""

    access: str
    scope: str
    refresh: str | None


@dataclass(slots=True)
class _Grant:
    """One issued token. Tokens descended from one original grant share a `family`."""

    client_id: str
    scope: str
    family: str
    expires_at: float = math.inf
    used: bool = False  # a refresh token that was rotated away
    subject: str | None = None  # the user who granted it, if one did
    revoked: bool = False  # this token alone (RFC 7009 on an access token)
    dpop_jkt: str | None = None  # a refresh token bound to a DPoP key (RFC 9449 §5)


@dataclass(slots=True)
class _Code:
    """An authorization code and all it is bound to (RFC 6749 §4.1.2, RFC 7636 §4.4)."""

    request: AuthorizationRequest
    subject: str
    expires_at: float
    family: str  # of the tokens it is redeemed for, all revoked if the code comes back
    used: bool = False


@dataclass(slots=True)
class _Device:
    """One device authorization (RFC 8628 §3.2), from its request to its redemption."""

    client_id: str
    scope: str
    expires_at: float
    interval: float  # grows with every too-early poll (§3.5)
    family: str
    status: Literal["pending", "approved", "denied", "redeemed"] = "pending"
    subject: str | None = None
    last_poll: float | None = None  # time.monotonic() of the previous token request


def _family() -> str:
    return secrets.token_hex(8)


class GrantStore:
    """All grant state. Every public method takes `lock` itself; `_`-methods expect it held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: dict[str, Client] = {}
        self.access: dict[str, _Grant] = {}
        self.refresh: dict[str, _Grant] = {}
        self._users: dict[str, str] = {}
        self._codes: dict[str, _Code] = {}
        self._devices: dict[str, _Device] = {}  # by device_code
        self._user_codes: dict[str, str] = {}  # user_code_key -> device_code
        self._revoked_families: set[str] = set()

    # Clients and users.

    def add_client(self, client_id: str, secret: str | None, redirect_uris: Iterable[str]) -> None:
        uris = tuple(redirect_uris)
        for uri in uris:
            check_registrable_redirect_uri(uri)
        with self.lock:
            self.clients[client_id] = Client(secret, uris)

    def client(self, client_id: str) -> Client | None:
        with self.lock:
            return self.clients.get(client_id)

    def add_user(self, username: str, password: str) -> None:
        if not username or not password:
            raise ValueError("a user needs a username and a password")
        with self.lock:
            self._users[username] = password

    def check_user(self, username: str, password: str) -> bool:
        with self.lock:
            expected = self._users.get(username)
        # Compared even for an unknown user, so the answer takes as long either way.
        candidate = secrets.token_hex(16) if expected is None else expected
        matches = hmac.compare_digest(candidate.encode(), password.encode())
        return expected is not None and matches

    def authenticate(
        self, body_id: str | None, body_secret: str | None, basic: tuple[str, str] | None
    ) -> str:
        """The client a request comes from: Basic, secret in the body, or public (§2.3, §3.2.1)."""
        if basic is not None:
            # RFC 6749 §2.3: one authentication method per request. A client_id in the body
            # alongside Basic is tolerated when it names the same client (some clients send it).
            if body_secret is not None or body_id not in (None, basic[0]):
                raise OAuthError("invalid_request", "more than one client authentication method")
            client_id, secret = basic
        elif body_id is not None and body_secret is not None:
            client_id, secret = body_id, body_secret
        elif body_id is not None:
            return self._public_client(body_id)
        else:
            raise invalid_client("client authentication required")
        client = self.client(client_id)
        # A public client has no secret to present: one sent anyway is a misconfiguration.
        if (
            client is None
            or client.secret is None
            or not hmac.compare_digest(client.secret.encode(), secret.encode())
        ):
            raise invalid_client("client authentication failed")
        return client_id

    def _public_client(self, client_id: str) -> str:
        client = self.client(client_id)
        if client is None:
            raise invalid_client("client authentication failed")
        if not client.public:
            raise invalid_client("client authentication required")
        return client_id

    # Tokens.

    def is_valid(self, access_token: str) -> bool:
        with self.lock:
            grant = self.access.get(access_token)
            return (
                grant is not None
                and not grant.revoked
                and grant.family not in self._revoked_families
                and time.time() < grant.expires_at
            )

    def subject_of(self, access_token: str) -> str | None:
        with self.lock:
            grant = self.access.get(access_token)
            return grant.subject if grant is not None else None

    def expire_access_tokens(self) -> None:
        with self.lock:
            now = time.time()
            for grant in self.access.values():
                grant.expires_at = min(grant.expires_at, now)

    def revoke_all(self) -> None:
        with self.lock:
            for grant in (*self.access.values(), *self.refresh.values()):
                self._revoked_families.add(grant.family)

    def seed_refresh_token(self, client_id: str, scope: str) -> str:
        with self.lock:
            if client_id not in self.clients:
                raise ValueError(f"unknown client {client_id!r}")
            return self._new_refresh(client_id, normalize_scope(scope), _family())

    def revoke(self, client_id: str, token: str) -> None:
        """RFC 7009 §2.1: a refresh token takes its grant's access tokens along; an access
        token goes alone. An unknown token is no error (§2.2)."""
        with self.lock:
            refresh, access = self.refresh.get(token), self.access.get(token)
            grant = refresh or access
            if grant is None:
                return
            if grant.client_id != client_id:
                raise OAuthError("unauthorized_client", "the token was issued to another client")
            if refresh is not None:
                self._revoked_families.add(refresh.family)
            else:
                grant.revoked = True

    def _new_access(
        self, client_id: str, scope: str, family: str, ttl: float, subject: str | None = None
    ) -> str:
        token = secrets.token_urlsafe(32)
        self.access[token] = _Grant(client_id, scope, family, time.time() + ttl, subject=subject)
        return token

    def _new_refresh(
        self, client_id: str, scope: str, family: str, subject: str | None = None
    ) -> str:
        token = secrets.token_urlsafe(32)
        self.refresh[token] = _Grant(client_id, scope, family, subject=subject)
        return token

    def _new_pair(
        self, client_id: str, scope: str, family: str, ttl: float, subject: str | None
    ) -> Issued:
        """Access and refresh token for a grant a user made."""
        access = self._new_access(client_id, scope, family, ttl, subject)
        return Issued(access, scope, self._new_refresh(client_id, scope, family, subject))

    # Grants that need no user.

    def client_credentials(self, client_id: str, scope: str, ttl: float) -> Issued:
        with self.lock:
            client = self.clients.get(client_id)
            if client is not None and client.public:
                # RFC 6749 §4.4: only a client that can authenticate may act on its own behalf.
                raise OAuthError("unauthorized_client", "a public client cannot use this grant")
            return Issued(self._new_access(client_id, scope, _family(), ttl), scope, None)

    def bearer_grant(self, issuer: str, subject: str, scope: str, ttl: float) -> Issued:
        """An access token for a verified JWT-bearer assertion (RFC 7523 §2.1): no refresh
        token, the client asks with a new assertion instead."""
        with self.lock:
            access = self._new_access(issuer, scope, _family(), ttl, subject)
            return Issued(access, scope, None)

    def refresh_grant(
        self, client_id: str, presented: str, requested: str | None, ttl: float, rotate: bool
    ) -> Issued:
        with self.lock:
            grant = self.refresh.get(presented)
            if grant is None or grant.client_id != client_id:
                raise OAuthError("invalid_grant", "unknown refresh token")
            if grant.family in self._revoked_families:
                raise OAuthError("invalid_grant", "refresh token revoked")
            if grant.used:
                # A rotated-away token coming back means it leaked: kill everything it begat.
                self._revoked_families.add(grant.family)
                raise OAuthError("invalid_grant", "refresh token reused; grant revoked")
            scope = grant.scope if requested is None else normalize_scope(requested)
            if not set(scope.split()) <= set(grant.scope.split()):
                raise OAuthError("invalid_scope", "scope exceeds the original grant")
            access = self._new_access(client_id, scope, grant.family, ttl, grant.subject)
            refresh = None
            if rotate:
                grant.used = True
                # RFC 6749 §6: the new refresh token keeps the original scope.
                refresh = self._new_refresh(client_id, grant.scope, grant.family, grant.subject)
            return Issued(access, scope, refresh)

    # Grants a user makes.

    def password_grant(
        self, client_id: str, username: str, password: str, scope: str, ttl: float
    ) -> Issued:
        if not self.check_user(username, password):
            raise OAuthError("invalid_grant", WRONG_LOGIN)
        with self.lock:
            return self._new_pair(client_id, scope, _family(), ttl, username)

    def new_code(self, request: AuthorizationRequest, subject: str, ttl: float) -> str:
        code = secrets.token_urlsafe(32)
        with self.lock:
            self._codes[code] = _Code(request, subject, time.time() + ttl, _family())
        return code

    def bind_refresh_dpop(self, refresh_token: str, jkt: str) -> None:
        """Bind a refresh token issued to a DPoP proof to the proof's key (RFC 9449 §5).

        The RFC asks this of public clients and lets a server bind confidential clients' too;
        the demo binds every one, so that a client that changes its key mid-grant is caught."""
        with self.lock:
            grant = self.refresh.get(refresh_token)
            if grant is not None:
                grant.dpop_jkt = jkt

    def check_refresh_dpop(self, client_id: str, presented: str, jkt: str | None) -> None:
        """Refuse a bound refresh token without a proof of its key, before it is spent: a
        refused refresh neither rotates the token nor counts as its reuse."""
        with self.lock:
            grant = self.refresh.get(presented)
            bound = grant.dpop_jkt if grant is not None and grant.client_id == client_id else None
        if bound is None:
            return  # unbound, or unknown to this client: the grant itself says which
        if jkt is None:
            raise OAuthError(
                "invalid_dpop_proof", "the refresh token is bound to a DPoP key; send a proof"
            )
        if jkt != bound:
            raise OAuthError("invalid_grant", "the refresh token is bound to another DPoP key")

    def code_dpop_jkt(self, presented: str) -> str | None:
        """The DPoP key thumbprint an authorization code is bound to (RFC 9449 §10), if any."""
        with self.lock:
            code = self._codes.get(presented)
            return code.request.fields.get("dpop_jkt") if code is not None else None

    def redeem_code(
        self,
        client_id: str,
        presented: str,
        redirect_uri: str | None,
        verifier: str | None,
        ttl: float,
    ) -> Issued:
        with self.lock:
            code = self._codes.get(presented)
            # A failed attempt leaves the code usable: only a redemption consumes it.
            if code is None or code.request.client_id != client_id:
                raise OAuthError("invalid_grant", "unknown authorization code")
            if code.used:
                # RFC 6749 §4.1.2: a code used twice was stolen; revoke what it bought.
                self._revoked_families.add(code.family)
                raise OAuthError("invalid_grant", "authorization code reused; its tokens revoked")
            if time.time() >= code.expires_at:
                raise OAuthError("invalid_grant", "authorization code expired")
            _check_redirect_uri(code.request, redirect_uri)
            _check_pkce(code.request.code_challenge, verifier)
            code.used = True
            scope = code.request.scope
            return self._new_pair(client_id, scope, code.family, ttl, code.subject)

    # Device authorizations (RFC 8628).

    def new_device(
        self, client_id: str, scope: str, ttl: float, interval: float
    ) -> tuple[str, str]:
        """(device_code, user_code) of a new pending device authorization."""
        device_code = secrets.token_urlsafe(32)
        with self.lock:
            user_code = new_user_code()
            while user_code_key(user_code) in self._user_codes:
                user_code = new_user_code()
            self._devices[device_code] = _Device(
                client_id, scope, time.time() + ttl, interval, _family()
            )
            self._user_codes[user_code_key(user_code)] = device_code
        return device_code, user_code

    def poll_device(self, client_id: str, device_code: str, ttl: float, step: float) -> Issued:
        """One token request for a device authorization (RFC 8628 §3.4, §3.5)."""
        with self.lock:
            device = self._devices.get(device_code)
            if device is None or device.client_id != client_id:
                raise OAuthError("invalid_grant", "unknown device_code")
            now = time.monotonic()
            previous, device.last_poll = device.last_poll, now
            if device.status == "redeemed":
                self._revoked_families.add(device.family)  # as for a reused authorization code
                raise OAuthError("invalid_grant", "device_code reused; its tokens revoked")
            if time.time() >= device.expires_at:
                raise OAuthError("expired_token", "the device_code expired")
            if device.status == "denied":
                raise OAuthError("access_denied", "the user denied the request")
            if device.status == "pending":
                # §3.5: slow_down is a variant of authorization_pending, so only a pending
                # request is held to the interval; an answered one is told at once.
                if previous is not None and now - previous < device.interval:
                    device.interval += step
                    raise OAuthError("slow_down", f"polling too fast; wait {step:g} s more")
                raise OAuthError("authorization_pending", "the user has not answered yet")
            device.status = "redeemed"
            return self._new_pair(client_id, device.scope, device.family, ttl, device.subject)

    def device_problem(self, typed: str) -> str | None:
        """Why this user code cannot be answered now, or None if it can."""
        with self.lock:
            return self._device_problem(typed)[1]

    def settle_device(self, typed: str, subject: str | None) -> str | None:
        """Approve (for `subject`) or deny (subject None) a pending device authorization;
        the problem if it cannot be (anymore), else None."""
        with self.lock:
            device, problem = self._device_problem(typed)
            if device is not None:
                device.status = "denied" if subject is None else "approved"
                device.subject = subject
            return problem

    def _device_problem(self, typed: str) -> tuple[_Device | None, str | None]:
        device = self._devices.get(self._user_codes.get(user_code_key(typed), ""))
        if device is None or time.time() >= device.expires_at:
            return None, "unknown or expired code"
        if device.status != "pending":
            return None, "this code was already used"
        return device, None


def _check_redirect_uri(request: AuthorizationRequest, sent: str | None) -> None:
    # RFC 6749 §4.1.3: required, and identical, if the authorization request had it.
    if (request.redirect_uri_sent or sent is not None) and sent != request.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")


def _check_pkce(challenge: str | None, verifier: str | None) -> None:
    if challenge is None:
        if verifier is not None:
            # A verifier for a code that had no challenge is a PKCE downgrade (RFC 9700 §2.1.1).
            raise OAuthError("invalid_grant", "code_verifier given, but the code has no challenge")
        return
    if verifier is None:
        raise OAuthError("invalid_grant", "code_verifier is required for this code")
    if not verifier_matches(verifier, challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
