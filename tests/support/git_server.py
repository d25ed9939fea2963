"""A Git server over HTTPS that wants a Bearer token: `git http-backend` as a CGI program.

Every request must carry `Authorization: Bearer <token>` that `validator` accepts, or it gets
401 with `WWW-Authenticate: Bearer`. A client that knows no token (git itself) can therefore
only clone through the proxy. It serves the bare repositories under `root` (smart HTTP, fetch
only) and records each request (never the token: its fingerprint).
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from proxy_addon.demo.certs import Pki
from proxy_addon.demo.server import BackgroundServer, Request, Response
from proxy_addon.tokens import fingerprint

__all__ = ["GitServer"]

# Request headers that do not become HTTP_* variables of the CGI program.
_NOT_PASSED = frozenset({"authorization", "proxy-authorization", "content-type", "content-length"})


class GitServer(BackgroundServer):
    def __init__(
        self,
        root: Path,
        validator: Callable[[str], bool],
        pki: Pki,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        basic_user: str | None = None,
    ) -> None:
        super().__init__(pki, host, port)
        self.root = root
        # With a user name: wants HTTP Basic with that user and the token as password instead
        # (GitHub's `x-access-token`), as git sends it.
        self.basic_user = basic_user
        self._validator = validator
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []

    @property
    def requests_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._log]

    def handle(self, request: Request) -> Response:
        scheme, _, token = (request.headers.get("Authorization") or "").strip().partition(" ")
        token = (
            token.strip()
            if scheme.lower() == "bearer" and self.basic_user is None
            else (self._basic_password(token) if scheme.lower() == "basic" else "")
        )
        authorized = bool(token) and self._validator(token)
        if authorized:
            response = self._backend(request)
        else:
            challenge = 'Basic realm="git"' if self.basic_user else 'Bearer realm="git"'
            response = Response(
                401,
                b"a valid token is required\n",
                {"WWW-Authenticate": challenge, "Content-Type": "text/plain"},
            )
        with self._lock:
            self._log.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "authorized": authorized,
                    "token_fp": fingerprint(token) if token else None,
                    "status": response.status,
                }
            )
        return response

    def _basic_password(self, blob: str) -> str:
        try:
            user, _, password = (
                base64.b64decode(blob.strip(), validate=True).decode().partition(":")
            )
        except ValueError:
            return ""
        return password if self.basic_user is not None and user == self.basic_user else ""

    def _backend(self, request: Request) -> Response:
        path, _, query = request.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(request.body)),
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_USER": "bearer",
        }
        for name, value in request.headers.items():
            if name.lower() not in _NOT_PASSED:
                env["HTTP_" + name.upper().replace("-", "_")] = value
        done = subprocess.run(
            ["git", "http-backend"], input=request.body, env=env, capture_output=True, timeout=60
        )
        out = done.stdout
        ends = [(out.find(sep), len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if sep in out]
        if done.returncode != 0 and not ends:
            message = done.stderr.decode(errors="replace")
            return Response(500, message.encode(), {"Content-Type": "text/plain"})
        end, size = min(ends) if ends else (len(out), 0)
        status, headers = 200, {}
        for line in out[:end].decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name and name.lower() != "content-length":
                headers[name.strip()] = value.strip()
        return Response(status, out[end + size :], headers)
