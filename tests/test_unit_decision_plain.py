"""`plain_route`, the per-request shortcut (issue 11), against `decide`, the rule it shortens:
over every combination of request shapes below, it accepts only requests decide() injects
with the same route, and it does accept the plain ones."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from addon_rig import config
from mitmproxy import http
from mitmproxy.test import tflow

from proxy_addon.decision import Decision, decide, plain_route

HOST = "api.example.test"
ROUTES = [
    {"host": HOST, "port": 443, "credential": "api", "path": "/v1"},
    {"host": HOST, "port": 8443, "credential": "api", "present": {"header": "X-Api-Key"}},
    {"host": "*.wild.test", "port": 443, "credential": "api", "allow_cross_site": True},
    {"host": "q.example.test", "port": 443, "credential": "api",
     "present": {"query": "access_token"}, "existing_authorization": "reject"},
    {"host": "keep.example.test", "port": 443, "credential": "api",
     "existing_authorization": "keep"},
    {"host": "plain.example.test", "port": 80, "scheme": "http", "credential": "api",
     "allow_http": True},
    {"host": "::1", "port": 443, "credential": "api"},
    {"host": "basic.example.test", "port": 443, "credential": "api",
     "present": {"basic": "x-access-token"}},
]  # fmt: skip


def _flow(scheme: str, host: str, port: int, method: bytes, authority: bytes, path: str,
          fields: tuple[tuple[bytes, bytes], ...], sni: str | None,
          flow: http.HTTPFlow | None = None,
          version: bytes = b"HTTP/1.1") -> http.HTTPFlow:  # fmt: skip
    """A flow with this request; `flow` is reused if given (building one costs more than
    both checks)."""
    flow = flow or tflow.tflow()
    flow.request = http.Request(
        host=host, port=port, method=method, scheme=scheme.encode(), authority=authority,
        path=path.encode(), http_version=version, headers=http.Headers(fields),
        content=b"", trailers=None, timestamp_start=0.0, timestamp_end=None,
    )  # fmt: skip
    flow.client_conn.sni = sni
    return flow


def _host_fields(host: str, port: int) -> list[tuple[tuple[bytes, bytes], ...]]:
    h = host.encode()
    return [
        (),  # none
        ((b"Host", h),),
        ((b"host", b"%s:%d" % (h, port)),),
        ((b"Host", h.upper()),),
        ((b"Host", h + b"."),),
        ((b"Host", b"other.example.test"),),
        ((b"Host", b"%s:%d" % (h, port + 1)),),
        ((b"Host", h), (b"Host", h)),
        ((b"Host", h), (b"host", b"other.example.test")),
        ((b"Host", h + b"\x00"),),
        ((b"Host", b"%s.evil.test" % h),),
        ((b"Host", b"[%s]" % h),),
        ((b"Host", b"[%s]:%d" % (h, port)),),
        ((b"Host", h + b":"),),
        ((b"Host", b"%s:0%d" % (h, port)),),
        ((b"Host", b" " + h),),
    ]


EXTRA: list[tuple[tuple[bytes, bytes], ...]] = [
    (),
    ((b"Accept", b"*/*"), (b"User-Agent", b"curl/8")),
    ((b"Authorization", b"Bearer client-own"),),
    ((b"X-Api-Key", b"client-own"),),
    ((b"Origin", b"https://evil.test"),),
    ((b"Referer", b"https://evil.test/page"),),
    ((b"Sec-Fetch-Site", b"cross-site"),),
    ((b"Upgrade", b"h2c"), (b"Connection", b"Upgrade")),
    ((b"Proxy-Authorization", b"Basic dTpw"),),
    ((b"DPoP", b"client-proof"),),
]

TARGETS = [
    ("https", HOST, 443), ("https", HOST, 8443), ("https", "a.wild.test", 443),
    ("https", "q.example.test", 443), ("https", "keep.example.test", 443),
    ("http", "plain.example.test", 80), ("http", HOST, 443), ("https", "API.example.test", 443),
    ("http", "authproxy.local", 80), ("https", "unrouted.test", 443), ("https", "::1", 443),
    ("https", "basic.example.test", 443),
]  # fmt: skip
METHODS = [b"GET", b"POST", b"get", b"TRACE", b"TRACK", b"CONNECT", b"OPTIONS"]
AUTHORITIES = [b"", b"%s", b"other.example.test", b"%s:%d"]
PATHS = ["/v1/items", "/v1/items?access_token=client-own", "/v1", "/v10", "/v1/../admin",
         "/v1%2f..%2fadmin", "/admin", "/"]  # fmt: skip
SNIS = ["same", None, "other.example.test", "upper", ""]


def _cases(methods: Any = METHODS, authorities: Any = AUTHORITIES, snis: Any = SNIS,
           paths: Any = PATHS) -> Any:  # fmt: skip
    for (scheme, host, port), method, authority, path, sni in itertools.product(
        TARGETS, methods, authorities, paths, snis
    ):
        auth = authority.replace(b"%s", host.encode()).replace(b"%d", str(port).encode())
        server_name = {"same": host, "upper": host.upper()}.get(sni or "", sni)
        for host_fields in _host_fields(host, port):
            for extra in EXTRA:
                yield scheme, host, port, method, auth, path, host_fields + extra, server_name
                if extra:  # Host elsewhere than first
                    yield scheme, host, port, method, auth, path, extra + host_fields, server_name


@pytest.fixture(scope="module")
def routes() -> Any:
    return config(*ROUTES).routes


def test_plain_route_never_accepts_what_decide_would_not_inject(routes: Any) -> None:
    accepted = checked = 0
    actions = set()
    reused = tflow.tflow()
    # Every request near the plain shape (~17 000), and a sample of the whole product (every
    # 401st, ~9 500); every other one as HTTP/2: a few seconds.
    paths = ["/v1/items", "/v1/items?access_token=x", "/v1/../a", "/a"]
    near_plain = _cases(methods=[b"GET"], authorities=[b""], snis=["same"], paths=paths)
    sample = itertools.islice(_cases(), 0, None, 401)
    for i, case in enumerate(itertools.chain(near_plain, sample)):
        flow = _flow(*case, flow=reused, version=b"HTTP/2.0" if i % 2 else b"HTTP/1.1")
        route = plain_route(flow, routes)
        decision = decide(flow, routes)
        actions.add(decision.action)
        checked += 1
        if route is None:
            continue
        accepted += 1
        assert decision == Decision("inject", route), case
    assert checked > 20_000 and accepted > 150, (checked, accepted)
    # The sample meets every outcome of decide(): the shortcut was compared with refusals,
    # passes and status answers, not only with injections.
    assert actions == {"inject", "refuse", "pass", "status"}


@pytest.mark.parametrize(
    ("target", "fields", "path", "credential_route"),
    [
        (("https", HOST, 443), ((b"Host", HOST.encode()),), "/v1/items", 0),
        (("https", HOST, 443), ((b"Host", b"api.example.test:443"), (b"Accept", b"*/*")), "/v1",
         0),
        (("https", HOST, 8443), ((b"host", b"api.example.test:8443"),), "/anything", 1),
        (("https", "a.wild.test", 443), ((b"Host", b"a.wild.test"),), "/", 2),
    ],
)  # fmt: skip
def test_plain_requests_take_the_shortcut(
    routes: Any, target: Any, fields: Any, path: str, credential_route: int
) -> None:
    flow = _flow(*target, b"GET", b"", path, fields, target[1])
    route = plain_route(flow, routes)
    assert route is not None and route.index == credential_route
    assert decide(flow, routes) == Decision("inject", route)
