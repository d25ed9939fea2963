"""A local OAuth 2 authorization server, plus fault injection.

Endpoints: token (RFC 6749 client_credentials, authorization_code with PKCE per RFC 7636,
password and refresh_token; RFC 8628 device_code), authorization with a sign-in form, device
authorization and verification (RFC 8628), revocation (RFC 7009), and discovery (RFC 8414 and
OpenID Connect Discovery).

It backs both the demo and the end-to-end tests, so it is strict where real servers are
(client authentication, refresh-token rotation with reuse detection, exact redirect URIs) and
lets a test make it fail on demand (`fault`) or vanish (`stop()`), and observe every token
request it answered. The grant rules live in `idp_grants`, the request checks that need no
state in `idp_protocol`, the HTML in `idp_pages`; this module speaks HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

from cryptography import x509

from proxy_addon.demo import idp_pages as pages
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.dpop_check import DpopVerifier, ProofError
from proxy_addon.demo.idp_grants import (
    NO_STORE,
    WRONG_LOGIN,
    GrantStore,
    Issued,
    OAuthError,
    invalid_client,
)
from proxy_addon.demo.idp_jwt import JWT_BEARER_GRANT, JwtChecker, VerifyKey
from proxy_addon.demo.idp_protocol import (
    AuthorizationRequest,
    PageError,
    RedirectError,
    normalize_scope,
    parse_authorization_request,
    valid_verifier,
    with_query,
)
from proxy_addon.demo.server import BackgroundServer, HangUp, Request, Response

__all__ = ["DEVICE_CODE_GRANT", "FAULTS", "GRANT_TYPES", "AuthServer", "OAuthError"]

FAULTS = frozenset({"500", "503", "malformed", "invalid_grant", "slow"})
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GRANT_TYPES = (
    "authorization_code", "refresh_token", "client_credentials", "password", DEVICE_CODE_GRANT,
    JWT_BEARER_GRANT,
)  # fmt: skip
_AUTH_METHODS = (
    "client_secret_basic", "client_secret_post", "none", "private_key_jwt", "client_secret_jwt",
    "tls_client_auth", "self_signed_tls_client_auth",
)  # fmt: skip
# Credentials, so never written to the request log.
_SECRET_PARAMS = frozenset(
    {"client_secret", "refresh_token", "code", "code_verifier", "password", "assertion",
     "client_assertion", "subject_token", "actor_token", "device_code", "token"}
)  # fmt: skip
_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})

_Endpoint = Callable[[Request], Response]
_GrantHandler = Callable[[str, dict[str, str], float], Issued]


def x5t_s256(der: bytes) -> str:
    """A certificate's `x5t#S256` thumbprint (RFC 8705 §3.1)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _form_pairs(request: Request) -> list[tuple[str, str]]:
    if request.headers.get_content_type() != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        return parse_qsl(request.body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the body is not UTF-8") from None


def _query_pairs(request: Request) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(request.path).query, keep_blank_values=True)


def _read_form(request: Request) -> dict[str, str]:
    pairs = _form_pairs(request)
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise OAuthError("invalid_request", "a parameter was repeated (RFC 6749 §3.2)")
    # RFC 6749 §3.1: a parameter sent without a value is treated as if it were omitted.
    return {name: value for name, value in pairs if value}


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name)
    if value is None:
        raise OAuthError("invalid_request", f"{name} is required")
    return value


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except ValueError:
        raise invalid_client("malformed Basic credentials") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise invalid_client("malformed Basic credentials")
    # RFC 6749 §2.3.1: both halves are form-urlencoded before they are joined and encoded.
    return unquote_plus(client_id), unquote_plus(secret)


def _check_fault(fault: str | None) -> None:
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")


def _fault_response(fault: str | None, retry_after: str | None = None) -> Response | None:
    if fault == "500":
        return Response(500, b"injected fault\n", {"Content-Type": "text/plain"})
    if fault == "503":
        headers = {"Content-Type": "text/plain"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return Response(503, b"injected fault: come back later\n", headers)
    if fault == "malformed":
        # Truncated JSON, declared as JSON: the nastiest kind of "not JSON".
        headers = {"Content-Type": "application/json", **NO_STORE}
        return Response(200, b'{"access_token": "trunc', headers)
    if fault == "invalid_grant":
        return OAuthError("invalid_grant", "injected fault").response()
    return None


def _json_number(value: float) -> int | float:
    # Whole seconds as an integer, as clients expect; a test's sub-second value as it is.
    return int(value) if float(value).is_integer() else value


class AuthServer(BackgroundServer):
    """An OAuth 2 authorization server on `url`; `is_valid` lets an API check its tokens."""

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
        self.retry_after: str | None = "10"  # the Retry-After header of the "503" fault
        # When set, the expires_in told to clients instead of the real lifetime: lets a test
        # send 0, negative or absurd lifetimes (the real one is never below 0).
        self.advertised_expires_in: float | None = None
        self.code_ttl = 60.0  # authorization code lifetime
        self.device_code_ttl = 600.0
        self.device_interval = 5.0  # the polling interval a device authorization starts with
        # When set, the interval told to clients, below the one enforced: lets a test see how a
        # client takes slow_down.
        self.advertised_interval: float | None = None
        self.slow_down_step = 5.0  # RFC 8628 §3.5: what each slow_down adds to that interval
        self._grants = GrantStore()
        self.jwt = JwtChecker()  # keys for client assertions and JWT-bearer issuers
        # RFC 8705: clients that authenticate by certificate (client_id -> thumbprint or
        # subject DN), and the certificate each access token is bound to.
        self._tls_clients: dict[str, tuple[str | None, str | None]] = {}
        self._bound: dict[str, str] = {}
        # RFC 9449: proofs at the token endpoint, and the key (jkt) each token is bound to.
        self.dpop = DpopVerifier()
        self._dpop_bound: dict[str, str] = {}
        # One lock for grants and counters; tests peek at `_access` under it.
        self._lock = self._grants.lock
        self._access = self._grants.access
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()  # cuts the "slow" fault's wait short on stop()
        self._fault: str | None = None
        # Hostile switches for tests: `token_answer` may replace the answer to any token
        # request (it gets the request's form); `token_extra` is merged into every token it
        # grants (None removes a field); `metadata_extra` into the discovery document.
        self.token_answer: Callable[[dict[str, str]], Response | None] | None = None
        self.token_extra: dict[str, Any] = {}
        self.metadata_extra: dict[str, Any] = {}
        self._fault_count: int | None = None
        self._arrived = 0
        self._log: list[dict[str, Any]] = []
        self._grant_counts: Counter[str] = Counter()
        self._discovery_requests = 0
        self._revocations = 0
        self._routes: dict[str, tuple[frozenset[str], _Endpoint]] = {
            "/token": (_POST, self._token_endpoint),
            "/authorize": (_GET | _POST, self._authorize),
            "/device_authorization": (_POST, self._device_authorization),
            "/device": (_GET | _POST, self._device_verification),
            "/revoke": (_POST, self._revoke),
            "/.well-known/openid-configuration": (_GET, self._discovery),
            "/.well-known/oauth-authorization-server": (_GET, self._discovery),
        }

    # Endpoint addresses.

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def authorize_url(self) -> str:
        return self.url + "/authorize"

    @property
    def device_authorization_url(self) -> str:
        return self.url + "/device_authorization"

    @property
    def device_url(self) -> str:
        """The verification URI, where a person enters a device's user code."""
        return self.url + "/device"

    @property
    def revocation_url(self) -> str:
        return self.url + "/revoke"

    @property
    def metadata(self) -> dict[str, Any]:
        """The discovery document (RFC 8414 §2), served at both well-known addresses."""
        return {
            "issuer": self.url,
            "authorization_endpoint": self.authorize_url,
            "token_endpoint": self.token_url,
            "device_authorization_endpoint": self.device_authorization_url,
            "revocation_endpoint": self.revocation_url,
            "grant_types_supported": list(GRANT_TYPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(_AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(_AUTH_METHODS),
            "authorization_response_iss_parameter_supported": True,  # RFC 9207
            "tls_client_certificate_bound_access_tokens": True,  # RFC 8705 §3.3
            **self.metadata_extra,
        }

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

    # Clients, users and tokens.

    def add_client(
        self, client_id: str, client_secret: str | None = None, *, redirect_uris: Iterable[str] = ()
    ) -> None:
        """Register (or replace) a client. Without a secret it is a public client (RFC 6749
        §2.1): it identifies itself by client_id alone and must use PKCE."""
        self._grants.add_client(client_id, client_secret, redirect_uris)

    def add_client_key(self, client_id: str, key: VerifyKey) -> None:
        """Let `client_id` authenticate with assertions `key` verifies (a public key, or a
        shared secret for client_secret_jwt). An unknown client is registered as
        confidential, with a secret nobody knows."""
        if self._grants.client(client_id) is None:
            self.add_client(client_id, secrets.token_urlsafe(24))
        self.jwt.add_client_key(client_id, key)

    def add_client_cert(
        self, client_id: str, *, thumbprint: str | None = None, subject_dn: str | None = None
    ) -> None:
        """Let `client_id` authenticate with a TLS client certificate (RFC 8705 §2): a
        self-signed one known by its `x5t#S256` thumbprint, or one from a CA the server
        trusts (`trust_client_certs`) known by its subject DN (RFC 4514 form)."""
        if self._grants.client(client_id) is None:
            self.add_client(client_id, secrets.token_urlsafe(24))
        with self._lock:
            self._tls_clients[client_id] = (thumbprint, subject_dn)

    def dpop_jkt_of(self, access_token: str) -> str | None:
        """The thumbprint of the DPoP key this token is bound to (RFC 9449 §6), if any."""
        with self._lock:
            return self._dpop_bound.get(access_token)

    def cnf_of(self, access_token: str) -> str | None:
        """The `x5t#S256` of the certificate this token is bound to (RFC 8705 §3), if any."""
        with self._lock:
            return self._bound.get(access_token)

    def add_jwt_issuer(self, issuer: str, key: VerifyKey) -> None:
        """Accept JWT-bearer grants (RFC 7523 §2.1) signed by `issuer` with `key`."""
        self.jwt.add_issuer_key(issuer, key)

    def add_user(self, username: str, password: str) -> None:
        self._grants.add_user(username, password)

    def issue_refresh_token(self, client_id: str, scope: str = "") -> str:
        """Seed a refresh token, standing in for an interactive login."""
        return self._grants.seed_refresh_token(client_id, scope)

    def is_valid(self, access_token: str) -> bool:
        return self._grants.is_valid(access_token)

    def subject_of(self, access_token: str) -> str | None:
        """The user who granted this access token; None without one (or for unknown tokens)."""
        return self._grants.subject_of(access_token)

    def expire_access_tokens(self) -> None:
        self._grants.expire_access_tokens()

    def revoke_all(self) -> None:
        self._grants.revoke_all()

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

    @property
    def discovery_requests(self) -> int:
        """Fetches of either discovery document."""
        with self._lock:
            return self._discovery_requests

    @property
    def revocations(self) -> int:
        """Revocation requests answered with 200 (unknown tokens included, RFC 7009 §2.2)."""
        with self._lock:
            return self._revocations

    def reset_counters(self) -> None:
        with self._changed:
            self._arrived = 0
            self._log.clear()
            self._grant_counts.clear()
            self._discovery_requests = self._revocations = 0
            self._changed.notify_all()

    def wait_for_requests(self, n: int, timeout: float, *, arrived: bool = False) -> bool:
        """Wait until `n` token requests were answered (or, with `arrived`, merely received)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (self._arrived if arrived else len(self._log)) >= n, timeout
            )

    # Routing.

    def handle(self, request: Request) -> Response:
        route = self._routes.get(urlsplit(request.path).path)
        if route is None:
            return Response.of_json(404, {"error": "not_found"})
        methods, endpoint = route
        if request.method not in methods:
            allow = ", ".join(sorted(methods))
            return Response.of_json(405, {"error": "method_not_allowed"}, {"Allow": allow})
        return endpoint(request)

    def _discovery(self, request: Request) -> Response:
        with self._lock:
            self._discovery_requests += 1
        return Response.of_json(200, self.metadata)

    def _tls_client(
        self, client_id: str, known: tuple[str | None, str | None], peer: bytes | None
    ) -> str:
        if peer is None:
            raise invalid_client("this client authenticates with a TLS client certificate")
        thumbprint, subject_dn = known
        if thumbprint is not None and x5t_s256(peer) != thumbprint:
            raise invalid_client("the TLS client certificate is not this client's")
        if subject_dn is not None:
            subject = x509.load_der_x509_certificate(peer).subject.rfc4514_string()
            if subject != subject_dn:
                raise invalid_client("the TLS client certificate's subject is not this client's")
        return client_id

    def _bind(self, issued: Issued, request: Request, jkt: str | None = None) -> Response:
        """RFC 8705 §3: a token asked for over mutual TLS is bound to that certificate;
        RFC 9449 §5: one asked for with a DPoP proof to the proof's key (token_type DPoP),
        and so is the refresh token that comes with it."""
        with self._lock:
            if request.peer_cert is not None:
                self._bound[issued.access] = x5t_s256(request.peer_cert)
            if jkt is not None:
                self._dpop_bound[issued.access] = jkt
        if jkt is not None and issued.refresh is not None:
            self._grants.bind_refresh_dpop(issued.refresh, jkt)
        ttl = self.access_token_ttl
        return self._token_response(issued, ttl, "DPoP" if jkt else "Bearer")

    def _dpop_proof(self, request: Request) -> str | None:
        """The key thumbprint of the request's DPoP proof, None without one (RFC 9449 §5)."""
        proofs = request.headers.get_all("DPoP") or []
        if not proofs:
            return None
        if len(proofs) > 1:
            raise OAuthError("invalid_dpop_proof", "more than one DPoP header")
        url = self.url + urlsplit(request.path).path
        try:
            return self.dpop.verify(proofs[0], request.method, url)
        except ProofError as e:
            if e.use_nonce:
                # §8: 400 use_dpop_nonce with the nonce to put in the next proof.
                headers = {"DPoP-Nonce": self.dpop.nonce}
                raise OAuthError("use_dpop_nonce", str(e), 400, headers) from None
            raise OAuthError("invalid_dpop_proof", str(e)) from None

    def _audiences(self, request: Request) -> list[str]:
        # RFC 7523 §3: the token endpoint's URL, or the issuer identifier.
        return [self.url + urlsplit(request.path).path, self.url]

    def _client_of(self, form: dict[str, str], request: Request) -> str:
        basic = _basic_credentials(request.headers.get("Authorization"))
        client_id = form.get("client_id")
        with self._lock:
            tls_client = self._tls_clients.get(client_id or "")
        if (
            tls_client is not None
            and basic is None
            and not {"client_secret", "client_assertion"} & set(form)
        ):
            return self._tls_client(client_id or "", tls_client, request.peer_cert)
        if "client_assertion" in form or "client_assertion_type" in form:
            if basic is not None or "client_secret" in form:
                raise OAuthError("invalid_request", "more than one client authentication method")
            return self.jwt.client(form, self._audiences(request))
        return self._grants.authenticate(form.get("client_id"), form.get("client_secret"), basic)

    # The token endpoint.

    def _token_endpoint(self, request: Request) -> Response:
        with self._changed:
            self._arrived += 1
            self._changed.notify_all()
        fault = self._take_fault()
        # Stopped mid-wait: hang up unanswered, as a dying server would, and grant nothing
        # (a refresh token rotated behind the client's back would look like reuse later).
        if fault == "slow" and self._stopping.wait(self.slow_seconds):
            raise HangUp
        entry: dict[str, Any] = {"time": time.time(), "grant_type": None, "client_id": None}
        injected = _fault_response(fault, self.retry_after)
        try:
            form = _read_form(request)
            entry.update((k, v) for k, v in form.items() if k not in _SECRET_PARAMS)
            basic = _basic_credentials(request.headers.get("Authorization"))
            if basic is not None:
                entry["client_id"] = basic[0]
            hostile = self.token_answer(form) if self.token_answer else None
            response = injected or hostile or self._grant(form, request)
        except OAuthError as error:
            response = injected or error.response()
        entry.update(fault=fault, status=response.status)
        with self._changed:
            self._log.append(entry)
            if entry["grant_type"] is not None:
                self._grant_counts[entry["grant_type"]] += 1
            self._changed.notify_all()
        return response

    def _grant(self, form: dict[str, str], request: Request) -> Response:
        if form.get("grant_type") == JWT_BEARER_GRANT:
            return self._jwt_bearer(form, request)
        client_id = self._client_of(form, request)
        jkt = self._dpop_proof(request)  # before the grant: a refused proof spends no code
        if form.get("grant_type") == "authorization_code":
            bound = self._grants.code_dpop_jkt(form.get("code", ""))
            if bound is not None and bound != jkt:
                # RFC 9449 §10.1: only the key named at the authorization endpoint redeems it.
                raise OAuthError("invalid_dpop_proof", "the code is bound to another DPoP key")
        if form.get("grant_type") == "refresh_token":
            self._grants.check_refresh_dpop(client_id, form.get("refresh_token", ""), jkt)
        grant_type = _required(form, "grant_type")
        handlers: dict[str, _GrantHandler] = {
            "client_credentials": self._client_credentials,
            "refresh_token": self._refresh_token,
            "authorization_code": self._authorization_code,
            "password": self._password,
            DEVICE_CODE_GRANT: self._device_code,
        }
        handler = handlers.get(grant_type)
        if handler is None:
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is unsupported")
        ttl = self.access_token_ttl
        return self._bind(handler(client_id, form, ttl), request, jkt)

    def _client_credentials(self, client_id: str, form: dict[str, str], ttl: float) -> Issued:
        scope = normalize_scope(form.get("scope", ""))
        return self._grants.client_credentials(client_id, scope, ttl)

    def _refresh_token(self, client_id: str, form: dict[str, str], ttl: float) -> Issued:
        presented = _required(form, "refresh_token")
        rotate = self.rotate_refresh_tokens
        return self._grants.refresh_grant(client_id, presented, form.get("scope"), ttl, rotate)

    def _authorization_code(self, client_id: str, form: dict[str, str], ttl: float) -> Issued:
        code, verifier = _required(form, "code"), form.get("code_verifier")
        if verifier is not None and not valid_verifier(verifier):
            raise OAuthError("invalid_request", "malformed code_verifier (RFC 7636 §4.1)")
        redirect_uri = form.get("redirect_uri")
        return self._grants.redeem_code(client_id, code, redirect_uri, verifier, ttl)

    def _password(self, client_id: str, form: dict[str, str], ttl: float) -> Issued:
        username, password = _required(form, "username"), _required(form, "password")
        scope = normalize_scope(form.get("scope", ""))
        return self._grants.password_grant(client_id, username, password, scope, ttl)

    def _device_code(self, client_id: str, form: dict[str, str], ttl: float) -> Issued:
        device_code = _required(form, "device_code")
        return self._grants.poll_device(client_id, device_code, ttl, self.slow_down_step)

    def _jwt_bearer(self, form: dict[str, str], request: Request) -> Response:
        """RFC 7523 §2.1: the assertion proves who asks; client authentication is optional
        (§3.1), and checked when sent. The scope comes from the form or, Google-style, from
        the assertion's `scope` claim."""
        if {"client_id", "client_secret", "client_assertion"} & set(form) or request.headers.get(
            "Authorization"
        ):
            self._client_of(form, request)
        jkt = self._dpop_proof(request)
        asserted = self.jwt.bearer(_required(form, "assertion"), self._audiences(request))
        scope = normalize_scope(form.get("scope") or str(asserted.claims.get("scope", "")))
        ttl = self.access_token_ttl
        issued = self._grants.bearer_grant(asserted.issuer, asserted.subject, scope, ttl)
        return self._bind(issued, request, jkt)

    def _token_response(self, issued: Issued, ttl: float, token_type: str = "Bearer") -> Response:  # noqa: S107
        payload: dict[str, Any] = {"access_token": issued.access, "token_type": token_type}
        if self.advertised_expires_in is not None:
            payload["expires_in"] = _json_number(self.advertised_expires_in)
        elif self.include_expires_in:
            payload["expires_in"] = max(0, int(ttl))  # rounded down: never promise too much
        if issued.scope:
            payload["scope"] = issued.scope
        if issued.refresh is not None:
            payload["refresh_token"] = issued.refresh
        for name, value in self.token_extra.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        return Response.of_json(200, payload, NO_STORE)

    def drip(self, body: bytes, every: float, headers: dict[str, str] | None = None) -> Response:
        """A 200 answer that sends `body` one byte every `every` seconds (until stop())."""

        def chunks() -> Iterable[bytes]:
            for i in range(len(body)):
                if self._stopping.wait(every):
                    return
                yield body[i : i + 1]

        hdrs = {"Content-Type": "application/json", **NO_STORE, **(headers or {})}
        return Response(200, b"", hdrs, chunks=chunks())

    # Revocation (RFC 7009).

    def _revoke(self, request: Request) -> Response:
        try:
            form = _read_form(request)
            client_id = self._client_of(form, request)
            # token_type_hint only speeds up a lookup (§2.1); both kinds are searched anyway.
            self._grants.revoke(client_id, _required(form, "token"))
        except OAuthError as error:
            return error.response()
        with self._lock:
            self._revocations += 1
        return Response(200, b"", dict(NO_STORE))

    # The authorization endpoint (RFC 6749 §4.1.1): a sign-in form, answered by redirect.

    def _authorize(self, request: Request) -> Response:
        try:
            pairs = _form_pairs(request) if request.method == "POST" else _query_pairs(request)
            authz = parse_authorization_request(pairs, self._grants.client)
        except OAuthError as error:
            return pages.error_page(error.description)
        except PageError as error:
            return pages.error_page(str(error))
        except RedirectError as error:
            answer = {"error": error.error, "error_description": error.description}
            return self._redirect(error.redirect_uri, answer, error.state)
        form = dict(pairs)
        # RFC 6749 §3.1 lets the request itself come by POST: without an answer, ask for one.
        if request.method != "POST" or "decision" not in form:
            return self._sign_in_page(authz)
        return self._authorization_decision(authz, form)

    def _sign_in_page(
        self, authz: AuthorizationRequest, username: str = "", error: str | None = None
    ) -> Response:
        return pages.authorize_page(
            authz.fields, client_id=authz.client_id, scope=authz.scope, username=username,
            error=error,
        )  # fmt: skip

    def _authorization_decision(
        self, authz: AuthorizationRequest, form: dict[str, str]
    ) -> Response:
        decision = form.get("decision")
        if decision == "deny":
            answer = {"error": "access_denied", "error_description": "the user said no"}
            return self._redirect(authz.redirect_uri, answer, authz.state)
        if decision != "approve":
            return pages.error_page("choose approve or deny")
        username = form.get("username", "")
        if not self._grants.check_user(username, form.get("password", "")):
            return self._sign_in_page(authz, username, WRONG_LOGIN)
        code = self._grants.new_code(authz, username, self.code_ttl)
        return self._redirect(authz.redirect_uri, {"code": code}, authz.state)

    def _redirect(self, redirect_uri: str, answer: dict[str, str], state: str | None) -> Response:
        # RFC 9207: `iss` tells a client that talks to several servers which one answered.
        location = with_query(redirect_uri, {**answer, "state": state, "iss": self.url})
        headers = {"Location": location, "Referrer-Policy": "no-referrer", **NO_STORE}
        return Response(302, b"", headers)

    # Device authorization (RFC 8628 §3.1 to §3.3).

    def _device_authorization(self, request: Request) -> Response:
        try:
            form = _read_form(request)
            client_id = self._client_of(form, request)
        except OAuthError as error:
            return error.response()
        ttl, interval = self.device_code_ttl, self.device_interval
        scope = normalize_scope(form.get("scope", ""))
        device_code, user_code = self._grants.new_device(client_id, scope, ttl, interval)
        payload = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.device_url,
            "verification_uri_complete": f"{self.device_url}?user_code={quote(user_code)}",
            "expires_in": _json_number(ttl),
            "interval": _json_number(
                interval if self.advertised_interval is None else self.advertised_interval
            ),
        }
        return Response.of_json(200, payload, NO_STORE)

    def _device_verification(self, request: Request) -> Response:
        if request.method != "POST":
            prefill = next((v for k, v in _query_pairs(request) if k == "user_code"), "")
            return pages.device_page(prefill)
        try:
            form = _read_form(request)
        except OAuthError as error:
            return pages.error_page(error.description)
        typed, decision = form.get("user_code", ""), form.get("decision")
        problem = self._grants.device_problem(typed)
        if problem is None and decision not in ("approve", "deny"):
            problem = "choose approve or deny"
        if problem is not None:
            return pages.error_page(problem)
        username = form.get("username", "")
        approve = decision == "approve"
        if approve and not self._grants.check_user(username, form.get("password", "")):
            return pages.device_page(typed, username=username, error=WRONG_LOGIN)
        problem = self._grants.settle_device(typed, username if approve else None)
        if problem is not None:  # answered from elsewhere meanwhile, or just expired
            return pages.error_page(problem)
        if approve:
            return pages.message_page("Device approved", "You may return to your device.")
        return pages.message_page("Device denied", "The device was not given access.")
