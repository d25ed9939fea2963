"""`grant: github_app`: installation access tokens of a GitHub App.

The proxy signs the app's JWT (RS256 with the app's private key; `iss` the app id or client id,
`iat` a minute back for clock drift, `exp` nine minutes on: GitHub refuses more than ten) and
POSTs it to `{api_url}/app/installations/{installation_id}/access_tokens`, optionally narrowed
to `repositories` and `permissions` (`contents:read issues:write`). The answer's `token` lives
an hour (`expires_at`); the cache refreshes it like any other. git over HTTPS wants it as
Basic `x-access-token:<token>` (a route's `present:`), the REST API as `Bearer`/`token`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import GrantError
from ..idp_http import Answer, exchange
from ..sanitize import clean
from ..tokens import Token
from .keys import KeyFileError, PrivateKey, load_signing_key, sign

if TYPE_CHECKING:
    from ..config import CredentialConfig

__all__ = [
    "DEFAULT_API_URL",
    "App",
    "GitHubAppGrant",
    "app_jwt_claims",
    "load_app",
    "parse_permissions",
]

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
CLOCK_DRIFT = 60  # iat this far back (GitHub's advice)
JWT_LIFETIME = 540  # exp - now; GitHub refuses more than 600
# What may go into a request header or query: RFC 6750 §2.1's b64token, as for OAuth tokens.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def app_jwt_claims(issuer: str, now: float | None = None) -> dict[str, Any]:
    now = int(time.time() if now is None else now)
    return {"iss": issuer, "iat": now - CLOCK_DRIFT, "exp": now + JWT_LIFETIME}


def parse_permissions(words: str) -> dict[str, str]:
    """`contents:read issues:write` -> {"contents": "read", "issues": "write"}."""
    out: dict[str, str] = {}
    for word in words.split():
        name, colon, level = word.partition(":")
        if not colon or not name or level not in ("read", "write", "admin"):
            raise ValueError(
                f"permissions: expected name:read, name:write or name:admin, got {word!r}"
            )
        out[name] = level
    return out


@dataclass(frozen=True, slots=True)
class App:
    """What a github_app credential says, its key file read and checked once, at start."""

    issuer: str  # the app id or client id: the app JWT's `iss`
    url: str  # the installation's access_tokens endpoint
    body: bytes = field(repr=False)  # the narrowing asked for (repositories, permissions)
    private_key: PrivateKey = field(repr=False)


def load_app(cfg: CredentialConfig) -> App:
    """The app a credential names, or a `KeyFileError` naming the key that is wrong."""
    opts = cfg.options
    issuer = opts.get("app_id") or cfg.client_id
    if not issuer:
        raise KeyFileError("app_id", "give app_id (or the app's client_id)")
    installation = opts.get("installation_id", "")
    if not installation.isdigit():
        raise KeyFileError("installation_id", f"expected a number, got {installation!r}")
    api_url = (opts.get("api_url") or DEFAULT_API_URL).rstrip("/")
    if not api_url.startswith("https://"):
        raise KeyFileError("api_url", f"expected an https:// URL, got {api_url!r}")
    body: dict[str, Any] = {}
    if repositories := opts.get("repositories", "").split():
        body["repositories"] = repositories
    try:
        permissions = parse_permissions(opts.get("permissions", ""))
    except ValueError as e:
        raise KeyFileError("permissions", str(e).removeprefix("permissions: ")) from None
    if permissions:
        body["permissions"] = permissions
    key, _ = load_signing_key(  # GitHub takes RS256 only
        opts.get("private_key_file", ""),
        key="private_key_file",
        passphrase=opts.get("private_key_passphrase"),
        wanted="RS256",
    )
    url = f"{api_url}/app/installations/{installation}/access_tokens"
    return App(issuer, url, json.dumps(body).encode(), key)


class GitHubAppGrant:
    refreshable = True  # a refused token is replaced by a new installation token
    persist = True
    seed_id: str | None = None

    def __init__(self, cfg: CredentialConfig, verify: str | bool) -> None:
        self.cfg, self.name, self.verify = cfg, cfg.name, verify
        self._app: App | None = None

    def _bad(self, message: str, code: str = "bad_github_app_config") -> GrantError:
        return GrantError(code, f"credential {self.name!r}: {message}", terminal=True)

    def load_keys(self) -> None:
        """Read and check the app's key file (and the rest of its config), once: at start."""
        self._app = load_app(self.cfg)

    def app(self) -> App:
        if self._app is None:
            try:
                self.load_keys()
            except KeyFileError as e:
                raise self._bad(str(e)) from None
        assert self._app is not None  # load_keys sets it or raises
        return self._app

    def request(self) -> tuple[str, dict[str, str], bytes]:
        """URL, headers and body of the token request (the app JWT signed now)."""
        app = self.app()
        app_jwt = sign(app_jwt_claims(app.issuer), app.private_key, "RS256")
        headers = {
            "Authorization": f"Bearer {app_jwt}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "Content-Type": "application/json",
        }
        return app.url, headers, app.body

    def obtain(self, previous: Token | None) -> Token:
        url, headers, body = self.request()
        started = time.time()
        what = "GitHub App installation token request"
        answer = exchange(
            "POST",
            url,
            what=what,
            timeout=self.cfg.policy.idp_timeout,
            verify=self.verify,
            data=body,
            headers=headers,
        )
        return self.read(answer, started)

    def read(self, answer: Answer, started: float) -> Token:
        """The token in GitHub's answer, or a GrantError that says what to fix."""
        try:
            data = json.loads(answer.body)
        except ValueError:
            data = None
        message = clean(str(data.get("message", ""))) if isinstance(data, dict) else ""
        status = answer.status
        if status == 201 and isinstance(data, dict) and isinstance(data.get("token"), str):
            if not _B64TOKEN.fullmatch(data["token"]):
                raise GrantError(
                    "invalid_token_response",
                    f"credential {self.name!r}: GitHub's token has characters a token may not "
                    "have (RFC 6750 b64token); refused",
                    terminal=False,
                )
            try:
                expires = datetime.fromisoformat(str(data["expires_at"]).replace("Z", "+00:00"))
            except (KeyError, ValueError):
                expires_at = started + self.cfg.policy.default_lifetime
            else:
                expires_at = expires.timestamp()
            return Token(access_token=data["token"], expires_at=expires_at, obtained_at=started)
        if status == 401:
            raise self._bad(
                f"GitHub refused the app JWT ({message or 401}): check app_id/client_id, that "
                "private_key_file is this app's key, and the clock",
                "github_app_jwt_rejected",
            )
        if status in (403, 404, 422):
            raise self._bad(
                f"GitHub said {status} ({message or 'no message'}): check installation_id, "
                "and that the repositories and permissions asked for are the installation's",
                "github_app_refused",
            )
        if status == 429 or status >= 500:
            after = answer.headers.get("Retry-After", "")
            raise GrantError(
                "github_unavailable",
                f"GitHub answered {status} to the installation token request",
                terminal=False,
                retry_after=float(after) if after.isdigit() else None,
            )
        raise self._bad(f"unexpected answer {status} from GitHub ({message or 'no message'})")
