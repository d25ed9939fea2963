"""The grants against the demo IdP on 127.0.0.1 turned hostile or faulty: injected headers,
leaky error text, huge and drip-fed answers, absurd lifetimes, Retry-After, timeouts whose
outcome is unknown, refresh-token reuse, and discovered endpoints on other hosts."""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import CLIENT_ID, CLIENT_SECRET

from proxy_addon.config import CredentialConfig, TokenPolicy
from proxy_addon.demo.certs import Pki
from proxy_addon.demo.idp import AuthServer
from proxy_addon.demo.server import Response
from proxy_addon.errors import GrantError
from proxy_addon.grants import make_grant
from proxy_addon.login import revoke
from proxy_addon.tokens import Token

ESC = "\x1b[2J\x1b]0;pwned\x07"


def grant_for(idp: AuthServer, pki: Pki, grant: str = "client_credentials", **kw: Any) -> Any:
    policy = kw.pop("policy", TokenPolicy(idp_timeout=5.0))
    where = {"issuer": idp.url} if kw.pop("discover", False) else {"token_url": idp.token_url}
    cfg = CredentialConfig(
        name="api", grant=grant, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,  # type: ignore[arg-type]
        policy=policy, **where, **kw,
    )  # fmt: skip
    return make_grant(cfg, str(pki.ca_cert))


def json_answer(status: int, payload: Any, **headers: str) -> Response:
    return Response.of_json(status, payload, headers)


def error_code(fn: Any, *args: Any) -> GrantError:
    with pytest.raises(GrantError) as e:
        fn(*args)
    return e.value


@pytest.fixture
def seeded(idp: AuthServer) -> Iterator[str]:
    yield idp.issue_refresh_token(CLIENT_ID, "read")


# --- 8.9: header injection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"access_token": "tok\r\nX-Injected: yes"},
        {"access_token": "tok\x00"},
        {"token_type": "Bearer\r\nX-Injected: yes"},
        {"token_type": "Bearer x"},
    ],
)
def test_injected_header_material_is_an_idp_error(idp: AuthServer, pki: Pki, extra: dict) -> None:
    idp.token_extra = extra
    e = error_code(grant_for(idp, pki).obtain, None)
    assert (e.code, e.terminal) == ("invalid_token_response", False)
    assert "\r" not in str(e) and "\n" not in str(e)


def test_lowercase_bearer_is_sent_as_bearer(idp: AuthServer, pki: Pki) -> None:
    idp.token_extra = {"token_type": "bearer"}
    token = grant_for(idp, pki).obtain(None)
    assert token.token_type == "Bearer" and idp.is_valid(token.access_token)


# --- 8.10: leaky error text --------------------------------------------------------------------


def test_refresh_error_never_quotes_the_tokens_it_was_sent(
    idp: AuthServer, pki: Pki, seeded: str
) -> None:
    previous = Token(
        access_token="at-current-secret-42", expires_at=0, obtained_at=0, refresh_token=seeded
    )

    def quote_back(form: dict[str, str]) -> Response:
        desc = f"{ESC}token {form['refresh_token']} (secret {CLIENT_SECRET}) for "
        desc += f"{previous.access_token} revoked\r\nX-Evil: 1"
        return json_answer(400, {"error": "invalid_grant", "error_description": desc})

    idp.token_answer = quote_back
    e = error_code(grant_for(idp, pki, "authorization_code").obtain, previous)
    text = str(e)
    for secret in (seeded, CLIENT_SECRET, previous.access_token):
        assert secret not in text
    assert "<redacted>" in text
    assert not any(ch in text for ch in "\x1b\x07\r\n")
    assert (e.code, e.terminal) == ("invalid_grant", True)


def test_a_secret_in_the_error_code_never_becomes_the_reason(idp: AuthServer, pki: Pki) -> None:
    idp.token_answer = lambda form: json_answer(400, {"error": f"bad-{CLIENT_SECRET}"})
    e = error_code(grant_for(idp, pki).obtain, None)
    assert e.code == "idp_error"
    assert CLIENT_SECRET not in str(e)


# --- 8.14: exhaustion --------------------------------------------------------------------------


def test_a_huge_answer_is_not_read_whole(idp: AuthServer, pki: Pki) -> None:
    def huge(form: dict[str, str]) -> Response:
        chunk = b" " * (1 << 20)
        return Response(200, b"", {"Content-Type": "application/json"}, chunks=[chunk] * 64)

    idp.token_answer = huge
    started = time.monotonic()
    e = error_code(grant_for(idp, pki).obtain, None)
    assert (e.code, e.terminal) == ("idp_answer_too_large", False)
    assert time.monotonic() - started < 5


def test_a_declared_huge_answer_is_refused_before_reading(idp: AuthServer, pki: Pki) -> None:
    idp.token_answer = lambda form: Response(200, b"{" + b" " * (2 << 20) + b"}")
    e = error_code(grant_for(idp, pki).obtain, None)
    assert e.code == "idp_answer_too_large"


def test_a_drip_fed_answer_stops_at_the_total_deadline(idp: AuthServer, pki: Pki) -> None:
    body = json.dumps({"access_token": "abc", "token_type": "Bearer"}).encode()
    idp.token_answer = lambda form: idp.drip(body, every=0.1)  # 4 s in all, 0.1 s per read
    grant = grant_for(idp, pki, policy=TokenPolicy(idp_timeout=1.0))
    started = time.monotonic()
    e = error_code(grant.obtain, None)
    elapsed = time.monotonic() - started
    # A client_credentials request spends nothing: asking again is harmless.
    assert (e.code, e.terminal, e.outcome_unknown) == ("idp_timeout", False, False)
    assert 0.9 < elapsed < 2.5


def test_expires_in_zero_is_read_as_zero(
    idp: AuthServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    idp.token_extra = {"expires_in": 0}
    before = time.time()
    with caplog.at_level(logging.WARNING):
        token = grant_for(idp, pki).obtain(None)
    assert token.expires_at <= time.time() and token.expires_at >= before
    assert "already expired" in caplog.text


@pytest.mark.parametrize(
    "expires_in, low, high, warns",
    [("120", 119, 121, False), (-5, -1, 0.5, True), ("later", 3599, 3601, True),
     (10**15, 365 * 86400 - 1, 365 * 86400 + 1, True)],
)  # fmt: skip
def test_absurd_expires_in_is_clamped_with_a_warning(
    idp: AuthServer,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
    expires_in: object,
    low: float,
    high: float,
    warns: bool,
) -> None:
    idp.token_extra = {"expires_in": expires_in}
    with caplog.at_level(logging.WARNING):
        token = grant_for(idp, pki).obtain(None)
    assert low <= token.expires_at - token.obtained_at <= high
    assert ("expires_in" in caplog.text) == warns


def test_discovery_is_capped_too(idp: AuthServer, pki: Pki) -> None:
    idp.metadata_extra = {"padding": "x" * (2 << 20)}
    e = error_code(grant_for(idp, pki, discover=True).obtain, None)
    assert e.code == "discovery_failed" and "larger than" in str(e)


# --- 14.4: Retry-After --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds(idp: AuthServer, pki: Pki, status: int) -> None:
    idp.token_answer = lambda form: json_answer(status, {"error": "x"}, **{"Retry-After": "10"})
    e = error_code(grant_for(idp, pki).obtain, None)
    assert (e.code, e.terminal, e.retry_after) == ("idp_unavailable", False, 10.0)


def test_retry_after_http_date(idp: AuthServer, pki: Pki) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    idp.token_answer = lambda form: Response(503, b"busy", {"Retry-After": when})
    e = error_code(grant_for(idp, pki).obtain, None)
    assert e.retry_after is not None and 25 <= e.retry_after <= 31


# --- 14.5: timeouts, outcome unknown, reuse -----------------------------------------------------


def test_a_refresh_that_timed_out_may_have_been_acted_on(
    idp: AuthServer, pki: Pki, seeded: str
) -> None:
    idp.slow_seconds = 3.0
    idp.fault = "slow"
    policy = TokenPolicy(idp_timeout=0.3)  # refresh deadline: 0.9 s
    grant = grant_for(idp, pki, "refresh_token", refresh_token=seeded, policy=policy)
    e = error_code(grant.obtain, None)
    assert (e.code, e.terminal, e.outcome_unknown) == ("idp_timeout", False, True)


def test_an_unreachable_idp_is_not_an_unknown_outcome(idp: AuthServer, pki: Pki) -> None:
    grant = grant_for(idp, pki)
    idp.stop()
    e = error_code(grant.obtain, None)
    assert (e.code, e.outcome_unknown) == ("idp_unreachable", False)


def test_a_connection_dropped_after_sending_is_an_unknown_outcome(
    idp: AuthServer, pki: Pki, seeded: str
) -> None:
    from proxy_addon.demo.server import HangUp

    def hang_up(form: dict[str, str]) -> Response:
        raise HangUp

    idp.token_answer = hang_up
    grant = grant_for(idp, pki, "refresh_token", refresh_token=seeded)
    e = error_code(grant.obtain, None)
    assert (e.code, e.outcome_unknown) == ("idp_connection_lost", True)
    # The same fault on a request that spends nothing may simply be sent again.
    e = error_code(grant_for(idp, pki).obtain, None)
    assert (e.code, e.outcome_unknown) == ("idp_connection_lost", False)


def test_refresh_requests_get_a_longer_deadline(idp: AuthServer, pki: Pki, seeded: str) -> None:
    policy = TokenPolicy(idp_timeout=0.6)
    assert policy.refresh_timeout == pytest.approx(1.8)
    idp.slow_seconds = 1.0
    idp.fault = "slow"
    e = error_code(grant_for(idp, pki, policy=policy).obtain, None)
    assert e.code == "idp_timeout"
    idp.fault = "slow"
    grant = grant_for(idp, pki, "refresh_token", refresh_token=seeded, policy=policy)
    assert idp.is_valid(grant.obtain(None).access_token)


def test_reuse_of_a_rotated_refresh_token_says_a_sign_in_is_needed(
    idp: AuthServer, pki: Pki, seeded: str
) -> None:
    grant = grant_for(idp, pki, "authorization_code")
    first = Token(access_token="old", expires_at=0, obtained_at=0, refresh_token=seeded)
    rotated = grant.obtain(first)
    assert rotated.refresh_token != seeded
    e = error_code(grant.obtain, first)  # the answer to `first` was "lost": sent again
    assert (e.code, e.terminal) == ("invalid_grant", True)
    assert "already used" in str(e) and "authproxy login api" in str(e)
    assert seeded not in str(e)


# --- discovered endpoints stay on the issuer's host ---------------------------------------------


@pytest.mark.parametrize(
    "field", ["token_endpoint", "authorization_endpoint", "device_authorization_endpoint"]
)
def test_a_discovered_endpoint_elsewhere_is_refused(idp: AuthServer, pki: Pki, field: str) -> None:
    idp.metadata_extra = {field: "https://localhost:1/steal"}
    grant_type = {
        "token_endpoint": "client_credentials",
        "authorization_endpoint": "authorization_code",
        "device_authorization_endpoint": "device_code",
    }[field]
    grant = grant_for(idp, pki, grant_type, discover=True)
    with pytest.raises(GrantError) as e:
        grant.endpoints()
    assert (e.value.code, e.value.terminal) == ("endpoint_off_issuer", True)
    assert "set " in str(e.value)


def test_an_endpoint_named_in_the_config_may_be_elsewhere(idp: AuthServer, pki: Pki) -> None:
    idp.metadata_extra = {"token_endpoint": "https://localhost:1/steal"}
    grant = grant_for(idp, pki, discover=True, token_url=idp.token_url)
    assert idp.is_valid(grant.obtain(None).access_token)


def test_a_revocation_endpoint_elsewhere_is_not_used(idp: AuthServer, pki: Pki) -> None:
    idp.metadata_extra = {"revocation_endpoint": "https://localhost:1/steal"}
    grant = grant_for(idp, pki, "password", discover=True, username="u", password="p")
    assert grant.endpoints().revocation_url is None
    token = Token(access_token="abc", expires_at=0, obtained_at=0)
    assert "no revocation endpoint" in revoke(grant, token)


def test_drip_fed_headers_stop_at_the_total_deadline() -> None:
    """Not just the body: a status line and headers sent a byte at a time are cut off too."""
    import socket
    import threading

    from proxy_addon.idp_http import exchange

    stop = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))

    def drip() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 20:
                if stop.wait(0.1):
                    return
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/token"
    started = time.monotonic()
    try:
        with pytest.raises(GrantError) as e:
            exchange("POST", url, what="t", timeout=1.0, verify=True, data={"a": "b"})
    finally:
        stop.set()
        server.close()
        thread.join(5)
    assert (e.value.code, e.value.outcome_unknown) == ("idp_timeout", True)
    assert time.monotonic() - started < 2.5
