"""Rules of the demo authorization server that need none of its state: redirect URI matching
(RFC 6749 §3.1.2, RFC 8252 §7.3), PKCE (RFC 7636), device user codes (RFC 8628 §6.1) and the
checks of an authorization request (RFC 6749 §4.1.1 and §4.1.2.1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

__all__ = [
    "AuthorizationRequest",
    "Client",
    "PageError",
    "RedirectError",
    "check_registrable_redirect_uri",
    "new_user_code",
    "normalize_scope",
    "parse_authorization_request",
    "redirect_uri_matches",
    "user_code_key",
    "valid_verifier",
    "verifier_matches",
    "with_query",
]

# RFC 8252 §7.3 (and, for localhost, §8.3, which discourages but does not forbid it).
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# RFC 7636 §4.1: 43 to 128 unreserved characters. An S256 challenge is always 43 (§4.2).
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
# RFC 8628 §6.1: consonants only, so no word gets spelled and no 0/O or 1/I gets confused.
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
# What the sign-in form carries along in hidden fields; anything else is ignored (§3.1).
_AUTHORIZATION_PARAMS = (
    "response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
    "code_challenge_method", "dpop_jkt",  # RFC 9449 §10: the code is bound to that key
)  # fmt: skip


def normalize_scope(scope: str) -> str:
    """Space-separated, each scope once, in the order first given."""
    return " ".join(dict.fromkeys(scope.split()))


@dataclass(frozen=True, slots=True)
class Client:
    secret: str | None  # None: a public client (RFC 6749 §2.1), which cannot keep a secret
    redirect_uris: tuple[str, ...] = ()

    @property
    def public(self) -> bool:
        return self.secret is None


class PageError(Exception):
    """An authorization request that must not be redirected back (RFC 6749 §4.1.2.1): the client
    or its redirect URI is not trustworthy, so the user is told instead."""


class RedirectError(Exception):
    """An authorization error the client hears about through its redirect URI (§4.1.2.1)."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description = error, description
        self.redirect_uri, self.state = redirect_uri, state


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client_id: str
    redirect_uri: str  # where the answer goes: the one requested, or the only one registered
    redirect_uri_sent: bool  # if so, the token request must repeat it (RFC 6749 §4.1.3)
    scope: str
    state: str | None
    code_challenge: str | None  # always S256 when present
    fields: dict[str, str]  # the recognised parameters as sent, for the form's hidden fields


def check_registrable_redirect_uri(uri: str) -> None:
    """RFC 6749 §3.1.2: an absolute URI without a fragment (custom schemes allowed, RFC 8252)."""
    parts = urlsplit(uri)
    if not parts.scheme or "#" in uri:
        raise ValueError(f"redirect URI {uri!r} must be absolute and have no fragment")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ValueError(f"redirect URI {uri!r} has no host")


def redirect_uri_matches(requested: str, registered: str) -> bool:
    """Exact string match, except that a loopback URI may use any port (RFC 8252 §7.3):
    a native app learns its port only when it opens its listener."""
    if requested == registered:
        return True
    loopback = _loopback_without_port(requested)
    return loopback is not None and loopback == _loopback_without_port(registered)


def _loopback_without_port(uri: str) -> tuple[str, str, str] | None:
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 - parsing it is the check: "http://127.0.0.1:x/" must not match
    except ValueError:
        return None
    if parts.scheme != "http" or "#" in uri or "@" in parts.netloc:
        return None
    host = parts.hostname or ""  # lower-cased, IPv6 brackets stripped
    return (host, parts.path, parts.query) if host in _LOOPBACK_HOSTS else None


def with_query(uri: str, params: Mapping[str, str | None]) -> str:
    """`uri` with `params` added to its query, which it keeps (RFC 6749 §3.1.2)."""
    parts = urlsplit(uri)
    extra = urlencode({name: value for name, value in params.items() if value is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


# PKCE.


def valid_verifier(verifier: str) -> bool:
    return _VERIFIER.fullmatch(verifier) is not None


def verifier_matches(verifier: str, challenge: str) -> bool:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=")
    return hmac.compare_digest(computed, challenge.encode("ascii"))


# Device user codes.


def new_user_code() -> str:
    chars = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def user_code_key(typed: str) -> str:
    """What identifies a user code however it was typed: case, dashes and spaces do not matter
    (RFC 8628 §6.1)."""
    return re.sub(r"[\s-]", "", typed).upper()


# The authorization request.


def parse_authorization_request(
    pairs: Sequence[tuple[str, str]], lookup: Callable[[str], Client | None]
) -> AuthorizationRequest:
    """Check a request in the order RFC 6749 §4.1.2.1 implies: until the client and redirect URI
    are trusted, errors are a PageError; from then on, a RedirectError."""
    params, repeated = _collect(pairs)
    if repeated & {"client_id", "redirect_uri"}:
        raise PageError("client_id or redirect_uri was given more than once")
    client_id = params.get("client_id")
    if client_id is None:
        raise PageError("the request names no client (client_id is missing)")
    client = lookup(client_id)
    if client is None:
        raise PageError(f"unknown client {client_id!r}")
    sent = params.get("redirect_uri")
    redirect_uri = _redirect_target(client, sent)
    state = None if "state" in repeated else params.get("state")

    def fail(error: str, description: str) -> RedirectError:
        return RedirectError(error, description, redirect_uri, state)

    if repeated:
        raise fail("invalid_request", f"repeated parameters: {', '.join(sorted(repeated))}")
    _check_response_type(params.get("response_type"), fail)
    challenge = _checked_challenge(params, client, fail)
    return AuthorizationRequest(
        client_id=client_id,
        redirect_uri=redirect_uri,
        redirect_uri_sent=sent is not None,
        scope=normalize_scope(params.get("scope", "")),
        state=state,
        code_challenge=challenge,
        fields={name: params[name] for name in _AUTHORIZATION_PARAMS if name in params},
    )


def _collect(pairs: Sequence[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    params: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in pairs:
        if not value:  # RFC 6749 §3.1: a parameter without a value counts as omitted
            continue
        if name in params:
            repeated.add(name)
        params.setdefault(name, value)
    return params, repeated


def _redirect_target(client: Client, sent: str | None) -> str:
    if not client.redirect_uris:
        raise PageError("this client has no registered redirect URI")
    if sent is None:
        # §3.1.2.3: optional only when there is no choice to make.
        if len(client.redirect_uris) != 1:
            raise PageError("redirect_uri is required: the client registered several")
        return client.redirect_uris[0]
    if not any(redirect_uri_matches(sent, uri) for uri in client.redirect_uris):
        raise PageError("redirect_uri is not registered for this client")
    return sent


def _check_response_type(
    response_type: str | None, fail: Callable[[str, str], RedirectError]
) -> None:
    if response_type is None:
        raise fail("invalid_request", "response_type is required")
    if response_type != "code":
        raise fail("unsupported_response_type", "only response_type=code is supported")


def _checked_challenge(
    params: Mapping[str, str], client: Client, fail: Callable[[str, str], RedirectError]
) -> str | None:
    challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
    if challenge is None:
        if method is not None:
            raise fail("invalid_request", "code_challenge_method without code_challenge")
        if client.public:
            # A public client has no secret, so PKCE is all that binds the code to it.
            raise fail("invalid_request", "a public client must send a code_challenge (S256)")
        return None
    # RFC 7636 §4.3: no method means "plain", which is no protection against a code thief.
    if method != "S256":
        raise fail("invalid_request", "code_challenge_method must be S256 (plain is refused)")
    if _S256_CHALLENGE.fullmatch(challenge) is None:
        raise fail("invalid_request", "malformed code_challenge")
    return challenge
