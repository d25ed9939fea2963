"""The HTML the demo authorization server shows a person: sign-in and device-code forms, and
result and error pages. Every value is escaped: client_id, scope and state come from whoever
built the link.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from proxy_addon.demo.server import Response

__all__ = ["authorize_page", "device_page", "error_page", "message_page"]

_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    # The pages carry codes and state: keep them out of caches and Referer headers.
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    # No scripts, and no framing: a framed sign-in page invites clickjacking (RFC 6749 §10.13).
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
_STYLE = (
    "body{font-family:sans-serif;max-width:30em;margin:3em auto}"
    "label{display:block;margin:.6em 0}.error{color:#b00020}"
)
# Deny skips the browser's "required" checks: refusing must not need a password.
_DECISIONS = (
    '<p><button type="submit" name="decision" value="approve">Approve</button> '
    '<button type="submit" name="decision" value="deny" formnovalidate>Deny</button></p>'
)


def _page(title: str, body: str, status: int = 200) -> Response:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return Response(status, html.encode(), dict(_HEADERS))


def _error(message: str | None) -> str:
    return f'<p class="error" role="alert">{escape(message)}</p>' if message else ""


def _credentials(username: str) -> str:
    # The password is never echoed back, even after a failed attempt.
    return (
        '<label>Username <input name="username" autocomplete="username" required '
        f'value="{escape(username)}"></label>'
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label>'
    )


def authorize_page(
    fields: Mapping[str, str],
    *,
    client_id: str,
    scope: str,
    username: str = "",
    error: str | None = None,
) -> Response:
    """The sign-in form; it posts the authorization request back along with the answer."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in fields.items()
    )
    wanted = f"the scope <code>{escape(scope)}</code>" if scope else "no particular scope"
    body = (
        f"<p>The application <strong>{escape(client_id)}</strong> asks for access to your "
        f"account, with {wanted}.</p>{_error(error)}"
        f'<form method="post" action="/authorize">{hidden}{_credentials(username)}'
        f"{_DECISIONS}</form>"
    )
    return _page("Sign in", body)


def device_page(user_code: str = "", *, username: str = "", error: str | None = None) -> Response:
    """Where a person enters the code their device shows (RFC 8628 §3.3)."""
    body = (
        "<p>Enter the code shown on your device, and sign in to let it use your account.</p>"
        f'{_error(error)}<form method="post" action="/device">'
        '<label>Code <input name="user_code" autocomplete="off" autocapitalize="characters" '
        f'required value="{escape(user_code)}"></label>'
        f"{_credentials(username)}{_DECISIONS}</form>"
    )
    return _page("Connect a device", body)


def message_page(title: str, message: str, status: int = 200) -> Response:
    return _page(title, f"<p>{escape(message)}</p>", status)


def error_page(message: str, status: int = 400) -> Response:
    return _page("Error", _error(message), status)
