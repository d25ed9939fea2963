"""Unit tests for proxy_addon.routes: host and path normalization and matching, RouteTable."""

from __future__ import annotations

from typing import Literal

import pytest

from proxy_addon.routes import (
    Route,
    RouteTable,
    host_matches,
    normalize_host,
    normalize_path,
    path_matches,
)

# --- normalize_host ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("api.example.com", "api.example.com"),
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("  api.example.com  ", "api.example.com"),
        ("Api.Example.Com.", "api.example.com"),
        ("localhost", "localhost"),
        ("under_score.example.com", "under_score.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
    ],
)
def test_normalize_host_accepts(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        ".",
        "[]",
        "a..example.com",
        "example.com..",
        ".example.com",
        "exa mple.com",
        "example.com/path",
        "example.com:443",
        "user@example.com",
        "*.example.com",  # a wildcard is only a pattern, never a host
    ],
)
def test_normalize_host_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match=r"host name"):
        normalize_host(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("*.example.com", "*.example.com"),
        ("*.EXAMPLE.com.", "*.example.com"),
        ("*.b.example.com", "*.b.example.com"),
        ("api.example.com", "api.example.com"),
    ],
)
def test_normalize_host_pattern_accepts(raw: str, expected: str) -> None:
    assert normalize_host(raw, pattern=True) == expected


@pytest.mark.parametrize("raw", ["*.com", "*", "*.localhost"])
def test_normalize_host_pattern_wildcard_needs_two_labels(raw: str) -> None:
    with pytest.raises(ValueError, match=r"a wildcard needs at least two labels after it"):
        normalize_host(raw, pattern=True)


@pytest.mark.parametrize(
    "raw",
    ["a.*.example.com", "*example.com", "**.example.com", "*.*.example.com", "api*.example.com"],
)
def test_normalize_host_pattern_wildcard_only_as_whole_first_label(raw: str) -> None:
    with pytest.raises(ValueError, match=r"is not a host name"):
        normalize_host(raw, pattern=True)


def test_normalize_host_error_quotes_the_input() -> None:
    with pytest.raises(ValueError, match=r"^'bad name' is not a host name"):
        normalize_host("bad name")


# --- host_matches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("example.com", "example.com", True),
        ("api.example.com", "api.example.com", True),
        ("example.com", "api.example.com", False),
        ("api.example.com", "example.com", False),
        ("example.com", "example.com.evil.test", False),
        ("example.com", "xexample.com", False),
        ("example.com", "evil-example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "a.b.c.d.example.com", True),
        ("*.example.com", "example.com", False),  # not the apex
        ("*.example.com", "evil-example.com", False),
        ("*.example.com", "xexample.com", False),
        ("*.example.com", "example.com.evil.test", False),
        ("*.example.com", "a.example.com.evil.test", False),
        ("*.example.com", "example.org", False),
        ("*.b.example.com", "a.b.example.com", True),
        ("*.b.example.com", "b.example.com", False),
        ("*.b.example.com", "a.c.example.com", False),
    ],
)
def test_host_matches(pattern: str, host: str, expected: bool) -> None:
    assert host_matches(pattern, host) is expected


# --- normalize_path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a", "/a"),
        ("/a/", "/a/"),
        ("/a/b", "/a/b"),
        # dot segments (RFC 3986 §5.2.4)
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/billing/../admin", "/admin"),
        ("/billing/../../../admin", "/admin"),
        ("/..", "/"),
        ("/a/..", "/"),
        ("/./", "/"),
        # percent-encoded dots, any case
        ("/billing/%2e%2e/admin", "/admin"),
        ("/billing/%2E%2E/admin", "/admin"),
        ("/billing/%2e%2E/admin", "/admin"),
        ("/billing/.%2e/admin", "/admin"),
        ("/billing/%2e./admin", "/admin"),
        ("/billing/.%2E/admin", "/admin"),
        ("/a/%2e/b", "/a/b"),
        ("/a/%2E/b", "/a/b"),
        # not dot segments
        ("/a/.../b", "/a/.../b"),
        ("/a/..b/c", "/a/..b/c"),
        ("/a/.b", "/a/.b"),
        # query and fragment are not part of the path
        ("/a/b?x=1", "/a/b"),
        ("/a/b?x=/../admin", "/a/b"),
        ("/a/b#frag", "/a/b"),
        ("?x=1", "/"),
        ("/a/?q", "/a/"),
        # empty segments collapse
        ("//a//b", "/a/b"),
        ("//admin", "/admin"),
        ("/billing//../admin", "/admin"),
        ("///", "/"),
    ],
)
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


# --- path_matches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/v1", "/v1", True),
        ("/v1", "/v1/", True),
        ("/v1", "/v1/x", True),
        ("/v1", "/v1/x/y", True),
        ("/v1", "/v10", False),
        ("/v1", "/v1x/y", False),
        ("/v1", "/v", False),
        ("/v1", "/", False),
        ("/v1", "/v2/v1", False),
        ("/v1/", "/v1/", True),
        ("/v1/", "/v1/x", True),
        ("/v1/", "/v1", False),
        ("/v1/", "/v10", False),
        ("/a/b", "/a/b/c", True),
        ("/a/b", "/a/bc", False),
        ("/a/b", "/a", False),
        ("/V1", "/v1", False),  # paths are case-sensitive
    ],
)
def test_path_matches(prefix: str, path: str, expected: bool) -> None:
    assert path_matches(prefix, path) is expected


# --- RouteTable --------------------------------------------------------------------------------


def route(
    index: int,
    credential: str,
    host: str,
    *,
    port: int = 443,
    scheme: Literal["https", "http"] = "https",
    path: str = "/",
) -> Route:
    return Route(index=index, credential=credential, host=host, port=port, scheme=scheme, path=path)


TABLE = RouteTable(
    (
        route(0, "billing", "api.example.com", path="/billing"),
        route(1, "admin", "api.example.com", path="/admin"),
        route(2, "wild", "*.example.com"),
        route(3, "catchall", "api.example.com"),
        route(4, "alt-port", "alt.example.org", port=8443),
        route(5, "plain", "legacy.example.org", port=8080, scheme="http"),
        route(6, "v6", "::1", port=9443),
    )
)


def test_route_table_basics() -> None:
    assert len(TABLE) == 7
    assert [r.index for r in TABLE] == [0, 1, 2, 3, 4, 5, 6]
    assert TABLE.routes[0].describe() == "https://api.example.com:443/billing"
    assert TABLE.routes[0].existing_authorization == "replace"


@pytest.mark.parametrize(
    ("scheme", "host", "port", "path", "expected"),
    [
        ("https", "api.example.com", 443, "/billing", 0),
        ("https", "api.example.com", 443, "/billing/invoices?page=2", 0),
        ("https", "API.Example.com.", 443, "/billing/x", 0),
        # dot segments are resolved before matching
        ("https", "api.example.com", 443, "/billing/../admin", 1),
        ("https", "api.example.com", 443, "/billing/%2e%2e/admin/x", 1),
        ("https", "api.example.com", 443, "/admin/../billing", 0),
        # segment boundary: /billingx is not /billing; the wildcard comes first in file order
        ("https", "api.example.com", 443, "/billingx", 2),
        ("https", "api.example.com", 443, "/", 2),
        ("https", "deep.sub.example.com", 443, "/x", 2),
        ("https", "example.com", 443, "/", None),
        ("https", "evil-example.com", 443, "/billing", None),
        ("https", "api.example.com.evil.test", 443, "/billing", None),
        # the port must match; a route's port is not implied by the scheme of the request
        ("https", "api.example.com", 8443, "/billing", None),
        ("https", "alt.example.org", 8443, "/", 4),
        ("https", "alt.example.org", 443, "/", None),
        # the scheme must match
        ("http", "api.example.com", 443, "/billing", None),
        ("http", "api.example.com", 80, "/billing", None),
        ("http", "legacy.example.org", 8080, "/x", 5),
        ("https", "legacy.example.org", 8080, "/x", None),
        ("http", "legacy.example.org", 80, "/x", None),
        ("https", "[::1]", 9443, "/", 6),
        ("https", "::1", 9443, "/", 6),
        ("https", "::1", 443, "/", None),
        # a name that does not normalize is compared as it is (lower-cased)
        ("https", "bad name.other.test", 443, "/", None),
        ("https", "API.example.com:443", 443, "/billing", None),
    ],
)
def test_route_table_match(
    scheme: str, host: str, port: int, path: str, expected: int | None
) -> None:
    found = TABLE.match(scheme, host, port, path)
    assert (found.index if found else None) == expected


def test_route_table_first_match_wins() -> None:
    table = RouteTable(
        (
            route(0, "first", "*.example.com"),
            route(1, "second", "api.example.com"),
            route(2, "third", "api.example.com", path="/v1"),
        )
    )
    found = table.match("https", "api.example.com", 443, "/v1/x")
    assert found is not None
    assert (found.index, found.credential) == (0, "first")


def test_route_table_empty() -> None:
    table = RouteTable(())
    assert len(table) == 0
    assert table.match("https", "api.example.com", 443, "/") is None
    assert table.https_only_match("api.example.com", "/") is None
    assert table.intercepts("api.example.com", 443) is False


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        # a plain-http request that an https route would have matched (port is irrelevant)
        ("api.example.com", "/billing/x", 0),
        ("API.example.com.", "/admin", 1),
        ("api.example.com", "/other", 2),
        ("alt.example.org", "/", 4),
        ("x.example.com", "/", 2),
        # http routes do not count
        ("legacy.example.org", "/x", None),
        ("example.com", "/", None),
        ("evil-example.com", "/billing", None),
    ],
)
def test_route_table_https_only_match(host: str, path: str, expected: int | None) -> None:
    found = TABLE.https_only_match(host, path)
    assert (found.index if found else None) == expected


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("api.example.com", 443, True),
        ("API.EXAMPLE.COM.", 443, True),
        ("x.y.example.com", 443, True),
        ("api.example.com", 8443, False),
        ("alt.example.org", 8443, True),
        ("alt.example.org", 443, False),
        ("example.com", 443, False),
        ("evil-example.com", 443, False),
        ("other.test", 443, False),
        # http routes never require TLS interception
        ("legacy.example.org", 8080, False),
        ("[::1]", 9443, True),
    ],
)
def test_route_table_intercepts(host: str, port: int, expected: bool) -> None:
    assert TABLE.intercepts(host, port) is expected


@pytest.mark.parametrize(
    "path",
    ["/v1/..%252fadmin", "/v1/%252e%252e/admin", "/v1/%u002e%u002e/admin", "/v1/..%c0%afadmin",
     "/v1/%C1%9cadmin"],
)  # fmt: skip
def test_paths_a_lenient_server_may_read_outside_the_prefix_match_no_prefix_route(
    path: str,
) -> None:
    table = RouteTable((Route(0, "api", "api.example.com", 443, "https", "/v1"),))
    assert table.match("https", "api.example.com", 443, path) is None


def test_a_twice_encoded_path_that_stays_inside_the_prefix_still_matches() -> None:
    table = RouteTable((Route(0, "api", "api.example.com", 443, "https", "/v1"),))
    assert table.match("https", "api.example.com", 443, "/v1/a%2520b") is not None
