"""A small GitHub-App-like server: installation access tokens for a verified app JWT.

`POST /app/installations/{id}/access_tokens` with `Authorization: Bearer <app JWT>` answers
201 `{"token", "expires_at", "permissions", "repositories"}` when the JWT is signed (RS256) by
the app's registered key, names the app (`iss`: app id or client id), and keeps GitHub's
limits (`exp` at most ten minutes ahead, `iat` not in the future); and when the installation
belongs to that app and any repositories asked for are its own. Otherwise 401, 404 or 422 with
GitHub's `{"message": ...}`. `is_valid` lets the demo API (or a git server) check tokens.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy_addon.demo.certs import Pki
from proxy_addon.demo.server import BackgroundServer, Request, Response

__all__ = ["GitHubAppServer", "Issued"]

_PATH = re.compile(r"^/app/installations/(\d+)/access_tokens$")
MAX_AHEAD = 600  # GitHub: exp no more than 10 minutes into the future
LEEWAY = 30


@dataclass(frozen=True, slots=True)
class _App:
    app_id: str
    client_id: str | None
    key: rsa.RSAPublicKey


@dataclass(frozen=True, slots=True)
class Issued:
    installation: int
    expires_at: float
    repositories: tuple[str, ...] = ()
    permissions: dict[str, str] = field(default_factory=dict)


class GitHubAppServer(BackgroundServer):
    def __init__(self, pki: Pki, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(pki, host, port)
        self._lock = threading.Lock()
        self._apps: dict[str, _App] = {}  # by app id and by client id
        self._installations: dict[int, tuple[str, tuple[str, ...]]] = {}
        self.tokens: dict[str, Issued] = {}
        self.token_ttl = 3600.0
        self.requests = 0

    def add_app(
        self, app_id: int | str, key: rsa.RSAPublicKey, client_id: str | None = None
    ) -> None:
        app = _App(str(app_id), client_id, key)
        with self._lock:
            self._apps[app.app_id] = app
            if client_id:
                self._apps[client_id] = app

    def add_installation(
        self, installation: int, app_id: int | str, repositories: tuple[str, ...] = ()
    ) -> None:
        with self._lock:
            self._installations[installation] = (str(app_id), tuple(repositories))

    def is_valid(self, token: str) -> bool:
        with self._lock:
            issued = self.tokens.get(token)
        return issued is not None and time.time() < issued.expires_at

    def expire_tokens(self) -> None:
        with self._lock:
            for token, issued in self.tokens.items():
                self.tokens[token] = Issued(
                    issued.installation, 0.0, issued.repositories, issued.permissions
                )

    def handle(self, request: Request) -> Response:
        match = _PATH.match(request.path)
        if match is None:
            return _message(404, "Not Found")
        if request.method != "POST":
            return _message(405, "Method Not Allowed")
        with self._lock:
            self.requests += 1
        app = self._verified_app(request.headers.get("Authorization", ""))
        if isinstance(app, Response):
            return app
        installation = int(match.group(1))
        with self._lock:
            owner = self._installations.get(installation)
        if owner is None or owner[0] != app.app_id:
            return _message(404, "Not Found")
        try:
            body: Any = json.loads(request.body or b"{}")
        except ValueError:
            return _message(400, "Problems parsing JSON")
        wanted = tuple(body.get("repositories") or ())
        if not set(wanted) <= set(owner[1]):
            return _message(
                422,
                "There is at least one repository that does not exist or is not accessible "
                "to the parent installation.",
            )
        repositories = wanted or owner[1]
        permissions = dict(body.get("permissions") or {"contents": "write", "metadata": "read"})
        token = "ghs_" + secrets.token_urlsafe(27)
        expires_at = int(time.time() + self.token_ttl)
        with self._lock:
            self.tokens[token] = Issued(installation, expires_at, repositories, permissions)
        payload = {
            "token": token,
            "expires_at": datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "permissions": permissions,
            "repository_selection": "selected" if wanted else "all",
            "repositories": [{"name": name} for name in repositories],
        }
        return Response.of_json(201, payload)

    def _verified_app(self, authorization: str) -> _App | Response:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _message(401, "A JSON web token could not be decoded")
        try:
            claimed = str(jwt.decode(token, options={"verify_signature": False}).get("iss", ""))
        except jwt.InvalidTokenError:
            return _message(401, "A JSON web token could not be decoded")
        with self._lock:
            app = self._apps.get(claimed)
        if app is None:
            return _message(401, "Integration not found")
        try:
            claims = jwt.decode(
                token, app.key, algorithms=["RS256"], leeway=LEEWAY,
                options={"require": ["iss", "iat", "exp"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            return _message(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the "
                "future time at which the assertion expires",
            )
        except jwt.InvalidTokenError:
            return _message(401, "A JSON web token could not be decoded")
        now = time.time()
        if claims["exp"] > now + MAX_AHEAD + LEEWAY:
            return _message(401, "'Expiration time' claim ('exp') is too far in the future")
        if claims["iat"] > now + LEEWAY:
            return _message(
                401,
                "'Issued at' claim ('iat') must be an Integer representing the time that the "
                "assertion was issued",
            )
        return app


def _message(status: int, message: str) -> Response:
    return Response.of_json(
        status, {"message": message, "documentation_url": "https://docs.github.com/rest"}
    )
