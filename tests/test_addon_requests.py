"""Routing, the Authorization modes and the retry-once rule, in-process (issue 12.2: these were
end-to-end tests that started a proxy each; what they check is the addon's decision, which the
rig drives in milliseconds). tests/test_e2e_proxy.py keeps the real-process smoke tests."""

from __future__ import annotations

import pytest
from addon_rig import HOST, config, in_process, rig_context, routed_flow
from mitmproxy import http

LIVE = "live-token-"


def _authorized(rig) -> list[bool]:
    return [bool(s.authorization and LIVE in s.authorization) for s in rig.sent]


def _error(flow: http.HTTPFlow) -> str | None:
    return flow.response.headers.get("X-Authproxy-Error") if flow.response else None


@in_process
async def test_route_port_and_path_must_match() -> None:
    cfg = config({"host": HOST, "port": 443, "credential": "api", "path": "/v1"})
    async with rig_context(cfg) as rig:
        for path in ("/v1/x", "/v10", "/v1/../admin", "/v1/..;/admin", "/v1/..%2fadmin"):
            await rig.send(routed_flow(path))
        await rig.send(routed_flow("/v1/x", port=8443, host_header=f"{HOST}:8443"))
        assert _authorized(rig) == [True, False, False, False, False, False]


@in_process
async def test_plain_http_is_refused_unless_allowed() -> None:
    cfg = config(
        {"host": HOST, "port": 80, "credential": "api"},  # https by default: plain http refused
        {"host": "open.example.test", "port": 80, "credential": "api", "scheme": "http",
         "allow_http": True},
    )  # fmt: skip
    async with rig_context(cfg) as rig:
        refused = await rig.send(routed_flow("/v1", scheme="http", port=80, sni=None))
        assert refused.response is not None and refused.response.status_code == 403
        assert _error(refused) == "plain_http_refused" and rig.sent == []
        other = "open.example.test"
        await rig.send(routed_flow("/v1", scheme="http", port=80, sni=None, host=other,
                                   host_header=other))  # fmt: skip
        assert _authorized(rig) == [True]


@pytest.mark.parametrize(
    ("mode", "error", "authorized"),
    [("replace", None, True), ("keep", None, False), ("reject", "authorization_present", None)],
)
@in_process
async def test_existing_authorization_modes(mode: str, error: str | None, authorized) -> None:
    cfg = config({"host": HOST, "port": 443, "credential": "api", "existing_authorization": mode})
    async with rig_context(cfg) as rig:
        flow = await rig.send(routed_flow(authorization="Bearer client-own"))
        assert _error(flow) == error
        if authorized is None:
            assert rig.sent == []
        else:
            assert _authorized(rig) == [authorized]
            if not authorized:
                assert rig.sent[0].authorization == "Bearer client-own"


@pytest.mark.parametrize(
    ("method", "headers", "error"),
    [("TRACE", {}, "method_refused"), ("TRACK", {}, "method_refused"),
     ("GET", {"sec_fetch_site": "cross-site"}, "cross_site_refused")],
)  # fmt: skip
@in_process
async def test_requests_that_must_not_get_a_token(method: str, headers: dict, error: str) -> None:
    async with rig_context() as rig:
        flow = await rig.send(routed_flow(method=method, **headers))
        assert _error(flow) == error and rig.sent == []


def _always(status: int, www: str | None = None):
    def answer(_: http.Request) -> http.Response:
        headers = {"WWW-Authenticate": www} if www else {}
        return http.Response.make(status, b"no", headers)

    return answer


@in_process
async def test_api_that_always_says_401_gets_exactly_one_retry() -> None:
    async with rig_context() as rig:
        rig.upstream = _always(401, 'Bearer error="invalid_token"')
        flow = await rig.send(routed_flow())
        assert flow.response is not None and flow.response.status_code == 401
        assert len(rig.sent) == 2 and len(rig.cache.rejected) == 1
        assert rig.sent[0].authorization != rig.sent[1].authorization  # the new token went


@in_process
async def test_insufficient_scope_is_not_retried() -> None:
    async with rig_context() as rig:
        rig.upstream = _always(401, 'Bearer error="insufficient_scope"')
        flow = await rig.send(routed_flow())
        assert flow.response is not None and flow.response.status_code == 401
        assert len(rig.sent) == 1 and rig.cache.rejected == []


@in_process
async def test_a_401_resends_the_same_body_once_with_a_new_token() -> None:
    answers = iter([401, 200])
    async with rig_context() as rig:
        rig.upstream = lambda _: http.Response.make(next(answers), b"")
        flow = await rig.send(routed_flow(method="POST", body=b"x" * 50_000))
        assert flow.response is not None and flow.response.status_code == 200
        assert [s.method for s in rig.sent] == ["POST", "POST"]
        assert all(s.body_is_original for s in rig.sent)  # the body is shared, never copied
        assert rig.sent[0].authorization != rig.sent[1].authorization


@pytest.mark.parametrize(
    ("host_header", "error"),
    [(HOST, None), (f"{HOST}:443", None), (f"{HOST}:4430", "misdirected_request"),
     (f"{HOST}.evil.example", "misdirected_request"), (f"{HOST}:443x", "misdirected_request"),
     (HOST.upper(), None)],
)  # fmt: skip
@in_process
async def test_host_header_fast_path_only_for_the_destination_itself(host_header, error) -> None:
    """The verbatim-match shortcut (issue 11.1) must not let a longer name through."""
    async with rig_context() as rig:
        flow = await rig.send(routed_flow(host_header=host_header))
        assert _error(flow) == error
        assert _authorized(rig) == ([] if error else [True])


@in_process
async def test_a_browser_header_in_any_case_is_still_seen() -> None:
    async with rig_context() as rig:
        flow = routed_flow()
        flow.request.headers.fields += ((b"SEC-FETCH-SITE", b"cross-site"),)
        await rig.send(flow)
        assert _error(flow) == "cross_site_refused" and rig.sent == []
