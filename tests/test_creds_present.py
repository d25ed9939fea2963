"""How a route presents its token (`present:`): Bearer, another header with a template, HTTP
Basic with a fixed user, a query parameter; each redacted once the request has gone."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from mitmproxy.test import tflow

from proxy_addon.present import BEARER, Presentation, apply, parse_present, presented, redact
from proxy_addon.present import carried as present_carried
from proxy_addon.tokens import Token

TOKEN = Token(access_token="tok-SECRET-1", expires_at=1e12, obtained_at=0.0)
MARK = "<redacted:api:abcd>"


def sent(p: Presentation, path: str = "/v1?x=1") -> Any:
    flow = tflow.tflow()
    flow.request.path = path
    flow.request.headers["authorization"] = "Bearer client-own"
    apply(flow.request, presented(TOKEN, p, MARK))
    return flow.request


def test_bearer_is_the_default() -> None:
    assert parse_present(None) is BEARER and parse_present("bearer") is BEARER
    req = sent(BEARER)
    assert req.headers["authorization"] == "Bearer tok-SECRET-1"
    redact(req, presented(TOKEN, BEARER, MARK))
    assert req.headers["authorization"] == f"Bearer {MARK}"


@pytest.mark.parametrize(
    ("raw", "header", "value"),
    [
        ({"header": "X-Api-Key"}, "x-api-key", "tok-SECRET-1"),
        ({"header": "X-Api-Key", "value": "{token}"}, "x-api-key", "tok-SECRET-1"),
        (
            {"header": "Authorization", "value": "token {token}"},
            "authorization",
            "token tok-SECRET-1",
        ),
        (
            {"header": "X-Auth", "value": "Key={token}; {literal}"},
            "x-auth",
            "Key=tok-SECRET-1; {literal}",
        ),
    ],
)
def test_header_with_a_template(raw: dict[str, str], header: str, value: str) -> None:
    p = parse_present(raw)
    req = sent(p)
    assert req.headers[header] == value
    redact(req, presented(TOKEN, p, MARK))
    assert all("tok-SECRET-1" not in v for v in req.headers.values())
    assert MARK in req.headers[header]


def test_basic_with_a_fixed_user() -> None:
    p = parse_present({"basic": "x-access-token"})
    req = sent(p)
    scheme, _, blob = req.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(blob).decode() == "x-access-token:tok-SECRET-1"
    redact(req, presented(TOKEN, p, MARK))
    assert req.headers["authorization"] == f"Basic {MARK}"


def test_query_parameter_replaces_the_clients_and_is_redacted() -> None:
    p = parse_present({"query": "access_token"})
    req = sent(p, "/v1?x=1&access_token=client-own")
    assert req.query.get_all("access_token") == ["tok-SECRET-1"] and req.query["x"] == "1"
    redact(req, presented(TOKEN, p, MARK))
    assert "tok-SECRET-1" not in req.path and req.query["access_token"] == MARK
    assert req.headers["authorization"] == "Bearer client-own"  # a query route leaves it be


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("basic", "expected bearer, or a mapping"),
        ({"header": "X-A", "query": "a"}, "exactly one of"),
        ({"header": "Host"}, "cannot carry a token"),
        ({"header": "Proxy-Authorization"}, "cannot carry a token"),
        ({"header": "DPoP"}, "cannot carry a token"),
        ({"header": "Bad Name"}, "cannot carry a token"),
        ({"header": "X-A", "value": "no placeholder"}, "must contain {token}"),
        ({"header": "X-A", "value": "{token}\r\nX-Evil: 1"}, "no line breaks"),
        ({"basic": "a:b"}, "without ':'"),
        ({"query": "a b"}, "not a plain parameter name"),
        ({"query": "a", "value": "{token}"}, "value goes with header only"),
        ({"qurey": "a"}, "unknown key 'qurey'"),
    ],
)
def test_bad_presentations_are_refused(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_present(raw)


def test_what_counts_as_the_clients_own_credential() -> None:
    flow = tflow.tflow()
    flow.request.path = "/v1?api_key=mine"
    assert present_carried(flow.request, parse_present({"query": "api_key"}))
    assert not present_carried(flow.request, parse_present({"header": "X-Api-Key"}))
    flow.request.headers["x-api-key"] = "mine"
    assert present_carried(flow.request, parse_present({"header": "X-Api-Key"}))
    assert not present_carried(flow.request, BEARER)  # no Authorization of its own


@pytest.mark.parametrize(("existing", "action"), [("keep", "pass"), ("reject", "refuse"),
                                                  ("replace", "inject")])  # fmt: skip
def test_existing_authorization_applies_to_where_the_route_presents(
    existing: str, action: str
) -> None:
    from proxy_addon.config import parse_config
    from proxy_addon.decision import decide

    routes = parse_config({
        "credentials": {"api": {"grant": "static", "token": "t"}},
        "routes": [{"host": "api.example.test", "credential": "api",
                    "present": {"header": "X-Api-Key"}, "existing_authorization": existing}],
    }, "t.yaml").routes  # fmt: skip
    flow = tflow.tflow()
    flow.request.scheme, flow.request.host, flow.request.port = "https", "api.example.test", 443
    flow.client_conn.sni = "api.example.test"  # every name agrees: only the header decides
    flow.request.headers["authorization"] = "Basic aGk6dGhlcmU="  # not where this route puts it
    assert decide(flow, routes).action == "inject"
    flow.request.headers["x-api-key"] = "the client's own"
    assert decide(flow, routes).action == action
