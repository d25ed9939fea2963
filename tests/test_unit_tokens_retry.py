"""Unit tests for proxy_addon.tokens (Token, refresh arithmetic) and proxy_addon.retry."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import FrozenInstanceError

import pytest

from proxy_addon.retry import retry_decision
from proxy_addon.tokens import Token, fingerprint, is_usable, needs_refresh

SECRET_AT = "at-SECRET-0123456789"
SECRET_RT = "rt-SECRET-9876543210"


def make(
    expires_at: float = 1000.0,
    obtained_at: float = 0.0,
    *,
    access_token: str = SECRET_AT,
    refresh_token: str | None = SECRET_RT,
) -> Token:
    return Token(
        access_token=access_token,
        expires_at=expires_at,
        obtained_at=obtained_at,
        refresh_token=refresh_token,
        scope=("read", "write"),
        seed_id="abcd1234",
    )


# --- Token ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        make(),
        make(refresh_token=None),
        Token(access_token="a", expires_at=12.5, obtained_at=2.25),
        Token(access_token="a", expires_at=math.inf, obtained_at=0.0, token_type="MAC"),
    ],
)
def test_token_json_round_trip(token: Token) -> None:
    text = token.to_json()
    assert Token.from_json(text) == token
    assert Token.from_json(text.encode()) == token


def test_token_json_fields() -> None:
    assert json.loads(make().to_json()) == {
        "access_token": SECRET_AT,
        "expires_at": 1000.0,
        "obtained_at": 0.0,
        "token_type": "Bearer",
        "refresh_token": SECRET_RT,
        "scope": ["read", "write"],
        "seed_id": "abcd1234",
    }


def test_token_from_minimal_json() -> None:
    tok = Token.from_json('{"access_token": "a", "expires_at": 5, "obtained_at": 1}')
    assert tok == Token(access_token="a", expires_at=5.0, obtained_at=1.0)
    assert (tok.token_type, tok.refresh_token, tok.scope, tok.seed_id) == ("Bearer", None, (), None)
    assert isinstance(tok.expires_at, float)


def test_token_from_json_missing_access_token() -> None:
    with pytest.raises(KeyError, match=r"access_token"):
        Token.from_json('{"expires_at": 5, "obtained_at": 1}')


@pytest.mark.parametrize("show", [repr, str])
def test_token_repr_hides_secrets(show: Callable[[object], str]) -> None:
    text = show(make())
    assert SECRET_AT not in text
    assert SECRET_RT not in text
    assert "access_token" not in text
    assert "refresh_token" not in text
    assert "expires_at=1000.0" in text
    assert "seed_id='abcd1234'" in text


def test_token_is_frozen() -> None:
    tok = make()
    with pytest.raises(FrozenInstanceError):
        tok.access_token = "x"  # type: ignore[misc]


# --- needs_refresh / is_usable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obtained_at", "expires_at", "now", "leeway", "expected"),
    [
        # lifetime 3600, leeway 60: due from 60 s before expiry
        (0, 3600, 0, 60, False),
        (0, 3600, 3539, 60, False),
        (0, 3600, 3540, 60, True),
        (0, 3600, 3599, 60, True),
        (0, 3600, 3600, 60, True),
        (0, 3600, 9999, 60, True),
        # leeway 0: due at expiry
        (0, 3600, 3599.5, 0, False),
        (0, 3600, 3600, 0, True),
        # lifetime 100, leeway 60: capped to 50 (half the lifetime)
        (0, 100, 10, 60, False),
        (0, 100, 49, 60, False),
        (0, 100, 50, 60, True),
        # lifetime 10, leeway 60: capped to 5
        (1000, 1010, 1004, 60, False),
        (1000, 1010, 1005, 60, True),
        # a token that was born expired (clock skew): due as soon as it is past expiry
        (100, 50, 49, 60, False),
        (100, 50, 50, 60, True),
        # no expiry (static token)
        (0, math.inf, 1e12, 60, False),
    ],
)
def test_needs_refresh(
    obtained_at: float, expires_at: float, now: float, leeway: float, expected: bool
) -> None:
    tok = make(expires_at=expires_at, obtained_at=obtained_at)
    assert needs_refresh(tok, now, leeway) is expected


def test_needs_refresh_without_token() -> None:
    assert needs_refresh(None, 0.0, 60.0) is True


@pytest.mark.parametrize(
    ("expires_at", "now", "expected"),
    [(100, 99.9, True), (100, 100, False), (100, 101, False), (math.inf, 1e12, True)],
)
def test_is_usable(expires_at: float, now: float, expected: bool) -> None:
    assert is_usable(make(expires_at=expires_at), now) is expected


def test_is_usable_without_token() -> None:
    assert is_usable(None, 0.0) is False


# --- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint() -> None:
    assert fingerprint("abc") == "ba7816bf"  # sha256("abc"), first 8 hex digits
    assert fingerprint(SECRET_AT) == fingerprint(SECRET_AT)
    assert fingerprint(SECRET_AT) != fingerprint(SECRET_RT)
    fp = fingerprint(SECRET_AT)
    assert len(fp) == 8
    assert set(fp) <= set("0123456789abcdef")
    assert fp not in SECRET_AT


# --- retry_decision ------------------------------------------------------------------------------


def decide(
    status: int = 401,
    www_authenticate: str | None = None,
    *,
    already_retried: bool = False,
    refreshable: bool = True,
    request_streamed: bool = False,
    response_streamed: bool = False,
) -> tuple[bool, str]:
    return retry_decision(
        status=status,
        www_authenticate=www_authenticate,
        already_retried=already_retried,
        refreshable=refreshable,
        request_streamed=request_streamed,
        response_streamed=response_streamed,
    )


RETRY = (True, "the API rejected the token")
SCOPE = (False, "insufficient_scope: a new token would have the same scopes")


@pytest.mark.parametrize("status", [200, 204, 400, 403, 404, 407, 500, 503])
def test_not_a_401(status: int) -> None:
    assert decide(status, 'Bearer error="invalid_token"') == (False, "not a 401")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, RETRY),
        ({"already_retried": True}, (False, "already retried once")),
        ({"refreshable": False}, (False, "this credential cannot be refreshed")),
        (
            {"request_streamed": True},
            (False, "the request body was streamed and not kept, so it cannot be re-sent"),
        ),
        ({"response_streamed": True}, (False, "the 401 was already streamed to the client")),
        # precedence: the first reason in this order wins
        ({"already_retried": True, "refreshable": False}, (False, "already retried once")),
        (
            {"refreshable": False, "request_streamed": True},
            (False, "this credential cannot be refreshed"),
        ),
        (
            {"request_streamed": True, "response_streamed": True},
            (False, "the request body was streamed and not kept, so it cannot be re-sent"),
        ),
    ],
)
def test_retry_reasons(kwargs: dict[str, bool], expected: tuple[bool, str]) -> None:
    assert decide(401, 'Bearer error="invalid_token"', **kwargs) == expected


@pytest.mark.parametrize(
    "header",
    [
        'Bearer error="insufficient_scope"',
        'Bearer realm="api", error="insufficient_scope", scope="admin"',
        "Bearer error=insufficient_scope",
        'Bearer error = "insufficient_scope"',
        'Bearer ERROR="INSUFFICIENT_SCOPE"',
        'bearer Error="Insufficient_Scope"',
        'Bearer error_description="needs admin", error="insufficient_scope"',
    ],
)
def test_insufficient_scope_not_retried(header: str) -> None:
    assert decide(401, header) == SCOPE


def test_insufficient_scope_checked_before_streaming() -> None:
    assert decide(401, 'Bearer error="insufficient_scope"', request_streamed=True) == SCOPE


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        'Bearer realm="api"',
        'Bearer error="invalid_token"',
        'Bearer error="invalid_token", error_description="The access token expired"',
        "Bearer error=invalid_token",
        'Bearer ERROR="INVALID_TOKEN"',
        'Basic realm="x"',
        'Bearer error="insufficient_scope_extra"',
    ],
)
def test_other_401s_retried(header: str | None) -> None:
    assert decide(401, header) == RETRY
