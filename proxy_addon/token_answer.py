"""Reading a token endpoint's answer (RFC 6749 §5.1 and §5.2): pure functions, no I/O.

The IdP is outside our trust: what it sends goes into request headers (`access_token`,
`token_type`), decides how long a token is used (`expires_in`) and is shown to people (its
error text). So the access token must be an RFC 6750 `b64token` and the type an RFC 9110
`token` (nothing that could end a header line); the lifetime is clamped to something sane;
error codes are restricted to `[a-z_]+` and the words around them scrubbed of the secrets
the request carried and of control characters.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import hints
from .errors import GrantError
from .idp_http import Answer
from .sanitize import clean, safe_code
from .tokens import Token

__all__ = [
    "MAX_LIFETIME",
    "TERMINAL_ERRORS",
    "Parsed",
    "lifetime_from",
    "parse_token_answer",
    "retry_after_from",
]

# RFC 6749 §5.2 errors that another attempt with the same input cannot fix.
TERMINAL_ERRORS = frozenset(
    {
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_request",
        "access_denied",
    }
)
MAX_LIFETIME = 365 * 24 * 3600.0  # longer than a year is a bug or an attack: clamp it
MAX_RETRY_AFTER = 24 * 3600.0

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1
_TCHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_KNOWN_TYPES = {"bearer": "Bearer", "dpop": "DPoP", "mac": "MAC"}
# How IdPs word a refresh token coming back after rotation (the demo IdP: "refresh token
# reused; grant revoked"; Keycloak: "Maximum allowed refresh token reuse exceeded").
_REUSE = re.compile(r"reuse|already\s+(?:been\s+)?(?:used|redeemed|consumed)|replay", re.I)


@dataclass(frozen=True, slots=True)
class Parsed:
    token: Token
    warnings: tuple[str, ...] = ()  # for the log: what was odd about the answer


def parse_token_answer(
    answer: Answer,
    *,
    what: str,
    obtained_at: float,
    default_lifetime: float,
    secrets: Iterable[str | None] = (),
    now: float | None = None,
    credential: str = "",
) -> Parsed:
    """The token in a token endpoint's answer, or a GrantError that says what was wrong.

    `secrets` (the configured ones and those this request carried) never appear in a
    message; `credential` names what to log in again for."""
    secrets = tuple(secrets)
    status = answer.status
    retry_after = retry_after_from(answer.headers.get("Retry-After"), now or obtained_at)
    if status >= 500 or status == 429:
        raise GrantError(
            "idp_unavailable",
            f"{what}: the IdP answered HTTP {status}"
            + (f" (retry after {retry_after:g}s)" if retry_after is not None else ""),
            terminal=False,
            retry_after=retry_after,
        )
    data = _json_object(answer.body)
    if data is not None and "error" in data:  # some IdPs (GitHub) send errors with a 200
        raise _oauth_error(data, what, secrets, retry_after, credential)
    if status >= 400:
        raise GrantError(
            "idp_error",
            f"{what}: the token endpoint answered HTTP {status} without an OAuth error "
            "(is token_url right?)",
            terminal=True,
        )
    if status != 200 or data is None:
        raise GrantError(
            "idp_bad_response",
            f"{what}: the IdP's answer (HTTP {status}) is not a JSON object",
            terminal=False,
            outcome_unknown=True,
        )
    return _token(data, what, obtained_at, default_lifetime)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _oauth_error(
    data: Mapping[str, Any],
    what: str,
    secrets: tuple[str | None, ...],
    retry_after: float | None,
    credential: str,
) -> GrantError:
    code = safe_code(data.get("error"))
    raw_desc = data.get("error_description")
    desc = clean(raw_desc, secrets, limit=200) if isinstance(raw_desc, str) else ""
    message = f"{what} refused by the IdP: {code}" + (f": {desc}" if desc else "")
    if code == "invalid_grant" and "refresh_token" in what and _REUSE.search(desc):
        message += (
            ". The IdP saw a refresh token that was already used: it rotates them, and an "
            "earlier request that spent this one probably lost its answer (a timeout or a "
            "dropped connection). The IdP has likely revoked the sign-in; a new sign-in is "
            "needed" + (f": run `{hints.login(credential)}`" if credential else "")
        )
    return GrantError(code, message, terminal=code in TERMINAL_ERRORS, retry_after=retry_after)


def _token(data: Mapping[str, Any], what: str, obtained_at: float, default: float) -> Parsed:
    access = data.get("access_token")
    if access is None or access == "":
        raise GrantError(
            "idp_bad_response",
            f"{what}: the IdP's answer holds no access token",
            terminal=False,
            outcome_unknown=True,  # the IdP answered 200: it may have spent a refresh token
        )
    if not isinstance(access, str) or not _B64TOKEN.fullmatch(access):
        raise GrantError(
            "invalid_token_response",
            f"{what}: the IdP's access_token has characters a bearer token may not have "
            "(RFC 6750 b64token); refused",
            terminal=False,
            outcome_unknown=True,  # the IdP answered 200: it may have spent a refresh token
        )
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not _TCHARS.fullmatch(token_type):
        raise GrantError(
            "invalid_token_response",
            f"{what}: the IdP's token_type is not a valid HTTP auth scheme; refused",
            terminal=False,
            outcome_unknown=True,  # the IdP answered 200: it may have spent a refresh token
        )
    refresh = data.get("refresh_token")
    if refresh is not None and (not isinstance(refresh, str) or not refresh.isprintable()):
        raise GrantError(
            "invalid_token_response",
            f"{what}: the IdP's refresh_token is not a printable string; refused",
            terminal=False,
            outcome_unknown=True,  # the IdP answered 200: it may have spent a refresh token
        )
    lifetime, warning = lifetime_from(data.get("expires_in"), default)
    scope = data.get("scope") or ()
    if isinstance(scope, str):
        scope = scope.split()
    elif not isinstance(scope, list | tuple):
        scope = ()
    token = Token(
        access_token=access,
        expires_at=obtained_at + lifetime,
        obtained_at=obtained_at,
        token_type=_KNOWN_TYPES.get(token_type.lower(), token_type),
        refresh_token=refresh or None,
        scope=tuple(clean(str(s), limit=100) for s in scope),
    )
    return Parsed(token, (f"{what}: {warning}",) if warning else ())


def lifetime_from(expires_in: object, default: float) -> tuple[float, str | None]:
    """Seconds a token lives, and a warning when the IdP's `expires_in` was odd.

    Missing: `default`. Zero or negative: 0 (the token is expired on arrival, and the cache
    treats it as unusable). A numeric string: parsed. Anything else that is not a number:
    `default`. Longer than MAX_LIFETIME (or infinite): clamped."""
    if expires_in is None:
        return default, None
    value: float | None = None
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        value = float(expires_in)
    elif isinstance(expires_in, str):
        try:
            value = float(expires_in.strip())
        except ValueError:
            value = None
    if value is None or math.isnan(value):
        shown = clean(repr(expires_in), limit=40)
        return default, f"expires_in {shown} is not a number; assuming {default:g}s"
    if value <= 0:
        return 0.0, f"expires_in {value:g} means the token is already expired"
    if value > MAX_LIFETIME:
        return MAX_LIFETIME, f"expires_in {value:g}s is absurd; using {MAX_LIFETIME:g}s"
    return value, None


def retry_after_from(value: str | None, now: float) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)
