"""A local API protected by Bearer tokens (RFC 6750), for the demo and the end-to-end tests.

It answers any method on any path, echoing what it saw (never the token: only its
fingerprint), and records every request so tests can tell what actually reached it.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from proxy_addon.demo.certs import Pki
from proxy_addon.demo.dpop_check import DpopVerifier, ProofError
from proxy_addon.demo.server import BackgroundServer, Request, Response
from proxy_addon.present import Presentation
from proxy_addon.tokens import fingerprint

__all__ = ["ApiServer"]


def _bearer_token(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "dpop") else None


def presented_token(request: Request, expect: Presentation) -> str | None:
    """Where `expect` says the token is: the inverse of `present.apply`."""
    if expect.kind == "query":
        values = [v for k, v in parse_qsl(urlsplit(request.path).query) if k == expect.name]
        return values[0] if len(values) == 1 else None
    values = request.headers.get_all(expect.name) or []
    if len(values) != 1:
        return None
    if expect.kind == "basic":
        scheme, _, blob = values[0].partition(" ")
        try:
            user, _, password = base64.b64decode(blob, validate=True).decode().partition(":")
        except ValueError:
            return None
        return password if scheme.lower() == "basic" and user == expect.user else None
    before, _, after = expect.template.partition("{token}")
    value = values[0]
    if not (value.startswith(before) and value.endswith(after)):
        return None
    return value[len(before) : len(value) - len(after)] or None


def _scheme(header: str | None) -> str:
    return (header or "").strip().partition(" ")[0].lower()


class ApiServer(BackgroundServer):
    """Answers 200 with an echo to a valid Bearer token, and an RFC 6750 401 otherwise."""

    def __init__(
        self,
        validator: Callable[[str], bool],
        pki: Pki | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(pki, host, port)
        self._validator = validator
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._log: list[dict[str, Any]] = []
        # Switches, settable from any thread (plain assignments are atomic).
        self.always_401 = False
        self.insufficient_scope = False
        self.required_scope = "demo.write"  # named in the insufficient_scope challenge
        self.delay = 0.0  # seconds to wait before answering (a slow API; each request its thread)
        self.arrived = 0  # requests that reached `handle`, answered or not
        # Sender-constrained tokens: set these to the IdP's `cnf_of` (RFC 8705 certificate
        # binding) and `dpop_jkt_of` (RFC 9449 key binding) to have them checked.
        self.cnf_of: Callable[[str], str | None] | None = None
        self.dpop_jkt_of: Callable[[str], str | None] | None = None
        self.dpop = DpopVerifier()
        # An API that takes its token elsewhere than `Authorization: Bearer` (present.py).
        self.expect: Presentation | None = None

    @property
    def requests_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._log]

    def reset(self) -> None:
        with self._changed:
            self._log.clear()
            self._changed.notify_all()

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self._log) >= n, timeout)

    def wait_for_arrivals(self, n: int, timeout: float) -> bool:
        """Until `n` requests reached the API (counted before `delay`, unlike `requests_log`)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.arrived >= n, timeout)

    def handle(self, request: Request) -> Response:
        with self._changed:
            self.arrived += 1
            self._changed.notify_all()
        if self.delay:
            time.sleep(self.delay)
        if self.expect is not None:
            return self._handle_presented(request, self.expect)
        authorizations = request.headers.get_all("Authorization") or []
        token = _bearer_token(authorizations[0]) if len(authorizations) == 1 else None
        token_fp = fingerprint(token) if token is not None else None
        body_sha256 = hashlib.sha256(request.body).hexdigest()
        response = self._decide(authorizations, token)
        if response is None and token is not None:
            response = self._check_binding(request, _scheme(authorizations[0]), token)
        if response is None:
            response = Response.of_json(
                200,
                {
                    "ok": True,
                    "method": request.method,
                    "path": request.path,
                    "host_header": request.headers.get("Host"),
                    "body_sha256": body_sha256,
                    "body_length": len(request.body),
                    "token_fp": token_fp,
                },
            )
        entry = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "host_header": request.headers.get("Host"),
            "authorized": response.status == 200,
            "token_fp": token_fp,
            "body_sha256": body_sha256,
            "body_length": len(request.body),
            "status": response.status,
            # Names only: lets a test check what the proxy forwarded without storing secrets.
            "header_names": sorted({name.lower() for name in request.headers}),
        }
        with self._changed:
            self._log.append(entry)
            self._changed.notify_all()
        return response

    def _handle_presented(self, request: Request, expect: Presentation) -> Response:
        """Token from another header, Basic's password or a query parameter."""
        token = presented_token(request, expect)
        ok = token is not None and not self.always_401 and self._validator(token)
        response = (
            Response.of_json(200, {"ok": True, "path": request.path.split("?")[0],
                                   "token_fp": fingerprint(token) if token else None})
            if ok
            else _challenge(401, "invalid_token", 'Bearer error="invalid_token"')
        )  # fmt: skip
        entry = {
            "time": time.time(), "method": request.method, "path": request.path.split("?")[0],
            "authorized": ok, "token_fp": fingerprint(token) if token else None,
            "status": response.status,
            "header_names": sorted({name.lower() for name in request.headers}),
        }  # fmt: skip
        with self._changed:
            self._log.append(entry)
            self._changed.notify_all()
        return response

    def _check_binding(self, request: Request, scheme: str, token: str) -> Response | None:
        """A sender-constrained token needs its sender: the certificate it is bound to on
        the connection (RFC 8705 §3), or a valid proof with its key (RFC 9449 §7)."""
        from proxy_addon.demo.idp import x5t_s256

        cnf = self.cnf_of(token) if self.cnf_of else None
        if cnf is not None and (request.peer_cert is None or x5t_s256(request.peer_cert) != cnf):
            return _challenge(401, "invalid_token", 'Bearer error="invalid_token", '
                              'error_description="certificate binding"')  # fmt: skip
        jkt = self.dpop_jkt_of(token) if self.dpop_jkt_of else None
        if jkt is None and scheme == "bearer":
            return None
        if jkt is None or scheme != "dpop":
            # §7.2: a DPoP-bound token sent as Bearer (or a Bearer token as DPoP) is refused.
            return _challenge(401, "invalid_token", 'DPoP error="invalid_token"')
        proofs = request.headers.get_all("DPoP") or []
        url = f"https://{request.headers.get('Host', '')}{request.path.split('?')[0]}"
        try:
            if len(proofs) != 1:
                raise ProofError("exactly one DPoP proof is required")
            if self.dpop.verify(proofs[0], request.method, url, access_token=token) != jkt:
                raise ProofError("the proof's key is not the token's")
        except ProofError as e:
            if e.use_nonce:
                return _challenge(401, "use_dpop_nonce", 'DPoP error="use_dpop_nonce"',
                                  {"DPoP-Nonce": self.dpop.nonce})  # fmt: skip
            return _challenge(401, "invalid_dpop_proof", 'DPoP error="invalid_dpop_proof"')
        return None

    def _decide(self, authorizations: list[str], token: str | None) -> Response | None:
        """The refusal for this request, or None when it is authorized."""
        if len(authorizations) > 1:
            return _challenge(400, "invalid_request", 'Bearer error="invalid_request"')
        if token is None:
            # RFC 6750 §3.1: no credentials at all gets a challenge without an error code.
            return _challenge(401, "invalid_token", 'Bearer realm="demo"')
        if self.always_401 or not self._validator(token):
            return _challenge(401, "invalid_token", 'Bearer error="invalid_token"')
        if self.insufficient_scope:
            challenge = f'Bearer error="insufficient_scope", scope="{self.required_scope}"'
            return _challenge(401, "insufficient_scope", challenge)
        return None


def _challenge(
    status: int, error: str, www_authenticate: str, headers: dict[str, str] | None = None
) -> Response:
    return Response.of_json(
        status, {"error": error}, {"WWW-Authenticate": www_authenticate, **(headers or {})}
    )
