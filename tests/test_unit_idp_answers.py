"""Pure tests of reading an IdP's answers: token validation, lifetimes, Retry-After, scrubbing,
the RFC 9207 `iss` check, and the issuer-host rule for discovered endpoints."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest
from requests.structures import CaseInsensitiveDict

from proxy_addon import replies
from proxy_addon.discovery import off_issuer
from proxy_addon.errors import GrantError, TokenUnavailable
from proxy_addon.idp_http import Answer
from proxy_addon.login import LoginError, _code_from_redirect
from proxy_addon.sanitize import clean, safe_code, strip_controls
from proxy_addon.token_answer import (
    MAX_LIFETIME,
    lifetime_from,
    parse_token_answer,
    retry_after_from,
)

RT = "rt-SECRET-rotated-0123456789"
AT = "at-SECRET-current-9876543210"
NOW = 1_700_000_000.0


def answer(status: int = 200, payload: Any = None, **headers: str) -> Answer:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    hdrs = CaseInsensitiveDict({"Content-Type": "application/json", **headers})
    return Answer(status, hdrs, body)


def parse(a: Answer, **kw: Any) -> Any:
    kw = {"what": "refresh_token request", "obtained_at": NOW, "default_lifetime": 3600.0, **kw}
    return parse_token_answer(a, **kw)


# --- 8.9: nothing that could end a header line --------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("access_token", "abc\r\nX-Injected: 1"),
        ("access_token", "abc\ndef"),
        ("access_token", "abc\x00def"),
        ("access_token", "abc def"),
        ("access_token", "abc,def"),
        ("access_token", 12345),
        ("access_token", ["a"]),
        ("token_type", "Bearer\r\nX-Injected: 1"),
        ("token_type", "Bearer x"),
        ("token_type", "Bear\x00er"),
        ("token_type", ""),
        ("token_type", 7),
        ("refresh_token", "r\x00t"),
        ("refresh_token", {"a": 1}),
    ],
)
def test_tokens_that_could_inject_headers_are_refused(field: str, value: object) -> None:
    payload = {"access_token": "good.token-1~+/==", "token_type": "Bearer", field: value}
    with pytest.raises(GrantError) as e:
        parse(answer(200, payload))
    assert e.value.code == "invalid_token_response"
    assert not e.value.terminal
    assert e.value.outcome_unknown  # a refresh token may be spent: never resend as it was
    assert "\r" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "given, kept",
    [("bearer", "Bearer"), ("BEARER", "Bearer"), ("Bearer", "Bearer"), ("dpop", "DPoP"),
     ("X-Custom", "X-Custom")],
)  # fmt: skip
def test_token_type_case(given: str, kept: str) -> None:
    token = parse(answer(200, {"access_token": "a.b-c_d~e+f/g==", "token_type": given})).token
    assert (token.access_token, token.token_type) == ("a.b-c_d~e+f/g==", kept)


def test_missing_access_token_is_a_bad_response() -> None:
    with pytest.raises(GrantError) as e:
        parse(answer(200, {"token_type": "Bearer"}))
    assert (e.value.code, e.value.terminal) == ("idp_bad_response", False)


# --- 8.14 / 14.3: lifetimes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "expires_in, lifetime, warns",
    [
        (None, 3600.0, False),
        (300, 300.0, False),
        (2.5, 2.5, False),
        ("600", 600.0, False),
        (" 60 ", 60.0, False),
        (0, 0.0, True),  # 14.3: oauthlib read this as "no expiry": 3600 s
        ("0", 0.0, True),
        (-5, 0.0, True),
        ("-5", 0.0, True),
        ("soon", 3600.0, True),
        (True, 3600.0, True),
        ({"s": 1}, 3600.0, True),
        ("nan", 3600.0, True),
        (10**12, MAX_LIFETIME, True),
        ("1e300", MAX_LIFETIME, True),
        ("inf", MAX_LIFETIME, True),
    ],
)
def test_lifetime_from_expires_in(expires_in: object, lifetime: float, warns: bool) -> None:
    got, warning = lifetime_from(expires_in, 3600.0)
    assert got == lifetime
    assert (warning is not None) == warns


def test_expires_in_zero_gives_a_token_expired_on_arrival() -> None:
    parsed = parse(answer(200, {"access_token": "abc", "token_type": "Bearer", "expires_in": 0}))
    assert parsed.token.expires_at == NOW
    assert parsed.warnings and "already expired" in parsed.warnings[0]


# --- 14.4: Retry-After -------------------------------------------------------------------------


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_from("10", NOW) == 10.0
    assert retry_after_from(" 0 ", NOW) == 0.0
    date = email.utils.formatdate(NOW + 42, usegmt=True)
    assert retry_after_from(date, NOW) == pytest.approx(42, abs=1)
    assert retry_after_from(email.utils.formatdate(NOW - 100, usegmt=True), NOW) == 0.0
    assert retry_after_from("-3", NOW) is None
    assert retry_after_from("soon", NOW) is None
    assert retry_after_from(None, NOW) is None
    assert retry_after_from("99999999999", NOW) == 24 * 3600


@pytest.mark.parametrize("status", [429, 503, 500])
def test_unavailable_answers_carry_retry_after(status: int) -> None:
    with pytest.raises(GrantError) as e:
        parse(answer(status, {"error": "slow_down"}, **{"Retry-After": "7"}))
    assert (e.value.code, e.value.terminal, e.value.retry_after) == ("idp_unavailable", False, 7.0)


# --- 8.10: the IdP's words -----------------------------------------------------------------------


def test_error_text_is_scrubbed_of_sent_tokens_and_escapes() -> None:
    desc = f"refresh token {RT} (was {AT}) is \x1b[31mrevoked\x1b[0m\r\nX-Evil: 1 \u202e"
    with pytest.raises(GrantError) as e:
        parse(answer(400, {"error": "invalid_grant", "error_description": desc}), secrets=[RT, AT])
    text = str(e.value)
    assert RT not in text and AT not in text and "<redacted>" in text
    assert not any(ch in text for ch in "\x1b\r\n\u202e")
    assert e.value.code == "invalid_grant" and e.value.terminal


@pytest.mark.parametrize(
    "code", [f"leak_{RT}", "Invalid_Grant", "x\x1b[2J", "", None, 5, "a" * 65, "invalid grant"]
)
def test_error_codes_outside_a_to_z_become_idp_error(code: object) -> None:
    with pytest.raises(GrantError) as e:
        parse(answer(400, {"error": code}), secrets=[RT])
    assert e.value.code == "idp_error"
    assert RT not in str(e.value)


def test_an_error_sent_with_200_is_an_error() -> None:
    with pytest.raises(GrantError) as e:
        parse(answer(200, {"error": "bad_verification_code"}))
    assert e.value.code == "bad_verification_code"


def test_reuse_says_a_sign_in_is_needed_and_why() -> None:
    body = {"error": "invalid_grant", "error_description": "refresh token reused; grant revoked"}
    with pytest.raises(GrantError) as e:
        parse(answer(400, body), credential="api")
    text = str(e.value)
    assert e.value.code == "invalid_grant" and e.value.terminal
    assert "already used" in text and "lost its answer" in text
    assert "authproxy login api" in text


def test_clean_and_safe_code() -> None:
    assert strip_controls("a\x1b[1;31mb\x1b]0;title\x07c\x07d\x9be") == "abcde"
    assert clean(f"x {RT} y", [RT]) == "x <redacted> y"
    assert clean("x rt-SECRET%2Frot y", ["rt-SECRET/rot"]) == "x <redacted> y"
    assert clean("a" * 1000, limit=10) == "aaaaaaa..."
    assert safe_code("invalid_grant") == "invalid_grant"
    assert safe_code("Invalid") == "idp_error"


def test_the_502_strips_control_characters_and_restricts_reason() -> None:
    e = TokenUnavailable("api", "BAD\r\ncode", f"the IdP said \x1b[2J{RT}\r\nX-A: b")
    r = replies.token_unavailable(e, [RT])
    body = json.loads(r.content or b"")
    assert body["reason"] == "idp_error"
    assert RT not in body["message"] and "\x1b" not in body["message"]
    assert "\r" not in body["message"] and "\n" not in body["message"]


# --- 8.7: RFC 9207 iss ------------------------------------------------------------------------

REDIRECT = "http://127.0.0.1:5000/callback"
ISSUER = "https://idp.example.test"


def _redirect(**q: str) -> str:
    from urllib.parse import urlencode

    return f"{REDIRECT}?{urlencode({'code': 'c0de', 'state': 'st', **q})}"


def test_iss_must_name_our_issuer() -> None:
    assert _code_from_redirect(_redirect(iss=ISSUER), REDIRECT, "st", issuer=ISSUER) == "c0de"
    assert _code_from_redirect(_redirect(iss=ISSUER + "/"), REDIRECT, "st", issuer=ISSUER) == "c0de"
    with pytest.raises(LoginError, match=r"names issuer 'https://evil\.test'"):
        _code_from_redirect(_redirect(iss="https://evil.test"), REDIRECT, "st", issuer=ISSUER)


def test_iss_required_where_the_issuer_promises_it() -> None:
    assert _code_from_redirect(_redirect(), REDIRECT, "st", issuer=ISSUER) == "c0de"
    with pytest.raises(LoginError, match="RFC 9207"):
        _code_from_redirect(_redirect(), REDIRECT, "st", issuer=ISSUER, iss_required=True)


# --- discovered endpoints stay on the issuer's host -------------------------------------------


@pytest.mark.parametrize(
    "url, off",
    [
        ("https://idp.example.test/token", False),
        ("https://IDP.example.test:443/a/token", False),
        ("https://idp.example.test:8443/token", True),
        ("http://idp.example.test/token", True),
        ("https://evil.test/token", True),
        ("https://idp.example.test.evil.test/token", True),
        ("https://idp.example.test@evil.test/token", True),
        ("https://idp.example.test:bad/token", True),
    ],
)
def test_off_issuer(url: str, off: bool) -> None:
    assert off_issuer(url, ISSUER) is off
