"""A local API protected by Bearer tokens (RFC 6750), for the demo and the end-to-end tests.

It answers any method on any path, echoing what it saw (never the token: only its
fingerprint), and records every request so tests can tell what actually reached it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

from proxy_addon.demo.certs import Pki
from proxy_addon.demo.server import BackgroundServer, Request, Response
from proxy_addon.tokens import fingerprint

__all__ = ["ApiServer"]


def _bearer_token(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


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
        authorizations = request.headers.get_all("Authorization") or []
        token = _bearer_token(authorizations[0]) if len(authorizations) == 1 else None
        token_fp = fingerprint(token) if token is not None else None
        body_sha256 = hashlib.sha256(request.body).hexdigest()
        response = self._decide(authorizations, token)
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


def _challenge(status: int, error: str, www_authenticate: str) -> Response:
    return Response.of_json(status, {"error": error}, {"WWW-Authenticate": www_authenticate})
