"""The guards around injection, echo scrubbing and strict path reading."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from proxy_addon.guards import request_refusal, unsafe_options
from proxy_addon.redact import scrub_echoes
from proxy_addon.routes import Route, strict_path
from proxy_addon.tokens import Token

ROUTE = Route(index=0, credential="api", host="api.example.com", port=443, scheme="https")


def _flow(host_header: str | None = "api.example.com", sni: str | None = "api.example.com",
          method: str = "GET", **headers: str) -> http.HTTPFlow:  # fmt: skip
    f = tflow.tflow()
    f.request.scheme, f.request.host, f.request.port = "https", "api.example.com", 443
    f.request.method = method
    f.request.headers.clear()
    if host_header is not None:
        f.request.headers["Host"] = host_header
    for k, v in headers.items():
        f.request.headers[k.replace("_", "-")] = v
    f.client_conn.sni = sni
    return f


@pytest.mark.parametrize(
    ("flow_args", "code"),
    [
        ({}, None),
        ({"host_header": "API.Example.com.:443"}, None),
        ({"sni": None}, None),
        ({"host_header": "other.example.com"}, "misdirected_request"),
        ({"host_header": "api.example.com.evil.test"}, "misdirected_request"),
        ({"sni": "other.example.com"}, "misdirected_request"),
        ({"method": "TRACE"}, "method_refused"),
        ({"Sec_Fetch_Site": "cross-site"}, "cross_site_refused"),
        ({"Sec_Fetch_Site": "same-site"}, "cross_site_refused"),
        ({"Sec_Fetch_Site": "none"}, None),
    ],
)
def test_request_refusal(flow_args: dict, code: str | None) -> None:
    answer = request_refusal(_flow(**flow_args), ROUTE)
    assert (answer.headers["X-Authproxy-Error"] if answer else None) == code


def test_cross_site_allowed_by_route() -> None:
    route = Route(0, "api", "api.example.com", 443, "https", allow_cross_site=True)
    assert request_refusal(_flow(Sec_Fetch_Site="cross-site"), route) is None


def _opts(**over: object) -> SimpleNamespace:
    base = dict(proxy_debug=False, ssl_insecure=False, map_remote=[], stickyauth=None,
                proxyauth=None, mode=["regular"], listen_host="127.0.0.1")  # fmt: skip
    return SimpleNamespace(**{**base, **over})


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({}, None),
        ({"listen_host": ""}, "listening on all interfaces"),
        ({"listen_host": "0.0.0.0", "proxyauth": "u:" + "p" * 12}, None),
        ({"listen_host": "0.0.0.0", "proxyauth": "any"}, "listening on 0.0.0.0"),
        ({"mode": ["regular@0.0.0.0:8080"]}, "listening on 0.0.0.0"),
        ({"mode": ["socks5@127.0.0.1:1080"]}, None),
        ({"web_host": "0.0.0.0", "proxyauth": "u:" + "p" * 12}, "the web UI can replay"),
        ({"map_remote": ["|a|b"]}, "map_remote"),
        ({"stickyauth": "."}, "stickyauth"),
    ],
)
def test_unsafe_options(over: dict, expected: str | None) -> None:
    problem = unsafe_options(_opts(**over))
    assert (problem is None) if expected is None else (expected in (problem or ""))


def test_scrub_echoes_body_and_headers() -> None:
    token = Token("tok-" + "a" * 30, expires_at=1e12, obtained_at=0)
    resp = http.Response.make(200, f'{{"auth": "Bearer {token.access_token}"}}',
                              {"X-Echo": f"Bearer {token.access_token}"})  # fmt: skip
    scrub_echoes(resp, token, "<redacted>")
    assert token.access_token not in resp.text
    assert resp.headers["X-Echo"] == "Bearer <redacted>"
    assert "<redacted>" in resp.text


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/..;/admin", "/admin"),
        ("/v1/..%2fadmin", "/admin"),
        ("/v1/%2e%2e%2Fadmin", "/admin"),
        ("/v1/x\\..\\..\\admin", "/admin"),
        ("/v1#/../../admin", "/admin"),
        ("/v1/a;jsessionid=1/b?x=/../", "/v1/a/b"),
        ("/v1/items", "/v1/items"),
    ],
)
def test_strict_path(path: str, expected: str) -> None:
    assert strict_path(path) == expected


def test_token_unavailable_scrubs_configured_secrets() -> None:
    from proxy_addon.cache import TokenUnavailable
    from proxy_addon.replies import token_unavailable

    e = TokenUnavailable("api", "invalid_client", "refused: client_secret s3cr3t-v4lue is wrong")
    resp = token_unavailable(e, ["s3cr3t-v4lue"])
    assert "s3cr3t-v4lue" not in resp.text
    assert resp.headers["X-Authproxy-Error"] == "token_unavailable"
    assert '"reason": "invalid_client"' in resp.text


@pytest.mark.parametrize(
    ("host_header", "refused"),
    [("[::1]", False), ("[::1]:443", False), ("::1:443", True), ("::1", True),
     ("[::1]:8443", True)],
)
def test_an_ipv6_destination_is_named_in_brackets_only(host_header: str, refused: bool) -> None:
    """Unbracketed, `::1:443` is the address ::1:443 (0:0:0:0:0:0:1:443), not ::1 port 443."""
    f = _flow(host_header=host_header, sni=None)
    f.request.host = "::1"
    f.request.headers["Host"] = host_header  # setting .host rewrote it
    route = Route(index=0, credential="api", host="::1", port=443, scheme="https")
    answer = request_refusal(f, route)
    assert (answer is not None) is refused
    if answer is not None:
        assert b"misdirected_request" in (answer.content or b"")

