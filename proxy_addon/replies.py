"""The answers the proxy itself gives a client instead of forwarding its request.

Each is JSON with an `error` code a program can branch on, plus the same code in the
`X-Authproxy-Error` header for clients that only look at headers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from mitmproxy import http

from . import hints
from .errors import TokenUnavailable
from .routes import Route
from .sanitize import clean, safe_code

__all__ = ["authorization_present", "plain_http_refused", "token_unavailable"]

ERROR_HEADER = "X-Authproxy-Error"


def _reply(
    status: int, code: str, body: dict[str, Any], extra: dict[str, str] | None = None
) -> http.Response:
    headers = {"Content-Type": "application/json", ERROR_HEADER: code, "Cache-Control": "no-store"}
    headers.update(extra or {})
    payload = {"error": code, **body}
    return http.Response.make(status, json.dumps(payload, indent=1) + "\n", headers)


def token_unavailable(e: TokenUnavailable, secrets: Sequence[str] = ()) -> http.Response:
    """`secrets` are scrubbed from the message, which quotes the IdP's own words; the reason
    is a code (`[a-z_]+`) or `idp_error`."""
    extra = {}
    message = scrub(str(e), secrets)
    reason = safe_code(e.code)
    body: dict[str, Any] = {"credential": e.credential, "reason": reason, "message": message}
    if e.retry_after is not None:
        body["retry_after"] = round(e.retry_after, 1)
        extra["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
    if reason in ("needs_login", "invalid_grant"):
        body["hint"] = f"run: {hints.login(e.credential)}"
    return _reply(502, "token_unavailable", body, extra)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` without the secrets, control characters or terminal escapes: safe to show."""
    return clean(text, secrets, limit=1000)


def plain_http_refused(route: Route) -> http.Response:
    return _reply(
        403,
        "plain_http_refused",
        {
            "credential": route.credential,
            "message": f"route {route.describe()} only sends credentials over https; use "
            "https:// (or set allow_http: true on the route)",
        },
    )


def authorization_present(route: Route) -> http.Response:
    return _reply(
        400,
        "authorization_present",
        {
            "credential": route.credential,
            "message": f"route {route.describe()} adds its own credentials and refuses requests "
            "that already carry an Authorization header",
        },
    )


def retry_failed(route: Route, reason: str) -> http.Response:
    return _reply(
        502,
        "retry_failed",
        {
            "credential": route.credential,
            "message": "the API rejected the token; re-sending with a new one failed: "
            + clean(reason, limit=300),
        },
    )


def refusal(status: int, code: str, route: Route, message: str) -> http.Response:
    return _reply(status, code, {"credential": route.credential, "message": message})


def unscannable_response(route: Route) -> http.Response:
    return _reply(
        502,
        "unscannable_response",
        {
            "credential": route.credential,
            "message": "the API's answer uses a Content-Encoding the proxy cannot decode, so it "
            "cannot be checked for an echoed token; it was withheld",
        },
    )


def internal_error(credential: str | None = None) -> http.Response:
    body: dict[str, Any] = {"message": "the proxy failed on this request; see its log"}
    if credential is not None:
        body["credential"] = credential
    return _reply(502, "internal_error", body)


def not_addressed_to_proxy() -> http.Response:
    return _reply(
        421,
        "misdirected_request",
        {"message": "the status page answers only requests sent to the proxy as a proxy "
                    "(curl --proxy http://HOST:PORT http://authproxy.local/)"},
    )  # fmt: skip
