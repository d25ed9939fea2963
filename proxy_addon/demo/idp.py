"""A local OAuth 2 authorization server: the RFC 6749 token endpoint, plus fault injection.

It backs both the demo and the end-to-end tests, so it is strict where real servers are
(client authentication, refresh-token rotation with reuse detection) and lets a test make it
fail on demand (`fault`) or vanish (`stop()`), and observe every token request it answered.
"""

from __future__ import annotations

import base64
import hmac
import math
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from proxy_addon.demo.certs import Pki
from proxy_addon.demo.server import BackgroundServer, HangUp, Request, Response

__all__ = ["FAULTS", "AuthServer", "OAuthError"]

FAULTS = frozenset({"500", "malformed", "invalid_grant", "slow"})
# Credentials, so never written to the request log.
_SECRET_PARAMS = frozenset(
    {"client_secret", "refresh_token", "code", "code_verifier", "password", "assertion",
     "client_assertion", "subject_token", "actor_token"}
)  # fmt: skip
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="authproxy-demo"'}


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
        return Response.of_json(self.status, payload, {**_NO_STORE, **self.headers})


@dataclass(slots=True)
class _Grant:
    """One issued token. Tokens descended from one original grant share a `family`."""

    client_id: str
    scope: str
    family: str
    expires_at: float = math.inf
    used: bool = False  # a refresh token that was rotated away


def _normalize_scope(scope: str) -> str:
    return " ".join(dict.fromkeys(scope.split()))


def _read_form(request: Request) -> dict[str, str]:
    if request.headers.get_content_type() != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(request.body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the body is not UTF-8") from None
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise OAuthError("invalid_request", "a parameter was repeated (RFC 6749 §3.2)")
    # RFC 6749 §3.1: a parameter sent without a value is treated as if it were omitted.
    return {name: value for name, value in pairs if value}


def _invalid_client(description: str) -> OAuthError:
    # 401 either way; the Basic challenge tells the client which scheme we support (§5.2).
    return OAuthError("invalid_client", description, 401, _BASIC_CHALLENGE)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except ValueError:
        raise _invalid_client("malformed Basic credentials") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("malformed Basic credentials")
    # RFC 6749 §2.3.1: both halves are form-urlencoded before they are joined and encoded.
    return unquote_plus(client_id), unquote_plus(secret)


def _check_fault(fault: str | None) -> None:
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")


def _fault_response(fault: str | None) -> Response | None:
    if fault == "500":
        return Response(500, b"injected fault\n", {"Content-Type": "text/plain"})
    if fault == "malformed":
        # Truncated JSON, declared as JSON: the nastiest kind of "not JSON".
        headers = {"Content-Type": "application/json", **_NO_STORE}
        return Response(200, b'{"access_token": "trunc', headers)
    if fault == "invalid_grant":
        return OAuthError("invalid_grant", "injected fault").response()
    return None


class AuthServer(BackgroundServer):
    """An OAuth 2 authorization server on `token_url`; `is_valid` lets an API check its tokens."""

    def __init__(
        self,
        pki: Pki,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_token_ttl: float = 3600,
        include_expires_in: bool = True,
        rotate_refresh_tokens: bool = True,
    ) -> None:
        super().__init__(pki, host, port)
        self.access_token_ttl = access_token_ttl
        self.include_expires_in = include_expires_in
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.slow_seconds = 2.0  # how long the "slow" fault holds each answer back
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()  # cuts the "slow" fault's wait short on stop()
        self._clients: dict[str, str] = {}
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._revoked_families: set[str] = set()
        self._fault: str | None = None
        self._fault_count: int | None = None
        self._arrived = 0
        self._log: list[dict[str, Any]] = []
        self._grant_counts: Counter[str] = Counter()

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    def start(self) -> AuthServer:
        self._stopping.clear()
        return super().start()

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    # Fault switches, settable from any thread at any time; the pair changes under the lock
    # because fault_count counts down as requests arrive.

    @property
    def fault(self) -> str | None:
        with self._lock:
            return self._fault

    @fault.setter
    def fault(self, fault: str | None) -> None:
        _check_fault(fault)
        with self._lock:
            self._fault = fault

    @property
    def fault_count(self) -> int | None:
        """When set, the fault applies to this many more token requests, then clears itself."""
        with self._lock:
            return self._fault_count

    @fault_count.setter
    def fault_count(self, count: int | None) -> None:
        with self._lock:
            self._fault_count = count

    def set_fault(self, fault: str | None, count: int | None = None) -> None:
        """Both switches at once, so no request can slip in between the two assignments."""
        _check_fault(fault)
        with self._lock:
            self._fault, self._fault_count = fault, count

    def _take_fault(self) -> str | None:
        with self._lock:
            fault = self._fault
            if fault is not None and self._fault_count is not None:
                self._fault_count -= 1
                if self._fault_count < 0:
                    fault = None
                if self._fault_count <= 0:
                    self._fault, self._fault_count = None, None
            return fault

    # Clients and tokens.

    def add_client(self, client_id: str, client_secret: str) -> None:
        with self._lock:
            self._clients[client_id] = client_secret

    def issue_refresh_token(self, client_id: str, scope: str = "") -> str:
        """Seed a refresh token, standing in for an interactive login."""
        with self._lock:
            if client_id not in self._clients:
                raise ValueError(f"unknown client {client_id!r}")
            return self._new_refresh(client_id, _normalize_scope(scope), secrets.token_hex(8))

    def is_valid(self, access_token: str) -> bool:
        with self._lock:
            grant = self._access.get(access_token)
            return (
                grant is not None
                and grant.family not in self._revoked_families
                and time.time() < grant.expires_at
            )

    def expire_access_tokens(self) -> None:
        with self._lock:
            now = time.time()
            for grant in self._access.values():
                grant.expires_at = min(grant.expires_at, now)

    def revoke_all(self) -> None:
        with self._lock:
            for grant in (*self._access.values(), *self._refresh.values()):
                self._revoked_families.add(grant.family)

    def _new_access(self, client_id: str, scope: str, family: str, ttl: float) -> str:
        token = secrets.token_urlsafe(32)
        self._access[token] = _Grant(client_id, scope, family, time.time() + ttl)
        return token

    def _new_refresh(self, client_id: str, scope: str, family: str) -> str:
        token = secrets.token_urlsafe(32)
        self._refresh[token] = _Grant(client_id, scope, family)
        return token

    # Observability.

    @property
    def token_requests(self) -> int:
        """Token requests answered so far, failed ones included."""
        with self._lock:
            return len(self._log)

    @property
    def requests_log(self) -> list[dict[str, Any]]:
        """One entry per answered token request: time, status, fault, the non-secret params."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    @property
    def grant_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._grant_counts)

    def reset_counters(self) -> None:
        with self._changed:
            self._arrived = 0
            self._log.clear()
            self._grant_counts.clear()
            self._changed.notify_all()

    def wait_for_requests(self, n: int, timeout: float, *, arrived: bool = False) -> bool:
        """Wait until `n` token requests were answered (or, with `arrived`, merely received)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (self._arrived if arrived else len(self._log)) >= n, timeout
            )

    # The token endpoint.

    def handle(self, request: Request) -> Response:
        if urlsplit(request.path).path != "/token":
            return Response.of_json(404, {"error": "not_found"})
        if request.method != "POST":
            return Response.of_json(405, {"error": "method_not_allowed"}, {"Allow": "POST"})
        with self._changed:
            self._arrived += 1
            self._changed.notify_all()
        fault = self._take_fault()
        # Stopped mid-wait: hang up unanswered, as a dying server would, and grant nothing
        # (a refresh token rotated behind the client's back would look like reuse later).
        if fault == "slow" and self._stopping.wait(self.slow_seconds):
            raise HangUp
        entry: dict[str, Any] = {"time": time.time(), "grant_type": None, "client_id": None}
        injected = _fault_response(fault)
        try:
            form = _read_form(request)
            entry.update((k, v) for k, v in form.items() if k not in _SECRET_PARAMS)
            basic = _basic_credentials(request.headers.get("Authorization"))
            if basic is not None:
                entry["client_id"] = basic[0]
            response = injected or self._grant(form, basic)
        except OAuthError as error:
            response = injected or error.response()
        entry.update(fault=fault, status=response.status)
        with self._changed:
            self._log.append(entry)
            if entry["grant_type"] is not None:
                self._grant_counts[entry["grant_type"]] += 1
            self._changed.notify_all()
        return response

    def _grant(self, form: dict[str, str], basic: tuple[str, str] | None) -> Response:
        client_id = self._authenticate(form, basic)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type == "client_credentials":
            return self._client_credentials(client_id, form)
        if grant_type == "refresh_token":
            return self._refresh_token(client_id, form)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    def _authenticate(self, form: dict[str, str], basic: tuple[str, str] | None) -> str:
        body_id, body_secret = form.get("client_id"), form.get("client_secret")
        if basic is not None:
            # RFC 6749 §2.3: one authentication method per request. A client_id in the body
            # alongside Basic is tolerated when it names the same client (some clients send it).
            if body_secret is not None or body_id not in (None, basic[0]):
                raise OAuthError("invalid_request", "more than one client authentication method")
            client_id, secret = basic
        elif body_id is not None and body_secret is not None:
            client_id, secret = body_id, body_secret
        else:
            raise _invalid_client("client authentication required")
        with self._lock:
            expected = self._clients.get(client_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise _invalid_client("client authentication failed")
        return client_id

    def _client_credentials(self, client_id: str, form: dict[str, str]) -> Response:
        scope = _normalize_scope(form.get("scope", ""))
        ttl = self.access_token_ttl
        with self._lock:
            access = self._new_access(client_id, scope, secrets.token_hex(8), ttl)
        return self._token_response(access, scope, ttl, refresh=None)

    def _refresh_token(self, client_id: str, form: dict[str, str]) -> Response:
        presented = form.get("refresh_token")
        if presented is None:
            raise OAuthError("invalid_request", "refresh_token is required")
        ttl = self.access_token_ttl
        with self._lock:
            grant = self._refresh.get(presented)
            if grant is None or grant.client_id != client_id:
                raise OAuthError("invalid_grant", "unknown refresh token")
            if grant.family in self._revoked_families:
                raise OAuthError("invalid_grant", "refresh token revoked")
            if grant.used:
                # A rotated-away token coming back means it leaked: kill everything it begat.
                self._revoked_families.add(grant.family)
                raise OAuthError("invalid_grant", "refresh token reused; grant revoked")
            requested = form.get("scope")
            scope = grant.scope if requested is None else _normalize_scope(requested)
            if not set(scope.split()) <= set(grant.scope.split()):
                raise OAuthError("invalid_scope", "scope exceeds the original grant")
            access = self._new_access(client_id, scope, grant.family, ttl)
            refresh = None
            if self.rotate_refresh_tokens:
                grant.used = True
                # RFC 6749 §6: the new refresh token keeps the original scope.
                refresh = self._new_refresh(client_id, grant.scope, grant.family)
        return self._token_response(access, scope, ttl, refresh)

    def _token_response(self, access: str, scope: str, ttl: float, refresh: str | None) -> Response:
        payload: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        if self.include_expires_in:
            payload["expires_in"] = max(0, int(ttl))  # rounded down: never promise too much
        if scope:
            payload["scope"] = scope
        if refresh is not None:
            payload["refresh_token"] = refresh
        return Response.of_json(200, payload, _NO_STORE)
